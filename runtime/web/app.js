// glimpse serve's web page: talks to the same server's JSON API with a session cookie.
'use strict';

const $ = (id) => document.getElementById(id);

// An element with text children (never HTML: labels and names come from files and users).
function el(tag, className, ...children) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  for (const c of children) e.append(c);
  return e;
}

const pct = (p) => (p * 100).toFixed(1) + '%';

// A request to the API; a 401 means the session ended, so the page asks for the token.
async function api(path, options = {}) {
  const r = await fetch(path, options);
  if (r.status === 401) {
    showLogin('The session ended: sign in again.');
    throw new Error('unauthorized');
  }
  if (!r.ok) {
    let message = r.status + ' ' + r.statusText;
    try { message = (await r.json()).error || message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return r;
}

const json = async (path, options) => (await api(path, options)).json();

function postJson(path, body) {
  return api(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
}

// ---- sign-in --------------------------------------------------------------------------

let started = false;

function showLogin(message) {
  $('app').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message || '';
  $('token').focus();
}

async function signIn(event) {
  event.preventDefault();
  const r = await fetch('/login', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ token: $('token').value }),
  });
  $('token').value = '';
  if (r.status === 204) {
    init();
  } else {
    let message = 'sign-in failed (' + r.status + ')';
    try { message = (await r.json()).error || message; } catch (_) { /* not JSON */ }
    $('login-error').textContent = message;
  }
}

async function signOut() {
  await fetch('/logout', { method: 'POST' });
  location.reload();
}

async function init() {
  const s = await (await fetch('/session', { cache: 'no-store' })).json();
  $('logout').hidden = !s.token_required || !s.authenticated;
  if (!s.authenticated) {
    showLogin();
    return;
  }
  $('login').hidden = true;
  $('app').hidden = false;
  if (started) return;
  started = true;
  start(s);
}

// ---- the board ------------------------------------------------------------------------

function start(session) {
  loadModel();
  health();
  setInterval(health, 5000);
  cameras(session.cameras);
  if (session.cameras.length > 0) events();
  if (session.collecting) {
    $('review').hidden = false;
    review();
    setInterval(review, 5000);
  }
}

async function health() {
  const badge = $('health');
  try {
    const r = await fetch('/readyz', { cache: 'no-store' });
    badge.textContent = r.ok ? 'ready' : 'not ready';
    badge.className = 'badge ' + (r.ok ? 'ok' : 'bad');
  } catch (_) {
    badge.textContent = 'unreachable';
    badge.className = 'badge bad';
  }
}

async function loadModel() {
  const m = await json('/v1/model');
  $('model-name').textContent = m.name || m.path;
  const card = $('model-card');
  card.replaceChildren();
  const row = (name, value, mono) => {
    if (value === null || value === undefined || value === '') return;
    card.append(el('dt', null, name), el('dd', mono ? 'mono' : null, value));
  };
  // A thousand ImageNet labels would bury the card: the count, the list on demand.
  const labels = el('details', null, el('summary', null, m.labels.length + ' labels'), m.labels.join(', '));
  labels.id = 'label-list';
  row('name', m.name);
  row('version', m.version);
  row('file', m.path, true);
  row('sha256', m.sha256, true);
  row('size', (m.size_bytes / 1e6).toFixed(2) + ' MB');
  row('labels', labels);
  row('preprocessing', m.preprocess);
  row('input', m.input, true);
  row('license', m.license);
  row('source', m.source);
  row('none of the above', m.reject);
  for (const [key, value] of Object.entries(m.metrics || {})) row(key.replace(/^glimpse\./, ''), value);
  if (m.loaded_at) row('loaded', new Date(m.loaded_at * 1000).toLocaleString());
}

// ---- cameras: live view, label over it, state, fps, drops ----------------------------

function cameras(names) {
  $('no-cameras').hidden = names.length > 0;
  const list = $('camera-list');
  for (const name of names) {
    const img = el('img');
    img.alt = 'live view of camera ' + name;
    img.src = '/v1/cameras/' + encodeURIComponent(name) + '/stream.mjpeg';
    img.addEventListener('error', () => {
      // Too many viewers, or the server restarted: try again a little later.
      setTimeout(() => { img.src = img.src.split('?')[0] + '?' + Date.now(); }, 5000);
    });
    const overlay = el('div', 'overlay', '…');
    const card = el('div', 'camera',
      el('h3', null, name),
      el('div', 'view', img, overlay),
      el('div', 'stats'));
    card.dataset.camera = name;
    list.append(card);
  }
  if (names.length > 0) {
    pollCameras();
    setInterval(pollCameras, 1000);
  }
}

async function pollCameras() {
  let doc;
  try { doc = await json('/v1/cameras'); } catch (_) { return; }
  for (const c of doc.cameras) {
    const card = document.querySelector('.camera[data-camera="' + CSS.escape(c.name) + '"]');
    if (!card) continue;
    card.querySelector('.overlay').textContent =
      c.rejected ? 'unknown (none of the classes)'
        : c.label ? c.label + ' ' + pct(c.probability) : 'waiting for a frame';
    const f = c.frames || {};
    const stat = (name, value, cls) => el('span', cls, name + ': ', el('b', null, String(value)));
    const state = stat('state', c.state || '—');
    state.dataset.state = c.state || '';
    state.classList.add('state');
    card.querySelector('.stats').replaceChildren(
      state,
      stat('fps', c.fps ? c.fps.toFixed(1) : '—'),
      stat('frames', f.captured ?? 0),
      stat('dropped', f.dropped ?? 0));
  }
}

function events() {
  const source = new EventSource('/v1/events');
  const add = (e, current) => {
    const ev = JSON.parse(e.data);
    const when = ev.time ? new Date(ev.time * 1000).toLocaleTimeString() : 'now';
    const what = current
      ? ev.camera + ': ' + ev.state + ' (current)'
      : ev.camera + ': ' + (ev.previous || '—') + ' → ' + ev.state + ' ' + pct(ev.confidence);
    const line = el('li', null, el('span', 'muted', when + ' '), what);
    line.dataset.state = ev.state;
    const timeline = $('timeline');
    timeline.prepend(line);
    while (timeline.children.length > 100) timeline.lastChild.remove();
  };
  source.addEventListener('current', (e) => add(e, true));
  source.addEventListener('state', (e) => add(e, false));
}

// ---- classify a photo ---------------------------------------------------------------

async function classify(file) {
  $('classify-error').textContent = '';
  const preview = $('preview');
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  try {
    const r = await json('/v1/classify?top_k=5', {
      method: 'POST',
      headers: { 'Content-Type': file.type || 'application/octet-stream' },
      body: file,
    });
    const bars = r.top.map((t) => {
      const fill = el('span');
      fill.style.width = pct(t.probability);
      return el('li', null, el('span', 'label', t.label), ' ', el('span', 'muted', pct(t.probability)),
        el('div', 'bar', fill));
    });
    // The model's "none of the above" refused it: say so above its guesses.
    if (r.rejected) bars.unshift(el('li', 'rejected', 'unknown: none of the model\'s classes'));
    $('bars').replaceChildren(...bars);
  } catch (e) {
    $('bars').replaceChildren();
    $('classify-error').textContent = file.name + ': ' + e.message;
  }
}

function dropZone() {
  const drop = $('drop');
  $('photo').addEventListener('change', (e) => e.target.files[0] && classify(e.target.files[0]));
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    if (e.dataTransfer.files[0]) classify(e.dataTransfer.files[0]);
  });
}

// ---- the review queue ---------------------------------------------------------------

let shown = '';

async function review() {
  let doc;
  try { doc = await json('/v1/collected'); } catch (e) {
    $('review-error').textContent = e.message;
    return;
  }
  $('review-error').textContent = '';
  $('labels').replaceChildren(...doc.labels.map((l) => { const o = el('option'); o.value = l; return o; }));
  $('review-count').textContent = '(' + doc.frames.length + ' waiting)';
  const ids = doc.frames.map((f) => f.id).join();
  if (ids === shown) return; // keep what the user is typing
  shown = ids;
  $('queue').replaceChildren(...doc.frames.slice(0, 60).map(frameCard));
}

function frameCard(f) {
  const img = el('img');
  img.src = f.image;
  img.alt = 'frame ' + f.id;
  img.loading = 'lazy';
  const guess = f.top[0];
  const input = el('input');
  input.value = guess ? guess.label : '';
  input.setAttribute('list', 'labels');
  input.setAttribute('aria-label', 'label');
  input.required = true;
  const file = el('button', 'primary', 'File');
  file.type = 'submit';
  const discard = el('button', null, 'Discard');
  discard.type = 'button';
  const form = el('form', null, input, file, discard);
  const card = el('div', 'frame', img,
    el('div', null, guess ? guess.label + ' ' + pct(guess.probability) : '?'),
    el('div', 'muted', f.camera + ' · ' + f.reason.replace('_', ' ')),
    form);
  card.dataset.id = f.id;
  const act = async (path, body) => {
    try {
      await postJson('/v1/collected/' + encodeURIComponent(f.id) + '/' + path, body);
      card.remove();
      shown = '';
      review();
    } catch (e) {
      $('review-error').textContent = f.id + ': ' + e.message;
    }
  };
  form.addEventListener('submit', (e) => { e.preventDefault(); act('label', { label: input.value.trim() }); });
  discard.addEventListener('click', () => act('discard', {}));
  return card;
}

// ---- wiring -------------------------------------------------------------------------

$('login-form').addEventListener('submit', signIn);
$('logout').addEventListener('click', signOut);
dropZone();
init();
