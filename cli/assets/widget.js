/*
 * Baton embed script.
 *
 *   <script src="https://HOST/widget.js" data-agent="demo" async></script>
 *
 * Optional attributes: data-email="a@b.c", data-title="Support".
 * Where the chat page is not served by the hub itself (the AWS form, whose HTTP API cannot
 * serve pages or stream): data-page="https://cdn.example.com/widget.html" (the page's copy)
 * and data-api="https://API-ID.execute-api.REGION.amazonaws.com" (the hub's API); replies
 * are then polled, or pushed with data-socket="wss://SOCKET-API-ID.execute-api.REGION.amazonaws.com/live"
 * (the stack's WidgetSocketUrl output), polling standing behind.
 * API: window.ChatBot.setEmail(email), .open(), .close(), .toggle().
 * Calls made before this script loads can be queued:
 *   window.ChatBot = window.ChatBot || { q: [] };
 *   window.ChatBot.q.push(["setEmail", "a@b.c"]);
 */
(function () {
  "use strict";

  var previous = window.ChatBot;
  if (previous && previous._baton) return; // loaded twice

  var script = document.currentScript;
  if (!script || !script.getAttribute("data-agent")) {
    script = document.querySelector('script[src*="widget.js"][data-agent]');
  }
  if (!script) return;

  var HOST;
  try {
    HOST = new URL(script.src, location.href).origin;
  } catch (e) {
    return;
  }
  var agent = script.getAttribute("data-agent");
  // The chat page's origin: the hub's, or that of data-page.
  var FRAME_ORIGIN = HOST;
  try {
    if (script.getAttribute("data-page")) FRAME_ORIGIN = new URL(script.getAttribute("data-page"), location.href).origin;
  } catch (e) {
    /* a malformed data-page falls back to the hub's own page */
  }
  var customTitle = script.getAttribute("data-title");
  var title = customTitle || "Chat";
  var email = (script.getAttribute("data-email") || "").trim();

  var Z = "2147483000";
  var ICON_CHAT = "M5 3h14a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4H5a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2z";
  var ICON_CLOSE = "M6.4 5 12 10.6 17.6 5 19 6.4 13.4 12 19 17.6 17.6 19 12 13.4 6.4 19 5 17.6 10.6 12 5 6.4z";
  var small = window.matchMedia ? window.matchMedia("(max-width: 480px)") : null;

  var bubble = null;
  var panel = null;
  var iframe = null;
  var iframeReady = false;
  var sentEmail = ""; // the e-mail the iframe already knows
  var isOpen = false;
  var wantOpen = false;

  // Inline styles with !important, so the host page's CSS cannot break the widget
  // (and no <style> element is needed, which a strict host CSP could block).
  function css(el, styles) {
    for (var k in styles) {
      if (Object.prototype.hasOwnProperty.call(styles, k)) el.style.setProperty(k, styles[k], "important");
    }
    return el;
  }

  function icon(d) {
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("width", "26");
    svg.setAttribute("height", "26");
    svg.setAttribute("aria-hidden", "true");
    var path = document.createElementNS(ns, "path");
    path.setAttribute("d", d);
    path.setAttribute("fill", "currentColor");
    svg.appendChild(path);
    return svg;
  }

  function build() {
    bubble = document.createElement("button");
    bubble.type = "button";
    bubble.setAttribute("data-baton", "bubble");
    bubble.setAttribute("aria-label", "Open " + title);
    bubble.setAttribute("aria-expanded", "false");
    css(bubble, {
      position: "fixed", right: "20px", bottom: "20px", width: "56px", height: "56px",
      margin: "0", padding: "0", border: "none", "border-radius": "50%",
      background: "#2f6fed", color: "#fff", cursor: "pointer", display: "flex",
      "align-items": "center", "justify-content": "center",
      "box-shadow": "0 4px 14px rgba(0,0,0,.25)", "z-index": Z
    });
    bubble.appendChild(icon(ICON_CHAT));
    bubble.addEventListener("click", toggle);

    panel = document.createElement("div");
    panel.setAttribute("data-baton", "panel");
    panel.setAttribute("role", "dialog");
    panel.setAttribute("aria-label", title);
    css(panel, {
      position: "fixed", display: "none", overflow: "hidden", background: "#fff",
      "box-shadow": "0 10px 40px rgba(0,0,0,.25)", "z-index": Z
    });

    document.body.appendChild(panel);
    document.body.appendChild(bubble);
    layout();
    if (small && small.addEventListener) small.addEventListener("change", layout);
    if (wantOpen) open();
  }

  function layout() {
    if (!panel) return;
    var mobile = !!(small && small.matches);
    if (mobile) {
      css(panel, {
        top: "0", left: "0", right: "0", bottom: "0", width: "auto", height: "auto",
        "max-width": "none", "max-height": "none", "border-radius": "0"
      });
    } else {
      css(panel, {
        top: "auto", left: "auto", right: "20px", bottom: "88px", width: "380px", height: "560px",
        "max-width": "calc(100vw - 40px)", "max-height": "calc(100vh - 108px)", "border-radius": "14px"
      });
    }
    css(panel, { display: isOpen ? "block" : "none" });
    // Full-screen on phones: the page's own close button replaces the bubble.
    css(bubble, { display: mobile && isOpen ? "none" : "flex" });
  }

  function frameUrl() {
    var page = script.getAttribute("data-page");
    var apiBase = script.getAttribute("data-api");
    var url = page
      ? page + "?agent=" + encodeURIComponent(agent) + "&"
      : HOST + "/widget/" + encodeURIComponent(agent) + "?";
    if (apiBase) url += "api=" + encodeURIComponent(apiBase) + "&poll=1&";
    var socket = script.getAttribute("data-socket");
    if (socket) url += "socket=" + encodeURIComponent(socket) + "&";
    if (email) url += "email=" + encodeURIComponent(email) + "&";
    url += "embed=1";
    if (customTitle) url += "&title=" + encodeURIComponent(customTitle);
    return url;
  }

  function ensureFrame() {
    if (iframe) return;
    iframe = document.createElement("iframe");
    iframe.title = title;
    css(iframe, { border: "0", width: "100%", height: "100%", display: "block", margin: "0" });
    sentEmail = email;
    iframe.addEventListener("load", function () {
      iframeReady = true;
      syncEmail();
    });
    iframe.src = frameUrl();
    panel.appendChild(iframe);
  }

  function syncEmail() {
    if (!iframe || !iframeReady || !email || email === sentEmail) return;
    sentEmail = email;
    iframe.contentWindow.postMessage({ type: "baton:setEmail", email: email }, FRAME_ORIGIN);
  }

  function setIcon(d) {
    while (bubble.firstChild) bubble.removeChild(bubble.firstChild);
    bubble.appendChild(icon(d));
  }

  function open() {
    if (!panel) {
      wantOpen = true;
      return;
    }
    ensureFrame();
    isOpen = true;
    setIcon(ICON_CLOSE);
    bubble.setAttribute("aria-expanded", "true");
    bubble.setAttribute("aria-label", "Close " + title);
    layout();
    try {
      iframe.focus();
    } catch (e) { /* ignore */ }
  }

  function close() {
    wantOpen = false;
    if (!panel) return;
    isOpen = false;
    setIcon(ICON_CHAT);
    bubble.setAttribute("aria-expanded", "false");
    bubble.setAttribute("aria-label", "Open " + title);
    layout();
  }

  function toggle() {
    if (isOpen || (!panel && wantOpen)) close();
    else open();
  }

  function setEmail(value) {
    email = value == null ? "" : String(value).trim();
    syncEmail();
  }

  // Messages from the chat page inside the iframe.
  window.addEventListener("message", function (e) {
    if (!iframe || e.source !== iframe.contentWindow || e.origin !== FRAME_ORIGIN) return;
    var d = e.data;
    if (!d || typeof d !== "object") return;
    if (d.type === "baton:close") close();
    else if (d.type === "baton:ready") {
      iframeReady = true;
      syncEmail();
    }
  });

  var api = { _baton: true, setEmail: setEmail, open: open, close: close, toggle: toggle };
  window.ChatBot = api;

  // Replay calls queued before the script loaded.
  var queued = previous && previous.q && previous.q.length ? Array.prototype.slice.call(previous.q) : [];
  queued.forEach(function (call) {
    if (!call || typeof call.length !== "number") return;
    var args = Array.prototype.slice.call(call);
    var name = args.shift();
    if (typeof name === "string" && name.charAt(0) !== "_" && typeof api[name] === "function") {
      api[name].apply(api, args);
    }
  });

  if (document.body) build();
  else document.addEventListener("DOMContentLoaded", build);
})();
