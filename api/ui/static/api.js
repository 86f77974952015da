// The dashboard's only way to the service: the public API, with the signed-in key on every request.
// Every URL is relative to the page (`<prefix>/ui/`), so that it works under any sub-path of a reverse proxy.

const KEY_ITEM = 'tunequeue.api_key';

/** `<prefix>/`: the API beside the page at `<prefix>/ui/`. */
export const apiBase = new URL('../', location.href.split('#')[0]);

export function apiUrl(path, params = {}) {
  const url = new URL(path.replace(/^\/+/, ''), apiBase);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') url.searchParams.set(name, value);
  }
  return url;
}

export function getKey() { return sessionStorage.getItem(KEY_ITEM); }
export function setKey(key) { sessionStorage.setItem(KEY_ITEM, key); }
export function forgetKey() { sessionStorage.removeItem(KEY_ITEM); }

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || null;
    this.param = error.param || null;
    this.type = error.type || null;
  }
}

function authHeaders(extra = {}, key = getKey()) {
  return {...(key ? {Authorization: `Bearer ${key}`} : {}), ...extra};
}

async function errorOf(resp) {
  let body = null;
  try { body = await resp.json(); } catch { /* not JSON: a proxy's page */ }
  return new ApiError(resp.status, body);
}

/** JSON in, JSON out; an API error as ApiError with the API's message, code and param. */
export async function api(path, {method = 'GET', params, json, form, signal, key} = {}) {
  const init = {method, signal, headers: authHeaders({}, key ?? getKey()), cache: 'no-store'};
  if (json !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  const resp = await fetch(apiUrl(path, params), init);
  if (!resp.ok) {
    const err = await errorOf(resp);
    if (resp.status === 401 && key === undefined) window.dispatchEvent(new CustomEvent('tunequeue:unauthorized', {detail: err}));
    throw err;
  }
  if (resp.status === 204) return null;
  return resp.json();
}

export async function download(path) {
  const resp = await fetch(apiUrl(path), {headers: authHeaders(), cache: 'no-store'});
  if (!resp.ok) throw await errorOf(resp);
  return resp;
}

/** Split a text/event-stream body into frames: {id, event, data, retry}. Yields each complete frame. */
export async function* sseFrames(body, signal) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  try {
    while (true) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true}).replace(/\r\n?/g, '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const frame = {id: null, event: 'message', data: null, retry: null};
        const data = [];
        for (const line of block.split('\n')) {
          if (line === '' || line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          const val = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'id') frame.id = val;
          else if (field === 'event') frame.event = val;
          else if (field === 'data') data.push(val);
          else if (field === 'retry' && /^\d+$/.test(val)) frame.retry = Number(val);
        }
        if (data.length) frame.data = data.join('\n');
        if (frame.data !== null || frame.retry !== null) yield frame;
      }
    }
  } finally {
    if (!signal || !signal.aborted) reader.cancel().catch(() => {});
  }
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, {once: true});
});

/**
 * Follow a job's events over Server-Sent Events, read with fetch() (EventSource cannot send the key). After a drop
 * (or the server's 5-minute end) it reconnects with Last-Event-ID: the events after the last one it got, none twice.
 * Calls onEvent(event) for each job event (in seq order), onProgress(progress) for live progress frames, onDone(end)
 * once the job has ended, onStatus(text) with the connection's state; stops when `signal` aborts.
 */
export async function followEvents(jobId, {onEvent, onProgress, onDone, onStatus = () => {}, signal}) {
  let lastId = null;
  let retryMs = 2000;
  while (!signal.aborted) {
    let resp;
    try {
      const headers = authHeaders({Accept: 'text/event-stream', ...(lastId !== null ? {'Last-Event-ID': lastId} : {})});
      resp = await fetch(apiUrl(`jobs/${encodeURIComponent(jobId)}/events`, {stream: 'true'}),
                         {headers, signal, cache: 'no-store'});
    } catch (err) {
      if (signal.aborted) return;
      onStatus(`disconnected (${err.message}); reconnecting`);
      await sleep(retryMs, signal);
      continue;
    }
    if (resp.status === 204) { onStatus('ended'); onDone?.(null); return; }
    if (!resp.ok) {
      const err = await errorOf(resp);
      if (resp.status === 429 || resp.status >= 500) {
        onStatus(`${err.message}; retrying`);
        await sleep(1000 * Number(resp.headers.get('Retry-After') || retryMs / 1000), signal);
        continue;
      }
      onStatus(err.message);
      throw err;
    }
    onStatus('live');
    try {
      for await (const frame of sseFrames(resp.body, signal)) {
        if (frame.retry !== null) retryMs = frame.retry;
        if (frame.data === null) continue;
        const data = JSON.parse(frame.data);
        if (frame.event === 'done') { onStatus('ended'); onDone?.(data); return; }
        if (frame.event === 'progress') onProgress?.(data);
        else if (frame.event === 'error') { onStatus(data.error?.message || 'error'); throw new ApiError(401, data); }
        else {
          onEvent?.(data);
          if (frame.id !== null) lastId = frame.id;
        }
      }
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError) throw err;
      onStatus(`disconnected (${err.message}); reconnecting`);
    }
    if (signal.aborted) return;
    onStatus('reconnecting');
    await sleep(retryMs, signal);
  }
}

/** Stream a chat completion: calls onDelta(text) for each piece; resolves with the finish reason. */
export async function streamChat(body, {onDelta, signal}) {
  const resp = await fetch(apiUrl('v1/chat/completions'), {
    method: 'POST', signal, cache: 'no-store',
    headers: authHeaders({'Content-Type': 'application/json', Accept: 'text/event-stream'}),
    body: JSON.stringify({...body, stream: true}),
  });
  if (!resp.ok) throw await errorOf(resp);
  let finish = null;
  for await (const frame of sseFrames(resp.body, signal)) {
    if (frame.data === null) continue;
    if (frame.data.trim() === '[DONE]') break;
    const chunk = JSON.parse(frame.data);
    if (chunk.error) throw new ApiError(500, chunk);
    for (const choice of chunk.choices || []) {
      if (choice.delta?.content) onDelta(choice.delta.content);
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  return finish;
}
