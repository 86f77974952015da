// The dashboard's shell: sign-in, the header, and hash routing (#/jobs, #/job/<id>, #/new, #/models,
// #/playground?models=a,b, #/workers). Each page is a function that renders into <main> and returns its cleanup.

import {api, apiBase, forgetKey, getKey, setKey} from './api.js';
import {clear, errorBox, h} from './dom.js';
import {jobsPage} from './jobs.js';
import {jobPage} from './job.js';
import {newJobPage} from './newjob.js';
import {modelsPage, playgroundPage} from './models.js';
import {workersPage} from './workers.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
const signOut = document.getElementById('sign-out');
let cleanup = null;

function route() {
  const hash = location.hash.replace(/^#\/?/, '');
  const [path, query = ''] = hash.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return {page: parts[0] || 'jobs', args: parts.slice(1), params: new URLSearchParams(query)};
}

const PAGES = {
  jobs: jobsPage, job: jobPage, new: newJobPage, models: modelsPage, playground: playgroundPage, workers: workersPage,
};

function render() {
  if (cleanup) { try { cleanup(); } catch (err) { console.error(err); } cleanup = null; }
  clear(main);
  if (!getKey()) { signInPage(); return; }
  const {page, args, params} = route();
  for (const link of nav.querySelectorAll('a')) link.classList.toggle('active', link.dataset.page === page);
  const view = PAGES[page];
  if (!view) { main.append(h('h1', {}, 'Not found'), h('p', {}, `No page ${page}.`)); return; }
  const container = h('section', {class: `page page-${page}`});
  main.append(container);
  cleanup = view(container, {args, params}) || null;
}

function showSignedIn(quota) {
  nav.hidden = false;
  signOut.hidden = false;
  who.textContent = quota ? `organization ${quota.organization_id}` : '';
}

function signInPage() {
  nav.hidden = true;
  signOut.hidden = true;
  who.textContent = '';
  const input = h('input', {type: 'password', id: 'api-key', name: 'api-key', autocomplete: 'off',
                            placeholder: 'tq-…', required: true, size: 48});
  const message = h('div', {class: 'message'});
  const button = h('button', {type: 'submit'}, 'Sign in');
  const form = h('form', {class: 'sign-in', onsubmit: async (e) => {
    e.preventDefault();
    clear(message);
    button.disabled = true;
    const key = input.value.trim();
    try {
      const quota = await api('quota', {key});
      setKey(key);
      showSignedIn(quota);
      if (!location.hash || location.hash === '#/' || location.hash === '#/signin') location.hash = '#/jobs';
      else render();
    } catch (err) {
      message.append(errorBox(err));
    } finally {
      button.disabled = false;
    }
  }},
  h('h1', {}, 'Sign in'),
  h('p', {}, 'Paste an API key of your organization. It is kept for this browser tab only (sessionStorage) and sent ',
    'as a Bearer token to the API at ', h('code', {}, apiBase.pathname), '.'),
  h('label', {for: 'api-key'}, 'API key'), input, button, message);
  main.append(form);
  input.focus();
}

signOut.addEventListener('click', () => { forgetKey(); who.textContent = ''; location.hash = '#/jobs'; render(); });
window.addEventListener('hashchange', render);
window.addEventListener('tunequeue:unauthorized', () => {
  // The key stopped working (revoked, expired): back to the sign-in form, saying why.
  forgetKey();
  render();
  main.querySelector('.message')?.append(errorBox({message: 'Your API key no longer works: sign in again.'}));
});

if (getKey()) {
  api('quota').then(showSignedIn).catch(() => {});
  showSignedIn(null);
}
render();
