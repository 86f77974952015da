// New job: upload a dataset (its validation result, with line-numbered errors, and a preview of the tokens that
// train), then a form made from the job spec's JSON schema (GET /openapi.json), submitted to POST /jobs.

import {api} from './api.js';
import {clear, errorBox, h, statusBadge} from './dom.js';
import {deref, schemaForm} from './schemaform.js';

let schemaCache = null;

async function jobSpecSchema() {
  if (!schemaCache) {
    const openapi = await api('openapi.json');
    const body = openapi.paths['/jobs'].post.requestBody.content['application/json'].schema;
    schemaCache = {schema: deref(body, openapi), root: openapi};
  }
  return schemaCache;
}

export function newJobPage(root) {
  const controller = new AbortController();
  const signal = controller.signal;
  const uploadResult = h('div', {class: 'upload-result'});
  const fileInput = h('input', {type: 'file', id: 'upload-file', name: 'file', accept: '.jsonl,.json,.csv,.tsv,.parquet,.txt'});
  const uploadButton = h('button', {type: 'submit'}, 'Upload and check');
  const formMessage = h('div', {class: 'message'});
  const formHolder = h('div', {class: 'spec-form'}, h('p', {class: 'hint'}, 'Loading the job spec’s schema…'));
  const submit = h('button', {type: 'submit', class: 'primary'}, 'Start job');
  const models = h('datalist', {id: 'base-models'});
  const files = h('datalist', {id: 'processed-files'});
  let form = null;

  root.append(
    h('h1', {}, 'New job'),
    models, files,
    h('section', {class: 'card'},
      h('h2', {}, '1. Dataset'),
      h('p', {class: 'hint'}, 'JSON Lines (chat messages, prompt/completion, preference pairs…; docs/datasets.md). ',
        'Every row is checked; errors name their line.'),
      h('form', {class: 'upload', onsubmit: (e) => { e.preventDefault(); upload(); }}, fileInput, uploadButton),
      uploadResult),
    h('section', {class: 'card'},
      h('h2', {}, '2. Job spec'),
      h('p', {class: 'hint'}, 'Fields left empty take their defaults (shown beside each). Only what you set is sent.'),
      h('form', {id: 'job-form', onsubmit: (e) => { e.preventDefault(); create(); }}, formHolder, formMessage, submit)));

  (async () => {
    try {
      const {schema, root: openapi} = await jobSpecSchema();
      form = schemaForm(schema, openapi, {hints: {base_model: 'base-models', training_file: 'processed-files',
                                                  validation_file: 'processed-files'}});
      clear(formHolder).append(form.element);
    } catch (err) {
      clear(formHolder).append(errorBox(err));
    }
    try {
      const [modelList, fileList] = await Promise.all([api('v1/models', {signal}), api('files', {params: {limit: 100}, signal})]);
      for (const m of modelList.data.filter((m) => m.kind === 'base')) models.append(h('option', {value: m.id}));
      for (const f of fileList.data.filter((f) => f.status === 'processed')) {
        files.append(h('option', {value: f.id}, `${f.filename} (${f.row_count} rows)`));
      }
      const base = form?.fields.get('base_model');
      if (base && !base.input.value && models.options.length === 1) base.setValue(models.options[0].value);
    } catch (err) {
      if (!signal.aborted) formMessage.append(errorBox(err));
    }
  })();

  async function upload() {
    const file = fileInput.files[0];
    clear(uploadResult);
    if (!file) { uploadResult.append(errorBox({message: 'Choose a file first.'})); return; }
    uploadButton.disabled = true;
    uploadResult.append(h('p', {class: 'hint'}, `Uploading ${file.name}…`));
    const body = new FormData();
    body.append('purpose', 'fine-tune');
    body.append('file', file, file.name);
    try {
      const result = await api('files', {method: 'POST', form: body});
      showUpload(result);
    } catch (err) {
      clear(uploadResult).append(errorBox(err));
    } finally {
      uploadButton.disabled = false;
    }
  }

  function showUpload(f) {
    clear(uploadResult);
    uploadResult.dataset.status = f.status;
    uploadResult.append(h('p', {class: 'file-summary'}, statusBadge(f.status), ' ', h('strong', {}, f.filename), ` · ${f.id}`,
      f.format ? ` · format ${f.format}` : '', ` · ${f.row_count} rows`,
      f.stages?.length ? ` · trains ${f.stages.join(', ')}` : ''));
    if (f.status === 'error') {
      uploadResult.append(h('p', {}, 'The file cannot be used as it is. Fix these rows and upload it again:'),
        h('table', {class: 'file-errors'},
          h('thead', {}, h('tr', {}, h('th', {}, 'Line'), h('th', {}, 'Field'), h('th', {}, 'Problem'))),
          h('tbody', {}, (f.errors || []).map((e) => h('tr', {dataset: {line: e.line}},
            h('td', {class: 'line'}, e.line ? String(e.line) : 'file'), h('td', {}, e.field || ''), h('td', {}, e.message))))));
      return;
    }
    const training = form?.fields.get('training_file');
    const validation = form?.fields.get('validation_file');
    uploadResult.append(h('p', {},
      h('button', {type: 'button', onclick: () => training?.setValue(f.id)}, 'Use as training file'), ' ',
      h('button', {type: 'button', onclick: () => validation?.setValue(f.id)}, 'Use as validation file')));
    if (training && !training.input.value) training.setValue(f.id);
    files.append(h('option', {value: f.id}, f.filename));
    preview(f);
  }

  async function preview(f) {
    const holder = h('div', {class: 'preview'}, h('p', {class: 'hint'}, 'Loading the preview…'));
    uploadResult.append(holder);
    const base = form?.fields.get('base_model')?.input.value.trim();
    try {
      const p = await api(`files/${encodeURIComponent(f.id)}/preview`, {params: {limit: 3, base_model: base}, signal});
      clear(holder).append(h('h3', {}, 'Preview: what trains'),
        h('p', {class: 'hint'}, `The first rows as the ${p.stage} trainer sees them, rendered with ${p.template || 'the tokenizer’s own'} `,
          `template of ${p.base_model}: `, h('span', {class: 'trained'}, 'highlighted tokens'), ' carry the loss; the rest is context.'));
      for (const row of p.data) {
        const block = h('div', {class: 'preview-row', dataset: {line: row.line}}, h('div', {class: 'meta'}, `line ${row.line}`));
        if (row.error) block.append(errorBox({message: row.error}));
        for (const seq of row.sequences) {
          block.append(h('div', {class: 'meta'}, `${seq.name}: ${seq.tokens} tokens, ${seq.trained_tokens} trained`),
            h('pre', {class: 'tokens'}, seq.segments.map((s) => h('span', {class: s.trained ? 'trained' : 'context'}, s.text))));
        }
        holder.append(block);
      }
    } catch (err) {
      if (!signal.aborted) clear(holder).append(errorBox(err));
    }
  }

  async function create() {
    if (!form) return;
    clear(formMessage);
    for (const field of form.fields.values()) field.setError(null);
    let body;
    try {
      body = form.collect();
    } catch (err) {
      formMessage.append(errorBox({message: `A field does not hold valid JSON: ${err.message}`}));
      return;
    }
    submit.disabled = true;
    try {
      const job = await api('jobs', {method: 'POST', json: body});
      location.hash = `#/job/${encodeURIComponent(job.id)}`;
    } catch (err) {
      const field = err.param && form.fields.get(err.param);
      if (field) {
        for (let el = field.element.closest('details'); el; el = el.parentElement?.closest('details')) el.open = true;
        field.setError(err.message);
        field.input.focus();
      }
      formMessage.append(errorBox(err));
    } finally {
      submit.disabled = false;
    }
  }

  return () => controller.abort();
}
