// zfarm dashboard: the farm summary over Server-Sent Events (/v1/farm/events),
// a job's page (#/jobs/<id>, live over /v1/jobs/<id>/events) and a submit
// form. No framework, no external assets. Every string from the farm is put
// into the page with textContent (never as markup). A bearer token, when the
// farm asks for one (401), is kept in sessionStorage and sent on every call;
// event streams are read with fetch() so they carry it too.
'use strict';

const TOKEN_KEY = 'zfarm-token';
const thumbs = new Map();  // job id -> object URL of its thumbnail (fetched once)
let farmAbort = null;
let jobAbort = null;
let currentJob = null;

function $(id) { return document.getElementById(id); }

// A new element with text (never markup) and attributes.
function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

function shortState(s) {
  return String(s || '').replace(/^JOB_STATE_|^WORKER_STATE_/, '').toLowerCase();
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) h['Authorization'] = 'Bearer ' + token;
  return h;
}

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// fetch() with the token; a 401 shows the token form and throws.
async function api(path, opts) {
  const o = Object.assign({}, opts || {});
  o.headers = headers(o.headers);
  const res = await fetch(path, o);
  if (res.status === 401) {
    askToken();
    throw new HttpError(401, 'a token is needed');
  }
  if (!res.ok) {
    let msg = res.status + ' ' + res.statusText;
    try { const j = await res.json(); msg = (j.code ? j.code + ': ' : '') + (j.message || msg); } catch (e) { /* not JSON */ }
    throw new HttpError(res.status, msg);
  }
  return res;
}

function askToken() {
  $('token-box').hidden = false;
  $('token-input').focus();
}

// Reads a text/event-stream with fetch(); calls onEvent(name, data) per event.
async function readEvents(path, signal, onEvent) {
  const res = await api(path, { signal });
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let name = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event: ')) name = line.slice(7);
        else if (line.startsWith('data: ')) data.push(line.slice(6));
      }
      if (data.length) onEvent(name, data.join('\n'));
    }
  }
}

function setLive(state, text) {
  const live = $('live');
  live.dataset.live = state;
  live.textContent = text;
}

// --- the farm view -----------------------------------------------------------

async function watchFarm() {
  if (farmAbort) return;
  farmAbort = new AbortController();
  const signal = farmAbort.signal;
  while (!signal.aborted) {
    try {
      await readEvents('/v1/farm/events', signal, (name, data) => {
        if (name === 'farm') {
          setLive('live', 'live');
          renderFarm(JSON.parse(data));
        } else if (name === 'error') {
          setLive('error', JSON.parse(data).message || 'error');
        }
      });
    } catch (e) {
      if (signal.aborted) break;
      setLive('error', e.status === 401 ? 'token needed' : 'disconnected');
      if (e.status === 401) { farmAbort = null; return; }
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function renderFarm(s) {
  const q = s.queue || {};
  const by = q.by_state || {};
  $('q-queued').textContent = by.queued || 0;
  $('q-assigned').textContent = by.assigned || 0;
  $('q-running').textContent = by.running || 0;
  const prio = $('q-priorities');
  clear(prio);
  for (const p of q.by_priority || []) {
    const tr = el('tr');
    for (const v of [p.priority, p.queued, p.assigned, p.running]) tr.appendChild(el('td', v));
    prio.appendChild(tr);
  }
  if (!(q.by_priority || []).length) {
    prio.appendChild(el('tr')).appendChild(el('td', 'queue empty', { colspan: '4', class: 'muted' }));
  }

  const workers = $('workers');
  clear(workers);
  for (const w of s.workers || []) {
    const tr = el('tr', null, { 'data-worker': w.worker_name });
    tr.appendChild(el('td', w.worker_name));
    tr.appendChild(el('td', w.device_name ? w.device + ' (' + w.device_name + ')' : w.device));
    tr.appendChild(el('td')).appendChild(el('span', w.state, { class: 'state', 'data-state': w.state }));
    const cur = el('td');
    for (const c of w.current_jobs || []) {
      const a = el('a', c.job_id, { href: '#/jobs/' + encodeURIComponent(c.job_id) });
      cur.appendChild(a);
      if (c.total_steps) cur.appendChild(el('span', ' step ' + c.step + '/' + c.total_steps, { class: 'muted' }));
      cur.appendChild(el('br'));
    }
    tr.appendChild(cur);
    tr.appendChild(el('td', w.jobs_done || 0));
    tr.appendChild(el('td', w.jobs_failed || 0));
    tr.appendChild(el('td', w.last_seen_time || ''));
    workers.appendChild(tr);
  }
  if (!(s.workers || []).length) {
    workers.appendChild(el('tr')).appendChild(el('td', 'no workers', { colspan: '7', class: 'muted' }));
  }

  const jobs = $('jobs');
  clear(jobs);
  for (const j of s.recent_jobs || []) jobs.appendChild(jobCard(j));
  if (!(s.recent_jobs || []).length) jobs.appendChild(el('p', 'no jobs yet', { class: 'muted' }));
}

function jobCard(j) {
  const state = shortState(j.state);
  const a = el('a', null, { class: 'job', href: '#/jobs/' + encodeURIComponent(j.job_id),
                            'data-job': j.job_id, 'data-state': state });
  const thumb = el('div', null, { class: 'thumb' });
  a.appendChild(thumb);
  if (state === 'succeeded') {
    loadThumb(j.job_id, thumb);
  } else {
    const p = j.progress || {};
    thumb.textContent = state === 'running' && p.total_steps ? 'step ' + (p.step || 0) + '/' + p.total_steps : state;
  }
  const info = el('div', null, { class: 'info' });
  info.appendChild(el('span', state, { class: 'state', 'data-state': state }));
  info.appendChild(el('div', (j.spec || {}).prompt || '', { class: 'prompt' }));
  info.appendChild(el('div', j.job_id, { class: 'muted' }));
  a.appendChild(info);
  return a;
}

async function loadThumb(id, box) {
  let url = thumbs.get(id);
  if (!url) {
    try {
      const res = await api('/v1/jobs/' + encodeURIComponent(id) + '/thumbnail');
      url = URL.createObjectURL(await res.blob());
      thumbs.set(id, url);
    } catch (e) {
      box.textContent = 'no picture';
      return;
    }
  }
  clear(box);
  box.appendChild(el('img', null, { src: url, alt: 'thumbnail of ' + id }));
}

async function submitForm(ev) {
  ev.preventDefault();
  const out = $('submit-result');
  out.className = 'message';
  out.textContent = 'submitting...';
  const spec = { prompt: $('f-prompt').value };
  if ($('f-negative').value) spec.negative_prompt = $('f-negative').value;
  for (const [id, key] of [['f-width', 'width_px'], ['f-height', 'height_px'], ['f-steps', 'steps'], ['f-priority', 'priority']]) {
    if ($(id).value !== '') spec[key] = Number($(id).value);
  }
  if ($('f-seed').value !== '') spec.seed = String($('f-seed').value);
  const requestId = 'dashboard-' + Date.now().toString(36) + '-' + Math.random().toString(36).slice(2, 10);
  try {
    const res = await api('/v1/jobs', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ request_id: requestId, spec }),
    });
    const j = await res.json();
    clear(out);
    out.appendChild(document.createTextNode('queued '));
    out.appendChild(el('a', j.job.job_id, { href: '#/jobs/' + encodeURIComponent(j.job.job_id), id: 'submitted-job' }));
  } catch (e) {
    out.className = 'message error';
    out.textContent = e.message;
  }
}

// --- a job's page ------------------------------------------------------------

function param(rows, name, value) {
  if (value === undefined || value === null || value === '') return;
  const tr = el('tr');
  tr.appendChild(el('td', name));
  tr.appendChild(el('td', typeof value === 'object' ? JSON.stringify(value) : value, { 'data-param': name }));
  rows.appendChild(tr);
}

function renderJob(job) {
  const spec = job.spec || {};
  const state = shortState(job.state);
  $('job-title').textContent = job.job_id + ' \u2014 ' + state;
  const rows = $('job-params');
  clear(rows);
  param(rows, 'state', state);
  param(rows, 'prompt', spec.prompt);
  param(rows, 'negative prompt', spec.negative_prompt);
  param(rows, 'seed', spec.seed);
  param(rows, 'size', (spec.width_px || '?') + 'x' + (spec.height_px || '?'));
  param(rows, 'steps', spec.steps);
  param(rows, 'guidance', spec.guidance_scale);
  param(rows, 'model', spec.model);
  param(rows, 'priority', spec.priority);
  param(rows, 'labels', spec.labels);
  param(rows, 'owner', job.owner);
  param(rows, 'worker', job.worker);
  if (job.progress && job.progress.total_steps) param(rows, 'progress', (job.progress.step || 0) + '/' + job.progress.total_steps);
  param(rows, 'created', job.create_time);
  param(rows, 'finished', job.end_time);
  if (job.result) {
    param(rows, 'file', job.result.path);
    param(rows, 'sha256', job.result.sha256);
    param(rows, 'device', job.result.device_class);
    param(rows, 'render time', job.result.render_time_ms ? job.result.render_time_ms + ' ms' : '');
  }
  if (job.error) param(rows, 'error', (job.error.reason || '') + ': ' + (job.error.message || ''));
  if (state === 'succeeded' && currentJob && !currentJob.loaded) {
    currentJob.loaded = true;
    loadResult(job);
  }
}

async function loadResult(job) {
  const id = job.job_id;
  try {
    const res = await api('/v1/jobs/' + encodeURIComponent(id) + '/image');
    const blob = await res.blob();
    const url = URL.createObjectURL(blob);
    $('job-image').src = url;
    const button = $('job-download');
    button.disabled = false;
    button.onclick = () => {
      const a = el('a', null, { href: url, download: (job.result.path || id).split('/').pop() });
      document.body.appendChild(a);
      a.click();
      a.remove();
    };
  } catch (e) {
    $('job-metadata').textContent = e.message;
    return;
  }
  try {
    const res = await api('/v1/jobs/' + encodeURIComponent(id) + '/metadata');
    const m = await res.json();
    const lines = Object.entries(m.text || {}).map(([k, v]) => k + ': ' + v);
    $('job-metadata').textContent = lines.length ? lines.join('\n\n') : '(none)';
  } catch (e) {
    $('job-metadata').textContent = e.message;
  }
}

async function showJob(id) {
  if (jobAbort) jobAbort.abort();
  jobAbort = new AbortController();
  const signal = jobAbort.signal;
  currentJob = { id, loaded: false };
  $('job-title').textContent = id;
  clear($('job-params'));
  $('job-metadata').textContent = '';
  $('job-image').removeAttribute('src');
  $('job-download').disabled = true;
  try {
    await readEvents('/v1/jobs/' + encodeURIComponent(id) + '/events', signal, (name, data) => {
      if (name === 'error') { $('job-metadata').textContent = JSON.parse(data).message; return; }
      renderJob(JSON.parse(data).job);
    });
  } catch (e) {
    if (!signal.aborted) $('job-title').textContent = id + ' \u2014 ' + e.message;
  }
}

// --- routing -----------------------------------------------------------------

function route() {
  const m = location.hash.match(/^#\/jobs\/(.+)$/);
  $('farm-view').hidden = !!m;
  $('job-view').hidden = !m;
  if (m) {
    showJob(decodeURIComponent(m[1]));
  } else {
    if (jobAbort) { jobAbort.abort(); jobAbort = null; }
    watchFarm();
  }
}

document.addEventListener('DOMContentLoaded', () => {
  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('token-input').value.trim());
    $('token-input').value = '';
    $('token-box').hidden = true;
    if (farmAbort) { farmAbort.abort(); farmAbort = null; }
    route();
  });
  $('submit-form').addEventListener('submit', submitForm);
  window.addEventListener('hashchange', route);
  route();
});
