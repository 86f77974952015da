// A job: its state and progress, live charts (the recorded series from GET /jobs/{id}/metrics, then every metrics
// event and live progress frame of its event stream), generated samples, checkpoints, the event log, and cancel.

import {api, followEvents} from './api.js';
import {LineChart} from './chart.js';
import {bar, clear, errorBox, fmtDuration, fmtMB, fmtNumber, fmtTime, h, statusBadge} from './dom.js';
import {etaText} from './jobs.js';

const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
const MAX_LOG = 1000;

export function jobPage(root, {args}) {
  const jobId = args[0];
  const controller = new AbortController();
  const signal = controller.signal;
  const timers = [];

  const message = h('div', {class: 'message'});
  const header = h('div', {class: 'job-header'});
  const progress = h('div', {class: 'job-progress'});
  const cancel = h('button', {type: 'button', class: 'danger', hidden: true}, 'Cancel job');
  const streamState = h('span', {class: 'stream-state hint'}, 'connecting');
  const canvases = {};
  const charts = {};
  const chartSpecs = [['loss', 'Loss'], ['lr', 'Learning rate'], ['tps', 'Tokens / s'], ['memory', 'Memory (MiB)']];
  for (const [name, title] of chartSpecs) {
    canvases[name] = h('canvas', {class: 'chart', dataset: {chart: name}, role: 'img', 'aria-label': title});
    charts[name] = new LineChart(canvases[name], {title});
  }
  const samples = h('div', {class: 'samples'}, h('p', {class: 'hint'},
    'None yet. With hyperparameters.eval_samples and validation data, each evaluation records greedy answers here.'));
  const checkpoints = h('div', {class: 'checkpoints'});
  const log = h('ol', {class: 'event-log', reversed: true});

  root.append(
    h('div', {class: 'title-row'}, h('h1', {}, 'Job ', h('span', {class: 'job-id'}, jobId)), cancel),
    message, header, progress,
    h('h2', {}, 'Charts ', streamState),
    h('div', {class: 'charts'}, Object.values(canvases)),
    h('h2', {}, 'Generated samples'), samples,
    h('h2', {}, 'Checkpoints'), checkpoints,
    h('h2', {}, 'Events'), log);

  let job = null;
  let maxAttempt = 0;

  cancel.addEventListener('click', async () => {
    if (!confirm(`Cancel ${jobId}?`)) return;
    cancel.disabled = true;
    try {
      showJob(await api(`jobs/${encodeURIComponent(jobId)}/cancel`, {method: 'POST'}));
    } catch (err) {
      clear(message).append(errorBox(err));
    } finally {
      cancel.disabled = false;
    }
  });

  function showJob(j) {
    job = j;
    cancel.hidden = TERMINAL.has(j.status) || j.cancel_requested;
    const facts = [
      ['status', statusBadge(j.status)], ['user', j.user], ['base model', j.base_model], ['stage', j.stage],
      ['method', j.method?.type], ['fine-tuned model', j.fine_tuned_model], ['created', fmtTime(j.created_at)],
      ['started', fmtTime(j.started_at)], ['finished', fmtTime(j.finished_at)],
      ['queue position', j.status === 'queued' ? j.queue_position : null], ['attempt', j.attempt || null],
      ['training file', j.training_file], ['validation file', j.validation_file],
    ].filter(([, v]) => v !== null && v !== undefined && v !== '');
    clear(header).append(h('dl', {class: 'facts'}, facts.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])));
    if (j.fine_tuned_model) {
      header.append(h('p', {}, h('a', {class: 'button', href: `#/playground?models=${encodeURIComponent(j.fine_tuned_model)}`},
                                 'Chat with this model')));
    }
    if (j.cancel_requested && !TERMINAL.has(j.status)) header.append(h('p', {class: 'hint'}, 'Cancel requested…'));
    if (j.error) header.append(errorBox(j.error));
    showProgress(j.progress);
  }

  function showProgress(p) {
    clear(progress);
    if (!job) return;
    if (!p) {
      if (job.status === 'queued' || job.status === 'validating_files') progress.append(h('p', {class: 'hint'}, etaText(job) || 'Waiting to start.'));
      return;
    }
    const fraction = job.status === 'succeeded' ? 1 : (p.total_steps ? p.step / p.total_steps : 0);
    progress.append(bar(fraction, `step ${p.step ?? 0} / ${p.total_steps ?? '?'}`, 'progress wide'));
    const facts = [['loss', fmtNumber(p.loss)], ['validation loss', fmtNumber(p.valid_loss)],
                   ['learning rate', fmtNumber(p.learning_rate)], ['tokens/s', fmtNumber(p.tokens_per_second, 3)],
                   ['epoch', fmtNumber(p.epoch, 3)], ['ETA', job.status === 'running' ? fmtDuration(p.eta_seconds) : ''],
                   ['process RSS', fmtMB(p.process_rss_mb)]];
    for (const g of p.gpus || []) {
      facts.push([`GPU ${g.index}`, g.error ? g.error : `${fmtMB(g.process_memory_mb ?? g.memory_used_mb)} of ${fmtMB(g.memory_total_mb)}`]);
    }
    progress.append(h('dl', {class: 'facts'}, facts.filter(([, v]) => v).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])));
  }

  // --- charts ---------------------------------------------------------------------------------------------
  function plot(p, attempt) {
    const step = p.step;
    if (step === null || step === undefined) return;
    if (attempt && attempt < maxAttempt) return;  // an older attempt's report, replayed
    if (attempt && attempt > maxAttempt) {
      // A newer attempt resumed from a checkpoint: what the older one reported from there on was thrown away.
      if (maxAttempt) for (const chart of Object.values(charts)) chart.truncateFrom?.(step);
      maxAttempt = attempt;
    }
    charts.loss.set('training loss', step, p.loss);
    charts.loss.set('validation loss', step, p.valid_loss);
    charts.lr.set('learning rate', step, p.learning_rate);
    charts.tps.set('tokens/s', step, p.tokens_per_second);
    const gpus = Array.isArray(p.gpus) ? p.gpus : [];
    for (const g of gpus) {
      if (g && !g.error) charts.memory.set(`GPU ${g.index}${g.name ? ' ' + g.name : ''}`, step, g.process_memory_mb ?? g.memory_used_mb);
    }
    if (!gpus.length && p.gpu_memory_mb !== undefined) charts.memory.set('GPU (all devices)', step, p.gpu_memory_mb);
    charts.memory.set('process RSS', step, p.process_rss_mb);
  }

  async function loadMetrics() {
    let after;
    for (;;) {
      const page = await api(`jobs/${encodeURIComponent(jobId)}/metrics`, {params: {after_step: after, limit: 1000}, signal});
      for (const point of page.data) plot(point, point.attempt);
      if (!page.has_more || !page.data.length) break;
      after = page.data[page.data.length - 1].step;
    }
  }

  // --- checkpoints ----------------------------------------------------------------------------------------
  let checkpointList = [];
  async function loadCheckpoints() {
    try {
      const page = await api(`jobs/${encodeURIComponent(jobId)}/checkpoints`, {params: {limit: 100}, signal});
      checkpointList = page.data;
      clear(checkpoints);
      if (!page.data.length) { checkpoints.append(h('p', {class: 'hint'}, 'No checkpoint yet.')); return; }
      checkpoints.append(h('table', {},
        h('thead', {}, h('tr', {}, ['Step', 'Checkpoint', 'Train loss', 'Validation loss', 'Saved', ''].map((t) => h('th', {}, t)))),
        h('tbody', {}, page.data.map((c) => h('tr', {dataset: {checkpoint: c.id}},
          h('td', {}, c.step_number), h('td', {}, c.id), h('td', {}, fmtNumber(c.metrics?.train_loss)),
          h('td', {}, fmtNumber(c.metrics?.valid_loss)), h('td', {}, fmtTime(c.created_at)),
          h('td', {}, h('a', {class: 'chat-link', href: `#/playground?models=${encodeURIComponent(c.id)}`},
                        'chat with this checkpoint')))))));
      renderSamples();
    } catch (err) {
      if (!signal.aborted) clear(checkpoints).append(errorBox(err));
    }
  }

  // --- generated samples (events of type eval_samples) ---------------------------------------------------
  const sampleSteps = new Map();  // step -> samples
  function renderSamples() {
    if (!sampleSteps.size) return;
    clear(samples);
    for (const step of [...sampleSteps.keys()].sort((a, b) => b - a)) {
      const checkpoint = checkpointList.find((c) => c.step_number === step);
      const group = h('details', {class: 'sample-step', open: step === Math.max(...sampleSteps.keys()), dataset: {step}},
        h('summary', {}, `Step ${step}`, checkpoint ? ` · checkpoint ${checkpoint.id}` : ''));
      for (const s of sampleSteps.get(step)) {
        group.append(h('div', {class: 'sample'},
          h('div', {class: 'prompt'}, h('h4', {}, 'Prompt'), h('pre', {}, s.prompt ?? '')),
          h('div', {class: 'side-by-side'},
            h('div', {class: 'reference'}, h('h4', {}, 'Reference'), h('pre', {}, s.reference ?? '')),
            h('div', {class: 'answer'}, h('h4', {}, 'Model answer'), h('pre', {}, s.answer ?? '')))));
      }
      samples.append(group);
    }
  }

  // --- events -------------------------------------------------------------------------------------------------
  const seen = new Set();
  function addEvent(e) {
    if (seen.has(e.id)) return;  // never shown twice
    seen.add(e.id);
    log.prepend(h('li', {class: `event level-${e.level} type-${e.type}`, dataset: {seq: e.seq, type: e.type}},
      h('time', {}, fmtTime(e.created_at)), h('span', {class: 'type'}, e.type), h('span', {class: 'text'}, e.message)));
    while (log.children.length > MAX_LOG) log.lastChild.remove();
    if (e.type === 'metrics' && e.data) plot(e.data, e.data.attempt);
    if (e.type === 'checkpoint') loadCheckpoints();
    if (e.type === 'state') refreshJob();
    if (e.type === 'eval_samples' && e.data && Array.isArray(e.data.samples)) {
      sampleSteps.set(e.data.step, e.data.samples);
      renderSamples();
    }
  }

  async function refreshJob() {
    try {
      showJob(await api(`jobs/${encodeURIComponent(jobId)}`, {signal}));
    } catch (err) {
      if (!signal.aborted) clear(message).append(errorBox(err));
    }
  }

  (async () => {
    try {
      showJob(await api(`jobs/${encodeURIComponent(jobId)}`, {signal}));
    } catch (err) {
      if (!signal.aborted) clear(message).append(errorBox(err));
      streamState.textContent = '';
      return;
    }
    loadCheckpoints();
    try { await loadMetrics(); } catch (err) { if (!signal.aborted) message.append(errorBox(err)); }
    timers.push(setInterval(() => { if (job && !TERMINAL.has(job.status)) refreshJob(); }, 5000));
    try {
      await followEvents(jobId, {
        signal,
        onEvent: addEvent,
        onProgress: (p) => { if (job) { job.progress = p; showProgress(p); } plot(p, p.attempt); },
        onDone: () => { refreshJob(); loadCheckpoints(); },
        onStatus: (text) => { streamState.textContent = text; },
      });
    } catch (err) {
      if (!signal.aborted) message.append(errorBox(err));
    }
  })();

  return () => { controller.abort(); timers.forEach(clearInterval); };
}
