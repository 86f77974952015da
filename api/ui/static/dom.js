// DOM helpers. Text from the API always goes in as text nodes (textContent), never as HTML.

/** h('div', {class: 'x', onclick: f, dataset: {a: 1}}, 'text', child, [more]) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') el.addEventListener(name.slice(2), value);
    else if (name === 'class') el.className = value;
    else if (name === 'dataset') Object.assign(el.dataset, value);
    else if (name === 'style') Object.assign(el.style, value);
    else if (name in el && typeof value !== 'string') el[name] = value;
    else el.setAttribute(name, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function fmtTime(unix) {
  if (unix === null || unix === undefined) return '';
  return new Date(unix * 1000).toLocaleString();
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return '';
  seconds = Math.max(0, Math.round(seconds));
  const hours = Math.floor(seconds / 3600), minutes = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  if (hours) return `${hours}h ${String(minutes).padStart(2, '0')}m`;
  if (minutes) return `${minutes}m ${String(s).padStart(2, '0')}s`;
  return `${s}s`;
}

export function fmtNumber(value, digits = 4) {
  if (value === null || value === undefined || value === '') return '';
  if (typeof value !== 'number') return String(value);
  if (Number.isInteger(value)) return value.toLocaleString();
  if (Math.abs(value) !== 0 && (Math.abs(value) < 1e-3 || Math.abs(value) >= 1e6)) return value.toExponential(2);
  return Number(value.toPrecision(digits)).toString();
}

export function fmtMB(mb) {
  if (mb === null || mb === undefined) return '';
  return mb >= 1024 ? `${(mb / 1024).toFixed(1)} GiB` : `${Math.round(mb)} MiB`;
}

/** A bar of `fraction` (0..1) with a label; `role=progressbar` for assistive tools and tests. */
export function bar(fraction, label, cls = '') {
  const pct = Math.max(0, Math.min(1, fraction || 0)) * 100;
  const fill = h('span', {class: 'fill'});
  fill.style.width = `${pct.toFixed(1)}%`;
  return h('span', {class: `bar ${cls}`, role: 'progressbar', 'aria-valuenow': pct.toFixed(0),
                    'aria-valuemin': '0', 'aria-valuemax': '100'}, fill, h('span', {class: 'label'}, label));
}

export function statusBadge(status) {
  return h('span', {class: `status status-${status}`}, status);
}

export function errorBox(err) {
  const box = h('div', {class: 'error', role: 'alert'}, err.message || String(err));
  if (err.code || err.param) box.append(h('span', {class: 'code'}, [err.code, err.param].filter(Boolean).join(' · ')));
  return box;
}
