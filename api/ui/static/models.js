// Models: the base models and the organization's adapters, each adapter downloadable and deletable; and the
// playground, which streams the answers of a base model and up to three adapters to the same prompt side by side.

import {api, download, streamChat} from './api.js';
import {clear, errorBox, fmtTime, h} from './dom.js';

const MAX_ADAPTERS = 3;

export function modelsPage(root) {
  const message = h('div', {class: 'message'});
  const tbody = h('tbody');
  root.append(h('div', {class: 'title-row'}, h('h1', {}, 'Models'), h('a', {class: 'button', href: '#/playground'}, 'Playground')),
    message,
    h('table', {class: 'models'},
      h('thead', {}, h('tr', {}, ['Model', 'Kind', 'Base', 'Job', 'Created', ''].map((t) => h('th', {}, t)))), tbody));

  async function refresh() {
    try {
      const page = await api('v1/models');
      clear(tbody);
      for (const m of page.data) tbody.append(row(m));
    } catch (err) {
      clear(message).append(errorBox(err));
    }
  }

  function row(m) {
    const actions = h('td', {class: 'actions'},
      h('a', {class: 'button', href: `#/playground?models=${encodeURIComponent(m.id)}`}, 'Chat'));
    if (m.kind === 'adapter') {
      actions.append(' ', h('button', {type: 'button', onclick: (e) => save(m, e.target)}, 'Download'), ' ',
        h('button', {type: 'button', class: 'danger', onclick: () => remove(m)}, 'Delete'));
    }
    return h('tr', {dataset: {model: m.id}},
      h('td', {class: 'model'}, m.id, m.vllm && !m.vllm.compatible ? h('span', {class: 'hint'}, ' (not loadable by vLLM)') : null),
      h('td', {}, m.kind), h('td', {}, m.parent || ''),
      h('td', {}, m.job_id ? h('a', {href: `#/job/${encodeURIComponent(m.job_id)}`}, m.job_id) : ''),
      h('td', {}, fmtTime(m.created)), actions);
  }

  async function save(m, button) {
    // A plain link cannot carry the key: fetch the tar with it, then hand the bytes to the browser as a file.
    button.disabled = true;
    clear(message);
    try {
      const resp = await download(`models/${encodeURIComponent(m.id)}/content`);
      const blob = await resp.blob();
      const link = h('a', {href: URL.createObjectURL(blob), download: `${m.id.replaceAll(':', '_')}.tar`, hidden: true});
      document.body.append(link);
      link.click();
      setTimeout(() => { URL.revokeObjectURL(link.href); link.remove(); }, 1000);
    } catch (err) {
      message.append(errorBox(err));
    } finally {
      button.disabled = false;
    }
  }

  async function remove(m) {
    if (!confirm(`Delete ${m.id}? It stops answering at once.`)) return;
    clear(message);
    try {
      await api(`models/${encodeURIComponent(m.id)}`, {method: 'DELETE'});
      refresh();
    } catch (err) {
      message.append(errorBox(err));
    }
  }

  refresh();
  return null;
}

export function playgroundPage(root, {params}) {
  const controller = new AbortController();
  const wanted = (params.get('models') || '').split(',').map((s) => s.trim()).filter(Boolean);
  const message = h('div', {class: 'message'});
  const base = h('select', {id: 'pg-base', name: 'base', 'aria-label': 'base model'}, h('option', {value: ''}, '(no base model)'));
  const adapterInputs = [];
  for (let i = 0; i < MAX_ADAPTERS; i++) {
    adapterInputs.push(h('input', {id: `pg-adapter-${i}`, name: `adapter-${i}`, list: 'pg-adapters', size: 44,
                                   placeholder: 'ft:… or ftckpt-…', 'aria-label': `adapter ${i + 1}`, autocomplete: 'off'}));
  }
  const adapters = h('datalist', {id: 'pg-adapters'});
  const system = h('textarea', {id: 'pg-system', rows: 2, placeholder: '(optional) system message'});
  const prompt = h('textarea', {id: 'pg-prompt', rows: 3, placeholder: 'Ask something…', required: true});
  const maxTokens = h('input', {id: 'pg-max-tokens', type: 'number', min: 1, max: 4096, value: 64});
  const temperature = h('input', {id: 'pg-temperature', type: 'number', min: 0, max: 2, step: 0.1, value: 0});
  const send = h('button', {type: 'submit', class: 'primary'}, 'Send');
  const stop = h('button', {type: 'button', disabled: true}, 'Stop');
  const columns = h('div', {class: 'answers'});
  let running = null;

  root.append(h('h1', {}, 'Playground'), adapters,
    h('p', {class: 'hint'}, 'The same prompt to a base model and up to three fine-tuned models or checkpoints, answers streamed side by side.'),
    message,
    h('form', {class: 'playground', onsubmit: (e) => { e.preventDefault(); ask(); }},
      h('div', {class: 'models-pick'}, h('label', {for: 'pg-base'}, 'Base model'), base,
        adapterInputs.map((input, i) => [h('label', {for: input.id}, `Adapter ${i + 1}`), input])),
      h('label', {for: 'pg-system'}, 'System'), system,
      h('label', {for: 'pg-prompt'}, 'Prompt'), prompt,
      h('div', {class: 'row'}, h('label', {for: 'pg-max-tokens'}, 'max_tokens'), maxTokens,
        h('label', {for: 'pg-temperature'}, 'temperature'), temperature, send, stop)),
    columns);

  stop.addEventListener('click', () => running?.abort());

  (async () => {
    try {
      const list = await api('v1/models', {signal: controller.signal});
      const bases = list.data.filter((m) => m.kind === 'base');
      for (const m of bases) base.append(h('option', {value: m.id}, m.id));
      for (const m of list.data.filter((m) => m.kind === 'adapter')) adapters.append(h('option', {value: m.id}, m.parent || ''));
      const baseWanted = wanted.filter((id) => bases.some((b) => b.id === id));
      const others = wanted.filter((id) => !baseWanted.includes(id)).slice(0, MAX_ADAPTERS);
      others.forEach((id, i) => { adapterInputs[i].value = id; });
      // The base of the first adapter asked for (or the only base model), so that its answer is beside it.
      const parent = others.length ? list.data.find((m) => m.id === others[0])?.parent : null;
      base.value = baseWanted[0] || parent || (bases.length === 1 ? bases[0].id : '');
      if (!base.value && others[0]?.startsWith('ft:')) base.value = others[0].split(':')[1] || '';
    } catch (err) {
      if (!controller.signal.aborted) message.append(errorBox(err));
    }
  })();

  async function ask() {
    clear(message);
    const models = [base.value, ...adapterInputs.map((i) => i.value.trim())].filter(Boolean);
    if (!models.length) { message.append(errorBox({message: 'Choose a base model or an adapter.'})); return; }
    if (!prompt.value.trim()) { message.append(errorBox({message: 'Write a prompt.'})); return; }
    running?.abort();
    running = new AbortController();
    const signal = running.signal;
    const messages = [...(system.value.trim() ? [{role: 'system', content: system.value}] : []),
                      {role: 'user', content: prompt.value}];
    clear(columns);
    send.disabled = true;
    stop.disabled = false;
    await Promise.all(models.map(async (model) => {
      const out = h('pre', {class: 'answer-text'});
      const state = h('div', {class: 'answer-state hint'}, 'waiting…');
      columns.append(h('div', {class: 'answer-column', dataset: {model}}, h('h3', {}, model), out, state));
      try {
        const finish = await streamChat({model, messages, max_tokens: Number(maxTokens.value) || 64,
                                         temperature: Number(temperature.value)},
                                        {signal, onDelta: (text) => { out.append(text); state.textContent = 'streaming…'; }});
        state.textContent = `finished: ${finish || 'stop'}`;
        state.dataset.done = 'true';
      } catch (err) {
        state.textContent = '';
        if (signal.aborted) { state.textContent = 'stopped'; return; }
        out.after(errorBox(err));
      }
    }));
    send.disabled = false;
    stop.disabled = true;
  }

  return () => { controller.abort(); running?.abort(); };
}
