// flowd's dashboard: plain DOM, no framework, no build step. Every figure comes from the /v1
// API with the user's key, so the page sees what that key may see and nothing more. Rows change
// from websocket events; nothing polls for flows.

const KEY = 'flowd.key';
const STATUSES = ['initialized', 'running', 'paused', 'completed', 'failed', 'cancelled'];
const TERMINAL = new Set(['completed', 'failed', 'cancelled']);
const PAGE = 50;
const main = document.getElementById('main');
let teardown = [];

// ---- small helpers ---------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) el.addEventListener(name.slice(2), value);
    else if (name === 'text') el.textContent = value;
    else el.setAttribute(name, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function when(at) {
  if (!at) return '—';
  const d = new Date(at);
  return d.toLocaleString(undefined, { hour12: false });
}

function ago(at) {
  if (!at) return '';
  const s = Math.max(0, Math.round((Date.now() - new Date(at).getTime()) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

function span(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 120000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.round(ms / 60000)} min`;
}

function pct(value) {
  const v = Number(value || 0);
  return Number.isInteger(v) ? `${v}%` : `${v.toFixed(1)}%`;
}

function bar(value, label, big = false) {
  const v = Math.max(0, Math.min(100, Number(value || 0)));
  return h('div', {
    class: `bar${big ? ' big' : ''}${v >= 100 ? ' done' : ''}`, role: 'progressbar',
    'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': v, 'aria-label': label,
  }, h('span', { style: `width:${v}%` }));
}

function setBar(el, value) {
  const v = Math.max(0, Math.min(100, Number(value || 0)));
  el.setAttribute('aria-valuenow', v);
  el.classList.toggle('done', v >= 100);
  el.firstChild.style.width = `${v}%`;
}

function statusBadge(status) {
  return h('span', { class: `status ${status}`, 'data-status': status, text: status });
}

/** A reason in words; the raw object stays in `data-kind` for scripts and tests. */
export function reasonText(reason) {
  if (!reason) return '';
  switch (reason.kind) {
    case 'starting': return 'Starting';
    case 'paused': return `Paused since ${when(reason.since)}`;
    case 'running': return `Running ${reason.phase}${reason.handler ? ` (${reason.handler})` : ''}, attempt ${reason.attempt}`;
    case 'waiting_for_worker': return `Waiting for a worker on queue ${reason.queue} since ${when(reason.since)} (${ago(reason.since)})`;
    case 'leased_by_worker': return `Worker ${reason.worker_id || '?'} holds ${reason.phase} from queue ${reason.queue}`;
    case 'waiting_for_children': return `Waiting for children: ${reason.done} of ${reason.total} done`;
    case 'retry_backoff': {
      const next = reason.next_attempt_at ? ` at ${when(reason.next_attempt_at)}` : '';
      return `Retrying ${reason.phase}${next} after ${reason.after || 'a failure'} (attempt ${reason.attempt} failed)`;
    }
    case 'scheduled': return `Next: ${reason.phase}`;
    case 'restarted_by_health': return `Restarted by health after a missed ping at ${when(reason.since)}${reason.phase ? `, resuming ${reason.phase}` : ''} (${reason.detail})`;
    default: return reason.kind;
  }
}

function reasonEl(reason, id) {
  return h('span', { class: 'reason', id, 'data-kind': reason ? reason.kind : '', text: reasonText(reason) });
}

// ---- notices: errors and completions only ----------------------------------------------

function notify(message, kind = 'info') {
  const box = document.getElementById('notices');
  const close = h('button', { type: 'button', 'aria-label': 'Dismiss', text: '×' });
  const note = h('div', { class: `notice ${kind}`, role: kind === 'error' ? 'alert' : 'status' },
    h('span', { text: message }), close);
  close.addEventListener('click', () => note.remove());
  box.append(note);
  setTimeout(() => note.remove(), kind === 'error' ? 12000 : 6000);
}

// ---- API -------------------------------------------------------------------------------

class Unauthorized extends Error {}

function key() { return sessionStorage.getItem(KEY); }

async function api(path, options = {}) {
  const headers = { Accept: 'application/json', ...(options.headers || {}) };
  if (key()) headers.Authorization = `Bearer ${key()}`;
  if (options.body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, {
    method: options.method || 'GET', headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  if (response.status === 401) throw new Unauthorized((await problem(response)) || 'a key is needed');
  if (!response.ok) {
    const error = new Error((await problem(response)) || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return response.status === 204 ? null : response.json();
}

async function problem(response) {
  try { const p = await response.json(); return p.detail || p.title; } catch { return null; }
}

/** A websocket that reconnects from its cursor; `onEvent` gets each parsed event. */
function stream(path, after, onEvent) {
  let cursor = after;
  let socket = null;
  let closed = false;
  let delay = 500;
  const open = () => {
    const url = new URL(path, location.href);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    if (cursor !== null && cursor !== undefined) url.searchParams.set('after', cursor);
    if (key()) url.searchParams.set('access_token', key());
    socket = new WebSocket(url);
    socket.onopen = () => { delay = 500; };
    socket.onmessage = (message) => {
      const event = JSON.parse(message.data);
      cursor = path.includes('/flows/') ? (event.flow_id === path.split('/')[3] ? event.seq : cursor) : event.id;
      onEvent(event);
    };
    socket.onclose = () => {
      if (closed) return;
      setTimeout(() => { if (!closed) open(); }, delay);
      delay = Math.min(delay * 2, 10000);
    };
  };
  open();
  return () => { closed = true; if (socket) socket.close(); };
}

function throttle(fn, ms) {
  let timer = null;
  let pending = false;
  const run = () => {
    timer = null;
    if (pending) { pending = false; fn(); timer = setTimeout(run, ms); }
  };
  return () => {
    pending = true;
    if (!timer) run();
  };
}

// ---- auth ------------------------------------------------------------------------------

function askForKey(message) {
  main.replaceChildren(
    h('h1', { text: 'Sign in' }),
    h('form', {
      class: 'card', id: 'key-form',
      onsubmit: (e) => {
        e.preventDefault();
        const value = new FormData(e.target).get('key').trim();
        if (value) { sessionStorage.setItem(KEY, value); route(); }
      },
    },
    h('p', { text: 'This server needs an API key. It is kept for this browser tab only (sessionStorage).' }),
    message ? h('p', { class: 'reason', role: 'alert', text: message }) : null,
    h('div', { class: 'row' },
      h('label', { for: 'key-input', text: 'API key' }),
      h('input', { id: 'key-input', name: 'key', type: 'password', autocomplete: 'off', required: true }),
      h('button', { class: 'primary', type: 'submit', text: 'Continue' }))),
  );
  document.getElementById('key-input').focus();
}

document.getElementById('sign-out').addEventListener('click', () => {
  sessionStorage.removeItem(KEY);
  route();
});

// ---- health strip ----------------------------------------------------------------------

async function refreshHealth() {
  const el = document.getElementById('health');
  try {
    const health = await api('/v1/health');
    const parts = [
      h('span', { class: 'dot', style: `background:${health.ready ? '#3fb950' : '#f85149'}` }),
      health.ready ? 'ready' : 'not ready',
      health.mean_commit_ms === null ? '' : ` · commit ${health.mean_commit_ms.toFixed(1)} ms`,
      health.live_flow_actors === null ? '' : ` · ${health.live_flow_actors} live actors`,
    ];
    el.replaceChildren(...parts);
  } catch (error) {
    el.textContent = error instanceof Unauthorized ? '' : 'health unknown';
  }
}

// ---- flows page ------------------------------------------------------------------------

async function flowsPage() {
  const params = new URLSearchParams(location.search);
  const filter = { status: params.get('status') || '', flow_type: params.get('flow_type') || '' };
  const cursors = [];
  let cursor = params.get('cursor');
  const [counts, types] = await Promise.all([api('/v1/flows/counts'), api('/v1/flow-types')]);

  const countList = h('ul', { class: 'counts', 'aria-label': 'Flows per status' });
  const typeSelect = h('select', { id: 'filter-type', name: 'flow_type' },
    h('option', { value: '', text: 'any type' }),
    ...types.flow_types.map((t) => h('option', { value: t.name, text: t.name })));
  typeSelect.value = filter.flow_type;
  const statusSelect = h('select', { id: 'filter-status', name: 'status' },
    h('option', { value: '', text: 'any status' }),
    ...STATUSES.map((s) => h('option', { value: s, text: s })));
  statusSelect.value = filter.status;
  const search = h('input', { id: 'search-id', name: 'id', placeholder: 'flow id', autocomplete: 'off', size: 38 });
  const tbody = h('tbody', { id: 'flow-rows' });
  const pager = h('div', { class: 'row', style: 'margin-top:8px' });
  const rows = new Map();

  const applyFilters = () => {
    const next = new URLSearchParams();
    if (filter.status) next.set('status', filter.status);
    if (filter.flow_type) next.set('flow_type', filter.flow_type);
    history.replaceState(null, '', `/ui${next.toString() ? `?${next}` : ''}`);
    cursor = null;
    cursors.length = 0;
    load();
    renderCounts();
  };
  statusSelect.addEventListener('change', () => { filter.status = statusSelect.value; applyFilters(); });
  typeSelect.addEventListener('change', () => { filter.flow_type = typeSelect.value; applyFilters(); });

  let current = counts;
  function renderCounts() {
    countList.replaceChildren(
      h('li', {}, h('button', {
        type: 'button', 'aria-pressed': String(!filter.status),
        onclick: () => { filter.status = ''; statusSelect.value = ''; applyFilters(); },
      }, `all ${current.total}`)),
      ...STATUSES.map((s) => h('li', {}, h('button', {
        type: 'button', 'data-count': s, 'aria-pressed': String(filter.status === s),
        onclick: () => { filter.status = s; statusSelect.value = s; applyFilters(); },
      }, `${s} ${current.counts[s] || 0}`))));
  }
  const refreshCounts = throttle(async () => {
    try { current = await api('/v1/flows/counts'); renderCounts(); } catch { /* shown on next load */ }
  }, 1000);

  function row(flow) {
    const progress = bar(flow.progress_percentage, `progress of ${flow.id}`);
    const tr = h('tr', { 'data-flow-id': flow.id },
      h('td', {}, h('a', { href: `/ui/flows/${flow.id}`, class: 'mono', text: flow.id.slice(0, 8) + '…', 'aria-label': `flow ${flow.id}` })),
      h('td', { text: flow.flow_type }),
      h('td', { class: 'cell-status' }, statusBadge(flow.status)),
      h('td', { class: 'hide-narrow cell-phase', text: flow.current_phase || '—' }),
      h('td', {}, progress, h('span', { class: 'pct', text: pct(flow.progress_percentage) })),
      h('td', { class: 'hide-narrow cell-reason' }, reasonEl(flow.status_reason)),
      h('td', { class: 'hide-narrow muted cell-updated', text: when(flow.updated_at) }));
    rows.set(flow.id, { tr, progress });
    return tr;
  }

  function update(event) {
    const entry = rows.get(event.flow_id);
    if (!entry) return false;
    const { tr, progress } = entry;
    tr.querySelector('.cell-status').replaceChildren(statusBadge(event.status));
    tr.querySelector('.cell-phase').textContent = event.current_phase || '—';
    setBar(progress, event.progress_percentage);
    tr.querySelector('.pct').textContent = pct(event.progress_percentage);
    tr.querySelector('.cell-updated').textContent = when(event.at);
    // Every event says why its flow is where it is (none once terminal): no re-read.
    if (TERMINAL.has(event.status)) tr.querySelector('.cell-reason').replaceChildren();
    else if (event.status_reason) tr.querySelector('.cell-reason').replaceChildren(reasonEl(event.status_reason));
    return true;
  }

  async function load() {
    const query = new URLSearchParams({ limit: PAGE });
    if (filter.status) query.set('status', filter.status);
    if (filter.flow_type) query.set('flow_type', filter.flow_type);
    if (cursor) query.set('cursor', cursor);
    const page = await api(`/v1/flows?${query}`);
    rows.clear();
    tbody.replaceChildren(...page.flows.map(row));
    if (!page.flows.length) tbody.append(h('tr', {}, h('td', { colspan: 7, class: 'muted', text: 'No flows.' })));
    pager.replaceChildren(
      h('button', { type: 'button', disabled: !cursors.length, onclick: () => { cursor = cursors.pop() || null; load(); } }, 'Newer'),
      h('button', { type: 'button', disabled: !page.next_cursor, onclick: () => { cursors.push(cursor); cursor = page.next_cursor; load(); } }, 'Older'),
      h('span', { class: 'muted', text: cursor ? 'older flows' : 'newest first' }));
  }

  // New flows re-read the first page (filters applied by the API), at most once a second
  // however fast flows are created; older pages are left alone.
  const reloadFirst = throttle(() => { if (!cursor) load().catch(() => {}); }, 1000);

  main.replaceChildren(
    h('h1', { text: 'Flows' }),
    h('form', {
      class: 'row filters card', role: 'search',
      onsubmit: async (e) => {
        e.preventDefault();
        const id = search.value.trim();
        if (!id) return;
        try { await api(`/v1/flows/${encodeURIComponent(id)}`); navigate(`/ui/flows/${id}`); } catch (error) {
          notify(error.status === 404 || error.status === 400 ? `No flow ${id}` : error.message, 'error');
        }
      },
    },
    h('label', { for: 'filter-status' }, 'Status', statusSelect),
    h('label', { for: 'filter-type' }, 'Flow type', typeSelect),
    h('label', { for: 'search-id' }, 'Find by id', search),
    h('button', { type: 'submit', text: 'Open' })),
    countList,
    h('div', { class: 'table-wrap' }, h('table', { 'aria-label': 'Flows, newest first' },
      h('thead', {}, h('tr', {},
        h('th', { scope: 'col', text: 'Id' }), h('th', { scope: 'col', text: 'Type' }),
        h('th', { scope: 'col', text: 'Status' }), h('th', { scope: 'col', class: 'hide-narrow', text: 'Phase' }),
        h('th', { scope: 'col', text: 'Progress' }), h('th', { scope: 'col', class: 'hide-narrow', text: 'Why' }),
        h('th', { scope: 'col', class: 'hide-narrow', text: 'Updated' }))),
      tbody)),
    pager);
  renderCounts();
  await load();

  const stop = stream('/v1/events/ws', counts.stream_after, (event) => {
    if (!update(event) && (event.kind === 'flow_initialized' || event.kind === 'flow_started')) reloadFirst();
    if (['flow_initialized', 'flow_started', 'flow_paused', 'flow_resumed', 'flow_completed', 'flow_failed', 'flow_cancelled', 'flow_retried'].includes(event.kind)) refreshCounts();
  });
  teardown.push(stop);
}

// ---- flow page -------------------------------------------------------------------------

const APPLIES = {
  pause: (s) => s === 'running' || s === 'initialized',
  resume: (s) => s === 'paused',
  cancel: (s) => !TERMINAL.has(s),
  retry: (s) => s === 'failed',
};

async function flowPage(id) {
  let flow = await api(`/v1/flows/${id}`);
  // A flow that ends while on screen is announced once; one that had ended already is not.
  let announced = TERMINAL.has(flow.status);
  const status = h('span', { id: 'flow-status' });
  const reason = h('p', { id: 'reason-line', 'aria-live': 'polite' });
  const progress = bar(flow.progress_percentage, 'flow progress', true);
  progress.id = 'flow-progress';
  const progressText = h('span', { class: 'pct', id: 'flow-progress-text' });
  const phaseLine = h('dl', { class: 'kv' });
  const timeline = h('tbody', { id: 'timeline' });
  const failures = h('tbody', { id: 'failures' });
  const events = h('tbody', { id: 'events' });
  const io = h('div', {});
  const family = h('div', { id: 'family' });
  const buttons = {};
  let ioKey = null;
  const history = [];
  const children = new Map();
  // Flows of this tree seen on the stream that are not direct children (grandchildren).
  const others = new Set();

  for (const action of ['pause', 'resume', 'cancel', 'retry']) {
    buttons[action] = h('button', {
      type: 'button', id: `action-${action}`, class: action === 'cancel' ? 'danger' : '',
      onclick: () => act(action),
    }, action[0].toUpperCase() + action.slice(1));
  }

  async function act(action) {
    if (action === 'cancel') {
      const dialog = document.getElementById('confirm');
      dialog.returnValue = '';
      dialog.showModal();
      const answer = await new Promise((resolve) => dialog.addEventListener('close', () => resolve(dialog.returnValue), { once: true }));
      if (answer !== 'yes') return;
    }
    buttons[action].disabled = true;
    try {
      flow = { ...flow, ...(await api(`/v1/flows/${id}/${action}`, { method: 'POST' })) };
      render();
      refetch();
    } catch (error) {
      notify(`${action} failed: ${error.message}`, 'error');
      render();
    }
  }

  // Unfolded nodes of the children tree and what they listed: a redraw keeps them as they were.
  const opened = new Map();
  // One node of the children tree; its own children load when the user unfolds it.
  function childItem(c) {
    const nested = h('ul', { class: 'tree' });
    const fill = (flows) => nested.replaceChildren(...(flows.length ? flows.map((g) => childItem(g)) : [h('li', { class: 'muted', text: 'no children' })]));
    const more = h('details', {}, h('summary', { 'aria-label': `children of ${c.id}`, text: 'children' }), nested);
    if (opened.has(c.id)) { more.open = true; fill(opened.get(c.id)); }
    more.addEventListener('toggle', async () => {
      if (!more.open) { opened.delete(c.id); return; }
      if (opened.has(c.id)) return;
      opened.set(c.id, []);
      try {
        const page = await api(`/v1/flows?parent_flow_id=${c.id}&limit=200`);
        opened.set(c.id, page.flows);
        fill(page.flows);
      } catch (error) { nested.replaceChildren(h('li', { role: 'alert', text: error.message })); }
    });
    return h('li', { 'data-flow-id': c.id },
      h('a', { href: `/ui/flows/${c.id}`, class: 'mono', text: c.id.slice(0, 8) + '…', 'aria-label': `child flow ${c.id}` }), ' ',
      c.flow_type ? h('span', { class: 'muted', text: `${c.flow_type} ` }) : null, statusBadge(c.status), ' ',
      bar(c.progress_percentage, `progress of child ${c.id}`), h('span', { class: 'pct', text: pct(c.progress_percentage) }), more);
  }

  function renderFamily() {
    const parts = [];
    if (flow.master_flow_id !== flow.id) parts.push(h('p', {}, 'Master: ', h('a', { href: `/ui/flows/${flow.master_flow_id}`, class: 'mono', text: flow.master_flow_id })));
    if (flow.parent_flow_id && flow.parent_flow_id !== flow.master_flow_id) parts.push(h('p', {}, 'Parent: ', h('a', { href: `/ui/flows/${flow.parent_flow_id}`, class: 'mono', text: flow.parent_flow_id })));
    if (children.size) {
      const done = [...children.values()].filter((c) => TERMINAL.has(c.status)).length;
      parts.push(h('h2', { text: `Children (${done} of ${children.size} done)` }), h('ul', { id: 'children', class: 'tree' },
        ...[...children.values()].map((c) => childItem(c))));
    }
    family.replaceChildren(...parts);
  }

  // Each attempt of `phase` from the event history: when it was due (the previous phase's end,
  // or the end of the failed attempt before it), when it started and ended. Queued = due to
  // start, backoff = the wait after a failed attempt, ran = start to end.
  function attemptsOf(phase) {
    const list = [];
    let previous = null;
    for (const e of history) {
      if (e.flow_id !== flow.id) continue;
      if (e.current_phase === phase && e.kind === 'phase_started') {
        const last = list[list.length - 1];
        const retry = last && last.outcome === 'failed';
        list.push({ start: e.at, due: retry ? last.end : previous, retry });
      } else if (e.current_phase === phase && ['phase_failed', 'phase_succeeded'].includes(e.kind) && list.length && !list[list.length - 1].end) {
        Object.assign(list[list.length - 1], { end: e.at, outcome: e.kind === 'phase_failed' ? 'failed' : 'succeeded', error: e.error });
      } else if (e.current_phase === phase && e.kind === 'flow_restarted' && list.length) {
        list[list.length - 1].restarted = true;
      }
      if (e.current_phase !== phase || e.kind !== 'phase_started') previous = e.at;
    }
    return list;
  }

  function attemptText(a, i) {
    const waited = a.due ? new Date(a.start) - new Date(a.due) : null;
    const ran = (a.end ? new Date(a.end) : Date.now()) - new Date(a.start);
    return [`#${i + 1}`, waited === null ? null : `${a.retry ? 'backoff' : 'queued'} ${span(waited)}`,
      `${a.end ? 'ran' : 'running'} ${span(ran)}`, a.outcome || null, a.restarted ? 'restarted by health' : null,
      a.error ? `— ${a.error}` : null].filter(Boolean).join(' · ');
  }

  function renderReason() {
    reason.replaceChildren(flow.status_reason ? reasonEl(flow.status_reason, 'status-reason') : h('span', { id: 'status-reason', 'data-kind': '', class: 'muted', text: TERMINAL.has(flow.status) ? `Finished (${flow.status})` : '' }));
  }

  function render() {
    status.replaceChildren(statusBadge(flow.status));
    renderReason();
    setBar(progress, flow.progress_percentage);
    progressText.textContent = pct(flow.progress_percentage);
    phaseLine.replaceChildren(
      h('dt', { text: 'Current phase' }), h('dd', { id: 'current-phase', text: flow.current_phase || '—' }),
      h('dt', { text: 'Next phase' }), h('dd', { id: 'next-phase', text: flow.next_phase || '—' }),
      h('dt', { text: 'Type' }), h('dd', {}, h('a', { href: '/ui/types', text: `${flow.flow_type} v${flow.flow_type_version}` })),
      h('dt', { text: 'Created' }), h('dd', { text: `${when(flow.created_at)}${flow.created_by ? ` by ${flow.created_by}` : ''}` }),
      h('dt', { text: 'Updated' }), h('dd', { text: when(flow.updated_at) }));
    for (const [action, applies] of Object.entries(APPLIES)) buttons[action].disabled = !applies(flow.status);
    timeline.replaceChildren(...flow.phases.map((p) => {
      const attempts = attemptsOf(p.name);
      const list = attempts.length
        ? h('ol', { class: 'attempts', 'aria-label': `attempts of ${p.name}` }, ...attempts.map((a, i) => h('li', { 'data-outcome': a.outcome || 'running' }, attemptText(a, i))))
        : null;
      const ran = p.started_at ? (p.finished_at ? new Date(p.finished_at) : new Date()) - new Date(p.started_at) : null;
      return h('tr', { 'data-phase': p.name },
        h('td', {}, h('strong', { text: p.name }), list),
        h('td', {}, statusBadge(p.status)),
        h('td', { text: p.attempt }),
        h('td', { class: 'hide-narrow', text: when(p.started_at) }),
        h('td', { class: 'hide-narrow', text: when(p.finished_at) }),
        h('td', { text: span(ran) }),
        h('td', { text: p.error || '' }));
    }));
    // Rebuilt only when an output may have changed: an open section stays open, and a busy
    // flow does not re-serialize every output on every event.
    const outputs = flow.phases.map((p) => `${p.status}:${p.attempt}`).join(',');
    if (outputs !== ioKey) {
      ioKey = outputs;
      io.replaceChildren(
        h('details', {}, h('summary', { text: 'Input' }), h('pre', { text: JSON.stringify(flow.input, null, 2) })),
        ...flow.phases.filter((p) => p.output !== null && p.output !== undefined).map((p) =>
          h('details', {}, h('summary', { text: `Output of ${p.name}` }), h('pre', { text: JSON.stringify(p.output, null, 2) }))));
    }
    renderFamily();
  }

  async function loadFailures() {
    const { failures: rows } = await api(`/v1/flows/${id}/failures`);
    failures.replaceChildren(...(rows.length ? rows.map((f) => h('tr', { 'data-kind': f.error_kind },
      h('td', { class: 'hide-narrow', text: when(f.at) }), h('td', { text: f.phase || '—' }), h('td', { text: f.attempt }),
      h('td', {}, h('code', { text: f.error_kind })), h('td', { text: f.message }),
      h('td', { text: f.diagnostic && f.diagnostic.will_retry ? 'yes' : 'no' })))
      : [h('tr', {}, h('td', { colspan: 6, class: 'muted', text: 'No failures.' }))]));
  }

  async function loadChildren() {
    const page = await api(`/v1/flows?parent_flow_id=${id}&limit=200`);
    for (const c of page.flows) { children.set(c.id, c); others.delete(c.id); }
    renderFamily();
  }
  const reloadChildren = throttle(() => loadChildren().catch(() => {}), 1000);
  const renderChildren = throttle(() => renderFamily(), 250);

  const refetch = throttle(async () => {
    try {
      const fresh = await api(`/v1/flows/${id}`);
      flow = fresh;
      render();
      if (TERMINAL.has(fresh.status) && !announced) {
        announced = true;
        notify(`Flow ${fresh.status}`, fresh.status === 'completed' ? 'info' : 'error');
      }
    } catch (error) { notify(error.message, 'error'); }
  }, 500);
  const refetchFailures = throttle(() => loadFailures().catch(() => {}), 500);
  let pendingEvents = [];
  const flushEvents = () => {
    // Only the newest 300 are shown: a burst (a master's catch-up, 100 events/s) costs one
    // DOM update per frame, never one per event.
    const batch = pendingEvents.slice(-300);
    pendingEvents = [];
    const rows = batch.map((e) => h('tr', { 'data-kind': e.kind },
      h('td', { text: e.flow_id === flow.id ? e.seq : `child ${e.flow_id.slice(0, 8)}` }),
      h('td', { class: 'hide-narrow', text: when(e.at) }), h('td', {}, h('code', { text: e.kind })),
      h('td', {}, statusBadge(e.status)), h('td', { text: e.current_phase || '—' }),
      h('td', { text: pct(e.progress_percentage) }), h('td', { text: e.error || '' }),
      h('td', { class: 'hide-narrow' }, e.status_reason ? reasonEl(e.status_reason) : null)));
    events.prepend(...rows.reverse());
    while (events.children.length > 300) events.lastElementChild.remove();
  };
  let frame = null;

  main.replaceChildren(
    h('p', {}, h('a', { href: '/ui', text: '← Flows' })),
    h('h1', {}, `${flow.flow_type} `, h('span', { class: 'mono muted', text: flow.id })),
    h('section', { class: 'card', 'aria-label': 'Status' },
      h('div', { class: 'row' }, status, h('div', { style: 'flex:1' }, progress), progressText),
      reason, phaseLine,
      h('div', { class: 'row', role: 'group', 'aria-label': 'Actions', style: 'margin-top:10px' },
        buttons.pause, buttons.resume, buttons.retry, buttons.cancel)),
    family,
    h('h2', { id: 'timeline-title', text: 'Phases' }),
    h('div', { class: 'table-wrap' }, h('table', { 'aria-labelledby': 'timeline-title' },
      h('thead', {}, h('tr', {}, ...['Phase', 'Status', 'Attempt'].map((t) => h('th', { scope: 'col', text: t })),
        h('th', { scope: 'col', class: 'hide-narrow', text: 'Started' }), h('th', { scope: 'col', class: 'hide-narrow', text: 'Finished' }),
        h('th', { scope: 'col', text: 'Took' }), h('th', { scope: 'col', text: 'Error' }))), timeline)),
    h('h2', { id: 'failures-title', text: 'Failure journal' }),
    h('div', { class: 'table-wrap' }, h('table', { 'aria-labelledby': 'failures-title' },
      h('thead', {}, h('tr', {}, h('th', { scope: 'col', class: 'hide-narrow', text: 'At' }),
        ...['Phase', 'Attempt', 'Kind', 'Message', 'Retried'].map((t) => h('th', { scope: 'col', text: t })))), failures)),
    h('h2', { text: 'Input and outputs' }), io,
    h('h2', { id: 'events-title', text: 'Events' }),
    h('div', { class: 'table-wrap' }, h('table', { 'aria-labelledby': 'events-title' },
      h('thead', {}, h('tr', {}, h('th', { scope: 'col', text: 'Seq' }), h('th', { scope: 'col', class: 'hide-narrow', text: 'At' }),
        ...['Kind', 'Status', 'Phase', 'Progress', 'Error'].map((t) => h('th', { scope: 'col', text: t })),
        h('th', { scope: 'col', class: 'hide-narrow', text: 'Why' }))), events)));
  render();
  await Promise.all([loadFailures(), loadChildren()]);

  const stop = stream(`/v1/flows/${id}/ws`, 0, (event) => {
    history.push(event);
    if (history.length > 5000) history.splice(0, history.length - 5000);
    pendingEvents.push(event);
    if (!frame) frame = requestAnimationFrame(() => { frame = null; flushEvents(); });
    if (event.flow_id === flow.id) {
      flow.status = event.status;
      flow.progress_percentage = Math.max(flow.progress_percentage, event.progress_percentage);
      flow.current_phase = event.current_phase;
      flow.next_phase = event.next_phase;
      // The event says why, as its transition left the flow: shown at once, before the re-read.
      if (TERMINAL.has(event.status)) flow.status_reason = null;
      else if (event.status_reason) flow.status_reason = event.status_reason;
      status.replaceChildren(statusBadge(flow.status));
      renderReason();
      if (['phase_failed', 'flow_restarted'].includes(event.kind)) refetchFailures();
      refetch();
    } else if (children.has(event.flow_id)) {
      const child = children.get(event.flow_id);
      children.set(event.flow_id, { ...child, status: event.status, progress_percentage: event.progress_percentage });
      renderChildren();
    } else if (!others.has(event.flow_id)) {
      // A new child, or a deeper descendant of the tree (shown under its own parent).
      others.add(event.flow_id);
      reloadChildren();
    }
  });
  teardown.push(stop, () => { if (frame) cancelAnimationFrame(frame); });
}

// ---- flow types and queues -------------------------------------------------------------

async function typesPage() {
  const { flow_types: types } = await api('/v1/flow-types');
  main.replaceChildren(h('h1', { text: 'Flow types' }), ...types.map((t) => {
    const edges = t.phases.map((p, i) => {
      const next = p.next_phase || (t.phases[i + 1] && t.phases[i + 1].name);
      return h('li', {}, h('code', { text: p.name }), next ? ' → ' : ' → end', next ? h('code', { text: next }) : null,
        p.next_phase ? h('span', { class: 'muted', text: ' (jump)' }) : null);
    });
    return h('section', { class: 'card', 'aria-label': t.name },
      h('h2', {}, `${t.name} `, h('span', { class: 'muted', text: `v${t.version}` })),
      h('div', { class: 'table-wrap' }, h('table', {},
        h('thead', {}, h('tr', {}, ...['Phase', 'Handler', 'Retries', 'Backoff', 'Timeout', 'Weight', 'Fallback'].map((x) => h('th', { scope: 'col', text: x })))),
        h('tbody', {}, ...t.phases.map((p) => h('tr', {},
          h('td', { text: p.name }), h('td', {}, h('code', { text: p.handler })), h('td', { text: p.retries }),
          h('td', { text: p.retry_backoff_ms ? `${p.retry_backoff_ms} ms` : 'default' }),
          h('td', { text: p.timeout_s ? `${p.timeout_s} s` : 'default' }), h('td', { text: p.weight }),
          h('td', { text: p.fallback || '—' })))))),
      h('p', { class: 'muted', text: 'Graph of phases:' }), h('ul', { class: 'graph' }, ...edges));
  }));
}

async function queuesPage() {
  const { queues } = await api('/v1/queues');
  main.replaceChildren(h('h1', { text: 'Queues' }),
    h('p', { class: 'muted', text: 'Queues of external tasks on this server, for your key.' }),
    queues.length ? h('div', { class: 'table-wrap' }, h('table', { 'aria-label': 'Queues' },
      h('thead', {}, h('tr', {}, ...['Queue', 'Queued', 'Oldest task', 'Leased', 'Workers', 'Next lease expiry', 'Last poll'].map((x) => h('th', { scope: 'col', text: x })))),
      h('tbody', {}, ...queues.map((q) => h('tr', { 'data-queue': q.queue },
        h('td', {}, h('code', { text: q.queue })), h('td', { text: q.queued }),
        h('td', { text: q.oldest_queued_at ? ago(q.oldest_queued_at) : '—' }), h('td', { text: q.leased }),
        h('td', { text: `${q.waiting_workers} polling${q.leasing_workers.length ? `; leases: ${q.leasing_workers.join(', ')}` : ''}` }),
        h('td', { text: when(q.next_lease_expiry) }),
        h('td', { text: q.last_poll_s_ago === null ? 'never' : `${Math.round(q.last_poll_s_ago)} s ago` }))))))
      : h('p', { text: 'No queued or leased tasks.' }));
}

// ---- routing ---------------------------------------------------------------------------

function navigate(path) {
  history.pushState(null, '', path);
  route();
}

async function route() {
  for (const stop of teardown) stop();
  teardown = [];
  const path = location.pathname.replace(/\/$/, '') || '/ui';
  const flow = path.match(/^\/ui\/flows\/([^/]+)$/);
  const section = flow ? 'flows' : path === '/ui/types' ? 'types' : path === '/ui/queues' ? 'queues' : 'flows';
  for (const link of document.querySelectorAll('[data-nav]')) {
    if (link.dataset.nav === section && !flow) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  document.getElementById('sign-out').hidden = !key();
  main.replaceChildren(h('p', { class: 'muted', text: 'Loading…' }));
  try {
    if (flow) await flowPage(decodeURIComponent(flow[1]));
    else if (section === 'types') await typesPage();
    else if (section === 'queues') await queuesPage();
    else await flowsPage();
    document.title = `flowd · ${flow ? `flow ${flow[1].slice(0, 8)}` : section}`;
    refreshHealth();
  } catch (error) {
    if (error instanceof Unauthorized) askForKey(key() ? 'That key was refused.' : null);
    else {
      main.replaceChildren(h('h1', { text: 'Could not load this page' }), h('p', { role: 'alert', text: error.message }));
      notify(error.message, 'error');
    }
  }
}

document.addEventListener('click', (e) => {
  const link = e.target.closest('a[href^="/ui"]');
  if (!link || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
  e.preventDefault();
  navigate(link.getAttribute('href'));
  main.focus();
});
window.addEventListener('popstate', route);
setInterval(refreshHealth, 10000);
route();
