/* archiver embed: one tag on any site adds a chat launcher and the widget in an iframe.

   <script src="https://chat.example.com/widget/embed.js" data-token="<jwt>" async></script>

   data-token      a token for the visitor (minted by the site's back end), or
   data-token-url  a URL on the host site answering {"token": "<jwt>"} (or the bare token as text)
                   for its logged-in user; asked again when the token expires
   neither         a guest session: the widget asks the archiver (POST /session, from inside its
                   iframe, so the host page's CSP and CORS do not come into it) for a short-lived
                   token for an anonymous visitor and refreshes it; only if the server runs with
                   ARCHIVER_GUEST_SESSIONS=true, else the panel shows the server's sentence
   data-title      the panel's title (default "Chat")
   data-color      the accent colour, any CSS colour (default #2f5bea)
   data-position   "right" (default) or "left"
   data-open       "true" to open the panel at once

   Deliberate choices: a classic script (document.currentScript is null in modules) that works out
   the archiver origin from its own src; everything lives in a shadow root styled by a
   constructable stylesheet, so host CSS does not leak in and a strict host CSP (no inline
   styles) does not break it; the token travels to the iframe in the URL fragment, which never
   reaches a server log; postMessage is always addressed to, and checked against, one origin. */
(() => {
  "use strict";

  const script = document.currentScript;
  if (!script || !script.src || script.dataset.archiverMounted) return;
  script.dataset.archiverMounted = "1";

  const origin = new URL(script.src, location.href).origin;
  const data = script.dataset;
  const config = {
    token: data.token || "",
    tokenUrl: data.tokenUrl ? new URL(data.tokenUrl, location.href).href : "",
    title: (data.title || "Chat").trim().slice(0, 80) || "Chat",
    color: data.color && CSS.supports("color", data.color) ? data.color : "#2f5bea",
    position: data.position === "left" ? "left" : "right",
    open: data.open === "true",
  };

  const STYLE = `
    :host { all: initial; position: fixed; z-index: 2147483000; bottom: 20px; right: 20px;
            font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
    :host([data-position="left"]) { right: auto; left: 20px; }
    [hidden] { display: none !important; }
    .launcher { position: relative; display: grid; place-items: center; width: 56px; height: 56px;
                padding: 0; border: 0; border-radius: 50%; cursor: pointer;
                background: var(--archiver-accent); color: var(--archiver-on-accent);
                box-shadow: 0 6px 20px rgba(0, 0, 0, 0.25); transition: transform 0.15s ease; }
    .launcher:hover { transform: scale(1.05); }
    .launcher:focus-visible { outline: 3px solid #1a56db; outline-offset: 3px; }
    .launcher svg { width: 26px; height: 26px; fill: currentColor; }
    .badge { position: absolute; top: 3px; right: 3px; width: 12px; height: 12px; border-radius: 50%;
             background: #e5484d; border: 2px solid #fff; }
    .panel { position: absolute; bottom: 72px; right: 0; width: min(380px, calc(100vw - 40px));
             height: min(620px, calc(100vh - 120px)); border-radius: 16px; overflow: hidden;
             background: #fff; box-shadow: 0 12px 40px rgba(0, 0, 0, 0.3); }
    :host([data-position="left"]) .panel { right: auto; left: 0; }
    .panel iframe { display: block; width: 100%; height: 100%; border: 0; }
    .problem { margin: 0; padding: 1rem; color: #a4161a; font-size: 14px; line-height: 1.4; }
    @media (max-width: 480px) {
      .panel { position: fixed; inset: 0; width: auto; height: auto; border-radius: 0; }
    }
    @media (prefers-reduced-motion: reduce) { .launcher { transition: none; } }
  `;

  const SVG = "http://www.w3.org/2000/svg";
  const ICONS = {
    chat: "M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z",
    close: "M6.4 5 12 10.6 17.6 5 19 6.4 13.4 12 19 17.6 17.6 19 12 13.4 6.4 19 5 17.6 10.6 12 5 6.4z",
  };

  function icon(name) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    const path = document.createElementNS(SVG, "path");
    path.setAttribute("d", ICONS[name]);
    svg.append(path);
    return svg;
  }

  function readableOn(element) {
    const rgb = (getComputedStyle(element).backgroundColor.match(/[\d.]+/g) || ["0", "0", "0"])
      .slice(0, 3)
      .map((v) => {
        const c = Number(v) / 255;
        return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
      });
    return 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2] > 0.4 ? "#111111" : "#ffffff";
  }

  // ---- DOM ----------------------------------------------------------------------------

  const host = document.createElement("div");
  host.dataset.archiverWidget = "";
  host.dataset.position = config.position;
  host.style.setProperty("--archiver-accent", config.color);
  const root = host.attachShadow({ mode: "open" });
  const sheet = new CSSStyleSheet();
  sheet.replaceSync(STYLE);
  root.adoptedStyleSheets = [sheet];

  const panel = document.createElement("section");
  panel.className = "panel";
  panel.id = "archiver-panel";
  panel.setAttribute("aria-label", config.title);
  panel.hidden = true;

  const launcher = document.createElement("button");
  launcher.type = "button";
  launcher.className = "launcher";
  launcher.setAttribute("aria-controls", panel.id);
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.hidden = true;
  const chatIcon = icon("chat");
  const closeIcon = icon("close");
  launcher.append(chatIcon, closeIcon, badge);

  root.append(panel, launcher);

  let frame = null;
  let lastTokenRequest = 0;
  let widgetAlive = false; // the widget said hello: the browser let it run in this page
  // How long after the frame's load the widget may take to say hello. A frame the server
  // does not let this site embed (CSP frame-ancestors) loads the browser's error page
  // instead, which never says it.
  const HELLO_WAIT_MS = 4000;

  function showState(open) {
    panel.hidden = !open;
    launcher.setAttribute("aria-expanded", String(open));
    launcher.setAttribute("aria-label", open ? `Close ${config.title}` : `Open ${config.title}`);
    chatIcon.style.display = open ? "none" : "";
    closeIcon.style.display = open ? "" : "none";
  }

  function post(message) {
    if (frame && frame.contentWindow) {
      frame.contentWindow.postMessage({ source: "archiver-embed", ...message }, origin);
    }
  }

  async function fetchToken() {
    if (!config.tokenUrl) return config.token;
    const response = await fetch(config.tokenUrl, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "application/json, text/plain" },
    });
    if (!response.ok) throw new Error(`the token endpoint answered HTTP ${response.status}`);
    if ((response.headers.get("Content-Type") || "").includes("json")) {
      const body = await response.json();
      return typeof body === "string" ? body : body.token || body.access_token || "";
    }
    return (await response.text()).trim();
  }

  function problem(text) {
    const p = document.createElement("p");
    p.className = "problem";
    p.setAttribute("role", "alert");
    p.textContent = text;
    panel.replaceChildren(p);
  }

  async function mountFrame() {
    if (frame) return;
    frame = document.createElement("iframe"); // claimed now so a double click mounts one
    let token = "";
    try {
      token = await fetchToken();
    } catch (err) {
      frame = null;
      problem(`The chat is unavailable: could not sign you in (${err.message}).`);
      return;
    }
    const fragment = new URLSearchParams({
      token,
      guest: token ? "0" : "1",
      embed: "1",
      host: location.origin,
      title: config.title,
      color: config.color,
    });
    frame.title = config.title;
    frame.src = `${origin}/widget/chat.html#${fragment}`;
    // The origin alone (never the page's path): the server logs which site tried to
    // embed it when that site is not allowed to (widget.framing_refused).
    frame.referrerPolicy = "origin";
    frame.addEventListener("load", () => {
      post({ type: "focus" });
      setTimeout(() => {
        if (!widgetAlive && frame) refused();
      }, HELLO_WAIT_MS);
    });
    panel.replaceChildren(frame);
  }

  function refused() {
    frame = null;
    problem(
      `The chat cannot be shown on this site: its server does not allow ${location.origin} ` +
        "to embed it. The server's operator adds this address to ARCHIVER_ALLOWED_ORIGINS.",
    );
  }

  async function refreshToken() {
    if (!config.tokenUrl || Date.now() - lastTokenRequest < 10000) return;
    lastTokenRequest = Date.now();
    try {
      const token = await fetchToken();
      if (token) post({ type: "token", token });
    } catch {
      /* the widget keeps saying it is offline; the next request tries again */
    }
  }

  function open() {
    showState(true);
    badge.hidden = true;
    mountFrame();
    post({ type: "focus" });
  }

  function close() {
    showState(false);
    launcher.focus();
  }

  launcher.addEventListener("click", () => (panel.hidden ? open() : close()));

  window.addEventListener("message", (event) => {
    if (!frame || event.source !== frame.contentWindow || event.origin !== origin) return;
    const message = event.data;
    if (!message || message.source !== "archiver-widget") return;
    if (message.type === "hello") widgetAlive = true;
    else if (message.type === "close") close();
    else if (message.type === "token-request") refreshToken();
    else if (message.type === "message" && panel.hidden) badge.hidden = false;
  });

  function mount() {
    document.body.append(host);
    host.style.setProperty("--archiver-on-accent", readableOn(launcher));
    showState(false);
    if (config.open) open();
  }

  if (document.body) mount();
  else document.addEventListener("DOMContentLoaded", mount, { once: true });
})();
