/* Baton operator console: /console */
(function () {
  "use strict";

  var API = "/console/api";
  var GROUPS = [["waiting", "Waiting"], ["active", "Active"], ["closed", "Closed"]];
  var CLOSED_SHOWN = 50;
  var ROLE_LABEL = { user: "Visitor", bot: "Bot", human: "Operator", system: "System" };
  var DESK_LABEL = { not_configured: "not configured", available: "available", unavailable: "unavailable" };

  var $ = function (id) { return document.getElementById(id); };
  var ui = {
    list: $("conversations"), statusBar: $("status-bar"), connection: $("connection"), alerts: $("alerts"),
    empty: $("empty"), detail: $("detail"), title: $("conv-title"), meta: $("conv-meta"),
    take: $("take"), end: $("end"), error: $("detail-error"), transcript: $("transcript"),
    form: $("reply-form"), input: $("reply-input"), send: $("reply-send")
  };

  var state = {
    conversations: [],
    selected: decodeURIComponent(location.hash.slice(1)) || null,
    current: null, // the open conversation
    transcriptSig: "",
    listBusy: false,
    detailBusy: false,
    errorKind: null // "action" errors stay until the next action; "poll" errors clear on success
  };

  // ---- helpers ----
  async function request(method, path, body) {
    var opts = { method: method, headers: { Accept: "application/json" }, cache: "no-store", credentials: "same-origin" };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    var res;
    try {
      res = await fetch(API + path, opts);
    } catch (e) {
      var netErr = new Error("Network error — is baton still running?");
      netErr.network = true;
      throw netErr;
    }
    if (res.status === 401) {
      // The session ended (expired, or a new operator key): sign in again.
      window.location.assign("/console/login");
      throw new Error("Signed out");
    }
    var data = null;
    try { data = await res.json(); } catch (e) { /* no JSON body */ }
    if (!res.ok) {
      var info = (data && data.error) || {};
      var err = new Error(info.message || "Request failed (" + res.status + ")");
      err.status = res.status;
      err.code = info.code;
      throw err;
    }
    return data || {};
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = String(text);
    return node;
  }

  function ago(ms) {
    if (!ms) return "";
    var s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 10) return "just now";
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }

  function clock(ms) {
    if (!ms) return "";
    var d = new Date(ms);
    var sameDay = d.toDateString() === new Date().toDateString();
    return sameDay ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : d.toLocaleString();
  }

  function showError(text, kind) {
    state.errorKind = text ? kind || "poll" : null;
    ui.error.textContent = text || "";
    ui.error.hidden = !text;
  }

  // ---- conversation list ----
  async function refreshList() {
    if (state.listBusy) return;
    state.listBusy = true;
    try {
      var data = await request("GET", "/conversations");
      state.conversations = Array.isArray(data.conversations) ? data.conversations : [];
      ui.connection.hidden = true;
      renderList();
    } catch (e) {
      ui.connection.hidden = false;
    } finally {
      state.listBusy = false;
    }
  }

  function renderList() {
    var active = document.activeElement;
    var focusedId = active && active.classList && active.classList.contains("conv") ? active.getAttribute("data-id") : null;
    var frag = document.createDocumentFragment();
    var waiting = 0;

    GROUPS.forEach(function (g) {
      var items = state.conversations
        .filter(function (c) { return (c.status || "waiting") === g[0]; })
        .sort(function (a, b) { return (b.updated_at || b.created_at || 0) - (a.updated_at || a.created_at || 0); });
      if (g[0] === "waiting") waiting = items.length;
      var section = el("section", "group group-" + g[0]);
      var head = el("h2", "group-title", g[1] + " ");
      head.appendChild(el("span", "count", items.length));
      section.appendChild(head);
      if (!items.length) section.appendChild(el("div", "group-empty", "None"));
      items.slice(0, g[0] === "closed" ? CLOSED_SHOWN : items.length).forEach(function (c) {
        section.appendChild(listItem(c));
      });
      frag.appendChild(section);
    });

    ui.list.replaceChildren(frag);
    document.title = (waiting ? "(" + waiting + ") " : "") + "Baton console";
    if (focusedId) {
      var again = ui.list.querySelector('.conv[data-id="' + CSS.escape(focusedId) + '"]');
      if (again) again.focus();
    }
  }

  function listItem(c) {
    var item = el("div", "conv");
    item.setAttribute("data-id", c.id);
    item.setAttribute("role", "button");
    item.tabIndex = 0;
    if (c.id === state.selected) item.setAttribute("aria-current", "true");

    var top = el("div", "conv-top");
    top.appendChild(el("span", "conv-email", c.email || "Anonymous visitor"));
    var time = el("span", "conv-time", ago(c.updated_at || c.created_at));
    time.title = new Date(c.updated_at || c.created_at || 0).toLocaleString();
    top.appendChild(time);
    item.appendChild(top);

    if (c.reason) item.appendChild(el("div", "conv-reason", c.reason));
    if (c.last_text) item.appendChild(el("div", "conv-last", c.last_text));
    var meta = [c.agent];
    if (c.operator) meta.push("with " + c.operator);
    item.appendChild(el("div", "conv-sub", meta.filter(Boolean).join(" · ")));
    return item;
  }

  function select(id) {
    if (!id) return;
    state.selected = id;
    state.current = null;
    state.transcriptSig = "";
    history.replaceState(null, "", "#" + encodeURIComponent(id));
    var items = ui.list.querySelectorAll(".conv");
    for (var i = 0; i < items.length; i++) {
      if (items[i].getAttribute("data-id") === id) items[i].setAttribute("aria-current", "true");
      else items[i].removeAttribute("aria-current");
    }
    ui.empty.hidden = true;
    ui.detail.hidden = false;
    ui.title.textContent = "Loading…";
    ui.meta.replaceChildren();
    ui.transcript.replaceChildren();
    ui.take.hidden = true;
    ui.end.hidden = true;
    showError("");
    refreshDetail();
  }

  ui.list.addEventListener("click", function (e) {
    var item = e.target.closest(".conv");
    if (item) select(item.getAttribute("data-id"));
  });
  ui.list.addEventListener("keydown", function (e) {
    var item = e.target.closest(".conv");
    if (item && (e.key === "Enter" || e.key === " ")) {
      e.preventDefault();
      select(item.getAttribute("data-id"));
    }
  });

  // ---- open conversation ----
  async function refreshDetail() {
    var id = state.selected;
    if (!id || state.detailBusy) return;
    state.detailBusy = true;
    try {
      var data = await request("GET", "/conversations/" + encodeURIComponent(id));
      if (id === state.selected) renderDetail(data);
    } catch (e) {
      if (id === state.selected) {
        if (e.status === 404) ui.title.textContent = "Conversation not found";
        if (state.errorKind !== "action") showError(e.message);
      }
    } finally {
      state.detailBusy = false;
    }
  }

  function renderDetail(data) {
    var c = data.conversation || {};
    var messages = Array.isArray(data.messages) ? data.messages : [];
    state.current = c;
    if (state.errorKind === "poll") showError("");

    ui.title.textContent = c.email || "Anonymous visitor";
    var meta = [];
    var badge = el("span", "badge badge-" + (c.status || "waiting"), c.status || "waiting");
    meta.push(badge);
    [c.agent && "agent " + c.agent, c.operator && "operator " + c.operator, c.created_at && "since " + clock(c.created_at)]
      .filter(Boolean)
      .forEach(function (t) { meta.push(el("span", "meta-item", t)); });
    if (c.reason) meta.push(el("span", "meta-item meta-reason", "Reason: " + c.reason));
    var params = (c.user_info && c.user_info.params) || {};
    Object.keys(params).sort().forEach(function (k) {
      meta.push(el("span", "meta-item meta-param", k + ": " + params[k]));
    });
    ui.meta.replaceChildren.apply(ui.meta, meta);

    var closed = c.status === "closed";
    ui.take.hidden = c.status !== "waiting";
    ui.end.hidden = closed;
    ui.input.disabled = closed;
    ui.send.disabled = closed;
    ui.input.placeholder = closed
      ? "This conversation is closed."
      : c.status === "waiting"
        ? "Reply (this takes the conversation)…"
        : "Write a reply… (Enter sends, Shift+Enter for a new line)";

    var sig = JSON.stringify(messages);
    if (sig === state.transcriptSig) return;
    var first = state.transcriptSig === "";
    state.transcriptSig = sig;
    renderTranscript(c, messages, first);
  }

  // The transferred history is the leading run of user/bot lines from before the handoff
  // (after it only the user, the operator and the console speak).
  function isHistory(m, c) {
    return (m.role === "user" || m.role === "bot") && !!c.created_at && m.at <= c.created_at;
  }

  function renderTranscript(c, messages, first) {
    var t = ui.transcript;
    var stick = first || t.scrollHeight - t.scrollTop - t.clientHeight < 80;
    var frag = document.createDocumentFragment();
    var history = null;
    var live = false;

    messages.forEach(function (m) {
      if (!live && isHistory(m, c)) {
        if (!history) {
          history = el("div", "history");
          history.appendChild(el("div", "history-title", "Transferred history"));
          frag.appendChild(history);
        }
        history.appendChild(line(m));
        return;
      }
      live = true;
      frag.appendChild(line(m));
    });
    if (history) {
      var divider = el("div", "divider", "Handed off" + (c.reason ? " — " + c.reason : ""));
      frag.insertBefore(divider, history.nextSibling);
    }
    if (!messages.length) frag.appendChild(el("div", "transcript-empty", "No messages yet."));

    t.replaceChildren(frag);
    if (stick) t.scrollTop = t.scrollHeight;
  }

  function line(m) {
    var role = ROLE_LABEL[m.role] ? m.role : "system";
    var row = el("div", "tmsg tmsg-" + role);
    var head = el("div", "tmsg-head");
    head.appendChild(el("span", "tmsg-role", ROLE_LABEL[role]));
    if (m.at) head.appendChild(el("span", "tmsg-time", clock(m.at)));
    row.appendChild(head);
    row.appendChild(el("div", "tmsg-text", m.text == null ? "" : m.text));
    return row;
  }

  // ---- actions ----
  async function action(path, body, button) {
    var id = state.selected;
    if (!id) return false;
    if (button) button.disabled = true;
    showError("");
    try {
      await request("POST", "/conversations/" + encodeURIComponent(id) + path, body === undefined ? {} : body);
      return true;
    } catch (e) {
      showError(e.message, "action");
      return false;
    } finally {
      if (button) button.disabled = false;
      refreshDetail();
      refreshList();
    }
  }

  ui.take.addEventListener("click", async function () {
    if (await action("/take", undefined, ui.take)) ui.input.focus();
  });

  ui.end.addEventListener("click", function () {
    action("/end", undefined, ui.end);
  });

  ui.form.addEventListener("submit", async function (e) {
    e.preventDefault();
    var text = ui.input.value.trim();
    if (!text || ui.send.disabled) return;
    ui.send.disabled = true;
    var ok = await action("/reply", { text: text });
    ui.send.disabled = !!(state.current && state.current.status === "closed");
    if (ok) {
      if (ui.input.value.trim() === text) ui.input.value = "";
      ui.input.focus();
    }
  });

  ui.input.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      ui.form.requestSubmit ? ui.form.requestSubmit() : ui.send.click();
    }
  });

  // ---- desk status and alerts ----
  async function refreshStatus() {
    try {
      var data = await request("GET", "/status");
      var pills = (Array.isArray(data.agents) ? data.agents : []).map(function (a) {
        var status = a.desk_status || "not_configured";
        var pill = el("span", "pill pill-" + status);
        pill.appendChild(el("span", "dot"));
        var hours = a.hours || {};
        var when = hours.open_now === false
          ? ", closed" + (hours.next_opening ? " until " + hours.next_opening : "")
          : "";
        pill.appendChild(document.createTextNode((a.name || a.id) + ": desk " + (DESK_LABEL[status] || status) + when));
        pill.title = a.detail || "";
        return pill;
      });
      ui.statusBar.replaceChildren.apply(ui.statusBar, pills);
      var alerts = Array.isArray(data.alerts) ? data.alerts.filter(Boolean) : [];
      ui.alerts.replaceChildren.apply(ui.alerts, alerts.map(function (a) { return el("div", "alert", a); }));
      ui.alerts.hidden = alerts.length === 0;
    } catch (e) {
      /* the list poll reports connection problems */
    }
  }

  // ---- start ----
  refreshList();
  refreshStatus();
  if (state.selected) select(state.selected);
  setInterval(refreshList, 2000);
  setInterval(refreshDetail, 1500);
  setInterval(refreshStatus, 5000);
})();
