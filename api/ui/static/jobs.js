// Jobs: the organization's jobs, newest first, with filters; polled every few seconds, so new jobs appear and
// running ones move without a reload.

import {api} from './api.js';
import {bar, clear, errorBox, fmtDuration, fmtNumber, fmtTime, h, statusBadge} from './dom.js';

const STATUSES = ['', 'validating_files', 'queued', 'running', 'succeeded', 'failed', 'cancelled'];
const POLL_MS = 3000;
const filters = {status: '', user: ''};  // kept while the tab lives

export function progressCell(job) {
  const p = job.progress;
  if (job.status === 'succeeded') return bar(1, 'done', 'progress');
  if (!p || !p.total_steps) return h('span', {class: 'hint'}, job.status === 'queued' ? 'waiting' : '');
  return bar(p.step / p.total_steps, `${p.step ?? 0} / ${p.total_steps}`, 'progress');
}

export function etaText(job) {
  const now = Date.now() / 1000;
  if (job.status === 'running') {
    if (job.estimated_finish) return fmtDuration(job.estimated_finish - now) || 'any moment';
    if (job.progress?.eta_seconds !== null && job.progress?.eta_seconds !== undefined) return fmtDuration(job.progress.eta_seconds);
  }
  if (job.status === 'queued' && job.estimated_start_at) return `starts in ${fmtDuration(job.estimated_start_at - now)}`;
  return '';
}

export function jobsPage(root) {
  const status = h('select', {name: 'status', 'aria-label': 'status'},
                   STATUSES.map((s) => h('option', {value: s, selected: s === filters.status}, s || 'any status')));
  const user = h('input', {name: 'user', placeholder: 'user', value: filters.user, 'aria-label': 'user', size: 16});
  const message = h('div', {class: 'message'});
  const tbody = h('tbody');
  const updated = h('span', {class: 'hint updated'});
  root.append(
    h('div', {class: 'title-row'}, h('h1', {}, 'Jobs'), h('a', {class: 'button', href: '#/new'}, 'New job')),
    h('form', {class: 'filters', onsubmit: (e) => { e.preventDefault(); refresh(); }},
      h('label', {}, 'Status ', status), h('label', {}, 'User ', user), h('button', {type: 'submit'}, 'Filter'), updated),
    message,
    h('table', {class: 'jobs'},
      h('thead', {}, h('tr', {}, ['Job', 'Status', 'User', 'Model', 'Queue', 'Progress', 'Loss', 'ETA', 'Created']
        .map((t) => h('th', {}, t)))),
      tbody));

  status.addEventListener('change', () => refresh());
  user.addEventListener('change', () => refresh());
  let stopped = false;
  let timer = null;
  let seq = 0;

  async function refresh() {
    clearTimeout(timer);
    filters.status = status.value;
    filters.user = user.value.trim();
    const mine = ++seq;
    try {
      const page = await api('jobs', {params: {limit: 50, status: filters.status, user: filters.user}});
      if (stopped || mine !== seq) return;
      clear(message);
      clear(tbody);
      if (!page.data.length) tbody.append(h('tr', {}, h('td', {colspan: 9, class: 'empty'}, 'No jobs.')));
      for (const job of page.data) tbody.append(row(job));
      updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      if (!stopped && mine === seq) clear(message).append(errorBox(err));
    } finally {
      if (!stopped && mine === seq) timer = setTimeout(refresh, POLL_MS);
    }
  }
  refresh();
  return () => { stopped = true; clearTimeout(timer); };
}

function row(job) {
  const model = job.fine_tuned_model || [job.base_model, job.suffix].filter(Boolean).join(' · ');
  return h('tr', {dataset: {job: job.id, status: job.status}},
    h('td', {}, h('a', {href: `#/job/${encodeURIComponent(job.id)}`}, job.id)),
    h('td', {}, statusBadge(job.status)),
    h('td', {}, job.user),
    h('td', {class: 'model'}, model),
    h('td', {class: 'queue'}, job.status === 'queued' && job.queue_position ? `#${job.queue_position}` : ''),
    h('td', {}, progressCell(job)),
    h('td', {}, fmtNumber(job.progress?.loss)),
    h('td', {}, etaText(job)),
    h('td', {}, fmtTime(job.created_at)));
}
