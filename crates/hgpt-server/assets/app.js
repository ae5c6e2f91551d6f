// hgpt web UI: a chat over `POST /v1/runs`, the live task graph from
// `GET /v1/runs/{id}/events`, per-task details and the list of past runs.
// Plain ES2020, no framework, no build step. Everything that comes from the
// server (LLM text, model output, file names) is untrusted: it is only ever
// put into the page with textContent / attributes, never parsed as HTML.
'use strict';

// ---------------------------------------------------------------------------
// 1. DOM helpers and application state
// ---------------------------------------------------------------------------

const $ = (sel) => document.querySelector(sel);
const SVG_NS = 'http://www.w3.org/2000/svg';

/** Creates an HTML element; `text` sets textContent, `on*` adds listeners. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  for (const child of children) if (child != null && child !== false) node.append(child);
  return node;
}

/** Creates an SVG element with the given attributes. */
function svgEl(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (key === 'text') node.textContent = value;
    else if (key === 'class') node.setAttribute('class', value);
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
}

const TERMINAL = new Set(['succeeded', 'failed', 'cancelled', 'interrupted']);
const EVENT_TYPES = ['state', 'task_planned', 'planned', 'chat_fallback', 'selecting', 'model_chosen',
  'task_started', 'model_download', 'task_progress', 'task_finished', 'answer_started', 'answer_delta',
  'finished'];
// Task states in the order they can follow each other; a late event never moves a task back.
const TASK_RANK = { planned: 0, selecting: 1, chosen: 2, running: 3, done: 4, failed: 4, skipped: 4 };
const TASK_STATE_OF_STATUS = { ok: 'done', failed: 'failed', skipped: 'skipped' };

const app = {
  token: readToken(),
  history: [],       // the conversation sent as `messages`: [{role, content}]
  attachments: [],   // files attached to the next message
  run: null,         // the run shown in the run panel (see newRunView)
  busy: false,       // a run of this conversation is still going
  runsNext: null,    // cursor of the next page of past runs
};

function readToken() {
  try { return localStorage.getItem('hgpt.token') || ''; } catch { return ''; }
}

function toast(message) {
  const box = $('#toast');
  box.textContent = message;
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 6000);
}

// ---------------------------------------------------------------------------
// 2. API access: bearer token, 401 dialog, JSON errors, file URLs
// ---------------------------------------------------------------------------

/** Calls the API and returns the parsed JSON; throws an Error with the server's message. */
async function api(path, options = {}, attempt = 0) {
  const headers = new Headers(options.headers || {});
  if (app.token) headers.set('Authorization', `Bearer ${app.token}`);
  const res = await fetch(path, { ...options, headers });
  if (res.status === 401 && attempt < 3 && (await askToken())) return api(path, options, attempt + 1);
  if (!res.ok) throw new Error(await errorMessage(res));
  const type = res.headers.get('content-type') || '';
  return type.includes('json') ? res.json() : null;
}

async function errorMessage(res) {
  try {
    const body = await res.json();
    if (body && body.error && body.error.message) return String(body.error.message);
  } catch { /* not JSON */ }
  return `HTTP ${res.status} ${res.statusText}`.trim();
}

let tokenPrompt = null;
/** Asks for the API token once (concurrent 401s share the dialog); true when one was given. */
function askToken() {
  if (tokenPrompt) return tokenPrompt;
  tokenPrompt = new Promise((resolve) => {
    const dialog = $('#token-dialog');
    const input = $('#token-input');
    $('#token-refused').hidden = !app.token; // a stored token was just refused
    input.value = app.token;
    dialog.returnValue = '';
    dialog.addEventListener('close', () => {
      tokenPrompt = null;
      const token = input.value.trim();
      if (dialog.returnValue !== 'ok' || !token) return resolve(false);
      app.token = token;
      try { localStorage.setItem('hgpt.token', token); } catch { /* private mode */ }
      resolve(true);
    }, { once: true });
    dialog.showModal();
    input.focus();
  });
  return tokenPrompt;
}

/** Adds `access_token` for URLs the browser fetches itself (EventSource, img, audio). */
function withToken(url) {
  if (!app.token) return url;
  return `${url}${url.includes('?') ? '&' : '?'}access_token=${encodeURIComponent(app.token)}`;
}

/** `/srv/out/a b.png` -> `/files/srv/out/a%20b.png` (each segment encoded). */
function fileUrl(path) {
  const rel = String(path).replace(/^\/+/, '').split('/').map(encodeURIComponent).join('/');
  return withToken(`/files/${rel}`);
}

const IMAGE_EXT = /\.(png|jpe?g|webp|gif|bmp)$/i;
const AUDIO_EXT = /\.(wav|mp3|flac|ogg|m4a)$/i;
const VIDEO_EXT = /\.(mp4|webm)$/i;
// A local media path inside free text: starts with '/', ends with a media extension.
const MEDIA_IN_TEXT = /(?:^|[\s([{"'`,:;=])(\/[^\s"'`<>()[\]{},;]*\.(?:png|jpe?g|webp|gif|wav|mp3|flac|ogg))(?=$|[\s)\]}"'`,.;:!?])/gi;

function isMediaPath(value) {
  return typeof value === 'string' && value.startsWith('/') && !value.startsWith('//') &&
    (IMAGE_EXT.test(value) || AUDIO_EXT.test(value) || VIDEO_EXT.test(value));
}

/** A figure showing an image, an audio player or a video for a file path. */
function mediaFigure(path, kind) {
  const url = fileUrl(path);
  kind = kind || (AUDIO_EXT.test(path) ? 'audio' : VIDEO_EXT.test(path) ? 'video' : 'image');
  let media;
  if (kind === 'audio') media = el('audio', { controls: true, preload: 'metadata', src: url });
  else if (kind === 'video') media = el('video', { controls: true, preload: 'metadata', src: url });
  else media = el('img', { src: url, alt: path, loading: 'lazy' });
  const caption = el('figcaption', { text: path.split('/').pop(), title: path });
  media.addEventListener('error', () => {
    media.replaceWith(el('p', { class: 'error small', text: `Could not load ${path}` }));
  }, { once: true });
  return el('figure', { class: `media media-${kind}` }, media, caption);
}

/** Appends a figure for each distinct media path found in `text`. */
function renderMediaInText(container, text) {
  container.replaceChildren();
  const seen = new Set();
  for (const match of String(text).matchAll(MEDIA_IN_TEXT)) {
    if (seen.has(match[1]) || seen.size >= 12) continue;
    seen.add(match[1]);
    container.append(mediaFigure(match[1]));
  }
  container.hidden = seen.size === 0;
}

// ---------------------------------------------------------------------------
// 3. Chat: message bubbles and sending a request
// ---------------------------------------------------------------------------

/** Adds a chat bubble; returns its parts {wrap, status, text, media}. */
function addBubble(role, content = '') {
  $('#empty-chat').hidden = true;
  const status = el('div', { class: 'status', hidden: true });
  const text = el('div', { class: role === 'user' ? 'text' : 'text answer-text', text: content });
  const media = el('div', { class: 'bubble-media', hidden: true });
  const wrap = el('div', { class: `msg msg-${role}` },
    el('div', { class: 'bubble' }, el('span', { class: 'sr-only', text: role === 'user' ? 'You: ' : 'hgpt: ' }), status, text, media));
  $('#messages').append(wrap);
  if (content) renderMediaInText(media, content);
  scrollChat();
  return { wrap, status, text, media };
}

/** Marks `bubble` as the latest answer (`.answer`, read by the browser test). */
function markAnswer(bubble) {
  for (const old of document.querySelectorAll('.answer')) old.classList.remove('answer');
  bubble.text.classList.add('answer');
}

function setStatus(bubble, message, kind = 'busy') {
  bubble.status.hidden = !message;
  bubble.status.className = `status status-${kind}`;
  bubble.status.textContent = message || '';
}

function scrollChat() {
  const box = $('#messages');
  box.scrollTop = box.scrollHeight;
}

function clearChat() {
  detachRun();
  app.history = [];
  app.busy = false;
  updateSendButton();
  const messages = $('#messages');
  for (const node of [...messages.children]) if (node.id !== 'empty-chat') node.remove();
  $('#empty-chat').hidden = false;
  showRun(null);
}

async function send() {
  if (app.busy) return;
  const prompt = $('#prompt');
  const text = prompt.value.trim();
  const pending = app.attachments.slice();
  if (!text && !pending.length) return;
  app.busy = true;
  updateSendButton();
  await Promise.all(pending.map((a) => a.promise));
  const names = pending.filter((a) => a.name).map((a) => a.name);
  const content = [text, ...names].filter(Boolean).join(' ');
  if (!content) { app.busy = false; updateSendButton(); return; }
  prompt.value = '';
  autoGrow();
  clearAttachments();
  addBubble('user', content);
  const bubble = addBubble('assistant');
  markAnswer(bubble);
  setStatus(bubble, 'Sending…');
  const messages = [...app.history, { role: 'user', content }];
  let created;
  try {
    created = await api('/v1/runs', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ messages }),
    });
  } catch (err) {
    setStatus(bubble, `Could not start the run: ${err.message}`, 'error');
    app.busy = false;
    updateSendButton();
    return;
  }
  app.history = messages;
  const view = newRunView(created.id, bubble, true);
  upsertRun({ id: created.id, state: created.state || 'queued', request: content, created_at_ms: Date.now() }, true);
  for (const empty of document.querySelectorAll('#runs .empty-runs')) empty.remove();
  showRun(view);
  applyRunState(view, created.state || 'queued');
  attachEvents(view);
  refreshRuns();
}

function updateSendButton() {
  const button = $('#send');
  button.disabled = app.busy;
  button.textContent = app.busy ? 'Running…' : 'Send';
}

function autoGrow() {
  const prompt = $('#prompt');
  prompt.style.height = 'auto';
  prompt.style.height = `${Math.min(prompt.scrollHeight + 2, 200)}px`;
}

// ---------------------------------------------------------------------------
// 4. Attachments: upload with POST /v1/files, show a chip per file
// ---------------------------------------------------------------------------

function addAttachment(file) {
  const att = { file, name: null, status: 'uploading', objectUrl: null, chip: null, promise: null };
  const isImage = (file.type || '').startsWith('image/');
  if (isImage) att.objectUrl = URL.createObjectURL(file);
  const label = el('span', { class: 'chip-name', text: file.name, title: file.name });
  const note = el('span', { class: 'chip-note', text: 'uploading…' });
  const remove = el('button', {
    type: 'button', class: 'chip-remove', 'aria-label': `Remove ${file.name}`, text: '×',
    onclick: () => removeAttachment(att),
  });
  const thumb = isImage ? el('img', { class: 'chip-thumb', src: att.objectUrl, alt: '' })
    : el('span', { class: 'chip-thumb chip-icon', 'aria-hidden': 'true', text: '♪' });
  att.chip = el('div', { class: 'chip', 'data-status': 'uploading' }, thumb, label, note, remove);
  $('#chips').append(att.chip);
  app.attachments.push(att);
  const form = new FormData();
  form.append('file', file, file.name);
  att.promise = api('/v1/files', { method: 'POST', body: form }).then((res) => {
    att.name = res.name;
    att.status = 'ready';
    note.textContent = res.name;
    label.title = res.name;
  }, (err) => {
    att.status = 'error';
    note.textContent = 'upload failed';
    toast(`Upload of ${file.name} failed: ${err.message}`);
  }).finally(() => att.chip.setAttribute('data-status', att.status));
}

function removeAttachment(att) {
  att.chip.remove();
  if (att.objectUrl) URL.revokeObjectURL(att.objectUrl);
  app.attachments = app.attachments.filter((a) => a !== att);
}

function clearAttachments() {
  for (const att of app.attachments.slice()) removeAttachment(att);
}

// ---------------------------------------------------------------------------
// 5. Run view: the event stream and what each event changes
// ---------------------------------------------------------------------------

/** The state of one run as shown in the run panel. */
function newRunView(id, bubble, live) {
  return {
    id, bubble, live, state: 'queued', error: null, mode: null, note: '',
    tasks: new Map(), // id -> {id, task, dep, args, state, model, endpoint, record}
    answer: '', es: null, lastSeq: 0, ended: false, reconnects: 0, selected: null, timings: null,
  };
}

/** Opens the run's event stream; replays past events, then follows live ones. */
function attachEvents(view) {
  if (view.es) view.es.close();
  const after = view.lastSeq ? `?after=${view.lastSeq}` : '';
  const es = new EventSource(withToken(`/v1/runs/${encodeURIComponent(view.id)}/events${after}`));
  view.es = es;
  for (const type of EVENT_TYPES) {
    es.addEventListener(type, (ev) => {
      if (app.run !== view || view.ended) return;
      const seq = Number(ev.lastEventId);
      if (seq && seq <= view.lastSeq) return; // already seen (replay after a reconnect)
      if (seq) view.lastSeq = seq;
      let data;
      try { data = JSON.parse(ev.data); } catch { return; }
      handleEvent(view, type, data || {});
    });
  }
  es.onerror = () => { if (!view.ended && app.run === view) recoverStream(view); };
}

/** The stream broke: ask the run's state (this may prompt for a token) and reattach or end. */
async function recoverStream(view) {
  if (view.recovering) return;
  view.recovering = true;
  try {
    const row = await api(`/v1/runs/${encodeURIComponent(view.id)}`);
    if (app.run !== view || view.ended) return;
    if (TERMINAL.has(row.state)) {
      if (view.es) view.es.close();
      if (row.record) applyRunRecord(view, row.record);
      view.error = view.error || row.error;
      applyRunState(view, row.state);
    } else if (view.es && view.es.readyState === EventSource.CLOSED && view.reconnects++ < 5) {
      attachEvents(view);
    }
  } catch (err) {
    if (view.es && view.es.readyState === EventSource.CLOSED) {
      setStatus(view.bubble, `Lost the connection to the run: ${err.message}`, 'error');
    }
  } finally {
    view.recovering = false;
  }
}

function detachRun() {
  const view = app.run;
  if (view && view.es) view.es.close();
}

function handleEvent(view, type, data) {
  switch (type) {
    case 'state':
      if (data.error) view.error = data.error;
      applyRunState(view, data.state);
      break;
    case 'task_planned':
      if (data.task) {
        addPlannedTask(view, data.task);
        drawGraph(view);
        setStatus(view.bubble, 'Planning; tasks start as they are planned…');
      }
      break;
    case 'planned':
      setPlan(view, data.plan || []);
      if (Array.isArray(data.warnings) && data.warnings.length) setNote(view, `Plan repaired: ${data.warnings.join('; ')}`);
      setStatus(view.bubble, progressText(view));
      break;
    case 'chat_fallback':
      view.mode = 'chat';
      view.tasks = new Map();
      setNote(view, `Answered as plain chat${data.reason ? `: ${data.reason}` : ''}.`);
      drawGraph(view);
      break;
    case 'selecting':
      updateTask(view, data.id, { state: 'selecting' });
      break;
    case 'model_chosen':
      updateTask(view, data.id, { state: 'chosen', model: data.model, endpoint: data.endpoint });
      break;
    case 'task_started':
      updateTask(view, data.id, { state: 'running', model: data.model, endpoint: data.endpoint });
      setStatus(view.bubble, progressText(view));
      break;
    case 'model_download': {
      const mib = (bytes) => (Number(bytes) / 1048576).toFixed(0);
      setStatus(view.bubble, data.done_bytes < data.total_bytes
        ? `Downloading ${data.model}: ${mib(data.done_bytes)} of ${mib(data.total_bytes)} MiB…`
        : progressText(view));
      break;
    }
    case 'task_progress':
      setStatus(view.bubble, data.done < data.total
        ? `Task #${data.id} on ${data.model}: step ${data.done} of ${data.total}…`
        : progressText(view));
      break;
    case 'task_finished':
      if (data.record) applyTaskRecord(view, data.record);
      setStatus(view.bubble, progressText(view));
      break;
    case 'answer_started':
      setStatus(view.bubble, 'Writing the answer…');
      break;
    case 'answer_delta':
      view.answer += data.text || '';
      view.bubble.text.textContent = view.answer;
      scrollChat();
      break;
    case 'finished':
      if (data.record) applyRunRecord(view, data.record);
      break;
    default:
      break;
  }
}

function progressText(view) {
  const all = [...view.tasks.values()];
  if (!all.length) return 'Planning…';
  const ended = all.filter((t) => TASK_RANK[t.state] === 4).length;
  return ended === all.length ? 'Writing the answer…' : `Running tasks: ${ended} of ${all.length} done…`;
}

/** Applies a run state (from a `state` event or a stored row). */
function applyRunState(view, runState) {
  if (!runState) return;
  view.state = runState;
  if (app.run === view) renderRunHead(view);
  const listed = document.querySelector(`#runs li[data-run-id="${CSS.escape(view.id)}"]`);
  if (listed) upsertRun({ id: view.id, state: runState, request: listed.querySelector('.run-request').title, created_at_ms: Number(listed.getAttribute('data-created')) }, false);
  if (!TERMINAL.has(runState)) {
    setStatus(view.bubble, runState === 'queued' ? 'Queued…' : progressText(view));
    return;
  }
  endRun(view);
}

/** The run is over: close the stream, show the outcome, extend the conversation. */
function endRun(view) {
  if (view.ended) return;
  view.ended = true;
  if (view.es) view.es.close();
  const bubble = view.bubble;
  bubble.text.textContent = view.answer;
  renderMediaInText(bubble.media, view.answer);
  if (view.state === 'succeeded') {
    const seconds = view.timings ? ` in ${(view.timings.total_ms / 1000).toFixed(1)} s` : '';
    const count = view.tasks.size ? `${view.tasks.size} task${view.tasks.size === 1 ? '' : 's'}` : 'chat';
    setStatus(bubble, `Done${seconds} · ${count}`, 'done');
  } else {
    const what = { failed: 'The run failed', cancelled: 'The run was cancelled', interrupted: 'The run was interrupted' }[view.state] || 'The run ended';
    setStatus(bubble, view.error ? `${what}: ${view.error}` : `${what}.`, 'error');
  }
  if (view.live) {
    if (view.answer) app.history.push({ role: 'assistant', content: view.answer });
    else app.history.pop(); // drop the unanswered turn so the next request stays well-formed
    app.busy = false;
    updateSendButton();
  }
  if (app.run === view) {
    renderRunHead(view);
    if (!view.tasks.size) drawGraph(view);
  }
  refreshRuns();
  scrollChat();
}

/** Adds a planned task, or updates one announced while the plan streamed (keeping its progress). */
function addPlannedTask(view, t) {
  const id = Number(t.id);
  const fields = { task: String(t.task || 'task'), dep: Array.isArray(t.dep) ? t.dep.map(Number) : [], args: t.args || {} };
  const known = view.tasks.get(id);
  if (known) Object.assign(known, fields);
  else view.tasks.set(id, { id, ...fields, state: 'planned', model: null, endpoint: null, record: null });
}

/** Shows the complete plan; tasks announced earlier keep their state. */
function setPlan(view, plan) {
  for (const t of plan) addPlannedTask(view, t);
  drawGraph(view);
}

function updateTask(view, id, change) {
  const task = view.tasks.get(Number(id));
  if (!task) return;
  if (change.state && TASK_RANK[change.state] < TASK_RANK[task.state]) return;
  Object.assign(task, Object.fromEntries(Object.entries(change).filter(([, v]) => v != null)));
  if (app.run === view) refreshTask(view, task);
}

function applyTaskRecord(view, record) {
  const id = Number(record.id);
  if (!view.tasks.has(id)) {
    view.tasks.set(id, { id, task: record.task, dep: record.dep || [], args: {}, state: 'planned' });
    drawGraph(view);
  }
  const task = view.tasks.get(id);
  task.record = record;
  task.args = record.args || task.args;
  task.state = TASK_STATE_OF_STATUS[record.status] || 'failed';
  if (record.model) task.model = record.model;
  if (record.endpoint) task.endpoint = record.endpoint;
  if (app.run === view) refreshTask(view, task);
}

/** Applies a complete run record (the `finished` event or a stored run). */
function applyRunRecord(view, record) {
  view.mode = record.mode || view.mode;
  view.timings = record.timings || null;
  if (record.error) view.error = record.error;
  const planned = view.mode !== 'chat' && Array.isArray(record.plan) && record.plan.length;
  if (!view.tasks.size && planned) setPlan(view, record.plan);
  for (const task of record.tasks || []) applyTaskRecord(view, task);
  if (view.mode === 'chat') setNote(view, `Answered as plain chat${record.fallback_reason ? `: ${record.fallback_reason}` : ''}.`);
  if (typeof record.answer === 'string' && record.answer) view.answer = record.answer;
  view.bubble.text.textContent = view.answer;
  drawGraph(view);
}

function setNote(view, note) {
  view.note = note;
  if (app.run === view) renderRunHead(view);
}

// ---------------------------------------------------------------------------
// 6. Task graph: layered layout (left to right by dependency depth) in SVG
// ---------------------------------------------------------------------------

const NODE_W = 172;
const NODE_H = 48;
const GAP_X = 32;
const GAP_Y = 16;
const PAD = 10;
const MIN_SCALE = 0.75; // a wide graph is shrunk down to this to fit, else it scrolls at full size

function depsOf(task, tasks) {
  return task.dep.filter((d) => d !== task.id && tasks.has(d));
}

/** Positions {id -> {x, y}} plus the drawing size; nodes of one layer are stacked. */
function layoutGraph(tasks) {
  const depth = new Map();
  const visiting = new Set();
  const depthOf = (id) => {
    if (depth.has(id)) return depth.get(id);
    if (visiting.has(id)) return 0; // a cycle: the pipeline rejects these, stay safe anyway
    visiting.add(id);
    const parents = depsOf(tasks.get(id), tasks);
    const d = parents.length ? 1 + Math.max(...parents.map(depthOf)) : 0;
    visiting.delete(id);
    depth.set(id, d);
    return d;
  };
  const layers = [];
  for (const id of [...tasks.keys()].sort((a, b) => a - b)) (layers[depthOf(id)] ||= []).push(id);
  // Order each layer by the mean position of its parents, to limit edge crossings.
  const row = new Map();
  layers.forEach((layer, i) => {
    if (i > 0) {
      const key = (id) => {
        const ps = depsOf(tasks.get(id), tasks);
        return ps.length ? ps.reduce((s, p) => s + row.get(p), 0) / ps.length : 0;
      };
      layer.sort((a, b) => key(a) - key(b) || a - b);
    }
    layer.forEach((id, j) => row.set(id, j));
  });
  const tallest = Math.max(1, ...layers.map((l) => l.length));
  const height = PAD * 2 + tallest * NODE_H + (tallest - 1) * GAP_Y;
  const pos = new Map();
  layers.forEach((layer, i) => {
    const top = (height - (layer.length * NODE_H + (layer.length - 1) * GAP_Y)) / 2;
    layer.forEach((id, j) => pos.set(id, { x: PAD + i * (NODE_W + GAP_X), y: top + j * (NODE_H + GAP_Y) }));
  });
  const width = PAD * 2 + layers.length * NODE_W + Math.max(0, layers.length - 1) * GAP_X;
  return { pos, width, height };
}

/** Draws the whole graph of the shown run (called when the plan changes). */
function drawGraph(view) {
  if (app.run !== view) return;
  const box = $('#graph');
  if (!view.tasks.size) {
    const msg = view.mode === 'chat' ? 'No tasks: the request was answered directly.'
      : view.ended ? 'This run has no plan.' : 'Waiting for the plan…';
    box.replaceChildren(el('p', { class: 'muted placeholder', text: msg }));
    renderTaskList(view);
    return;
  }
  const { pos, width, height } = layoutGraph(view.tasks);
  const svg = svgEl('svg', { width, height, 'data-width': width, 'data-height': height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': `Task graph of ${view.tasks.size} tasks` });
  const defs = svgEl('defs');
  const marker = svgEl('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' });
  marker.append(svgEl('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrow-head' }));
  const stripes = svgEl('pattern', { id: 'stripes', width: 8, height: 8, patternUnits: 'userSpaceOnUse', patternTransform: 'rotate(45)' });
  stripes.append(svgEl('rect', { width: 8, height: 8, class: 'stripe-bg' }), svgEl('rect', { width: 3, height: 8, class: 'stripe' }));
  defs.append(marker, stripes);
  svg.append(defs);
  for (const task of view.tasks.values()) {
    for (const dep of depsOf(task, view.tasks)) {
      const a = pos.get(dep);
      const b = pos.get(task.id);
      const x1 = a.x + NODE_W;
      const y1 = a.y + NODE_H / 2;
      const x2 = b.x - 2;
      const y2 = b.y + NODE_H / 2;
      const mid = (x1 + x2) / 2;
      svg.append(svgEl('path', { class: 'edge', 'data-from': dep, 'data-to': task.id, d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`, 'marker-end': 'url(#arrow)' }));
    }
  }
  for (const task of view.tasks.values()) {
    const { x, y } = pos.get(task.id);
    const g = svgEl('g', { class: 'node', 'data-task-id': task.id, 'data-task': task.task, 'data-state': task.state, transform: `translate(${x},${y})`, tabindex: 0, role: 'button' });
    g.append(svgEl('title'), svgEl('rect', { class: 'node-box', width: NODE_W, height: NODE_H, rx: 9 }),
      svgEl('text', { class: 'node-title', x: 11, y: 20 }), svgEl('text', { class: 'node-model', x: 11, y: 37 }));
    g.addEventListener('click', () => selectTask(view, task.id));
    g.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); selectTask(view, task.id); }
    });
    svg.append(g);
  }
  box.replaceChildren(svg);
  fitGraph();
  renderTaskList(view);
  for (const task of view.tasks.values()) refreshTask(view, task);
}

/** Shrinks the graph (down to MIN_SCALE) to fit the width of its panel. */
function fitGraph() {
  const box = $('#graph');
  const svg = box.querySelector('svg');
  if (!svg) return;
  const width = Number(svg.getAttribute('data-width'));
  const height = Number(svg.getAttribute('data-height'));
  const fit = (box.clientWidth - 2) / width;
  const scale = fit >= 1 || fit < MIN_SCALE ? 1 : fit; // too wide even when shrunk: keep full size, scroll
  svg.setAttribute('width', Math.floor(width * scale));
  svg.setAttribute('height', Math.floor(height * scale));
}

/** Shortens an SVG text element with an ellipsis until it fits `maxWidth`. */
function fitText(node, text, maxWidth) {
  node.textContent = text;
  if (!node.getComputedTextLength || node.getComputedTextLength() <= maxWidth) return;
  let n = text.length;
  while (n > 1 && node.getComputedTextLength() > maxWidth) node.textContent = `${text.slice(0, --n)}…`;
}

const STATE_LABEL = { planned: 'planned', selecting: 'choosing a model', chosen: 'model chosen', running: 'running', done: 'done', failed: 'failed', skipped: 'skipped' };

/** Updates one task's node, edges, list row and (when selected) the details. */
function refreshTask(view, task) {
  const modelText = task.model ? task.model.id : task.state === 'selecting' ? 'choosing a model…' : '—';
  const shortModel = task.model ? task.model.id.split('/').pop() : modelText;
  const node = document.querySelector(`#graph .node[data-task-id="${task.id}"]`);
  if (node) {
    node.setAttribute('data-state', task.state);
    node.setAttribute('aria-label', `Task ${task.id}, ${task.task}, ${STATE_LABEL[task.state]}${task.model ? `, model ${task.model.id}` : ''}`);
    node.setAttribute('aria-pressed', String(view.selected === task.id));
    node.querySelector('title').textContent = `#${task.id} ${task.task} (${STATE_LABEL[task.state]})\n${modelText}`;
    fitText(node.querySelector('.node-title'), `#${task.id} ${task.task}`, NODE_W - 22);
    fitText(node.querySelector('.node-model'), shortModel, NODE_W - 22);
  }
  for (const edge of document.querySelectorAll(`#graph .edge[data-from="${task.id}"]`)) {
    edge.classList.toggle('edge-done', task.state === 'done');
  }
  const row = document.querySelector(`#task-list [data-task-id="${task.id}"]`);
  if (row) {
    row.setAttribute('data-state', task.state);
    row.querySelector('.task-model').textContent = modelText;
    row.querySelector('.task-state').textContent = STATE_LABEL[task.state];
  }
  if (view.selected === task.id) renderTaskDetail(view);
}

// ---------------------------------------------------------------------------
// 7. Task list under the graph and the selected task's details
// ---------------------------------------------------------------------------

function renderTaskList(view) {
  const list = $('#task-list');
  list.replaceChildren();
  for (const task of [...view.tasks.values()].sort((a, b) => a.id - b.id)) {
    const button = el('button', { type: 'button', class: 'task-row', 'data-task-id': task.id, 'data-state': task.state, onclick: () => selectTask(view, task.id) },
      el('span', { class: 'dot', 'aria-hidden': 'true' }),
      el('span', { class: 'task-name', text: `#${task.id} ${task.task}` }),
      el('span', { class: 'task-model', text: '' }),
      el('span', { class: 'task-state', text: STATE_LABEL[task.state] }));
    list.append(el('li', {}, button));
  }
  if (!view.tasks.has(view.selected)) view.selected = null;
  renderTaskDetail(view);
}

function selectTask(view, id) {
  view.selected = id;
  for (const node of document.querySelectorAll('#graph .node')) {
    node.setAttribute('aria-pressed', String(Number(node.getAttribute('data-task-id')) === id));
  }
  for (const row of document.querySelectorAll('#task-list .task-row')) {
    row.classList.toggle('selected', Number(row.getAttribute('data-task-id')) === id);
  }
  renderTaskDetail(view);
}

function prettyJson(value, limit = 20000) {
  let text;
  try { text = JSON.stringify(value, null, 2) ?? String(value); } catch { text = String(value); }
  return text.length > limit ? `${text.slice(0, limit)}\n… (${text.length - limit} more characters)` : text;
}

function renderTaskDetail(view) {
  const box = $('#task-detail');
  const task = view.tasks.get(view.selected);
  if (!task) {
    box.replaceChildren(view.tasks.size ? el('p', { class: 'muted', text: 'Select a task to see its model, arguments and output.' }) : '');
    return;
  }
  const rec = task.record || {};
  const rows = el('dl', { class: 'facts' });
  const fact = (name, value) => { if (value) rows.append(el('dt', { text: name }), el('dd', { text: value })); };
  fact('State', STATE_LABEL[task.state]);
  fact('Model', task.model && task.model.id);
  fact('Reason', task.model && task.model.reason);
  fact('Endpoint', task.endpoint);
  if (rec.started_ms != null && rec.finished_ms != null) fact('Time', `${rec.started_ms}–${rec.finished_ms} ms after the start`);
  const dep = depsOf(task, view.tasks);
  fact('Depends on', dep.length ? dep.map((d) => `#${d}`).join(', ') : '');
  const args = el('div', { class: 'task-args' }, el('h4', { text: 'Arguments' }), el('pre', { text: prettyJson(task.args || {}) }));
  for (const value of Object.values(task.args || {})) if (isMediaPath(value)) args.append(mediaFigure(value));
  const output = el('div', { class: 'task-output' }, el('h4', { text: 'Output' }));
  const out = rec.output;
  if (out) {
    if (out.generated_text != null) output.append(el('p', { class: 'output-text', text: String(out.generated_text) }));
    if (out.generated_image) output.append(mediaFigure(out.generated_image, 'image'));
    if (out.generated_audio) output.append(mediaFigure(out.generated_audio, 'audio'));
    if (out.generated_video) output.append(mediaFigure(out.generated_video, 'video'));
    if (out.predicted != null) output.append(el('pre', { class: 'predicted', text: prettyJson(out.predicted) }));
  } else if (!rec.error) {
    output.append(el('p', { class: 'muted', text: TASK_RANK[task.state] < 4 ? 'Not finished yet.' : 'No output.' }));
  }
  if (rec.error) output.append(el('p', { class: 'error', text: rec.error }));
  box.replaceChildren(el('h3', {}, `#${task.id} ${task.task} `, el('span', { class: `badge state-${task.state}`, text: STATE_LABEL[task.state] })), rows, output, args);
}

// ---------------------------------------------------------------------------
// 8. Run panel header and showing a run
// ---------------------------------------------------------------------------

function showRun(view) {
  if (app.run && app.run !== view) detachRun();
  app.run = view;
  if (!view) {
    $('#graph').replaceChildren(el('p', { class: 'muted placeholder', text: 'The plan appears here as a graph once a request is sent.' }));
    $('#task-list').replaceChildren();
    $('#task-detail').replaceChildren();
    $('#run-id').textContent = '';
    $('#run-state').hidden = true;
    $('#cancel-run').hidden = true;
    $('#run-note').hidden = true;
    markCurrentRun(null);
    return;
  }
  renderRunHead(view);
  drawGraph(view);
  markCurrentRun(view.id);
}

function renderRunHead(view) {
  $('#run-id').textContent = view.id;
  const badge = $('#run-state');
  badge.hidden = false;
  badge.textContent = view.state;
  badge.className = `badge state-${view.state}`;
  $('#cancel-run').hidden = TERMINAL.has(view.state);
  const note = $('#run-note');
  note.hidden = !view.note;
  note.textContent = view.note;
}

async function cancelRun() {
  const view = app.run;
  if (!view || TERMINAL.has(view.state)) return;
  try {
    await api(`/v1/runs/${encodeURIComponent(view.id)}/cancel`, { method: 'POST' });
  } catch (err) {
    toast(`Could not cancel: ${err.message}`);
  }
}

// ---------------------------------------------------------------------------
// 9. Past runs: the sidebar list (GET /v1/runs) and replaying a stored run
// ---------------------------------------------------------------------------

function formatTime(ms) {
  if (!ms) return '';
  const date = new Date(ms);
  const sameDay = date.toDateString() === new Date().toDateString();
  return sameDay ? date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : date.toLocaleDateString([], { month: 'short', day: 'numeric' });
}

/** Inserts or updates one run in the sidebar. */
function upsertRun(run, prepend) {
  const list = $('#runs');
  let item = list.querySelector(`li[data-run-id="${CSS.escape(run.id)}"]`);
  if (!item) {
    item = el('li', { 'data-run-id': run.id },
      el('button', { type: 'button', class: 'run-item', onclick: () => openRun(run.id) },
        el('span', { class: 'run-request' }),
        el('span', { class: 'run-meta' }, el('span', { class: 'badge' }), el('time', {}))));
    if (prepend) list.prepend(item); else list.append(item);
  }
  item.setAttribute('data-state', run.state);
  item.setAttribute('data-created', run.created_at_ms || 0);
  const request = item.querySelector('.run-request');
  request.textContent = run.request || '(empty request)';
  request.title = run.request || '';
  const badge = item.querySelector('.badge');
  badge.textContent = run.state;
  badge.className = `badge state-${run.state}`;
  const time = item.querySelector('time');
  time.textContent = formatTime(run.created_at_ms);
  if (run.created_at_ms) time.setAttribute('datetime', new Date(run.created_at_ms).toISOString());
  if (app.run && app.run.id === run.id) item.querySelector('.run-item').setAttribute('aria-current', 'true');
}

/** Loads the first page (reset) or the next one; `refresh` only merges the newest page in. */
async function loadRuns(mode = 'reset') {
  const more = mode === 'more';
  const query = more && app.runsNext ? `&before=${encodeURIComponent(app.runsNext)}` : '';
  let page;
  try {
    page = await api(`/v1/runs?limit=20${query}`);
  } catch (err) {
    if (mode !== 'refresh') toast(`Could not list runs: ${err.message}`);
    return;
  }
  const runs = Array.isArray(page.data) ? page.data : [];
  if (mode === 'reset') $('#runs').replaceChildren();
  if (mode === 'refresh') {
    for (const run of runs.slice().reverse()) upsertRun(run, true);
  } else {
    for (const run of runs) upsertRun(run, false);
  }
  if (mode !== 'refresh') {
    app.runsNext = page.next || null;
    $('#more-runs').hidden = !app.runsNext;
  }
  if (!$('#runs').children.length) $('#runs').append(el('li', { class: 'muted empty-runs', text: 'No runs yet.' }));
  else for (const empty of document.querySelectorAll('#runs .empty-runs')) empty.remove();
}

let refreshTimer = null;
function refreshRuns() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => loadRuns('refresh'), 150);
}

function markCurrentRun(id) {
  for (const button of document.querySelectorAll('#runs .run-item')) {
    const current = button.parentElement.getAttribute('data-run-id') === id;
    if (current) button.setAttribute('aria-current', 'true'); else button.removeAttribute('aria-current');
  }
}

/** Opens a stored run: its conversation, graph and outputs (or its live stream). */
async function openRun(id) {
  closeSidebar();
  let row;
  try {
    row = await api(`/v1/runs/${encodeURIComponent(id)}`);
  } catch (err) {
    toast(`Could not open run ${id}: ${err.message}`);
    return;
  }
  clearChat();
  let messages = Array.isArray(row.messages) ? row.messages.filter((m) => m && typeof m.content === 'string') : [];
  if (!messages.length) messages = [{ role: 'user', content: row.request || '' }];
  for (const m of messages) addBubble(m.role === 'assistant' ? 'assistant' : 'user', m.content);
  const bubble = addBubble('assistant');
  markAnswer(bubble);
  app.history = messages.map((m) => ({ role: m.role, content: m.content }));
  const view = newRunView(row.id, bubble, !TERMINAL.has(row.state));
  view.error = row.error || null;
  showRun(view);
  if (row.record && !view.live) {
    applyRunRecord(view, row.record);
    if (view.answer) app.history.push({ role: 'assistant', content: view.answer });
    applyRunState(view, row.state);
    return;
  }
  if (view.live) {
    app.busy = true;
    updateSendButton();
    applyRunState(view, row.state);
  } else {
    setStatus(bubble, 'Loading the run…');
  }
  // Replays the stored events, then follows live ones (a run that ended
  // without a record still shows how far it got).
  attachEvents(view);
}

// ---------------------------------------------------------------------------
// 10. Wiring: composer keys, buttons, sidebar on phones, start-up
// ---------------------------------------------------------------------------

function openSidebar() {
  document.body.classList.add('sidebar-open');
  $('#scrim').hidden = false;
  $('#toggle-runs').setAttribute('aria-expanded', 'true');
}

function closeSidebar() {
  document.body.classList.remove('sidebar-open');
  $('#scrim').hidden = true;
  $('#toggle-runs').setAttribute('aria-expanded', 'false');
}

function init() {
  const prompt = $('#prompt');
  $('#composer').addEventListener('submit', (ev) => { ev.preventDefault(); send(); });
  prompt.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); send(); }
  });
  prompt.addEventListener('input', autoGrow);
  $('#attach').addEventListener('change', (ev) => {
    for (const file of ev.target.files) addAttachment(file);
    ev.target.value = '';
  });
  const composer = $('#composer');
  composer.addEventListener('dragover', (ev) => { ev.preventDefault(); composer.classList.add('dragging'); });
  composer.addEventListener('dragleave', () => composer.classList.remove('dragging'));
  composer.addEventListener('drop', (ev) => {
    ev.preventDefault();
    composer.classList.remove('dragging');
    for (const file of ev.dataTransfer.files) addAttachment(file);
  });
  $('#new-chat').addEventListener('click', () => { clearChat(); clearAttachments(); prompt.focus(); });
  $('#cancel-run').addEventListener('click', cancelRun);
  $('#more-runs').addEventListener('click', () => loadRuns('more'));
  $('#refresh-runs').addEventListener('click', () => loadRuns('reset'));
  $('#toggle-runs').addEventListener('click', () => {
    if (document.body.classList.contains('sidebar-open')) closeSidebar(); else openSidebar();
  });
  $('#scrim').addEventListener('click', closeSidebar);
  document.addEventListener('keydown', (ev) => { if (ev.key === 'Escape') closeSidebar(); });
  for (const example of document.querySelectorAll('.example')) {
    example.addEventListener('click', () => { prompt.value = example.textContent; autoGrow(); prompt.focus(); });
  }
  if (window.ResizeObserver) new ResizeObserver(fitGraph).observe($('#graph'));
  loadRuns('reset');
  prompt.focus();
}

init();
