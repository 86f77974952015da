// A small line chart on <canvas>: several series of (x, y) points, linear axes with round ticks, a legend, and a
// readout of the nearest points under the pointer. Enough for training curves; no dependency.

const PALETTE = ['#2563eb', '#dc2626', '#059669', '#d97706', '#7c3aed', '#db2777', '#0891b2', '#65a30d'];

/** Round tick values covering [lo, hi]: steps of 1, 2 or 5 × 10^k. */
export function niceTicks(lo, hi, count = 5) {
  if (!isFinite(lo) || !isFinite(hi)) return [];
  if (lo === hi) { const pad = Math.abs(lo) * 0.1 || 1; lo -= pad; hi += pad; }
  const raw = (hi - lo) / Math.max(1, count);
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) ?? 10 * magnitude;
  const ticks = [];
  const first = Math.floor(lo / step), last = Math.ceil(hi / step);  // the ticks enclose every value
  for (let i = first; i <= last; i++) ticks.push(Number((i * step).toPrecision(12)));
  return ticks;
}

function label(v) {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(1);
  return Number(v.toPrecision(4)).toString();
}

export class LineChart {
  /** @param {HTMLCanvasElement} canvas  @param {{title: string, xLabel?: string}} options */
  constructor(canvas, {title, xLabel = 'step'} = {}) {
    this.canvas = canvas;
    this.title = title;
    this.xLabel = xLabel;
    this.series = new Map();  // name -> {color, points: Map(x -> y)}
    this.hover = null;
    canvas.addEventListener('mousemove', (e) => { this.hover = this.toDataX(e.offsetX); this.draw(); });
    canvas.addEventListener('mouseleave', () => { this.hover = null; this.draw(); });
    this.resize = new ResizeObserver(() => this.draw());
    this.resize.observe(canvas);
  }

  /** Set y at x in a series (made on first use); a later value for the same x replaces the earlier one. */
  set(name, x, y) {
    if (x === null || x === undefined || y === null || y === undefined || !isFinite(y)) return;
    let s = this.series.get(name);
    if (!s) {
      s = {color: PALETTE[this.series.size % PALETTE.length], points: new Map()};
      this.series.set(name, s);
    }
    s.points.set(x, y);
    this.scheduleDraw();
  }

  pointCount() {
    let n = 0;
    for (const s of this.series.values()) n += s.points.size;
    return n;
  }

  scheduleDraw() {
    if (this.pending) return;
    this.pending = requestAnimationFrame(() => { this.pending = null; this.draw(); });
  }

  sorted(s) { return [...s.points.entries()].sort((a, b) => a[0] - b[0]); }

  bounds() {
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (const s of this.series.values()) {
      for (const [x, y] of s.points) {
        x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
      }
    }
    return {x0, x1, y0, y1};
  }

  toDataX(px) {
    if (!this.frame) return null;
    const {left, width, x0, x1} = this.frame;
    return x0 + ((px - left) / width) * (x1 - x0);
  }

  draw() {
    const canvas = this.canvas;
    canvas.dataset.points = String(this.pointCount());
    canvas.dataset.series = [...this.series].map(([name, s]) => `${name}=${s.points.size}`).join(';');
    const cssWidth = canvas.clientWidth || 480, cssHeight = canvas.clientHeight || 240;
    const ratio = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(cssWidth * ratio) || canvas.height !== Math.round(cssHeight * ratio)) {
      canvas.width = Math.round(cssWidth * ratio);
      canvas.height = Math.round(cssHeight * ratio);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, cssWidth, cssHeight);
    ctx.font = '12px system-ui, sans-serif';
    ctx.fillStyle = '#111827';
    ctx.textBaseline = 'alphabetic';
    ctx.fillText(this.title, 8, 16);

    const b = this.bounds();
    if (!isFinite(b.x0)) {
      ctx.fillStyle = '#6b7280';
      ctx.fillText('no points yet', cssWidth / 2 - 36, cssHeight / 2);
      this.frame = null;
      return;
    }
    const yTicks = niceTicks(b.y0, b.y1, 4);
    const xTicks = niceTicks(b.x0, b.x1, 6).filter((t) => Number.isInteger(t) || b.x1 - b.x0 < 6);
    const y0 = yTicks[0], y1 = yTicks[yTicks.length - 1];
    const x0 = b.x0 === b.x1 ? b.x0 - 1 : b.x0, x1 = b.x0 === b.x1 ? b.x1 + 1 : b.x1;
    const left = 8 + Math.max(...yTicks.map((t) => ctx.measureText(label(t)).width)) + 6;
    const top = 40, right = cssWidth - 12, bottom = cssHeight - 30;
    const width = right - left, height = bottom - top;
    this.frame = {left, width, x0, x1};
    const px = (x) => left + ((x - x0) / (x1 - x0)) * width;
    const py = (y) => bottom - ((y - y0) / (y1 - y0 || 1)) * height;

    ctx.strokeStyle = '#e5e7eb';
    ctx.lineWidth = 1;
    ctx.fillStyle = '#6b7280';
    for (const t of yTicks) {
      ctx.beginPath(); ctx.moveTo(left, py(t)); ctx.lineTo(right, py(t)); ctx.stroke();
      ctx.fillText(label(t), 8, py(t) + 4);
    }
    for (const t of xTicks) {
      if (t < x0 || t > x1) continue;
      const w = ctx.measureText(label(t)).width;
      ctx.fillText(label(t), px(t) - w / 2, bottom + 14);
    }
    ctx.fillText(this.xLabel, right - ctx.measureText(this.xLabel).width, bottom + 26);

    // legend
    let lx = left;
    for (const [name, s] of this.series) {
      ctx.fillStyle = s.color;
      ctx.fillRect(lx, 24, 10, 10);
      ctx.fillStyle = '#374151';
      ctx.fillText(name, lx + 14, 33);
      lx += 14 + ctx.measureText(name).width + 14;
    }

    for (const s of this.series.values()) {
      const points = this.sorted(s);
      ctx.strokeStyle = s.color;
      ctx.fillStyle = s.color;
      ctx.lineWidth = 1.6;
      ctx.beginPath();
      points.forEach(([x, y], i) => (i ? ctx.lineTo(px(x), py(y)) : ctx.moveTo(px(x), py(y))));
      ctx.stroke();
      if (points.length < 40) for (const [x, y] of points) { ctx.beginPath(); ctx.arc(px(x), py(y), 2.2, 0, 7); ctx.fill(); }
    }

    if (this.hover !== null && this.hover >= x0 && this.hover <= x1) {
      const lines = [];
      let hx = null;
      for (const [name, s] of this.series) {
        let best = null;
        for (const [x, y] of s.points) if (best === null || Math.abs(x - this.hover) < Math.abs(best[0] - this.hover)) best = [x, y];
        if (best) { lines.push(`${name}: ${label(best[1])} @ ${label(best[0])}`); hx = best[0]; }
      }
      if (hx !== null) {
        ctx.strokeStyle = '#9ca3af';
        ctx.beginPath(); ctx.moveTo(px(hx), top); ctx.lineTo(px(hx), bottom); ctx.stroke();
        const boxWidth = Math.max(...lines.map((l) => ctx.measureText(l).width)) + 12;
        const bx = Math.min(px(hx) + 8, right - boxWidth);
        ctx.fillStyle = 'rgba(255,255,255,0.92)';
        ctx.fillRect(bx, top + 4, boxWidth, lines.length * 15 + 6);
        ctx.fillStyle = '#111827';
        lines.forEach((l, i) => ctx.fillText(l, bx + 6, top + 18 + i * 15));
      }
    }
  }
}

/** Drop every point at or after x (a resumed attempt replaces what an older one reported from there on). */
LineChart.prototype.truncateFrom = function truncateFrom(x) {
  for (const s of this.series.values()) for (const key of [...s.points.keys()]) if (key >= x) s.points.delete(key);
  this.scheduleDraw();
};
