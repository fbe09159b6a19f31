// The Awardee dashboard: a client of the public HTTP API (with the session cookie and its CSRF
// token) and of /realtime (with a single-use realtime token). It never builds HTML from data:
// every text goes in with textContent.

const $ = (id) => document.getElementById(id);

const state = {
  me: null,
  csrf: '',
  convs: new Map(),      // id → conversation
  threads: new Map(),    // id → Map(seq → message), for the threads loaded
  unread: new Map(),     // id → count of visitor messages not yet seen
  filter: 'inbox',
  current: null,
  lastOffset: null,      // the last event applied; null until the first ready
  ws: null,
  retry: 500,
  retryTimer: 0,
  members: new Map(),    // id → member, for admins
};

const INBOX = ['agent_requested', 'open'];
const STATUS_LABEL = {
  bot_active: 'bot active', agent_requested: 'waiting', open: 'open',
  resolved: 'resolved', closed: 'closed', archived: 'archived',
};

class APIError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code;
    this.details = body?.error?.details;
  }
}

async function api(method, path, body, headers = {}) {
  const h = { ...headers };
  if (body !== undefined) h['Content-Type'] = 'application/json';
  if (method !== 'GET') h['X-CSRF-Token'] = state.csrf;
  const res = await fetch(path, {
    method, headers: h, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    if (res.status === 401 && path !== '/session') signedOut();
    throw new APIError(res.status, data);
  }
  return data;
}

async function listAll(path, maxPages = 5) {
  const out = [];
  let cursor = null;
  for (let i = 0; i < maxPages; i++) {
    const sep = path.includes('?') ? '&' : '?';
    const page = await api('GET', path + sep + 'limit=100' + (cursor ? '&cursor=' + encodeURIComponent(cursor) : ''));
    out.push(...page.data);
    cursor = page.next_cursor;
    if (!cursor) break;
  }
  return out;
}

// ---- sign-in ----

function showSignIn() {
  $('app').hidden = true;
  $('signin').hidden = false;
  $('email').focus();
}

function signedOut() {
  state.me = null;
  state.csrf = '';
  closeSocket();
  clearTimeout(state.retryTimer);
  showSignIn();
}

$('signin-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  $('signin-error').textContent = '';
  try {
    const s = await api('POST', '/session', { email: $('email').value, password: $('password').value });
    $('password').value = '';
    start(s);
  } catch (e) {
    $('signin-error').textContent = e.message;
  }
});

$('signout').addEventListener('click', async () => {
  try { await api('DELETE', '/session'); } catch { /* signed out either way */ }
  signedOut();
});

// ---- start-up ----

function start(session) {
  state.me = session.member;
  state.csrf = session.csrf_token;
  state.convs.clear();
  state.threads.clear();
  state.unread.clear();
  state.lastOffset = null;
  state.current = null;
  $('me').textContent = state.me.name;
  $('admin-toggle').hidden = state.me.role !== 'admin';
  $('signin').hidden = true;
  $('app').hidden = false;
  $('thread').hidden = true;
  render();
  connect();
  if (state.me.role === 'admin') {
    api('GET', '/members').then((r) => { state.members = new Map(r.data.map((m) => [m.id, m])); render(); }, () => {});
  }
}

async function loadInbox() {
  const lists = await Promise.all(INBOX.map((s) => listAll('/conversations?status=' + s)));
  for (const c of lists.flat()) state.convs.set(c.id, c);
  if (state.filter !== 'inbox' && state.filter !== 'mine' && state.filter !== 'unassigned') {
    for (const c of await listAll('/conversations?status=' + state.filter)) state.convs.set(c.id, c);
  }
  render();
  if (state.current) openThread(state.current, false);
}

// ---- realtime ----

function setConnection(text) { $('connection').textContent = text; }

function closeSocket() {
  const ws = state.ws;
  state.ws = null;
  if (ws) ws.close();
}

function scheduleReconnect() {
  clearTimeout(state.retryTimer);
  if (!state.me) return;
  state.retryTimer = setTimeout(connect, state.retry);
  state.retry = Math.min(state.retry * 2, 10000);
}

async function connect() {
  clearTimeout(state.retryTimer);
  if (state.ws || !state.me) return;
  setConnection('Connecting…');
  let token;
  try {
    token = (await api('POST', '/session/realtime-token')).token;
  } catch (e) {
    if (e.status !== 401) { setConnection('Offline'); scheduleReconnect(); }
    return;
  }
  if (state.ws || !state.me) return;
  const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/realtime');
  state.ws = ws;
  ws.onopen = () => {
    const auth = { type: 'auth', token };
    if (state.lastOffset !== null) auth.resume_after = state.lastOffset;
    ws.send(JSON.stringify(auth));
  };
  ws.onmessage = (ev) => { if (state.ws === ws) onFrame(JSON.parse(ev.data)); };
  ws.onclose = () => {
    if (state.ws !== ws) return;
    state.ws = null;
    setConnection('Offline');
    scheduleReconnect();
  };
}

// A socket over a network that went away can hang until the next ping: drop it at once, and
// resume from the last event when the network is back.
window.addEventListener('offline', () => { closeSocket(); setConnection('Offline'); });
window.addEventListener('online', () => { state.retry = 500; connect(); });

function onFrame(f) {
  switch (f.type) {
    case 'ready': {
      state.retry = 500;
      setConnection('Live');
      if (state.lastOffset === null) {
        state.lastOffset = f.offset;
        loadInbox().catch(showError);
      }
      return;
    }
    case 'resync_required':
      // What we missed is no longer kept: start over from the current state.
      state.lastOffset = null;
      state.threads.clear();
      closeSocket();
      connect();
      return;
    case 'error':
      return;
  }
  if (typeof f.offset === 'number') {
    if (state.lastOffset !== null && f.offset <= state.lastOffset) return;
    state.lastOffset = f.offset;
  }
  if (f.type === 'conversation.updated') {
    state.convs.set(f.conversation.id, f.conversation);
    render();
  } else if (f.type === 'new_message') {
    onMessage(f.conversation_id, f.message);
  }
}

async function onMessage(convID, msg) {
  const thread = state.threads.get(convID);
  if (thread) thread.set(msg.seq, msg);
  const c = state.convs.get(convID);
  if (c) {
    c.last_activity_at = msg.created_at;
  } else {
    try { state.convs.set(convID, await api('GET', '/conversations/' + convID)); } catch { return; }
  }
  if (msg.role === 'user' && (state.current !== convID || document.hidden)) {
    state.unread.set(convID, (state.unread.get(convID) || 0) + 1);
    notify(state.convs.get(convID), msg);
  }
  render();
}

// ---- notifications and title ----

$('notify').addEventListener('click', async () => {
  if (!('Notification' in window)) return;
  await Notification.requestPermission();
  $('notify').hidden = Notification.permission === 'granted';
});

function notify(conv, msg) {
  if (!('Notification' in window) || Notification.permission !== 'granted' || !document.hidden) return;
  new Notification(visitorName(conv), { body: msg.text || 'sent an image' });
}

document.addEventListener('visibilitychange', () => {
  if (!document.hidden && state.current) { state.unread.delete(state.current); render(); }
});

// ---- rendering ----

function visitorName(c) {
  return (c && c.visitor && c.visitor.name) || 'Visitor';
}

function assigneeText(c) {
  if (!c.assignee) return 'Unassigned';
  if (state.me && c.assignee === state.me.id) return 'Assigned to you';
  const m = state.members.get(c.assignee);
  return m ? 'Assigned to ' + m.name : 'Assigned to a teammate';
}

function visible() {
  const all = [...state.convs.values()];
  let list;
  switch (state.filter) {
    case 'inbox': list = all.filter((c) => INBOX.includes(c.status)); break;
    case 'mine': list = all.filter((c) => INBOX.includes(c.status) && c.assignee === state.me.id); break;
    case 'unassigned': list = all.filter((c) => INBOX.includes(c.status) && !c.assignee); break;
    default: list = all.filter((c) => c.status === state.filter);
  }
  // Waiting for a person first, then open; newest activity first within each.
  const rank = (c) => (c.status === 'agent_requested' ? 0 : 1);
  return list.sort((a, b) => rank(a) - rank(b) || (a.last_activity_at < b.last_activity_at ? 1 : -1));
}

function render() {
  const ul = $('conversations');
  const items = visible();
  ul.replaceChildren(...items.map((c) => {
    const li = document.createElement('li');
    const b = document.createElement('button');
    b.type = 'button';
    b.dataset.id = c.id;
    if (c.id === state.current) b.setAttribute('aria-current', 'true');
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = visitorName(c);
    const status = document.createElement('span');
    status.className = 'status status-' + c.status;
    status.textContent = STATUS_LABEL[c.status] || c.status;
    const who = document.createElement('span');
    who.className = 'muted';
    who.textContent = assigneeText(c);
    b.append(name, status, who);
    const n = state.unread.get(c.id) || 0;
    if (n > 0) {
      const badge = document.createElement('span');
      badge.className = 'unread';
      badge.textContent = String(n);
      badge.setAttribute('aria-label', n + ' unread');
      b.append(badge);
    }
    b.addEventListener('click', () => openThread(c.id, true));
    li.append(b);
    return li;
  }));
  $('empty').hidden = items.length > 0;
  let total = 0;
  for (const n of state.unread.values()) total += n;
  document.title = total > 0 ? `(${total}) Awardee` : 'Awardee';
  renderThread();
}

function renderThread() {
  const c = state.current && state.convs.get(state.current);
  if (!c) return;
  $('visitor-name').textContent = visitorName(c);
  $('visitor-email').textContent = (c.visitor && c.visitor.email) || '';
  $('thread-status').textContent = STATUS_LABEL[c.status] || c.status;
  $('thread-status').className = 'status status-' + c.status;
  $('thread-assignee').textContent = assigneeText(c);
  const finished = ['resolved', 'closed', 'archived'].includes(c.status);
  $('resolve').hidden = finished;
  $('reopen').hidden = !finished;
  $('assign').hidden = c.assignee === state.me.id;
  const thread = state.threads.get(c.id);
  if (!thread) return;
  const ol = $('messages');
  const shown = ol.children.length;
  const msgs = [...thread.values()].sort((a, b) => a.seq - b.seq);
  // Append only what is new, so a screen reader announces new messages and nothing else.
  const lastShown = shown ? Number(ol.lastElementChild.dataset.seq) : 0;
  const inOrder = [...ol.children].every((li, i) => msgs[i] && Number(li.dataset.seq) === msgs[i].seq);
  if (!inOrder) ol.replaceChildren();
  for (const m of msgs) {
    if (inOrder && m.seq <= lastShown) continue;
    ol.append(messageItem(m));
  }
  ol.scrollTop = ol.scrollHeight;
}

function messageItem(m) {
  const li = document.createElement('li');
  li.className = 'msg ' + m.role;
  li.dataset.seq = String(m.seq);
  if (m.role !== 'system') {
    const meta = document.createElement('span');
    meta.className = 'meta';
    let who = 'Visitor';
    if (m.role === 'assistant') {
      who = m.metadata.source === 'bot' ? 'Bot'
        : m.metadata.member_id === state.me.id ? 'You'
        : state.members.get(m.metadata.member_id)?.name || 'Team';
    }
    meta.textContent = who + ' · ' + new Date(m.created_at).toLocaleTimeString();
    li.append(meta);
  }
  const text = document.createElement('span');
  text.textContent = m.text;
  li.append(text);
  for (const a of m.attachments || []) {
    const img = document.createElement('img');
    img.src = a.file_url;
    img.alt = 'image';
    img.width = a.width;
    img.height = a.height;
    li.append(img);
  }
  return li;
}

async function openThread(id, focus) {
  state.current = id;
  state.unread.delete(id);
  $('admin').hidden = true;
  $('thread').hidden = false;
  $('app').classList.add('reading');
  $('messages').replaceChildren();
  $('reply-error').textContent = '';
  render();
  if (!state.threads.has(id)) {
    try {
      const thread = new Map();
      for (const m of await listAll('/conversations/' + id + '/messages?after=0', 50)) thread.set(m.seq, m);
      // Frames that arrived during the load are already in the old map, if any.
      for (const [seq, m] of state.threads.get(id) || []) thread.set(seq, m);
      state.threads.set(id, thread);
    } catch (e) { showError(e); return; }
  }
  if (state.current === id) renderThread();
  if (focus) $('reply').focus();
}

function showError(e) { $('reply-error').textContent = e.message; }

// ---- actions ----

$('back').addEventListener('click', () => {
  $('app').classList.remove('reading');
  state.current = null;
  $('thread').hidden = true;
  render();
});

document.querySelector('.filters').addEventListener('click', (ev) => {
  const b = ev.target.closest('button[data-filter]');
  if (!b) return;
  setFilter(b.dataset.filter);
});

$('status-filter').addEventListener('change', async () => {
  const s = $('status-filter').value;
  if (!s) return;
  setFilter(s);
  try {
    for (const c of await listAll('/conversations?status=' + s)) state.convs.set(c.id, c);
    render();
  } catch (e) { showError(e); }
});

function setFilter(f) {
  state.filter = f;
  for (const b of document.querySelectorAll('.filters button')) b.setAttribute('aria-pressed', String(b.dataset.filter === f));
  if (['inbox', 'mine', 'unassigned'].includes(f)) $('status-filter').value = '';
  render();
}

async function patch(body) {
  const id = state.current;
  $('reply-error').textContent = '';
  try {
    state.convs.set(id, await api('PATCH', '/conversations/' + id, body));
    render();
  } catch (e) { showError(e); }
}

$('assign').addEventListener('click', () => patch({ assignee: state.me.id }));
$('resolve').addEventListener('click', () => patch({ status: 'resolved' }));
$('reopen').addEventListener('click', () => patch({ status: 'open' }));

$('reply').addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    $('reply-form').requestSubmit();
  }
});

$('reply-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const id = state.current;
  const text = $('reply').value.trim();
  const url = $('image-url').value.trim();
  if (!id || (!text && !url)) return;
  const body = { text };
  if (url) body.attachments = [{ url }];
  $('send').disabled = true;
  $('reply-error').textContent = '';
  try {
    const msg = await api('POST', '/conversations/' + id + '/messages', body, { 'Idempotency-Key': crypto.randomUUID() });
    $('reply').value = '';
    $('image-url').value = '';
    state.threads.get(id)?.set(msg.seq, msg);
    renderThread();
  } catch (e) {
    showError(e);
  } finally {
    $('send').disabled = false;
  }
});

// ---- team (admins) ----

$('admin-toggle').addEventListener('click', () => {
  $('thread').hidden = true;
  $('admin').hidden = false;
  $('app').classList.add('reading');
  loadTeam().catch(showError);
});

async function loadTeam() {
  const members = (await api('GET', '/members')).data;
  state.members = new Map(members.map((m) => [m.id, m]));
  $('members').replaceChildren(...members.map((m) => {
    const li = document.createElement('li');
    li.textContent = `${m.name} <${m.email}> ${m.role}${m.disabled ? ' (disabled)' : ''} `;
    if (m.id !== state.me.id) {
      const b = document.createElement('button');
      b.type = 'button';
      b.textContent = m.disabled ? 'Enable ' + m.name : 'Disable ' + m.name;
      b.addEventListener('click', async () => {
        await api('PATCH', '/members/' + m.id, { disabled: !m.disabled });
        loadTeam();
      });
      li.append(b);
    }
    return li;
  }));
  const keys = (await api('GET', '/keys')).data;
  $('keys').replaceChildren(...keys.map((k) => {
    const li = document.createElement('li');
    li.textContent = `${k.name} (${k.id}) `;
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = 'Revoke ' + k.name;
    b.addEventListener('click', async () => {
      if (!confirm('Revoke key ' + k.name + '? Systems using it stop at once.')) return;
      await api('DELETE', '/keys/' + k.id);
      loadTeam();
    });
    li.append(b);
    return li;
  }));
}

$('member-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  try {
    const r = await api('POST', '/members', { email: $('member-email').value, name: $('member-name').value, role: $('member-role').value });
    $('member-created').textContent = `Added ${r.member.email}. Their password, shown only now: ${r.password}`;
    ev.target.reset();
    loadTeam();
  } catch (e) { $('member-created').textContent = e.message; }
});

$('key-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  try {
    const r = await api('POST', '/keys', { name: $('key-name').value });
    $('key-created').textContent = `New key, shown only now: ${r.api_key}`;
    ev.target.reset();
    loadTeam();
  } catch (e) { $('key-created').textContent = e.message; }
});

// ---- boot ----

api('GET', '/session').then(start, showSignIn);
