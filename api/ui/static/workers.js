// Workers: each device of every worker, its memory as a bar, and what it runs (GET /workers).

import {api} from './api.js';
import {bar, clear, errorBox, fmtMB, fmtNumber, h} from './dom.js';

export function workersPage(root) {
  const list = h('div', {class: 'workers'});
  const status = h('div', {class: 'message'});
  root.append(h('h1', {}, 'Workers'), h('p', {class: 'hint'},
    'Every device the workers registered. Busy devices show their job when it is your organization’s.'), status, list);

  async function refresh() {
    try {
      const page = await api('workers');
      clear(status);
      clear(list);
      if (!page.data.length) list.append(h('p', {class: 'empty'}, 'No worker has registered.'));
      for (const w of page.data) list.append(workerCard(w));
    } catch (err) {
      clear(status).append(errorBox(err));
    }
  }
  refresh();
  const timer = setInterval(refresh, 5000);
  return () => clearInterval(timer);
}

function workerCard(w) {
  const gpu = w.gpu;
  const device = w.device || {};
  const rows = [];
  let memory;
  if (gpu && !gpu.error && gpu.memory_total_mb) {
    memory = bar(gpu.memory_used_mb / gpu.memory_total_mb,
                 `${fmtMB(gpu.memory_used_mb)} / ${fmtMB(gpu.memory_total_mb)}`, 'memory');
    if (gpu.utilization_pct !== null && gpu.utilization_pct !== undefined) rows.push(['utilization', `${gpu.utilization_pct}%`]);
    if (gpu.temperature_c !== null && gpu.temperature_c !== undefined) rows.push(['temperature', `${gpu.temperature_c} °C`]);
    if (gpu.power_w !== null && gpu.power_w !== undefined) rows.push(['power', `${fmtNumber(gpu.power_w, 3)} W`]);
  } else if (device.memory_bytes) {
    const totalMb = device.memory_bytes / 1048576;
    const used = w.job?.process_rss_mb;
    memory = bar(used ? used / totalMb : 0, `${used ? fmtMB(used) + ' / ' : ''}${fmtMB(totalMb)} for jobs`, 'memory');
  }
  if (gpu?.error) rows.push(['error', gpu.error]);
  if (w.host_memory_available_mb !== null && w.host_memory_available_mb !== undefined) {
    rows.push(['host memory free', fmtMB(w.host_memory_available_mb)]);
  }
  if (device.kind) rows.push(['kind', device.kind]);
  if (device.pool) rows.push(['pool', device.pool]);
  if (device.compute_capability) rows.push(['compute capability', device.compute_capability]);
  const features = ['bf16', 'bitsandbytes', 'flash_attention'].filter((f) => device[f]);
  if (features.length) rows.push(['supports', features.join(', ')]);
  let running;
  if (w.job) {
    running = h('p', {}, 'Running ', h('a', {href: `#/job/${encodeURIComponent(w.job.id)}`}, w.job.id),
                w.job.attempt ? ` (attempt ${w.job.attempt})` : '');
  } else if (w.busy) {
    running = h('p', {}, 'Busy with another organization’s job.');
  } else {
    running = h('p', {class: 'idle'}, w.online ? 'Idle' : 'Offline');
  }
  return h('div', {class: `card worker ${w.online ? 'online' : 'offline'} ${w.busy ? 'busy' : ''}`, dataset: {id: w.id}},
    h('h2', {}, gpu?.name ? `${gpu.name}` : (device.name || (w.id.includes(':cpu') ? 'CPU' : 'device'))),
    h('div', {class: 'worker-id'}, w.id),
    memory || h('div', {class: 'hint'}, 'memory not reported'),
    running,
    h('dl', {}, rows.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])));
}
