// Ferry Migration Hub: a dependency-free single page over Ferry's API.
// Every element is built with h() and textContent, never innerHTML, so
// names reported by agents cannot inject markup.

const API = '/api/v1';
const TOKEN_KEY = 'ferry.token';
const RANK = { viewer: 1, operator: 2, admin: 3 };

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  who: null,
  servers: new Map(),
  sort: { key: 'hostname', dir: 1 },
  filter: { text: '', lifecycle: '', replication: '' },
  stream: null,
  live: false,
};

// ---------- helpers ----------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    // Through the CSSOM, which the Content-Security-Policy allows, unlike
    // style attributes.
    else if (k === 'style') el.style.cssText = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const $ = (sel) => document.querySelector(sel);

function bytes(n) {
  if (!n) return '0 B';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + u[i];
}

function duration(sec) {
  if (!sec) return '0 s';
  if (sec < 60) return Math.round(sec) + ' s';
  if (sec < 3600) return Math.round(sec / 60) + ' min';
  if (sec < 86400) return (sec / 3600).toFixed(1) + ' h';
  return (sec / 86400).toFixed(1) + ' d';
}

function when(t) {
  if (!t || t.startsWith('0001-')) return '—';
  const d = new Date(t);
  const ago = (Date.now() - d.getTime()) / 1000;
  if (ago >= 0 && ago < 86400) return duration(ago) + ' ago';
  return d.toLocaleString();
}

function flash(msg, bad = false) {
  const f = $('#flash');
  f.textContent = msg;
  f.className = bad ? 'bad' : '';
  f.hidden = !msg;
  clearTimeout(flash.t);
  if (msg && !bad) flash.t = setTimeout(() => { f.hidden = true; }, 5000);
}

const can = (role) => state.who && RANK[state.who.role] >= RANK[role];

// ---------- API ----------

class APIError extends Error {
  constructor(status, body) {
    super(body.message || `HTTP ${status}`);
    this.status = status;
    this.code = body.code;
  }
}

// authFailed signs out after a 401, saying why: a token whose time ran
// out (the page may have been open for hours) asks to sign in again.
function authFailed(body) {
  if (body.code === 'token_expired') signOut('Session expired, sign in again. (' + (body.message || 'the API token expired') + ')');
  else signOut('Signed out: ' + (body.message || 'the token is no longer valid') + '. Sign in with a valid token.');
}

async function api(path, opts = {}) {
  const res = await fetch(API + path, {
    ...opts,
    headers: { Authorization: 'Bearer ' + state.token, ...(opts.headers || {}) },
  });
  if (res.status === 401) {
    const body = await res.json().catch(() => ({}));
    authFailed(body);
    throw new APIError(401, body);
  }
  if (!res.ok) throw new APIError(res.status, await res.json().catch(() => ({})));
  if (res.status === 204) return null;
  return res.json();
}

// ---------- live updates (server-sent events over fetch, to send the token) ----------

function setLive(on) {
  state.live = on;
  $('#live').classList.toggle('on', on);
  $('#live').title = on ? 'live updates on' : 'live updates reconnecting';
}

async function streamEvents() {
  const ctl = new AbortController();
  state.stream = ctl;
  while (state.stream === ctl) {
    try {
      const res = await fetch(API + '/events', { headers: { Authorization: 'Bearer ' + state.token }, signal: ctl.signal });
      if (res.status === 401) {
        authFailed(await res.json().catch(() => ({})));
        return;
      }
      if (!res.ok) throw new Error('events: HTTP ' + res.status);
      setLive(true);
      const reader = res.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          handleEvent(buf.slice(0, i));
          buf = buf.slice(i + 2);
        }
      }
    } catch (e) {
      if (ctl.signal.aborted) return;
    }
    setLive(false);
    await new Promise((r) => setTimeout(r, 3000));
  }
}

function handleEvent(block) {
  let event = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (line.startsWith('event:')) event = line.slice(6).trim();
    else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
  }
  if (!data.length) return;
  const msg = JSON.parse(data.join('\n'));
  if (event === 'snapshot') {
    state.servers = new Map(msg.items.map((s) => [s.id, s]));
  } else if (event === 'servers') {
    for (const s of msg.changed) state.servers.set(s.id, s);
    for (const id of msg.removed) state.servers.delete(id);
  } else return;
  refreshLive();
}

// ---------- server helpers ----------

function progress(s) {
  const total = (s.disks || []).reduce((a, d) => a + d.size_bytes, 0);
  const field = s.replication.state === 'RESCAN' ? 'rescanned_bytes' : 'replicated_bytes';
  const done = (s.disks || []).reduce((a, d) => a + (d[field] || 0), 0);
  return { total, done, pct: total ? Math.min(100, (100 * done) / total) : 0, rescan: field === 'rescanned_bytes' };
}

const backlog = (s) => (s.disks || []).reduce((a, d) => a + (d.backlogged_bytes || 0), 0);

function bar(pct, label) {
  return h('span', { class: 'bar', role: 'progressbar', 'aria-valuenow': Math.round(pct), 'aria-valuemin': 0, 'aria-valuemax': 100 },
    h('i', { style: `width:${pct.toFixed(1)}%` }), h('span', {}, label));
}

function replBadge(s) {
  const st = s.replication.state;
  const cls = s.replication.error_code || ['STALLED', 'DISCONNECTED'].includes(st) ? 'bad'
    : ['BACKLOG', 'RESCAN', 'PAUSED'].includes(st) ? 'warn'
      : st === 'CONTINUOUS' ? 'ok' : 'info';
  return h('span', { class: 'badge ' + cls, title: s.replication.error_code ? s.replication.error_code + ': ' + (s.replication.error_message || '') : '' },
    st + (s.replication.error_code ? ' · ' + s.replication.error_code : ''));
}

const healthBadge = (hl) => h('span', { class: 'badge ' + ({ HEALTHY: 'ok', LAGGING: 'warn', ERROR: 'bad' }[hl] || '') }, hl);
const progressBadge = (p) => h('span', { class: 'badge ' + ({ COMPLETED: 'ok', IN_PROGRESS: 'info' }[p] || '') }, p.replace('_', ' '));

// ---------- views ----------

const COLUMNS = [
  { key: 'hostname', label: 'Hostname', get: (s) => s.hostname.toLowerCase() },
  { key: 'lifecycle', label: 'Lifecycle', get: (s) => s.lifecycle_state },
  { key: 'replication', label: 'Replication', get: (s) => s.replication.state },
  { key: 'progress', label: 'Progress', get: (s) => progress(s).pct },
  { key: 'lag', label: 'Lag', get: (s) => s.replication.lag_seconds || 0, num: true },
  { key: 'backlog', label: 'Backlog', get: backlog, num: true, opt: true },
  { key: 'eta', label: 'ETA', get: (s) => s.replication.eta_seconds || 0, num: true, opt: true },
  { key: 'snapshot', label: 'Last snapshot', get: (s) => s.replication.last_snapshot_at || '', opt: true },
  { key: 'rserver', label: 'Replication server', get: (s) => s.replication.replication_server || '', opt: true },
];

function filteredServers() {
  const f = state.filter;
  const text = f.text.toLowerCase();
  const g = state.group || {};
  const col = COLUMNS.find((c) => c.key === state.sort.key) || COLUMNS[0];
  return [...state.servers.values()]
    .filter((s) => (!text || s.hostname.toLowerCase().includes(text) || s.id.includes(text))
      && (!f.lifecycle || s.lifecycle_state === f.lifecycle)
      && (!f.replication || s.replication.state === f.replication)
      && (!g.application_id || s.application_id === g.application_id)
      && (!g.wave_id || s.wave_id === g.wave_id))
    .sort((a, b) => {
      const x = col.get(a), y = col.get(b);
      return (x < y ? -1 : x > y ? 1 : a.id < b.id ? -1 : 1) * state.sort.dir;
    });
}

function serversView() {
  const view = h('div', { id: 'servers-view' });
  const lifecycles = ['DISCOVERED', 'PENDING_INSTALLATION', 'NOT_READY', 'READY_FOR_TEST', 'TESTING', 'READY_FOR_CUTOVER', 'CUTTING_OVER', 'CUTOVER', 'DISCONNECTED', 'STOPPED'];
  const repls = ['STOPPED', 'INITIATING', 'INITIAL_SYNC', 'BACKLOG', 'CREATING_SNAPSHOT', 'CONTINUOUS', 'PAUSED', 'RESCAN', 'STALLED', 'DISCONNECTED'];
  const select = (name, label, values) => {
    const s = h('select', { name, 'aria-label': label, onchange: (e) => { state.filter[name] = e.target.value; renderServerRows(); } },
      h('option', { value: '' }, 'All ' + label.toLowerCase()), values.map((v) => h('option', { value: v }, v)));
    s.value = state.filter[name];
    return s;
  };
  const search = h('input', { type: 'search', name: 'text', placeholder: 'Filter by hostname or id', 'aria-label': 'Filter by hostname or id', value: state.filter.text,
    oninput: (e) => { state.filter.text = e.target.value; renderServerRows(); } });
  view.append(
    h('h1', {}, 'Source servers'),
    h('div', { class: 'filters' }, search,
      state.group && (state.group.application_id || state.group.wave_id)
        ? h('a', { href: '#/servers', class: 'badge info', title: 'clear' }, `${state.group.application_id ? 'application ' + state.group.application_id : 'wave ' + state.group.wave_id} ✕`) : null, select('lifecycle', 'Lifecycle states', lifecycles), select('replication', 'Replication states', repls), h('span', { class: 'count', id: 'server-count' })),
    h('div', { class: 'scroll card', style: 'padding:0' },
      h('table', { id: 'servers' },
        h('thead', {}, h('tr', {}, COLUMNS.map((c) => h('th', { 'data-sort': c.key, class: c.opt ? 'opt' : '', onclick: () => {
          state.sort = { key: c.key, dir: state.sort.key === c.key ? -state.sort.dir : 1 };
          renderServerRows();
        } }, c.label, h('span', { class: 'arrow' }))))),
        h('tbody', {}))),
  );
  return view;
}

function renderServerRows() {
  const tbody = $('#servers tbody');
  if (!tbody) return;
  const rows = filteredServers();
  for (const th of document.querySelectorAll('#servers th')) {
    th.querySelector('.arrow').textContent = th.dataset.sort === state.sort.key ? (state.sort.dir > 0 ? ' ▲' : ' ▼') : '';
  }
  $('#server-count').textContent = `${rows.length} of ${state.servers.size} servers`;
  tbody.replaceChildren(...rows.map((s) => {
    const p = progress(s);
    const syncing = ['INITIAL_SYNC', 'RESCAN', 'INITIATING'].includes(s.replication.state);
    return h('tr', { 'data-id': s.id },
      h('td', {}, h('a', { href: '#/servers/' + encodeURIComponent(s.id) }, s.hostname)),
      h('td', {}, h('span', { class: 'badge' }, s.lifecycle_state)),
      h('td', {}, replBadge(s)),
      h('td', {}, p.total ? bar(p.pct, (syncing ? (p.rescan ? 'rescan ' : '') : '') + p.pct.toFixed(0) + '%') : '—'),
      h('td', { class: 'num' }, duration(s.replication.lag_seconds)),
      h('td', { class: 'num opt' }, bytes(backlog(s))),
      h('td', { class: 'num opt' }, s.replication.eta_seconds ? duration(s.replication.eta_seconds) : '—'),
      h('td', { class: 'opt' }, when(s.replication.last_snapshot_at)),
      h('td', { class: 'opt' }, s.replication.replication_server || '—'));
  }));
  if (!rows.length) tbody.append(h('tr', {}, h('td', { colspan: COLUMNS.length, class: 'empty' }, state.servers.size ? 'No server matches the filters.' : 'No servers yet: create an install token and run ferry agent on a source server.')));
}

// Actions: route, label, least role, whether it needs confirmation, and
// when it applies.
const ACTIONS = [
  { path: 'replication/pause', label: 'Pause replication', when: (s) => !s.desired_replication },
  { path: 'replication/resume', label: 'Resume replication', when: (s) => s.desired_replication === 'PAUSE' },
  { path: 'replication/stop', label: 'Stop replication', danger: true, when: (s) => s.desired_replication !== 'STOP' },
  { path: 'replication/start', label: 'Start replication', when: (s) => s.desired_replication === 'STOP' },
  { path: 'replication/retry', label: 'Retry', when: (s) => !s.desired_replication && !!s.replication.error_code },
  { path: 'disconnect', label: 'Disconnect', danger: true, when: (s) => s.lifecycle_state !== 'DISCONNECTED' },
  { path: 'archive', label: 'Archive', danger: true, when: (s) => ['DISCONNECTED', 'CUTOVER'].includes(s.lifecycle_state) && !s.archived },
];

// Launch actions: they start jobs (or finalize), least role operator.
const LAUNCH_ACTIONS = [
  { kind: 'start-test', label: 'Test launch', when: (s) => ['READY_FOR_TEST', 'TESTING', 'READY_FOR_CUTOVER'].includes(s.lifecycle_state) },
  { kind: 'start-cutover', label: 'Cut over', danger: true, when: (s) => s.lifecycle_state === 'READY_FOR_CUTOVER' },
  { kind: 'terminate', label: 'Terminate instance', danger: true,
    when: (s) => s.launched_instance && !s.launched_instance.terminated_at && !(s.launched_instance.kind === 'START_CUTOVER' && ['CUTTING_OVER', 'CUTOVER'].includes(s.lifecycle_state)) },
  { kind: 'finalize', label: 'Finalize cutover', danger: true, when: (s) => s.lifecycle_state === 'CUTTING_OVER' && s.launched_instance && s.launched_instance.kind === 'START_CUTOVER' },
];

async function runLaunchAction(s, a) {
  if (a.danger && !window.confirm(`${a.label} for ${s.hostname} (${s.id})? This cannot be undone.`)) return;
  try {
    if (a.kind === 'finalize') {
      await api(`/servers/${encodeURIComponent(s.id)}/finalize`, { method: 'POST' });
      flash(`Cutover finalized for ${s.hostname}.`);
    } else {
      const job = await api('/jobs/' + a.kind, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ source_server_ids: [s.id] }) });
      flash(`${a.label}: job ${job.id} started for ${s.hostname}.`);
    }
    route();
  } catch (e) {
    if (e.status !== 401) flash(`${a.label} failed: ${e.message}`, true);
  }
}

async function runAction(s, a) {
  if (a.danger && !window.confirm(`${a.label} for ${s.hostname} (${s.id})?`)) return;
  try {
    const updated = await api(`/servers/${encodeURIComponent(s.id)}/${a.path}`, { method: 'POST' });
    state.servers.set(updated.id, updated);
    flash(`${a.label}: done for ${updated.hostname}.`);
    route();
  } catch (e) {
    if (e.status !== 401) flash(`${a.label} failed: ${e.message}`, true);
  }
}

async function serverView(id) {
  const view = h('div', { id: 'server-view' }, h('p', { class: 'muted' }, 'Loading…'));
  let s;
  try {
    s = await api('/servers/' + encodeURIComponent(id));
  } catch (e) {
    view.replaceChildren(h('p', { class: 'error' }, e.status === 404 ? `No server ${id}.` : e.message));
    return view;
  }
  const r = s.replication;
  const p = progress(s);
  const kv = (pairs) => h('dl', { class: 'kv' }, pairs.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  const actions = can('operator')
    ? h('div', { class: 'actions', id: 'actions' }, LAUNCH_ACTIONS.filter((a) => a.when(s)).map((a) =>
      h('button', { type: 'button', class: a.danger ? 'danger' : '', 'data-launch': a.kind, onclick: () => runLaunchAction(s, a) }, a.label)),
    ACTIONS.filter((a) => a.when(s)).map((a) =>
      h('button', { type: 'button', class: a.danger ? 'danger' : 'secondary', 'data-action': a.path, onclick: () => runAction(s, a) }, a.label)))
    : null;
  view.replaceChildren(
    h('p', {}, h('a', { href: '#/servers' }, '← All servers')),
    h('h1', {}, s.hostname, ' ', h('span', { class: 'muted' }, s.id)),
    h('div', { class: 'grid2' },
      h('div', { class: 'card' }, h('h2', {}, 'Replication'), kv([
        ['Lifecycle', h('span', { class: 'badge' }, s.lifecycle_state)],
        ['State', replBadge(s)],
        ['Set to', s.desired_replication || 'RUN'],
        ['Progress', p.total ? bar(p.pct, `${bytes(p.done)} of ${bytes(p.total)}`) : '—'],
        ['Lag', duration(r.lag_seconds)],
        ['Backlog', bytes(backlog(s))],
        ['ETA', r.eta_seconds ? duration(r.eta_seconds) : '—'],
        ['Last snapshot', when(r.last_snapshot_at)],
        ['Replication server', r.replication_server || '—'],
        ...(r.error_code ? [['Error', h('span', { class: 'error' }, `${r.error_code}: ${r.error_message || ''}`)]] : []),
      ]), actions),
      h('div', { class: 'card' }, h('h2', {}, 'Source'), kv([
        ['OS', s.os || '—'], ['Kernel', s.kernel || '—'], ['CPUs', s.cpus], ['RAM', bytes(s.ram_bytes)],
        ['Agent', s.agent_version || '—'], ['Last seen', when(s.last_seen_at)],
        ['Application', s.application_id || '—'], ['Wave', s.wave_id || '—'],
        ['Tags', Object.entries(s.tags || {}).map(([k, v]) => `${k}=${v}`).join(', ') || '—'],
        ['Archived', s.archived ? 'yes' : 'no'],
      ]))),
    h('div', { class: 'card scroll' }, h('h2', {}, 'Disks'), h('table', { id: 'disks' },
      h('thead', {}, h('tr', {}, ['Disk', 'Size', 'Replicated', 'Rescanned', 'Backlog', 'Progress'].map((c) => h('th', {}, c)))),
      h('tbody', {}, (s.disks || []).map((d) => h('tr', {},
        h('td', {}, d.name, d.boot ? ' (boot)' : ''), h('td', { class: 'num' }, bytes(d.size_bytes)),
        h('td', { class: 'num' }, bytes(d.replicated_bytes)), h('td', { class: 'num' }, bytes(d.rescanned_bytes)),
        h('td', { class: 'num' }, bytes(d.backlogged_bytes)),
        h('td', {}, bar(d.size_bytes ? (100 * d.replicated_bytes) / d.size_bytes : 0, (d.size_bytes ? (100 * d.replicated_bytes / d.size_bytes).toFixed(0) : 0) + '%'))))))),
    h('div', { class: 'card', id: 'history' }, h('h2', {}, 'Throughput and lag'), h('p', { class: 'muted' }, 'Loading…')),
    launchCard(s),
    h('div', { class: 'card scroll', id: 'snapshots' }, h('h2', {}, 'Snapshots'), h('p', { class: 'muted' }, 'Loading…')),
    h('div', { class: 'card scroll', id: 'jobs' }, h('h2', {}, 'Jobs'), h('p', { class: 'muted' }, 'Loading…')),
    h('div', { class: 'card scroll', id: 'audit' }, h('h2', {}, 'Audit events'), h('p', { class: 'muted' }, 'Loading…')),
  );
  loadHistory(view, s.id);
  loadSnapshots(view, s.id);
  loadJobs(view, s.id);
  loadAudit(view, s.id);
  return view;
}

// launchCard shows the newest launched instance, its post-launch results
// and the tail of its console log.
function launchCard(s) {
  const i = s.launched_instance;
  const box = h('div', { class: 'card', id: 'launch' }, h('h2', {}, 'Launched instance'));
  if (!i) {
    box.append(h('p', { class: 'muted' }, 'No instance launched yet. Launch history is in the jobs below.'));
    return box;
  }
  const kv = (pairs) => h('dl', { class: 'kv' }, pairs.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  box.append(kv([
    ['Instance', i.id], ['Kind', i.kind === 'START_CUTOVER' ? 'cutover' : 'test'], ['Target', i.target || '—'],
    ['First boot', h('span', { class: 'badge' }, i.first_boot || '—')], ['Launched', when(i.launched_at)],
    ['Terminated', i.terminated_at ? when(i.terminated_at) : '—'],
    ['Snapshots', Object.entries(i.snapshots || {}).map(([d, id]) => `${d}: ${id}`).join(', ') || '—'],
    ['Addresses', (i.addresses || []).join(', ') || '—'],
  ]));
  const pl = i.post_launch_actions || [];
  box.append(h('h3', {}, 'Post-launch actions'), pl.length ? h('table', { id: 'postlaunch' },
    h('thead', {}, h('tr', {}, ['Action', 'Status', 'Output'].map((c) => h('th', {}, c)))),
    h('tbody', {}, pl.map((r) => h('tr', {}, h('td', {}, r.name || r.action_id || ''),
      h('td', {}, h('span', { class: 'badge ' + (r.status === 'SUCCESS' ? 'ok' : r.status === 'FAILED' ? 'bad' : '') }, r.status)),
      h('td', {}, h('pre', { class: 'log' }, r.output || '')))))) : h('p', { class: 'muted' }, 'None ran.'));
  if (i.console_log) {
    const pre = h('pre', { class: 'log', id: 'console' }, '');
    const load = async () => {
      try {
        const res = await fetch(`${API}/servers/${encodeURIComponent(s.id)}/console?kib=16`, { headers: { Authorization: 'Bearer ' + state.token } });
        pre.textContent = res.ok ? await res.text() : ((await res.json().catch(() => ({}))).message || 'HTTP ' + res.status);
        pre.scrollTop = pre.scrollHeight;
      } catch (e) { pre.textContent = e.message; }
    };
    box.append(h('h3', {}, 'Console log (last 16 KiB) ', h('button', { type: 'button', class: 'link', id: 'console-refresh', onclick: load }, 'refresh')), pre);
    load();
  }
  return box;
}

async function loadSnapshots(view, id) {
  const box = view.querySelector('#snapshots');
  try {
    const l = await api('/servers/' + encodeURIComponent(id) + '/snapshots');
    const items = (l.items || []).slice().sort((a, b) => (a.time < b.time ? 1 : -1));
    box.replaceChildren(h('h2', {}, 'Snapshots'), items.length ? h('table', {},
      h('thead', {}, h('tr', {}, ['Time', 'Disk', 'Snapshot', 'Consistency', 'Size'].map((c) => h('th', {}, c)))),
      h('tbody', {}, items.slice(0, 100).map((x) => h('tr', {}, h('td', {}, when(x.time)), h('td', {}, x.disk), h('td', {}, x.id),
        h('td', {}, x.consistency), h('td', { class: 'num' }, bytes(x.size_bytes))))))
      : h('p', { class: 'muted' }, 'No snapshots yet.'));
  } catch (e) {
    box.replaceChildren(h('h2', {}, 'Snapshots'), h('p', { class: e.status === 503 ? 'muted' : 'error' }, e.message));
  }
}

const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

// chart draws throughput and lag as two lines over time, each scaled to
// its own maximum (left axis throughput, right axis lag).
function chart(samples) {
  const W = 640, H = 180, L = 64, R = 56, T = 10, B = 24;
  const t0 = new Date(samples[0].time).getTime(), t1 = new Date(samples[samples.length - 1].time).getTime();
  const span = Math.max(t1 - t0, 1);
  const rawT = Math.max(...samples.map((x) => x.throughput_bytes_per_sec));
  const maxT = Math.max(rawT, 1);
  const maxL = Math.max(...samples.map((x) => x.lag_seconds), 1);
  const x = (t) => L + ((new Date(t).getTime() - t0) / span) * (W - L - R);
  const y = (v, m) => T + (1 - v / m) * (H - T - B);
  const line = (f, m, cls) => svg('polyline', { class: cls, fill: 'none', points: samples.map((s) => `${x(s.time).toFixed(1)},${y(f(s), m).toFixed(1)}`).join(' ') });
  return svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'throughput and lag over time', id: 'chart' },
    svg('line', { class: 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B }),
    svg('text', { x: L - 4, y: T + 10, 'text-anchor': 'end', class: 'tput' }, rawT > 0 ? bytes(maxT) + '/s' : 'none'),
    svg('text', { x: L - 4, y: H - B, 'text-anchor': 'end', class: 'tput' }, '0'),
    svg('text', { x: W - R + 4, y: T + 10, class: 'lag' }, duration(maxL)),
    svg('text', { x: W - R + 4, y: H - B, class: 'lag' }, '0 s'),
    svg('text', { x: L, y: H - 6, class: 'muted' }, new Date(t0).toLocaleTimeString()),
    svg('text', { x: W - R, y: H - 6, 'text-anchor': 'end', class: 'muted' }, new Date(t1).toLocaleTimeString()),
    line((s) => s.throughput_bytes_per_sec, maxT, 'tput'),
    line((s) => s.lag_seconds, maxL, 'lag'));
}

async function loadHistory(view, id) {
  const box = view.querySelector('#history');
  try {
    const hist = await api('/servers/' + encodeURIComponent(id) + '/history');
    const d = hist.diagnosis;
    box.replaceChildren(h('h2', {}, 'Throughput and lag'),
      hist.samples.length >= 2
        ? h('div', {}, chart(hist.samples), h('p', { class: 'legend' }, h('span', { class: 'tput' }, '— throughput'), ' ', h('span', { class: 'lag' }, '— lag'),
          h('span', { class: 'muted' }, ` · one sample every ${hist.interval_seconds} s, last ${duration((new Date(hist.samples[hist.samples.length - 1].time) - new Date(hist.samples[0].time)) / 1000)}`)))
        : h('p', { class: 'muted' }, 'Collecting samples (one every ' + hist.interval_seconds + ' s)…'),
      h('p', { id: 'diagnosis', class: 'diagnosis ' + (d.bottleneck === 'NONE' ? 'ok' : d.bottleneck === 'UNKNOWN' ? 'muted' : 'warn'), 'data-bottleneck': d.bottleneck },
        h('strong', {}, d.bottleneck === 'NONE' ? 'Healthy. ' : d.bottleneck === 'UNKNOWN' ? '' : 'Why it lags: '), d.summary,
        d.limited ? h('span', { class: 'muted' }, ' (limited diagnosis)') : ''),
      agentShares(hist.samples));
  } catch (e) {
    box.replaceChildren(h('h2', {}, 'Throughput and lag'), h('p', { class: 'error' }, e.message));
  }
}

// agentShares shows where the agent's sender spent the last interval, when
// the agent reports it: the figures behind a source-read or network
// diagnosis.
function agentShares(samples) {
  const a = samples.length ? samples[samples.length - 1].agent : null;
  if (!a) return '';
  const pct = (v) => Math.round(100 * v) + '%';
  return h('p', { id: 'agent-shares', class: 'muted' }, `Agent, last sample: reading the source ${pct(a.read)}, waiting on the network ${pct(a.network)}, throttled ${pct(a.throttle)}, idle ${pct(a.idle)}.`);
}

async function loadJobs(view, id) {
  const box = view.querySelector('#jobs');
  try {
    const jobs = await api('/jobs?source_server_id=' + encodeURIComponent(id) + '&limit=50');
    const mine = (j) => (j.participating_servers || []).find((x) => x.source_server_id === id) || {};
    box.replaceChildren(h('h2', {}, 'Jobs and launch history'), jobs.items.length ? h('table', { id: 'jobs-table' },
      h('thead', {}, h('tr', {}, ['Job', 'Type', 'Initiated by', 'Status', 'Launch', 'Instance', 'Created', 'Ended'].map((c) => h('th', {}, c)))),
      h('tbody', {}, jobs.items.flatMap((j) => {
        const logRow = h('tr', { class: 'joblog', hidden: true, 'data-log': j.id }, h('td', { colspan: 8 }, h('pre', { class: 'log' }, 'Loading…')));
        const toggle = async () => {
          logRow.hidden = !logRow.hidden;
          if (logRow.hidden) return;
          const pre = logRow.querySelector('pre');
          try {
            const full = await api('/jobs/' + encodeURIComponent(j.id));
            pre.textContent = full.log.map((l) => `${new Date(l.time).toLocaleTimeString()}  ${l.event.padEnd(24)} ${l.source_server_id || ''}  ${l.message}`).join('\n') || 'The log is empty.';
          } catch (e) { pre.textContent = e.message; }
        };
        const js = mine(j);
        return [h('tr', { 'data-job': j.id },
          h('td', {}, h('button', { type: 'button', class: 'link', 'aria-expanded': 'false', onclick: (e) => { toggle(); e.target.setAttribute('aria-expanded', String(!logRow.hidden)); } }, '▸ ' + j.id)),
          h('td', {}, j.type), h('td', {}, j.initiated_by),
          h('td', {}, h('span', { class: 'badge' }, j.status)),
          h('td', {}, js.launch_status ? h('span', { class: 'badge ' + (js.launch_status === 'FAILED' ? 'bad' : js.launch_status === 'LAUNCHED' ? 'ok' : '') }, js.launch_status) : '—'),
          h('td', {}, js.instance_id || '—'),
          h('td', {}, when(j.created_at)), h('td', {}, when(j.ended_at))), logRow];
      })))
      : h('p', { class: 'muted' }, 'No jobs yet.'));
  } catch (e) {
    box.replaceChildren(h('h2', {}, 'Jobs'), h('p', { class: 'error' }, e.message));
  }
}

async function loadAudit(view, id) {
  const box = view.querySelector('#audit');
  if (!can('admin')) {
    box.replaceChildren(h('h2', {}, 'Audit events'), h('p', { class: 'muted' }, 'Audit events need an admin token.'));
    return;
  }
  try {
    const ev = await api('/audit?limit=1000');
    const mine = ev.items.filter((e) => e.target === id).slice(0, 50);
    box.replaceChildren(h('h2', {}, 'Audit events'), mine.length ? h('table', {},
      h('thead', {}, h('tr', {}, ['Time', 'Actor', 'Action', 'Outcome', 'Detail'].map((c) => h('th', {}, c)))),
      h('tbody', {}, mine.map((e) => h('tr', {}, h('td', {}, when(e.time)), h('td', {}, e.actor), h('td', {}, e.action),
        h('td', {}, h('span', { class: 'badge ' + (e.outcome === 'success' ? 'ok' : 'bad') }, e.outcome)), h('td', {}, e.detail || '')))))
      : h('p', { class: 'muted' }, 'No audit events for this server among the latest 1000.'));
  } catch (e) {
    box.replaceChildren(h('h2', {}, 'Audit events'), h('p', { class: 'error' }, e.message));
  }
}

async function groupsView(kind) {
  const title = kind === 'applications' ? 'Applications' : 'Waves';
  const view = h('div', { id: kind + '-view' }, h('h1', {}, title), h('p', { class: 'muted' }, 'Loading…'));
  try {
    const list = await api('/' + kind + '?limit=1000');
    const filterKey = kind === 'applications' ? 'application_id' : 'wave_id';
    view.replaceChildren(h('h1', {}, title), list.items.length ? h('div', { class: 'card scroll', style: 'padding:0' }, h('table', { id: kind },
      h('thead', {}, h('tr', {}, ['Name', 'Health', 'Progress', 'Servers', 'By lifecycle', 'Description'].map((c, i) => h('th', { class: i >= 4 ? 'opt' : '' }, c)))),
      h('tbody', {}, list.items.map((g) => h('tr', { 'data-id': g.id },
        h('td', {}, h('a', { href: `#/servers?${filterKey}=${encodeURIComponent(g.id)}`, title: 'show its servers' }, g.name)),
        h('td', {}, healthBadge(g.summary.health)),
        h('td', {}, progressBadge(g.summary.progress)),
        h('td', { class: 'num' }, g.summary.server_count),
        h('td', { class: 'counts opt' }, Object.entries(g.summary.lifecycle_counts || {}).map(([k, v]) => h('span', {}, `${k} ${v}`))),
        h('td', { class: 'opt muted' }, g.description || ''))))))
      : h('p', { class: 'empty card' }, `No ${kind} yet: create them with ferry ${kind} create or a CSV import.`));
  } catch (e) {
    view.replaceChildren(h('h1', {}, title), h('p', { class: 'error' }, e.message));
  }
  return view;
}

async function usageView() {
  const view = h('div', { id: 'usage-view' }, h('h1', {}, 'Usage'), h('p', { class: 'muted' }, 'Loading…'));
  try {
    const u = await api('/usage');
    const download = async () => {
      const res = await fetch(API + '/usage?format=csv', { headers: { Authorization: 'Bearer ' + state.token } });
      if (!res.ok) { flash('CSV download failed: HTTP ' + res.status, true); return; }
      const a = h('a', { href: URL.createObjectURL(await res.blob()), download: 'ferry-usage.csv' });
      document.body.append(a);
      a.click();
      a.remove();
    };
    view.replaceChildren(h('h1', {}, 'Usage'),
      h('p', {}, `Staging store: ${bytes(u.store_stored_bytes)} stored (shared chunks once). Days: time connected and replicating. Sent: data the agent sent since pairing, after compression. `,
        h('button', { type: 'button', id: 'usage-csv', class: 'secondary', onclick: download }, 'Download CSV')),
      u.servers.length ? h('div', { class: 'card scroll', style: 'padding:0' }, h('table', { id: 'usage' },
        h('thead', {}, h('tr', {}, ['Server', 'Disks', 'Logical', 'Stored', 'Snapshots', 'Days', 'Sent'].map((c) => h('th', {}, c)))),
        h('tbody', {}, u.servers.map((x) => h('tr', { 'data-id': x.source_server_id },
          h('td', {}, h('a', { href: '#/servers/' + encodeURIComponent(x.source_server_id) }, x.hostname || x.source_server_id)),
          h('td', { class: 'num' }, bytes(x.disk_bytes)), h('td', { class: 'num' }, bytes(x.logical_bytes)), h('td', { class: 'num' }, bytes(x.stored_bytes)),
          h('td', { class: 'num' }, x.snapshots), h('td', { class: 'num' }, x.days_replicated.toFixed(1)), h('td', { class: 'num' }, bytes(x.bytes_sent)))))))
        : h('p', { class: 'empty card' }, 'No servers yet.'));
  } catch (e) {
    view.replaceChildren(h('h1', {}, 'Usage'), h('p', { class: 'error' }, e.message));
  }
  return view;
}

// ---------- routing ----------

let current = '';

async function route() {
  if (!state.who) return;
  const hash = location.hash || '#/servers';
  const [path, query] = hash.slice(1).split('?');
  const parts = path.split('/').filter(Boolean);
  current = parts[0] || 'servers';
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.nav === current);
  const main = $('#view');
  let v;
  if (current === 'servers' && parts[1]) v = await serverView(decodeURIComponent(parts[1]));
  else if (current === 'applications' || current === 'waves') v = await groupsView(current);
  else if (current === 'usage') v = await usageView();
  else {
    current = 'servers';
    const q = new URLSearchParams(query || '');
    state.group = { application_id: q.get('application_id'), wave_id: q.get('wave_id') };
    v = serversView();
  }
  main.replaceChildren(v);
  if (current === 'servers' && !parts[1]) renderServerRows();
}

function refreshLive() {
  if (current === 'servers' && $('#servers')) renderServerRows();
}

// ---------- sign in / out ----------

async function signIn(token) {
  state.token = token;
  const who = await fetch(API + '/whoami', { headers: { Authorization: 'Bearer ' + token } });
  if (!who.ok) {
    const body = await who.json().catch(() => ({}));
    state.token = '';
    throw new Error(body.message || 'HTTP ' + who.status);
  }
  state.who = await who.json();
  sessionStorage.setItem(TOKEN_KEY, token);
  $('#signin').hidden = true;
  $('#nav').hidden = false;
  $('#who').hidden = false;
  $('#whoname').textContent = `${state.who.name} (${state.who.role})`;
  streamEvents();
  route();
}

function signOut(msg) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (state.stream) state.stream.abort();
  state.stream = null;
  state.token = '';
  state.who = null;
  state.servers = new Map();
  $('#nav').hidden = true;
  $('#who').hidden = true;
  $('#view').replaceChildren();
  $('#signin').hidden = false;
  flash(msg || '', !!msg);
}

$('#signin-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const err = $('#signin-error');
  err.hidden = true;
  try {
    await signIn($('#token').value.trim());
    $('#token').value = '';
    flash('');
  } catch (ex) {
    err.textContent = 'Sign-in failed: ' + ex.message;
    err.hidden = false;
  }
});
$('#signout').addEventListener('click', () => signOut(''));
window.addEventListener('hashchange', route);

if (state.token) signIn(state.token).catch(() => signOut('Your saved token no longer works; sign in again.'));
else signOut('');
