// fieldgate web console: plain JS, no build step. Data comes from /api/ (JSON) and live
// updates from /api/events (Server-Sent Events); there is no polling loop. Every dynamic
// text goes through esc() (or textContent); no inline script or style (CSP).
'use strict';

const S = {
  session: null,   // {user, role, csrf, allow_writes, can_write, open}
  status: null,    // /api/status
  points: {},      // id -> row of /api/points (updated by SSE)
  order: [],       // ids in mapping order
  trends: {},      // id -> [[t...], [v...]]
  commands: null,  // /api/commands
  acks: [],
  charts: {},      // id -> uPlot
  maxSamples: 600, // replaced by the server's web.trend_samples (/api/status)
  result: '',
};

function esc(s) {
  return String(s ?? '').replace(/[&<>"']/g, c => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

async function api(path, opts = {}) {
  const r = await fetch('/api/' + path, Object.assign({ credentials: 'same-origin' }, opts));
  if (r.status === 401) { showLogin(); throw new Error('unauthorized'); }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function post(path, body) {
  return api(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': S.session.csrf || '' },
    body: JSON.stringify(body),
  });
}

function showLogin() {
  document.getElementById('main').hidden = true;
  document.getElementById('login').hidden = false;
}

document.getElementById('login-form').addEventListener('submit', async ev => {
  ev.preventDefault();
  const f = new FormData(ev.target);
  const r = await fetch('/api/login', {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ user: f.get('user'), password: f.get('password') }),
  });
  if (r.ok) { location.reload(); return; }
  const b = await r.json().catch(() => ({}));
  document.getElementById('login-error').textContent = b.error || r.statusText;
});

// The server's age (age_ms, by its clock) plus the time since this page received it (by the
// browser's monotonic clock): an unsynchronised browser clock cannot make it lie.
function age(p) {
  if (!p.read_at || typeof p.age_ms !== 'number') return '';
  const ms = p.age_ms + (performance.now() - (p.received ?? performance.now()));
  return ms < 1000 ? '<1 s' : ms < 120000 ? Math.round(ms / 1000) + ' s' : Math.round(ms / 60000) + ' min';
}

function shown(p) {
  if (p.value === null || p.value === undefined) return '—';
  if (typeof p.value === 'boolean') return p.value ? 'ON' : 'OFF';
  return p.text;
}

function valueCell(p) {
  const cls = typeof p.value === 'boolean' ? 'badge ' + (p.value ? 'on' : 'off') : '';
  return `<span class="${cls}" data-value="${esc(p.id)}" data-text="${esc(p.text ?? '')}">${esc(shown(p))}</span>`;
}

function badge(s) { return `<span class="badge ${esc(s)}">${esc(s)}</span>`; }

function nav() {
  const devs = (S.status?.devices || []).map(d => `<a href="#/device/${encodeURIComponent(d.name)}">${esc(d.name)}</a>`).join('');
  const cmds = S.session?.can_write ? '<a href="#/commands">Commands</a>' : '';
  document.getElementById('nav').innerHTML = `<a href="#/">Overview</a>${devs}<a href="#/trends">Trends</a>${cmds}`;
  const who = document.getElementById('who');
  who.innerHTML = S.session ? `${esc(S.session.user)} (${esc(S.session.role)})${S.session.open ? '' : ' <button id="logout">Log out</button>'}` : '';
  const lo = document.getElementById('logout');
  if (lo) lo.addEventListener('click', async () => { await post('logout', {}); location.reload(); });
}

function pointRows(ids) {
  return ids.map(id => S.points[id]).filter(Boolean).map(p => `<tr>
    <td>${esc(p.name)}</td><td class="num">${valueCell(p)}</td><td>${esc(p.unit ?? '')}</td>
    <td>${badge(p.quality)}${p.error ? ` <span class="error">${esc(p.error)}</span>` : ''}</td>
    <td class="num" data-age="${esc(p.id)}">${esc(age(p))}</td></tr>`).join('');
}

function pointTable(ids) {
  return `<table><thead><tr><th>Point</th><th>Value</th><th>Unit</th><th>Quality</th><th>Age</th></tr></thead>
    <tbody>${pointRows(ids)}</tbody></table>`;
}

function viewOverview() {
  const s = S.status;
  const m = s.mqtt;
  const fail = `<div class="error" id="mqtt-failure">${esc(failure(m.last_failure))}</div>`;
  const links = s.links.map(l => `<tr><td>${esc(l.name)}</td><td>${badge(l.up ? 'ok' : 'error')}</td><td class="error">${esc(l.last_error ?? '')}</td></tr>`).join('');
  const devices = s.devices.map(d => `<tr><td><a href="#/device/${encodeURIComponent(d.name)}">${esc(d.name)}</a></td><td>${esc(d.link)} unit ${esc(d.unit)}</td>
    <td data-status="${esc(d.name)}">${badge(d.status)}</td><td class="error">${esc(d.last_error ?? '')}</td>
    <td><details><summary>read plan (${d.read_plan.length})</summary><pre class="plan">${esc(d.read_plan.join('\n'))}</pre></details></td></tr>`).join('');
  const derived = S.order.filter(id => S.points[id].kind === 'derived');
  const acks = S.acks.slice(-10).reverse().map(a => `<tr><td>${esc(a.ack.ts)}</td><td>${esc(a.origin)}</td><td>${esc(a.ack.command)}</td><td>${badge(a.ack.result === 'ok' ? 'ok' : 'error')} ${esc(a.ack.reason ?? '')}</td></tr>`).join('');
  return `<h1>Overview</h1>
  <div class="grid">
    <div class="card"><div class="label">Version</div><div class="big">${esc(s.version)}</div></div>
    <div class="card"><div class="label">Configuration</div><div class="big">${esc(s.config_id ?? '')}</div></div>
    <div class="card"><div class="label">Up for</div><div class="big" id="uptime">${esc(dur(s.uptime_s))}</div></div>
    <div class="card"><div class="label">MQTT ${esc(m.broker)}</div><div class="big" id="mqtt-state">${badge(m.state)}</div>${fail}</div>
    <div class="card"><div class="label">Buffer</div><div class="big" id="buffer">${esc(s.buffer.depth)} waiting, oldest ${esc(Math.round(s.buffer.oldest_age_s))} s</div></div>
  </div>
  <h2>Links</h2><table><thead><tr><th>Link</th><th>State</th><th>Last error</th></tr></thead><tbody>${links}</tbody></table>
  <h2>Devices</h2><table><thead><tr><th>Device</th><th>Where</th><th>Status</th><th>Last error</th><th>Read plan</th></tr></thead><tbody>${devices}</tbody></table>
  ${derived.length ? `<h2>Derived values</h2>${pointTable(derived)}` : ''}
  <h2>Recent commands</h2><table><thead><tr><th>When</th><th>From</th><th>Command</th><th>Result</th></tr></thead><tbody>${acks}</tbody></table>`;
}

function failure(f) {
  return f ? `last failure ${f.at}: ${f.reason}` : '';
}

function dur(s) {
  const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60);
  return h ? `${h} h ${m} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
}

function numericIds(ids) {
  return ids.filter(id => { const p = S.points[id]; return p && p.numeric && p.kind !== 'coil' && typeof p.value !== 'string'; });
}

function chartsHtml(ids) {
  return `<div class="charts">${ids.map(id => `<div class="chart" data-chart="${esc(id)}"></div>`).join('')}</div>`;
}

function mountCharts() {
  for (const el of document.querySelectorAll('[data-chart]')) {
    const id = el.dataset.chart;
    const p = S.points[id];
    const data = S.trends[id] || [[], []];
    const width = Math.max(300, el.clientWidth - 10);
    S.charts[id] = new uPlot({
      title: `${id}${p.unit ? ' (' + p.unit + ')' : ''}`, width, height: 200,
      scales: { x: { time: true } },
      series: [{}, { label: p.name, stroke: '#0969da', width: 2, points: { show: false } }],
      legend: { show: true },
    }, data, el);
  }
}

function commandsHtml(device) {
  if (!S.session?.can_write || !S.commands) return '';
  const mine = w => !device || w.point.startsWith(device + '.');
  const tables = S.commands.tables.map(t => {
    const ps = t.payloads.filter(p => p.writes.some(mine));
    if (!ps.length) return '';
    return `<div class="buttons"><div class="muted">${esc(t.topic)}</div>${ps.map(p =>
      `<button data-topic="${esc(t.topic)}" data-payload="${esc(p.payload)}" title="${esc(p.writes.map(w => w.point + ' = ' + w.value).join(', '))}">${esc(p.payload)}</button>`).join('')}</div>`;
  }).join('');
  const inputs = S.commands.points.filter(p => !device || p.device === device).map(p => p.coil
    ? `<label>${esc(p.point)} <button data-point="${esc(p.point)}" data-set="true">on</button><button data-point="${esc(p.point)}" data-set="false">off</button></label>`
    : `<label>${esc(p.point)} <input type="number" data-input="${esc(p.point)}" min="${esc(p.min)}" max="${esc(p.max)}" step="any"> ${esc(p.unit ?? '')} <span class="muted">${esc(p.min)} … ${esc(p.max)}</span> <button data-point="${esc(p.point)}">Write</button></label>`).join('');
  return `<h2>Commands</h2>${tables}${inputs ? '<h2>Writable points</h2>' + inputs : ''}<div id="result">${esc(S.result)}</div>`;
}

function ackText(label, a) {
  if (a.result === 'ok') return `${label}: ok, read back ${Object.entries(a.readback || {}).map(([k, v]) => k + ' = ' + v).join(', ')}`;
  return `${label}: ${a.result}: ${a.reason ?? ''}`;
}

function wireCommands() {
  for (const b of document.querySelectorAll('button[data-payload]')) {
    b.addEventListener('click', () => send('command', { topic: b.dataset.topic, payload: b.dataset.payload }, b.dataset.payload));
  }
  for (const b of document.querySelectorAll('button[data-point]')) {
    b.addEventListener('click', () => {
      let value = b.dataset.set;
      if (value === undefined) {
        const input = document.querySelector(`input[data-input="${CSS.escape(b.dataset.point)}"]`);
        value = input.value;
      }
      send('write', { point: b.dataset.point, value }, `${b.dataset.point} = ${value}`);
    });
  }
}

async function send(path, body, label) {
  const r = document.getElementById('result');
  r.textContent = `${label}: sent…`;
  try {
    const a = await post(path, body);
    S.result = ackText(label, a);
  } catch (e) {
    S.result = `${label}: ${e.message}`;
  }
  r.textContent = S.result;
  r.dataset.result = S.result;
}

function viewDevice(name) {
  const d = S.status.devices.find(x => x.name === name);
  if (!d) return `<h1>No device ${esc(name)}</h1>`;
  return `<h1>${esc(d.name)} ${badge(d.status)}</h1>
    ${d.last_error ? `<p class="error">${esc(d.last_error)}</p>` : ''}
    ${pointTable(d.points)}${commandsHtml(d.name)}
    <h2>Trends</h2>${chartsHtml(numericIds(d.points))}`;
}

function viewTrends() { return `<h1>Trends</h1>${chartsHtml(numericIds(S.order))}`; }
function viewCommands() { return `<h1>Commands</h1>${commandsHtml(null)}`; }

function render() {
  nav();
  for (const c of Object.values(S.charts)) c.destroy();
  S.charts = {};
  const h = decodeURIComponent(location.hash.slice(1) || '/');
  const main = document.getElementById('main');
  let html;
  if (h.startsWith('/device/')) html = viewDevice(h.slice(8));
  else if (h === '/trends') html = viewTrends();
  else if (h === '/commands') html = viewCommands();
  else html = viewOverview();
  main.innerHTML = html;
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.getAttribute('href') === '#' + h);
  mountCharts();
  wireCommands();
}

// Live updates: patch the cells and charts in place.
function onPoints(rows) {
  for (const r of rows) {
    r.received = performance.now();
    const p = S.points[r.id] = Object.assign(S.points[r.id] || {}, r);
    if (r.quality === 'good' && typeof r.value !== 'string' && r.value !== null) {
      const tr = S.trends[r.id] || (S.trends[r.id] = [[], []]);
      const t = Date.parse(r.read_at) / 1000;
      if (!tr[0].length || tr[0][tr[0].length - 1] < t) {
        tr[0].push(t); tr[1].push(Number(r.value));
        if (tr[0].length > S.maxSamples) { tr[0].shift(); tr[1].shift(); }
      }
      if (S.charts[r.id]) S.charts[r.id].setData(tr);
    }
    const cell = document.querySelector(`[data-value="${CSS.escape(r.id)}"]`);
    if (cell) cell.outerHTML = valueCell(p);
    const a = document.querySelector(`[data-age="${CSS.escape(r.id)}"]`);
    if (a) a.textContent = age(p);
  }
}

function onStatus(st) {
  S.acks = st.acks;
  const m = document.getElementById('mqtt-state');
  if (m) m.innerHTML = badge(st.health.mqtt_state);
  const f = document.getElementById('mqtt-failure');
  if (f) f.textContent = failure(st.health.mqtt_last_failure);
  const b = document.getElementById('buffer');
  if (b) b.textContent = `${st.health.buffer_depth} waiting, oldest ${Math.round(st.health.buffer_oldest_age_s)} s`;
  const u = document.getElementById('uptime');
  if (u) u.textContent = dur(st.health.uptime_s);
}

async function onDevices() {
  S.status = await api('status');
  const h = location.hash.slice(1) || '/';
  if (h === '/' || h.startsWith('/device/')) render();
}

async function start() {
  try {
    S.session = await api('session');
  } catch (e) {
    if (e.message !== 'unauthorized') document.getElementById('main').textContent = e.message;
    return;
  }
  const [status, points, trends, commands, acks] = await Promise.all([
    api('status'), api('points'), api('trends'), api('commands'), api('acks')]);
  S.status = status; S.trends = trends; S.commands = commands; S.acks = acks;
  if (status.trend_samples > 0) S.maxSamples = status.trend_samples;
  const received = performance.now();
  for (const p of points.points) { p.received = received; S.points[p.id] = p; S.order.push(p.id); }
  render();
  window.addEventListener('hashchange', render);
  const es = new EventSource('/api/events');
  es.addEventListener('points', ev => onPoints(JSON.parse(ev.data).points));
  es.addEventListener('status', ev => onStatus(JSON.parse(ev.data)));
  es.addEventListener('devices', () => onDevices());
  es.addEventListener('reload', () => location.reload());
  document.body.dataset.live = 'yes';
}

start();
