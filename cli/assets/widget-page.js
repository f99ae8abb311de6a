/* Baton chat page: /widget/{agent}?email=...&embed=1 */
(function () {
  "use strict";

  var match = location.pathname.match(/^\/widget\/([^\/]+)/);
  var params = new URLSearchParams(location.search);
  // Served by `baton serve` at /widget/{agent}; hosted elsewhere (AWS), ?agent= names it.
  var agent = match ? decodeURIComponent(match[1]) : params.get("agent") || "demo";
  var embedded = params.get("embed") === "1" && window.parent !== window;
  // ?api=https://... points at the hub's API when the page is not served by the hub itself.
  var api = (params.get("api") || "").replace(/\/+$/, "");
  if (api && !/^https?:\/\//.test(api)) api = "";
  var BASE = api + "/api/widget/" + encodeURIComponent(agent);
  // API Gateway cannot stream: ?poll=1 skips the live stream and polls the cursor endpoint.
  var POLL_ONLY = params.get("poll") === "1";
  // ?socket=wss://... (API Gateway's WebSocket API): replies are pushed there; polling stays
  // behind it, seldom, and takes over while the socket is down.
  var SOCKET = params.get("socket") || "";
  if (!/^wss?:\/\//.test(SOCKET) || !window.WebSocket) SOCKET = "";
  var HOT_SYSTEM = /connect|verbind|povezuj|转接|en relation|wait|warte|ček|等待|attend|joined|beigetreten|pridruž|加入|rejoint/i;
  var HISTORY_MAX = 200;
  var HIDDEN_POLL_MS = 30000;
  var SOCKET_POLL_MS = 60000;
  var EMPTY_HINT = "Ask us anything. Write “human” to talk to a person.";
  var LANGUAGE = (navigator.language || "en").slice(0, 2).toLowerCase();

  var $ = function (id) { return document.getElementById(id); };
  var ui = {
    messages: $("messages"), input: $("input"), send: $("send"), form: $("composer"),
    title: $("title"), status: $("status"), notice: $("notice"), close: $("close")
  };

  // ---- storage (localStorage may be blocked in third-party iframes) ----
  var memory = {};
  var store = {
    key: function (k) { return "baton:" + agent + ":" + k; },
    get: function (k) {
      try { return localStorage.getItem(store.key(k)); } catch (e) { return memory[k] == null ? null : memory[k]; }
    },
    set: function (k, v) {
      try { localStorage.setItem(store.key(k), v); } catch (e) { memory[k] = v; }
    },
    del: function (k) {
      try { localStorage.removeItem(store.key(k)); } catch (e) { delete memory[k]; }
    }
  };

  var state = {
    token: null,
    conversationId: null,
    cursor: 0,
    email: (params.get("email") || "").trim(),
    emailSent: null, // the e-mail the server already has
    seen: {},
    history: [],
    es: null,
    sseFailures: 0,
    sseTimer: null,
    sseOpenTimer: null,
    polling: false,
    pollTimer: null,
    pollDelay: 1000,
    socket: null,
    socketOpen: false,
    socketOpenedAt: 0,
    socketFailures: 0,
    socketTimer: null,
    lastIncoming: null,
    lastIncomingAt: 0
  };
  var sessionPromise = null;

  function sleep(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }

  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    var b = new Uint8Array(16);
    if (window.crypto && crypto.getRandomValues) crypto.getRandomValues(b);
    else for (var i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    var h = Array.prototype.map.call(b, function (x) { return (x + 256).toString(16).slice(1); }).join("");
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

  // ---- HTTP ----
  async function request(method, path, body, auth) {
    var headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (auth) headers.Authorization = "Bearer " + state.token;
    var res;
    try {
      res = await fetch(BASE + path, {
        method: method,
        headers: headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
        credentials: "same-origin"
      });
    } catch (e) {
      var netErr = new Error("Network error");
      netErr.network = true;
      throw netErr;
    }
    var data = null;
    try { data = await res.json(); } catch (e) { /* empty or not JSON */ }
    if (!res.ok) {
      var info = (data && data.error) || {};
      var err = new Error(info.message || "Request failed (" + res.status + ")");
      err.status = res.status;
      err.code = info.code || "http_" + res.status;
      throw err;
    }
    return data || {};
  }

  function transient(e) {
    return e.network || e.status === 502 || e.status === 503 || e.status === 504;
  }

  function errorText(e) {
    if (e.code === "rate_limited" || e.status === 429) return "Slow down — please wait a moment and try again.";
    if (e.network) return "Couldn't send — check your connection.";
    return e.message || "Something went wrong.";
  }

  // ---- UI helpers ----
  var noticeTimer = null;
  function notice(text, ms) {
    clearTimeout(noticeTimer);
    ui.notice.textContent = text || "";
    ui.notice.hidden = !text;
    if (text && ms) noticeTimer = setTimeout(function () { notice(""); }, ms);
  }

  function setStatus(text) { ui.status.textContent = text || ""; }

  function setTitle(text) {
    ui.title.textContent = text;
    document.title = text;
  }

  function nearBottom() {
    var m = ui.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
  }

  function scrollDown() { ui.messages.scrollTop = ui.messages.scrollHeight; }

  function disableAllButtons() {
    var buttons = ui.messages.querySelectorAll(".buttons button");
    for (var i = 0; i < buttons.length; i++) buttons[i].disabled = true;
  }

  // Only the newest incoming message's buttons stay usable: older choices are stale.
  function disableButtonsBefore(el) {
    var buttons = ui.messages.querySelectorAll(".buttons button");
    for (var i = 0; i < buttons.length; i++) {
      if (!el.contains(buttons[i])) buttons[i].disabled = true;
    }
  }

  // Empty state: a hint in the message area until the first message.
  var emptyHint = null;
  function showEmptyHint() {
    if (emptyHint || ui.messages.querySelector(".msg")) return;
    emptyHint = document.createElement("div");
    emptyHint.className = "empty-hint";
    emptyHint.textContent = EMPTY_HINT;
    ui.messages.appendChild(emptyHint);
  }

  function hideEmptyHint() {
    if (!emptyHint) return;
    if (emptyHint.parentNode) emptyHint.parentNode.removeChild(emptyHint);
    emptyHint = null;
  }

  function renderMessage(m, keepButtons) {
    var from = ["user", "bot", "human", "system"].indexOf(m.from) >= 0 ? m.from : "bot";
    hideEmptyHint();
    var stick = from === "user" || nearBottom();
    var el = document.createElement("div");
    el.className = "msg msg-" + from;
    if (m.seq != null) el.setAttribute("data-seq", String(m.seq));
    if (m.at) el.title = new Date(m.at).toLocaleString();
    if (from === "human") {
      var label = document.createElement("span");
      label.className = "label";
      label.textContent = "Agent";
      el.appendChild(label);
    }
    var text = m.text == null ? "" : String(m.text);
    if (text) {
      var bubble = document.createElement("div");
      bubble.className = "bubble";
      bubble.textContent = text;
      el.appendChild(bubble);
    }
    if (Array.isArray(m.buttons) && m.buttons.length) {
      var box = document.createElement("div");
      box.className = "buttons";
      m.buttons.forEach(function (b) {
        if (!b) return;
        var btn = document.createElement("button");
        btn.type = "button";
        btn.textContent = String(b.label != null ? b.label : b.value);
        btn.disabled = keepButtons === false;
        btn.addEventListener("click", function () {
          disableAllButtons();
          var value = String(b.value != null ? b.value : b.label);
          sendText(value, String(b.label != null ? b.label : value));
        });
        box.appendChild(btn);
      });
      el.appendChild(box);
    }
    ui.messages.appendChild(el);
    if (stick) scrollDown();
    return el;
  }

  // ---- local history (so a reload shows the same conversation) ----
  var saveTimer = null;
  function remember(m) {
    var item = { seq: m.seq, from: m.from, text: m.text, buttons: m.buttons, at: m.at };
    state.history.push(item);
    if (state.history.length > HISTORY_MAX) state.history.splice(0, state.history.length - HISTORY_MAX);
    saveHistory();
    return item;
  }

  function saveHistory() {
    clearTimeout(saveTimer);
    saveTimer = setTimeout(function () {
      try {
        store.set("history", JSON.stringify({ conversation: state.conversationId, items: state.history }));
      } catch (e) { /* quota */ }
    }, 200);
  }

  function hasSavedHistory() {
    try {
      var saved = JSON.parse(store.get("history") || "null");
      return !!(saved && Array.isArray(saved.items) && saved.items.length);
    } catch (e) { return false; }
  }

  function restoreHistory() {
    var saved = null;
    try { saved = JSON.parse(store.get("history") || "null"); } catch (e) { /* ignore */ }
    if (!saved || saved.conversation !== state.conversationId || !Array.isArray(saved.items)) return;
    state.history = saved.items.slice(-HISTORY_MAX);
    state.history.forEach(function (m, i) {
      if (m.seq != null) state.seen[m.seq] = true;
      var el = renderMessage(m, i === state.history.length - 1);
      if (m.failed) el.setAttribute("data-state", "failed");
    });
    scrollDown();
  }

  // ---- session ----
  function ensureSession() {
    if (!sessionPromise) {
      sessionPromise = createSession().catch(function (e) {
        sessionPromise = null;
        throw e;
      });
    }
    return sessionPromise;
  }

  async function createSession() {
    setStatus("Connecting…");
    var res;
    for (var attempt = 0; ; attempt++) {
      var body = { language: LANGUAGE };
      if (state.email) body.email = state.email;
      var previous = store.get("token");
      if (previous) body.token = previous;
      try {
        res = await request("POST", "/session", body, false);
        break;
      } catch (e) {
        if (e.status === 400 && body.email) {
          state.email = ""; // an invalid e-mail must not keep the chat from starting
          continue;
        }
        if (previous && (e.status === 401 || e.status === 403)) {
          store.del("token"); // stale token: start a new conversation
          continue;
        }
        if (!transient(e) && e.status !== 429) {
          setStatus("");
          notice(e.message || "The chat is not available.");
          throw e;
        }
        notice("Can't reach the chat server. Retrying…");
        await sleep(Math.min(30000, 1000 * Math.pow(2, attempt)));
      }
    }
    notice("");
    state.token = res.token;
    store.set("token", res.token);
    state.emailSent = body.email || null;
    if (!params.get("title") && res.title) setTitle(res.title);

    var serverCursor = Number(res.cursor) || 0;
    var same = res.conversation_id != null && res.conversation_id === store.get("conversation");
    if (res.conversation_id !== state.conversationId) {
      state.conversationId = res.conversation_id;
      state.seen = {};
      state.history = [];
      if (same) restoreHistory();
    }
    store.set("conversation", String(res.conversation_id));
    // Resume from the older of our last seen cursor and the server's; seq dedupe drops repeats.
    var stored = Number(store.get("cursor"));
    setCursor(same && isFinite(stored) && store.get("cursor") !== null ? Math.min(stored, serverCursor) : serverCursor, true);
    showEmptyHint();
    startTransport();
    if (state.email && state.email !== state.emailSent) postEmail(state.email);
    return res;
  }

  async function renewSession() {
    store.del("token");
    stopTransport();
    sessionPromise = null;
    return ensureSession();
  }

  function setCursor(n, force) {
    if (force || n > state.cursor) {
      state.cursor = n;
      store.set("cursor", String(n));
    }
  }

  // ---- incoming messages ----
  function handleIncoming(m) {
    if (!m || typeof m !== "object") return false;
    var seq = m.seq == null ? null : Number(m.seq);
    if (seq != null) {
      if (!isFinite(seq) || state.seen[seq]) return false;
      state.seen[seq] = true;
      setCursor(seq);
    }
    var el = renderMessage(m, true);
    if (!el.classList.contains("msg-user")) disableButtonsBefore(el);
    remember(m);
    state.lastIncoming = m;
    state.lastIncomingAt = Date.now();
    return true;
  }

  function isHot() {
    var m = state.lastIncoming;
    if (!m || Date.now() - state.lastIncomingAt > 15 * 60 * 1000) return false;
    return m.from === "human" || (m.from === "system" && HOT_SYSTEM.test(m.text || ""));
  }

  // ---- live stream, with polling as the fallback ----
  function stopTransport() {
    if (state.es) state.es.close();
    state.es = null;
    closeSocket();
    clearTimeout(state.sseTimer);
    clearTimeout(state.sseOpenTimer);
    clearTimeout(state.pollTimer);
    state.polling = false;
  }

  function startTransport() {
    stopTransport();
    if (window.EventSource && !POLL_ONLY && state.sseFailures < 3) openStream();
    else {
      startPolling();
      if (SOCKET) openSocket();
    }
  }

  // ---- pushes over a WebSocket, polling behind them ----
  function openSocket() {
    clearTimeout(state.socketTimer);
    if (state.socket || !state.token) return;
    var ws;
    try {
      ws = new WebSocket(SOCKET + (SOCKET.indexOf("?") < 0 ? "?" : "&") + "agent=" + encodeURIComponent(agent) +
        "&token=" + encodeURIComponent(state.token));
    } catch (e) {
      socketClosed(null);
      return;
    }
    state.socket = ws;
    ws.onopen = function () {
      state.socketOpen = true;
      state.socketOpenedAt = Date.now();
      state.socketFailures = 0;
      // What came before the socket opened is read once; pushes bring the rest.
      if (state.polling) schedulePoll(0);
    };
    ws.onmessage = function (ev) {
      var m = null;
      try { m = JSON.parse(ev.data); } catch (e) { return; }
      if (!m || typeof m.seq !== "number") return;
      // The next one is shown; after a gap (a push lost, or a number never used) the log is
      // read from the cursor instead, so nothing is skipped.
      if (m.seq === state.cursor + 1) handleIncoming(m);
      else if (m.seq > state.cursor && state.polling) schedulePoll(0);
    };
    ws.onclose = function () { socketClosed(ws); };
  }

  function closeSocket() {
    clearTimeout(state.socketTimer);
    var ws = state.socket;
    state.socket = null;
    state.socketOpen = false;
    if (ws) {
      ws.onclose = null;
      ws.close();
    }
  }

  // Closed by API Gateway (10 minutes idle, 2 hours at most) or never opened: polling takes
  // over at once, and the socket is opened again (at once after a long-lived one, else after
  // a growing pause).
  function socketClosed(ws) {
    if (ws && state.socket !== ws) return;
    var lasted = state.socketOpen && Date.now() - state.socketOpenedAt > 60000;
    state.socket = null;
    state.socketOpen = false;
    if (!lasted) state.socketFailures++;
    if (state.polling) {
      state.pollDelay = 1000;
      schedulePoll(0);
    }
    // A socket that keeps failing (a wrong URL, a refused origin) is left alone: polling works.
    if (state.socketFailures >= 5) return;
    var wait = lasted ? 0 : Math.min(60000, 1000 * Math.pow(2, state.socketFailures - 1));
    state.socketTimer = setTimeout(openSocket, wait);
  }

  function openStream() {
    var url = BASE + "/stream?token=" + encodeURIComponent(state.token) + "&after=" + state.cursor;
    var es = new EventSource(url);
    state.es = es;
    // A stream that neither opens nor fails (a stuck proxy, no free connection) counts as a failure.
    state.sseOpenTimer = setTimeout(function () { streamFailed(es); }, 15000);
    es.onopen = function () {
      clearTimeout(state.sseOpenTimer);
      state.sseFailures = 0;
      setStatus("");
    };
    es.addEventListener("message", function (ev) {
      var data = null;
      try { data = JSON.parse(ev.data); } catch (e) { return; }
      if (data && data.seq == null && ev.lastEventId) data.seq = Number(ev.lastEventId);
      handleIncoming(data);
    });
    es.onerror = function () { streamFailed(es); };
  }

  function streamFailed(es) {
    if (state.es !== es) return;
    es.close(); // reconnect ourselves, with the current cursor
    state.es = null;
    clearTimeout(state.sseOpenTimer);
    state.sseFailures++;
    if (state.sseFailures >= 3) {
      startPolling();
      return;
    }
    setStatus("Reconnecting…");
    state.sseTimer = setTimeout(function () {
      if (!state.es && !state.polling) openStream();
    }, 1000 * Math.pow(2, state.sseFailures - 1));
  }

  function startPolling() {
    state.polling = true;
    state.pollDelay = 1000;
    schedulePoll(0);
  }

  function schedulePoll(ms) {
    clearTimeout(state.pollTimer);
    state.pollTimer = setTimeout(poll, ms);
  }

  async function poll() {
    if (!state.polling) return;
    var got = false;
    try {
      var res = await request("GET", "/messages?after=" + state.cursor, undefined, true);
      (res.messages || []).forEach(function (m) { if (handleIncoming(m)) got = true; });
      if (typeof res.cursor === "number") setCursor(res.cursor);
      setStatus("");
    } catch (e) {
      if (e.status === 401) {
        renewSession().catch(function () {});
        return;
      }
      setStatus("Reconnecting…");
    }
    if (!state.polling) return;
    state.pollDelay = got || isHot() ? 1000 : Math.min(10000, Math.round(state.pollDelay * 1.5));
    // Nobody sees a hidden tab: poll it seldom (each poll is a billed request on AWS); it
    // polls at once when shown again. With the socket open, polling only stands behind it.
    var delay = state.pollDelay;
    if (document.hidden) delay = Math.max(delay, HIDDEN_POLL_MS);
    if (state.socketOpen) delay = Math.max(delay, SOCKET_POLL_MS);
    schedulePoll(delay);
  }

  function activity() {
    state.pollDelay = 1000;
    // With the socket open the answer is pushed.
    if (state.polling && !state.socketOpen) schedulePoll(1000);
  }

  // ---- sending ----
  function sendText(text, display) {
    text = String(text || "").trim();
    if (!text) return;
    var shown = display || text;
    var m = { from: "user", text: shown, at: Date.now() };
    var el = renderMessage(m);
    deliver(el, text, uuid(), remember(m));
  }

  function markFailed(item, failed) {
    if (!item || !!item.failed === failed) return;
    if (failed) item.failed = true;
    else delete item.failed;
    saveHistory();
  }

  async function deliver(el, text, clientId, item) {
    var old = el.querySelector(".msg-error");
    if (old) el.removeChild(old);
    el.setAttribute("data-state", "pending");
    var renewed = false;
    for (var attempt = 0; ; attempt++) {
      try {
        await ensureSession();
        await request("POST", "/messages", { text: text, client_id: clientId, language: LANGUAGE }, true);
        el.removeAttribute("data-state");
        markFailed(item, false);
        activity();
        return;
      } catch (e) {
        if (e.status === 401 && !renewed) {
          renewed = true;
          try { await renewSession(); } catch (e2) { fail(el, e2, text, clientId, item); return; }
          continue;
        }
        if (transient(e) && attempt < 4) {
          await sleep(800 * Math.pow(2, attempt)); // same client_id: the server dedupes
          continue;
        }
        fail(el, e, text, clientId, item);
        return;
      }
    }
  }

  function fail(el, e, text, clientId, item) {
    el.setAttribute("data-state", "failed");
    markFailed(item, true);
    var line = document.createElement("div");
    line.className = "msg-error";
    line.textContent = errorText(e) + " ";
    var retry = document.createElement("button");
    retry.type = "button";
    retry.textContent = "Retry";
    retry.addEventListener("click", function () { deliver(el, text, clientId, item); });
    line.appendChild(retry);
    el.appendChild(line);
    if (nearBottom()) scrollDown();
  }

  // ---- e-mail ----
  async function postEmail(email) {
    for (var attempt = 0; attempt < 4; attempt++) {
      try {
        await request("POST", "/email", { email: email }, true);
        state.emailSent = email;
        return;
      } catch (e) {
        if (!transient(e)) {
          notice(errorText(e), 5000);
          return;
        }
        await sleep(1000 * Math.pow(2, attempt));
      }
    }
  }

  function setEmail(email) {
    email = String(email || "").trim();
    if (!email || email.length > 320) return;
    state.email = email;
    ensureSession().then(function () {
      if (state.email === email && email !== state.emailSent) return postEmail(email);
    }).catch(function () {});
  }

  window.addEventListener("message", function (e) {
    if (window.parent === window || e.source !== window.parent) return;
    var d = e.data;
    if (d && d.type === "baton:setEmail" && typeof d.email === "string") setEmail(d.email);
  });

  ui.form.addEventListener("submit", function (e) {
    e.preventDefault();
    var text = ui.input.value;
    if (!text.trim()) return;
    ui.input.value = "";
    sendText(text);
    ui.input.focus();
  });

  // Browsers allow few connections per host: a tab hidden for a minute gives its stream up.
  var hiddenTimer = null;
  document.addEventListener("visibilitychange", function () {
    clearTimeout(hiddenTimer);
    if (document.hidden) {
      hiddenTimer = setTimeout(function () {
        if (state.es) stopTransport();
      }, 60000);
    } else if (state.token && !state.es && !state.polling) {
      startTransport();
    } else if (state.polling) {
      schedulePoll(0);
    }
  });

  // ---- start ----
  setTitle(params.get("title") || "Chat");
  if (embedded) {
    document.body.classList.add("embed");
    ui.close.hidden = false;
    var closeMe = function () { window.parent.postMessage({ type: "baton:close" }, "*"); };
    ui.close.addEventListener("click", closeMe);
    document.addEventListener("keydown", function (e) { if (e.key === "Escape") closeMe(); });
    window.parent.postMessage({ type: "baton:ready" }, "*");
  }
  // With saved history, wait for the session (restore, or showEmptyHint there) so the hint does not flash.
  if (!hasSavedHistory()) showEmptyHint();
  ensureSession().catch(function () {});
  ui.input.focus();
})();
