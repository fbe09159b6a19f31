// Awardee's visitor chat: one script tag, no dependency, no build step.
//   <script src="https://HOST/widget.js" data-awardee-key="wk_…" async></script>
// It draws into an open shadow root (styles from a constructable stylesheet), talks only to the
// origin it was loaded from, keeps its state in localStorage and sets no cookie.
(function () {
  'use strict';
  var script = document.currentScript || document.querySelector('script[data-awardee-key]');
  if (!script || window.__awardeeWidget) return;
  window.__awardeeWidget = true;
  var data = script.dataset;
  var widgetKey = data.awardeeKey;
  if (!widgetKey) return;
  var origin = new URL(script.src, location.href).origin;
  var wsURL = origin.replace(/^http/, 'ws') + '/realtime';
  var user = data.awardeeUserId ? { id: data.awardeeUserId, hash: data.awardeeUserHash || '' } : null;
  var storeKey = 'awardee:' + widgetKey + (user ? ':user:' + user.id : '');

  var STYLES = [
    ':host{all:initial !important;position:fixed !important;inset:auto 0 0 auto !important;z-index:2147483000 !important;display:block !important;width:0 !important;height:0 !important;overflow:visible !important;--aw-accent:#2454d6}',
    '*{box-sizing:border-box}',
    '.root{font:15px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b1f24}',
    'button,textarea{font:inherit;color:inherit}',
    '.launcher{position:fixed;right:20px;bottom:20px;width:56px;height:56px;border-radius:50%;border:0;background:var(--aw-accent);color:#fff;cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.25);display:flex;align-items:center;justify-content:center}',
    '.launcher svg{width:28px;height:28px;fill:currentColor}',
    '.launcher:focus-visible,.btn:focus-visible,.close:focus-visible{outline:3px solid #ffb000;outline-offset:2px}',
    '.badge{position:absolute;top:2px;right:2px;min-width:18px;height:18px;border-radius:9px;background:#d62424;font-size:11px;line-height:18px;text-align:center;padding:0 5px}',
    '.panel{position:fixed;right:20px;bottom:88px;width:370px;height:min(560px,calc(100vh - 108px));background:#fff;border-radius:12px;box-shadow:0 8px 30px rgba(0,0,0,.25);display:flex;flex-direction:column;overflow:hidden}',
    '.hidden{display:none !important}',
    '.head{background:var(--aw-accent);color:#fff;padding:12px 14px;display:flex;align-items:center;gap:8px}',
    '.title{font-weight:600;flex:1;margin:0;font-size:16px}',
    '.close{background:transparent;border:0;color:#fff;font-size:22px;line-height:1;cursor:pointer;padding:2px 6px;border-radius:4px}',
    '.note{padding:6px 14px;background:#fff6d6;font-size:13px}',
    '.log{flex:1;overflow-y:auto;padding:12px;display:flex;flex-direction:column;gap:8px;background:#f6f7f9}',
    '.msg{max-width:80%;padding:8px 11px;border-radius:12px;white-space:pre-wrap;overflow-wrap:anywhere}',
    '.msg.user{align-self:flex-end;background:var(--aw-accent);color:#fff;border-bottom-right-radius:4px}',
    '.msg.assistant{align-self:flex-start;background:#fff;border:1px solid #dde1e6;border-bottom-left-radius:4px}',
    '.msg.system{align-self:center;background:transparent;color:#5b636d;font-size:13px;font-style:italic;text-align:center}',
    '.msg.pending{opacity:.6}',
    '.msg.failed{outline:2px solid #d62424}',
    '.state{display:block;font-size:11px;opacity:.85;margin-top:2px}',
    '.msg img{display:block;max-width:100%;max-height:240px;border-radius:8px;margin-top:4px}',
    '.empty{color:#5b636d;text-align:center;margin:auto 0;font-size:14px}',
    '.human{margin:0 12px 8px;align-self:flex-start}',
    '.btn{border:1px solid var(--aw-accent);background:#fff;color:var(--aw-accent);border-radius:8px;padding:6px 12px;cursor:pointer}',
    '.btn.primary{background:var(--aw-accent);color:#fff}',
    '.form{display:flex;gap:8px;padding:10px;border-top:1px solid #dde1e6;background:#fff}',
    '.input{flex:1;resize:none;height:44px;max-height:120px;border:1px solid #b8bfc7;border-radius:8px;padding:10px;background:#fff}',
    '.input:focus{outline:2px solid var(--aw-accent);outline-offset:0}',
    '.sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}',
    '@media (max-width:480px){.panel{inset:0;width:auto;height:auto;border-radius:0}.open .launcher{display:none}}'
  ].join('\n');

  // ---- state, kept per widget key (and verified user) so a reload or a second tab continues ----
  function load() {
    try { return JSON.parse(localStorage.getItem(storeKey)) || {}; } catch (e) { return {}; }
  }
  var st = load(); // {conv, token, offset, status, pending:[{key,text}], draft, createKey}
  st.pending = st.pending || [];
  function save() {
    try { localStorage.setItem(storeKey, JSON.stringify(st)); } catch (e) { /* private mode: memory only */ }
  }
  window.addEventListener('storage', function (e) {
    if (e.key !== storeKey) return;
    var next = load();
    if (next.conv !== st.conv) { st = next; st.pending = st.pending || []; resetThread(); connect(); }
  });

  function randomKey() {
    var b = new Uint8Array(16);
    crypto.getRandomValues(b);
    b[6] = (b[6] & 15) | 64; b[8] = (b[8] & 63) | 128;
    var h = Array.prototype.map.call(b, function (x) { return (x + 256).toString(16).slice(1); }).join('');
    return h.slice(0, 8) + '-' + h.slice(8, 12) + '-' + h.slice(12, 16) + '-' + h.slice(16, 20) + '-' + h.slice(20);
  }

  // ---- DOM ----
  function el(tag, cls, attrs, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text != null) e.textContent = text;
    return e;
  }
  var host = document.createElement('awardee-chat');
  var shadow = host.attachShadow({ mode: 'open' });
  var sheet = new CSSStyleSheet();
  sheet.replaceSync(STYLES);
  var color = data.awardeeColor;
  if (color && window.CSS && CSS.supports('color', color)) sheet.insertRule(':host{--aw-accent:' + color + ' !important}', sheet.cssRules.length);
  shadow.adoptedStyleSheets = [sheet];

  var root = el('div', 'root');
  var launcher = el('button', 'launcher', { type: 'button', 'aria-label': 'Open chat', 'aria-expanded': 'false', 'aria-controls': 'aw-panel' });
  var svgNS = 'http://www.w3.org/2000/svg';
  var svg = document.createElementNS(svgNS, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24'); svg.setAttribute('aria-hidden', 'true');
  var path = document.createElementNS(svgNS, 'path');
  path.setAttribute('d', 'M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2z');
  svg.appendChild(path); launcher.appendChild(svg);
  var badge = el('span', 'badge hidden', { 'aria-hidden': 'true' });
  launcher.appendChild(badge);

  var panel = el('div', 'panel hidden', { id: 'aw-panel', role: 'dialog', 'aria-label': 'Chat' });
  var head = el('div', 'head');
  head.appendChild(el('h2', 'title', null, data.awardeeTitle || 'Chat'));
  var closeBtn = el('button', 'close', { type: 'button', 'aria-label': 'Close chat' }, '\u00d7');
  head.appendChild(closeBtn);
  var note = el('div', 'note hidden', { role: 'status' });
  var log = el('div', 'log', { role: 'log', 'aria-label': 'Messages', 'aria-live': 'polite', tabindex: '0' });
  var empty = el('p', 'empty', null, 'Ask us anything. We usually answer within minutes.');
  log.appendChild(empty);
  var human = el('button', 'btn human hidden', { type: 'button' }, 'Talk to a human');
  var form = el('form', 'form', { 'aria-label': 'Send a message' });
  var input = el('textarea', 'input', { 'aria-label': 'Message', rows: '1', placeholder: 'Write a message…', maxlength: '32000' });
  var send = el('button', 'btn primary', { type: 'submit' }, 'Send');
  form.appendChild(input); form.appendChild(send);
  panel.appendChild(head); panel.appendChild(note); panel.appendChild(log); panel.appendChild(human); panel.appendChild(form);
  root.appendChild(panel); root.appendChild(launcher);
  shadow.appendChild(root);

  function mount() { document.body.appendChild(host); }
  if (document.body) mount(); else document.addEventListener('DOMContentLoaded', mount);

  // ---- open, close, keyboard ----
  var isOpen = false, unread = 0;
  function openPanel() {
    isOpen = true; unread = 0; badge.classList.add('hidden');
    panel.classList.remove('hidden'); root.classList.add('open');
    launcher.setAttribute('aria-expanded', 'true');
    input.focus();
    log.scrollTop = log.scrollHeight;
  }
  function closePanel() {
    isOpen = false;
    panel.classList.add('hidden'); root.classList.remove('open');
    launcher.setAttribute('aria-expanded', 'false');
    launcher.focus();
  }
  launcher.addEventListener('click', function () { if (isOpen) closePanel(); else openPanel(); });
  closeBtn.addEventListener('click', closePanel);
  panel.addEventListener('keydown', function (e) { if (e.key === 'Escape') { e.preventDefault(); closePanel(); } });
  input.value = st.draft || '';
  input.addEventListener('input', function () { st.draft = input.value; save(); });
  input.addEventListener('keydown', function (e) {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); submit(); }
  });
  form.addEventListener('submit', function (e) { e.preventDefault(); submit(); });
  human.addEventListener('click', requestAgent);

  // ---- the thread ----
  var shown = {}; // seq → element
  var maxSeq = 0;
  function resetThread() {
    shown = {}; maxSeq = 0;
    while (log.firstChild) log.removeChild(log.firstChild);
    log.appendChild(empty);
    renderPending();
    renderStatus();
  }
  function bubble(role, text, attachments) {
    var b = el('div', 'msg ' + role);
    if (text) b.appendChild(document.createTextNode(text));
    (attachments || []).forEach(function (a) {
      if (a.file_url && a.file_url.indexOf(origin + '/') === 0) b.appendChild(el('img', null, { src: a.file_url, alt: 'Image', loading: 'lazy' }));
    });
    return b;
  }
  function addMessage(m, live) {
    if (!m || !m.seq || shown[m.seq]) return;
    var b = bubble(m.role, m.text, m.attachments);
    b.dataset.seq = m.seq;
    if (m.role === 'user') b.insertBefore(el('span', 'sr', null, 'You: '), b.firstChild);
    shown[m.seq] = b;
    if (empty.parentNode) log.removeChild(empty);
    var after = null;
    if (m.seq < maxSeq) {
      for (var s in shown) if (+s > m.seq && (!after || +s < +after.dataset.seq)) after = shown[s];
    }
    log.insertBefore(b, after || firstPending());
    maxSeq = Math.max(maxSeq, m.seq);
    if (live && !isOpen && m.role !== 'user') { unread++; badge.textContent = unread; badge.classList.remove('hidden'); }
    log.scrollTop = log.scrollHeight;
  }
  function firstPending() { return log.querySelector('.pending, .failed'); }
  function renderPending() {
    Array.prototype.forEach.call(log.querySelectorAll('.pending, .failed'), function (n) { log.removeChild(n); });
    st.pending.forEach(function (p) {
      var b = bubble('user', p.text);
      b.classList.add(p.error ? 'failed' : 'pending');
      b.appendChild(el('span', 'state', null, p.error ? 'Not sent: ' + p.error : 'Sending…'));
      if (empty.parentNode) log.removeChild(empty);
      log.appendChild(b);
    });
  }
  function setNote(text) {
    note.textContent = text || '';
    note.classList.toggle('hidden', !text);
  }
  var offline = !navigator.onLine;
  function renderStatus() {
    var hideHuman = !(st.conv && st.status === 'bot_active');
    // A focused button that disappears would drop the focus out of the panel.
    if (hideHuman && shadow.activeElement === human) input.focus();
    human.classList.toggle('hidden', hideHuman);
    if (offline) setNote('You are offline. Messages will be sent when the connection is back.');
    else if (st.status === 'agent_requested') setNote('A person from our team will answer soon.');
    else if (st.status === 'closed' || st.status === 'archived') setNote('This conversation has ended. Send a message to start a new one.');
    else setNote('');
  }
  function setConversation(c) {
    if (!c || c.id !== st.conv) return;
    st.status = c.status; save(); renderStatus();
  }

  // ---- HTTP ----
  function call(method, path, token, body, idemKey) {
    var headers = { Authorization: 'Bearer ' + token };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (idemKey) headers['Idempotency-Key'] = idemKey;
    return fetch(origin + path, {
      method: method, headers: headers, credentials: 'omit', mode: 'cors', cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body)
    }).then(function (r) {
      return r.text().then(function (t) {
        var j = null;
        try { j = t ? JSON.parse(t) : null; } catch (e) { /* not JSON */ }
        return { status: r.status, body: j, retryAfter: +r.headers.get('Retry-After') || 0 };
      });
    });
  }
  function convPath(rest) { return '/widget/conversations/' + st.conv + (rest || ''); }
  function forgetConversation() {
    st.conv = st.token = null; st.offset = 0; st.status = null; save();
    if (ws) { ws.onclose = null; ws.close(); ws = null; }
    resetThread();
  }

  function loadThread() {
    if (!st.conv) return Promise.resolve();
    var conv = st.conv;
    call('GET', convPath(), st.token).then(function (r) {
      if (r.status === 200) setConversation(r.body);
    }).catch(function () {});
    function page(cursor) {
      var q = cursor ? '?cursor=' + encodeURIComponent(cursor) : '?after=' + maxSeq + '&limit=100';
      return call('GET', convPath('/messages') + q, st.token).then(function (r) {
        if (conv !== st.conv) return;
        if (r.status === 401 || r.status === 404) { forgetConversation(); return; }
        if (r.status === 429 || r.status >= 500) { setTimeout(loadThread, Math.max(1, r.retryAfter) * 1000); return; }
        if (r.status !== 200) return;
        r.body.data.forEach(function (m) { addMessage(m); });
        if (r.body.next_cursor) return page(r.body.next_cursor);
      });
    }
    return page(null).catch(function () {});
  }

  // ---- sending: pending first, one at a time, each with its own Idempotency-Key ----
  var flushing = false, retryTimer = null, backoff = 1000;
  function submit() {
    var text = input.value.trim();
    if (!text) return;
    st.pending.push({ key: randomKey(), text: text });
    input.value = ''; st.draft = ''; save();
    renderPending();
    flush();
  }
  function retryLater(ms) {
    flushing = false;
    clearTimeout(retryTimer);
    retryTimer = setTimeout(flush, ms);
  }
  function ensureConversation() {
    if (st.conv && st.status !== 'closed' && st.status !== 'archived') return Promise.resolve(true);
    if (st.conv) forgetConversation();
    st.createKey = st.createKey || randomKey(); save();
    var body = {};
    if (user) { body.user_id = user.id; body.user_hash = user.hash; }
    if (data.awardeeName || data.awardeeEmail) body.visitor = { name: data.awardeeName || null, email: data.awardeeEmail || null };
    return call('POST', '/widget/conversations', widgetKey, body, st.createKey).then(function (r) {
      if (r.status === 201) {
        st.conv = r.body.conversation.id; st.token = r.body.visitor_token; st.status = r.body.conversation.status;
        st.offset = 0; st.createKey = null; save();
        resetThread(); connect();
        return true;
      }
      r.opening = true;
      return r;
    });
  }
  function flush() {
    if (flushing || !st.pending.length) return;
    var p = st.pending.find(function (x) { return !x.error; });
    if (!p) return;
    flushing = true;
    ensureConversation().then(function (ok) {
      if (ok !== true) return ok;
      return call('POST', convPath('/messages'), st.token, { text: p.text }, p.key);
    }).then(function (r) {
      if (r.status === 201) {
        st.pending.splice(st.pending.indexOf(p), 1); save();
        addMessage(r.body); renderPending();
        backoff = 1000; flushing = false; flush();
      } else if (r.status === 429) {
        retryLater(Math.max(1, r.retryAfter) * 1000);
      } else if (r.status === 409) {
        // The same key is still running (a send from before a reload): ask again shortly.
        retryLater(500);
      } else if (r.status >= 500) {
        retryLater(backoff); backoff = Math.min(backoff * 2, 30000);
      } else if (r.status === 400 && r.body && r.body.error && r.body.error.code === 'invalid_state') {
        // Closed or archived meanwhile: the next conversation gets this message.
        st.status = 'closed'; p.key = randomKey(); save(); flushing = false; flush();
      } else if (r.status === 401 && !r.opening) {
        // The visitor token is no longer known (a reset server): start afresh.
        forgetConversation(); flushing = false; flush();
      } else {
        p.error = (r.body && r.body.error && r.body.error.message) || 'error ' + r.status;
        save(); renderPending(); flushing = false; flush();
      }
    }).catch(function () {
      // The network is down: keep it pending; the same key makes the retry safe.
      retryLater(navigator.onLine ? backoff : 30000);
      backoff = Math.min(backoff * 2, 30000);
    });
  }
  function requestAgent() {
    if (!st.conv) return;
    call('POST', convPath('/request-agent'), st.token, undefined, randomKey()).then(function (r) {
      if (r.status === 200) setConversation(r.body);
    }).catch(function () {});
  }

  // ---- live: /realtime, resumed from the last offset after any loss ----
  var ws = null, wsBackoff = 500, wsTimer = null;
  function connect() {
    clearTimeout(wsTimer);
    if (!st.conv || !st.token || offline) return;
    if (ws) { ws.onclose = null; ws.close(); }
    var sock = ws = new WebSocket(wsURL);
    var conv = st.conv;
    sock.onopen = function () {
      var auth = { type: 'auth', token: st.token };
      if (st.offset) auth.resume_after = st.offset;
      sock.send(JSON.stringify(auth));
    };
    sock.onmessage = function (e) {
      var f;
      try { f = JSON.parse(e.data); } catch (x) { return; }
      if (conv !== st.conv) return;
      if (f.type === 'ready') {
        wsBackoff = 500;
        if (!st.offset) { st.offset = f.offset; save(); }
        loadThread(); // whatever committed before the socket was live
        return;
      }
      if (f.type === 'resync_required') { loadThread(); return; }
      if (f.offset && f.offset > (st.offset || 0)) { st.offset = f.offset; save(); }
      if (f.type === 'new_message' && f.conversation_id === st.conv) addMessage(f.message, true);
      else if (f.type === 'conversation.updated') setConversation(f.conversation);
    };
    sock.onclose = function (e) {
      if (ws !== sock) return;
      ws = null;
      if (e.code === 4001) { forgetConversation(); return; }
      if (e.code === 4000) { st.offset = 0; save(); }
      wsTimer = setTimeout(connect, wsBackoff);
      wsBackoff = Math.min(wsBackoff * 2, 30000);
    };
  }
  window.addEventListener('offline', function () {
    offline = true; renderStatus();
    if (ws) { ws.onclose = null; ws.close(); ws = null; }
  });
  window.addEventListener('online', function () {
    offline = false; renderStatus();
    wsBackoff = 500; connect();
    // A send still in flight keeps its turn; only a waiting retry is brought forward.
    backoff = 1000; clearTimeout(retryTimer); flush();
  });
  // A laptop that slept may hold a socket that died silently: check on wake.
  document.addEventListener('visibilitychange', function () {
    if (document.visibilityState === 'visible' && !ws && !offline) connect();
  });

  // ---- start: continue a stored thread, or a verified user's thread from another device ----
  renderPending();
  renderStatus();
  if (st.conv) connect();
  else if (user) {
    call('POST', '/widget/conversations', widgetKey, { user_id: user.id, user_hash: user.hash, resume_only: true }).then(function (r) {
      if (r.status === 201 && !st.conv) {
        st.conv = r.body.conversation.id; st.token = r.body.visitor_token; st.status = r.body.conversation.status; save();
        renderStatus(); connect();
      }
    }).catch(function () {});
  }
  if (st.pending.length) flush();
})();
