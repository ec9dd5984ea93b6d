// The chat widget: one EventSource on /subscribe, fetch() for everything else.
//
// The EventSource is opened with a single-use stream ticket (POST /subscribe/ticket, the token
// in the Authorization header), never with the token in the URL. Every message gets an
// Idempotency-Key and waits in an outbox: sent one at a time, in order, once the stream is
// live, and retried with the same key on network errors and 502/503/504 (the server journals
// it once however often it arrives).
//
// Every message is keyed by "<dialog>:<seq>" (the SSE id the server gives it). That key is the
// only identity a message has here: a streamed reply, its final `message` event, a replay after
// a reconnect, the same message seen by a second tab and the answer to our own POST all land on
// the same element, so nothing is ever shown twice. Text only ever goes in through text nodes.

import {
  Api,
  make,
  readClaims,
  rememberToken,
  resolveToken,
  shortTime,
  takeFragment,
  timeElement,
} from "/widget/common.js";

const RETRY_MIN_MS = 3000;
const RETRY_MAX_MS = 30000;
const SEND_RETRY_MIN_MS = 500;
const SEND_RETRY_MAX_MS = 15000;
const STICKY_BOTTOM_PX = 80;

const STATUS_TEXT = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  offline: "Offline",
};

const NEW_CONVERSATION_TEXT = "New conversation started. The previous one was archived.";
const ENDED_TEXT = {
  user: "This conversation was ended with “New conversation”.",
  disconnect: "This conversation was archived after the connection closed.",
  timeout: "This conversation was archived after a period of inactivity.",
  shutdown: "This conversation was archived when the server shut down.",
  recovery: "This conversation was archived when the server recovered it.",
};

function endedText(reason) {
  return `${ENDED_TEXT[reason] || "This conversation has ended."} Your next message starts a new one.`;
}

const $ = (id) => document.getElementById(id);
const ui = {
  title: $("title"),
  status: $("status"),
  statusText: $("status-text"),
  log: $("log"),
  empty: $("empty"),
  alert: $("alert"),
  alertText: $("alert-text"),
  alertClose: $("alert-close"),
  form: $("composer"),
  input: $("input"),
  send: $("send"),
  stop: $("stop"),
  newConversation: $("new-conversation"),
  reviewLink: $("review-link"),
  close: $("close"),
};

const params = takeFragment();
const embedded = params.get("embed") === "1" && window.parent !== window;
const hostOrigin = originOrNull(params.get("host"));
let token = resolveToken(params);
let api = new Api(token);

const state = {
  conn: "connecting",
  everLive: false,
  lostNotice: false, // a "server went away" notice is showing; say so when we are back
  source: null,
  retryTimer: 0,
  retryDelay: RETRY_MIN_MS,
  authFailed: false,
  dialog: null, // the dialog new messages belong to, null when the next chat starts a new one
  bubbles: new Map(), // "<dialog>:<seq>" -> bubble
  pending: [], // our own messages, shown at once, waiting for their key
  ended: new Set(), // dialogs known to be archived
  endNotices: new Map(), // dialog -> {el, generic}: the notice saying it ended
  lastEventId: "", // the newest "<dialog>:<seq>" the server gave us, for a fresh EventSource
  cleared: new Set(), // dialogs removed from view by "New conversation"
  streamingKey: null,
  sending: false,
  stopping: false,
  archiving: false,
  authAlert: false, // the alert shows a sign-in problem; a fresh `ready` clears it
  outbox: [], // {text, key, bubble}: typed, not yet answered; sent in order, one at a time
  pumping: false,
  live: false, // the stream said `ready` and has not failed since
  liveWaiters: [], // resolved at the next `ready`
  connectSeq: 0, // the newest connect() attempt; an older one that wakes up gives way
  replaced: false, // a newer tab took our stream's place: wait for the person to reconnect
  guestTimer: 0,
  retryAlert: false, // the alert says a message is being sent again; its success hides it
};

function originOrNull(value) {
  try {
    const url = new URL(value);
    return url.origin === value ? value : null;
  } catch {
    return null;
  }
}

// ---- look and feel -------------------------------------------------------------------

function applyLook() {
  const title = (params.get("title") || "").trim().slice(0, 80);
  if (title) {
    ui.title.textContent = title;
    document.title = title;
  }
  const color = params.get("color");
  if (color && CSS.supports("color", color)) {
    const root = document.documentElement;
    root.style.setProperty("--accent", color);
    root.style.setProperty("--on-accent", readableOn(color));
  }
  document.body.classList.toggle("is-embedded", embedded);
  ui.close.hidden = !embedded;
  ui.reviewLink.hidden = embedded;
}

/** Black or white, whichever reads better on the given colour. */
function readableOn(color) {
  const probe = make("span");
  probe.style.color = color;
  document.body.append(probe);
  const rgb = getComputedStyle(probe).color.match(/[\d.]+/g) || ["0", "0", "0"];
  probe.remove();
  const [r, g, b] = rgb.slice(0, 3).map((v) => {
    const c = Number(v) / 255;
    return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  });
  const luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b;
  return luminance > 0.4 ? "#111111" : "#ffffff";
}

// ---- status, alerts, notices ---------------------------------------------------------

function setConn(conn, note = "") {
  state.conn = conn;
  ui.status.dataset.state = conn;
  ui.statusText.textContent = note ? `${STATUS_TEXT[conn]} — ${note}` : STATUS_TEXT[conn];
  updateControls();
}

function showAlert(text) {
  ui.alertText.textContent = text;
  ui.alert.hidden = false;
}

function hideAlert() {
  ui.alert.hidden = true;
  ui.alertText.textContent = "";
}

function notice(text, kind = "info") {
  const el = make("p", `notice notice--${kind}`, text);
  withScroll(() => ui.log.append(el));
  return el;
}

// Whether the log was showing its newest message before its size changed: a resize (a
// phone turned, the panel narrowed to 360 px) re-wraps every bubble and would otherwise
// leave the newest message out of view.
let logAtBottom = true;

function keepNewestInViewOnResize() {
  ui.log.addEventListener("scroll", () => {
    const log = ui.log;
    logAtBottom = log.scrollHeight - log.scrollTop - log.clientHeight < STICKY_BOTTOM_PX;
  });
  new ResizeObserver(() => {
    if (logAtBottom) ui.log.scrollTop = ui.log.scrollHeight;
  }).observe(ui.log);
}

function withScroll(change) {
  const log = ui.log;
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < STICKY_BOTTOM_PX;
  change();
  ui.empty.hidden = ui.log.querySelector(".msg, .notice") !== null;
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function updateControls() {
  const busy = state.sending || state.streamingKey !== null;
  const usable = Boolean(token) && !state.authFailed;
  ui.send.disabled = !usable; // typing goes on while a reply streams or the stream is down
  ui.stop.hidden = !busy;
  ui.stop.disabled = state.stopping;
  ui.newConversation.disabled = !usable || busy || state.archiving;
  ui.log.setAttribute("aria-busy", String(state.streamingKey !== null));
}

// ---- message bubbles -----------------------------------------------------------------

// The same words as the review page and the transcript files (role: user).
const WHO = { user: "User", assistant: "Assistant", error: "Error" };

function keyOf(dialog, seq) {
  return `${dialog}:${seq}`;
}

function splitKey(key) {
  const at = key.lastIndexOf(":");
  return { dialog: key.slice(0, at), seq: Number(key.slice(at + 1)) };
}

function createBubble(role) {
  const el = make("article", "msg");
  const meta = make("p", "msg__meta");
  const who = make("span", "msg__who");
  const time = make("span", "msg__time");
  const flag = make("span", "msg__flag");
  flag.hidden = true;
  meta.append(who, time, flag);
  const body = make("div", "msg__body");
  const text = document.createTextNode("");
  body.append(text);
  el.append(meta, body);
  const bubble = { el, who, time, flag, text, key: null, dialog: null, seq: 0, final: false };
  setRole(bubble, role);
  return bubble;
}

function setKey(bubble, key) {
  const { dialog, seq } = splitKey(key);
  Object.assign(bubble, { key, dialog, seq });
  bubble.el.dataset.key = key;
  bubble.el.dataset.dialog = dialog;
  bubble.el.dataset.seq = String(seq);
  state.bubbles.set(key, bubble);
}

function setRole(bubble, role) {
  const known = role in WHO ? role : "assistant";
  bubble.role = known;
  bubble.el.dataset.role = known;
  bubble.el.className = bubble.el.className.replace(/\bmsg--(user|assistant|error)\b/g, "").trim();
  bubble.el.classList.add(`msg--${known}`);
  bubble.who.textContent = WHO[known];
}

function setTime(bubble, at) {
  bubble.time.replaceChildren(timeElement(at, shortTime));
}

function setFlag(bubble, text) {
  bubble.flag.textContent = text;
  bubble.flag.hidden = !text;
}

function setStreaming(bubble, on) {
  bubble.el.classList.toggle("msg--streaming", on);
  bubble.el.setAttribute("aria-busy", String(on));
}

/** Put a keyed bubble in seq order within its dialog; anything newer goes at the end. */
function place(bubble) {
  const later = [...ui.log.querySelectorAll(".msg[data-key]")].find(
    (el) => el.dataset.dialog === bubble.dialog && Number(el.dataset.seq) > bubble.seq,
  );
  if (later) later.before(bubble.el);
  else ui.log.append(bubble.el);
}

function bubbleFor(key, role) {
  let bubble = state.bubbles.get(key);
  if (!bubble) {
    bubble = createBubble(role);
    setKey(bubble, key);
    place(bubble);
  }
  return bubble;
}

/** A `message` event, a GET /dialog entry or (provisionally) our POST's answer. */
function applyMessage(m, { provisional = false } = {}) {
  if (!m || m.dialog == null || m.seq == null || state.cleared.has(m.dialog)) return;
  const key = keyOf(m.dialog, m.seq);
  const existing = state.bubbles.get(key);
  if (provisional && existing && existing.final) return;
  withScroll(() => {
    const bubble = existing || (m.role === "user" && adoptPending(m.text, key)) || bubbleFor(key, m.role);
    setRole(bubble, m.role);
    if (typeof m.text === "string") bubble.text.data = m.text;
    if (m.at) setTime(bubble, m.at);
    if (m.interrupted) setFlag(bubble, "stopped");
    setStreaming(bubble, false);
    bubble.final = true;
  });
  if (state.streamingKey === key) state.streamingKey = null;
  if (!state.ended.has(m.dialog)) state.dialog = m.dialog;
  if (!provisional) state.lastEventId = key;
  if (m.role !== "user") tellHost("message");
  updateControls();
}

function finalCount(dialog) {
  let n = 0;
  for (const bubble of state.bubbles.values()) if (bubble.dialog === dialog && bubble.final) n += 1;
  return n;
}

// Our own message shows at once; the first `message` event with the same text (or our POST's
// answer, whichever comes first) gives it its key.
function addPending(text) {
  const bubble = createBubble("user");
  bubble.pendingText = text;
  bubble.el.classList.add("msg--pending");
  bubble.text.data = text;
  bubble.time.textContent = "sending…";
  state.pending.push(bubble);
  withScroll(() => ui.log.append(bubble.el));
  ui.log.scrollTop = ui.log.scrollHeight;
  return bubble;
}

function adoptPending(text, key) {
  const wanted = (text ?? "").trim();
  const index = state.pending.findIndex((b) => b.pendingText.trim() === wanted);
  if (index < 0) return null;
  const [bubble] = state.pending.splice(index, 1);
  bubble.el.classList.remove("msg--pending");
  bubble.time.textContent = "";
  setKey(bubble, key);
  return bubble;
}

function settleSent(bubble, answer) {
  const key = keyOf(answer.dialog, answer.seq);
  if (state.pending.includes(bubble)) {
    if (state.bubbles.has(key)) {
      state.pending = state.pending.filter((b) => b !== bubble);
      bubble.el.remove();
    } else {
      applyMessage({ dialog: answer.dialog, seq: answer.seq, role: "user", text: bubble.pendingText });
    }
  }
  const reply = answer.reply;
  if (reply && reply.seq != null) {
    applyMessage(
      { dialog: answer.dialog, seq: reply.seq, role: "assistant", text: reply.text },
      { provisional: true },
    );
  }
}

function failPending(bubble) {
  if (!state.pending.includes(bubble)) return; // the server journaled it after all
  state.pending = state.pending.filter((b) => b !== bubble);
  if (!ui.input.value.trim()) {
    ui.input.value = bubble.pendingText; // give the words back so they can be sent again
    withScroll(() => bubble.el.remove());
  } else {
    bubble.el.classList.add("msg--failed");
    bubble.time.textContent = "not sent";
  }
}

// ---- server events -------------------------------------------------------------------

function onReply(r) {
  const key = typeof r.message_id === "string" ? r.message_id : "";
  if (!key.includes(":")) return;
  const { dialog } = splitKey(key);
  if (state.cleared.has(dialog)) return;
  const existing = state.bubbles.get(key);
  if (existing && existing.final && r.type !== "error") return; // its message event came first
  withScroll(() => {
    const bubble = bubbleFor(key, "assistant");
    if (r.type === "begin" || r.type === "item") {
      if (typeof r.content === "string" && r.content) bubble.text.appendData(r.content);
      setStreaming(bubble, true);
      state.streamingKey = key;
    } else if (r.type === "end") {
      setStreaming(bubble, false);
      if (r.interrupted) setFlag(bubble, "stopped");
      if (state.streamingKey === key) state.streamingKey = null;
    } else if (r.type === "error") {
      setRole(bubble, "error");
      bubble.text.data = r.content || "The assistant could not answer.";
      setStreaming(bubble, false);
      if (state.streamingKey === key) state.streamingKey = null;
    }
  });
  if (!state.ended.has(dialog)) state.dialog = dialog;
  updateControls();
}

function clearLog() {
  for (const bubble of state.bubbles.values()) if (bubble.dialog) state.cleared.add(bubble.dialog);
  state.bubbles.clear();
  state.pending = [];
  state.streamingKey = null;
  withScroll(() => {
    for (const el of ui.log.querySelectorAll(".msg, .notice")) el.remove();
  });
}

function onArchived(a) {
  if (!a || !a.dialog) return;
  if (state.ended.has(a.dialog)) {
    // We inferred the end from a `ready` (see onReady); the server's event says why.
    const known = state.endNotices.get(a.dialog);
    if (known && known.generic && a.reason) {
      known.el.textContent = endedText(a.reason);
      known.generic = false;
    }
    return;
  }
  state.ended.add(a.dialog);
  if (state.dialog === a.dialog) state.dialog = null;
  if (state.streamingKey && splitKey(state.streamingKey).dialog === a.dialog) state.streamingKey = null;
  if (a.reason === "user") {
    clearLog();
    notice(NEW_CONVERSATION_TEXT, "archived");
  } else {
    for (const bubble of state.bubbles.values()) {
      if (bubble.dialog === a.dialog) {
        bubble.el.classList.add("msg--ended");
        setStreaming(bubble, false);
      }
    }
    const el = notice(endedText(a.reason), "archived");
    state.endNotices.set(a.dialog, { el, generic: !a.reason });
  }
  updateControls();
}

function onShutdown() {
  state.lostNotice = true;
  notice("The server is going away for a moment. Reconnecting by itself…", "warning");
  setConn("reconnecting");
}

async function onReady(r) {
  const wasLive = state.everLive;
  state.everLive = true;
  state.live = true;
  state.retryDelay = RETRY_MIN_MS;
  hideAuthAlert();
  setConn("live");
  if (state.lostNotice) {
    state.lostNotice = false;
    notice("Reconnected.", "ok");
  }
  // A reply that was streaming when the connection dropped may have ended meanwhile; its
  // message (replayed below) settles it, and new items would mark it streaming again.
  if (state.streamingKey) {
    const bubble = state.bubbles.get(state.streamingKey);
    if (bubble) setStreaming(bubble, false);
    state.streamingKey = null;
    updateControls();
  }
  const shown = state.dialog;
  if (wasLive && shown && r.dialog !== shown && !state.ended.has(shown)) {
    onArchived({ dialog: shown, reason: null }); // it ended while we were away
  }
  if (r.dialog && !state.cleared.has(r.dialog) && finalCount(r.dialog) < (r.messages || 0)) {
    await loadDialog();
  }
  for (const wake of state.liveWaiters.splice(0)) wake();
  pump();
}

function onReplaced(r) {
  // Never reconnect by ourselves: two tabs past the server's cap would replace each other
  // for ever. The person chooses which tab to use.
  state.replaced = true;
  state.live = false;
  if (state.source) state.source.close();
  state.source = null;
  clearTimeout(state.retryTimer);
  setConn("offline", "open in another tab");
  showAlert(r.detail || "This chat is open in too many tabs; reconnect to use it here.");
  const again = make("button", "alert__action", "Reconnect");
  again.type = "button";
  again.addEventListener("click", () => {
    state.replaced = false;
    hideAlert();
    connect();
  });
  ui.alertText.append(" ", again);
}

// ---- connection ----------------------------------------------------------------------

async function connect() {
  clearTimeout(state.retryTimer);
  if (state.source) state.source.close();
  state.source = null;
  state.live = false;
  if (!token || state.authFailed || state.replaced) return;
  const seq = ++state.connectSeq;
  setConn(state.everLive ? "reconnecting" : "connecting");
  let ticket;
  try {
    // The token goes in a header; the URL carries only a ticket good for one stream, 30 s.
    ticket = (await api.post("/subscribe/ticket", {})).ticket;
  } catch (err) {
    if (seq !== state.connectSeq) return;
    if (err.status === 401 || err.status === 403) authFailed(err);
    else scheduleReconnect();
    return;
  }
  if (seq !== state.connectSeq) return; // a newer connect() took over meanwhile
  // A new EventSource does not send Last-Event-ID by itself; the server takes it as a query too.
  const query = new URLSearchParams({ ticket });
  if (state.lastEventId) query.set("last_event_id", state.lastEventId);
  const source = new EventSource(`/subscribe?${query}`);
  state.source = source;
  const on = (name, handler) =>
    source.addEventListener(name, (event) => {
      if (state.source !== source) return;
      let data;
      try {
        data = JSON.parse(event.data || "{}");
      } catch {
        return;
      }
      handler(data);
    });
  on("ready", onReady);
  on("message", (m) => applyMessage(m));
  on("reply", onReply);
  on("archived", onArchived);
  on("shutdown", onShutdown);
  on("replaced", onReplaced);
  source.addEventListener("error", () => onStreamError(source));
}

function onStreamError(source) {
  if (state.source !== source) return;
  state.live = false;
  // The browser would retry by itself with the same URL, but a ticket is good for one
  // stream: close it and reconnect with a fresh ticket, with a backoff.
  source.close();
  state.source = null;
  if (navigator.onLine === false) {
    setConn("offline", "no network");
    return;
  }
  diagnose(); // a 401 means sign in again; anything else, reconnect with a backoff
}

async function diagnose() {
  try {
    await api.get("/dialog");
    scheduleReconnect(); // plain requests work: retry the stream with a backoff
  } catch (err) {
    if (err.status === 401 || err.status === 403) authFailed(err);
    else scheduleReconnect();
  }
}

function scheduleReconnect() {
  clearTimeout(state.retryTimer);
  if (state.replaced) return;
  if (navigator.onLine === false) {
    setConn("offline", "no network"); // the "online" event reconnects
    return;
  }
  const delay = state.retryDelay;
  state.retryDelay = Math.min(delay * 2, RETRY_MAX_MS);
  setConn(state.everLive ? "reconnecting" : "connecting", `retrying in ${Math.round(delay / 1000)} s`);
  state.retryTimer = setTimeout(connect, delay);
}

function authFailed(err) {
  state.authFailed = true;
  if (state.source) state.source.close();
  state.source = null;
  clearTimeout(state.retryTimer);
  setConn("offline", "sign-in needed");
  state.authAlert = true;
  showAlert(err.readable || err.detail || "Your session has expired.");
  tellHost("token-request");
}

function hideAuthAlert() {
  if (state.authAlert) {
    state.authAlert = false;
    hideAlert();
  }
}

function setToken(next) {
  if (!next || next === token) return;
  token = next;
  api = new Api(token);
  rememberToken(token);
  state.authFailed = false;
  state.retryDelay = RETRY_MIN_MS;
  loadDialog().then(connect);
}

async function loadDialog() {
  try {
    const d = await api.get("/dialog");
    if (!d || !d.dialog || state.cleared.has(d.dialog)) return;
    for (const m of d.messages || []) applyMessage({ ...m, dialog: d.dialog });
    if (!state.ended.has(d.dialog)) state.dialog = d.dialog;
  } catch (err) {
    if (err.status === 401 || err.status === 403) authFailed(err);
    // anything else: the stream's own retries will tell the story
  }
}

// ---- actions -------------------------------------------------------------------------

function send() {
  const text = ui.input.value;
  if (!text.trim() || !token || state.authFailed) return;
  hideAlert();
  ui.input.value = "";
  // The key names this message for good: a retry after a lost answer is recognized.
  state.outbox.push({ text, key: crypto.randomUUID(), bubble: addPending(text) });
  pump();
}

// Send the outbox in order, one at a time (the server answers 409 to a second chat while a
// reply streams), each once the stream is live, so its reply streams in as it is written.
async function pump() {
  if (state.pumping) return;
  state.pumping = true;
  try {
    while (state.outbox.length && !state.authFailed) {
      if (!state.live) await untilLive();
      await deliver(state.outbox[0]);
      state.outbox.shift();
    }
  } finally {
    state.pumping = false;
    state.sending = false;
    updateControls();
  }
}

function untilLive() {
  return new Promise((resolve) => state.liveWaiters.push(resolve));
}

// Whether a failed POST /chat may be sent again with the same key: the network, a proxy
// (502/504 that are not ours) or a server going away (503). Our own 502/504 say the model
// failed, and that failure is journaled: a repeat would only get it again. A 409 (another
// tab's reply is streaming) is said in words and the text given back, as before: a repeat of
// our own request in flight never gets it (the server joins a repeated key to the first).
function retryable(err) {
  if (err.status === 0) return true;
  if (err.status === 503) return true;
  if (err.status === 502 || err.status === 504) {
    return !(err.code.startsWith("upstream_") || err.code === "reply_failed");
  }
  return false;
}

async function deliver(item) {
  let delay = SEND_RETRY_MIN_MS;
  for (;;) {
    state.sending = true;
    updateControls();
    try {
      const answer = await api.post(
        "/chat",
        { message: item.text },
        { headers: { "Idempotency-Key": item.key } },
      );
      settleSent(item.bubble, answer);
      if (state.retryAlert) hideAlert();
      state.retryAlert = false;
      return;
    } catch (err) {
      if (err.status === 409 && err.code === "idempotency_key_unanswered") {
        // It is on the server (journaled once); only its reply was lost.
        state.pending = state.pending.filter((b) => b !== item.bubble);
        item.bubble.el.classList.remove("msg--pending");
        item.bubble.time.textContent = "";
        notice(err.readable || err.detail, "warning");
        return;
      }
      if (!retryable(err)) {
        failPending(item.bubble);
        if (err.status === 401) authFailed(err);
        else showAlert(err.readable || String(err));
        return;
      }
      item.bubble.time.textContent = "sending…";
      if (err.status !== 0) {
        showAlert(`${err.readable || err.detail} Sending it again by itself…`);
        state.retryAlert = true;
      }
      // Exponential backoff with jitter, or what the server asked for.
      const wait = err.retryAfter != null ? err.retryAfter * 1000 : delay * (0.5 + Math.random());
      delay = Math.min(delay * 2, SEND_RETRY_MAX_MS);
      state.sending = false;
      updateControls();
      await new Promise((resolve) => setTimeout(resolve, wait));
      if (!state.live) await untilLive();
    }
  }
}

async function stop() {
  if (state.stopping) return;
  state.stopping = true;
  updateControls();
  try {
    const r = await api.post("/chat/stop", {});
    if (!r.stopped && state.streamingKey) {
      const bubble = state.bubbles.get(state.streamingKey);
      if (bubble) setStreaming(bubble, false);
      state.streamingKey = null; // nothing was streaming after all
    }
  } catch (err) {
    showAlert(err.readable || String(err));
  } finally {
    state.stopping = false;
    updateControls();
    ui.input.focus();
  }
}

async function newConversation() {
  state.archiving = true;
  updateControls();
  hideAlert();
  try {
    const r = await api.post("/dialog/archive", {});
    if (r.dialog) {
      onArchived({ dialog: r.dialog, archive: r.archive, reason: "user" });
    } else {
      clearLog();
      notice("New conversation.", "archived");
    }
  } catch (err) {
    if (err.status === 401) authFailed(err);
    else showAlert(err.readable || String(err));
  } finally {
    state.archiving = false;
    updateControls();
    ui.input.focus();
  }
}

// ---- talking to the embedding page (embed.js) ----------------------------------------

function tellHost(type) {
  if (embedded && hostOrigin) window.parent.postMessage({ source: "archiver-widget", type }, hostOrigin);
}

function onHostMessage(event) {
  if (!embedded || event.source !== window.parent || event.origin !== hostOrigin) return;
  const data = event.data;
  if (!data || data.source !== "archiver-embed") return;
  if (data.type === "token" && typeof data.token === "string") setToken(data.token);
  if (data.type === "focus") ui.input.focus();
}

// ---- wiring --------------------------------------------------------------------------

function wire() {
  keepNewestInViewOnResize();
  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  ui.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
      event.preventDefault();
      send();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && embedded) tellHost("close");
  });
  ui.stop.addEventListener("click", stop);
  ui.newConversation.addEventListener("click", newConversation);
  ui.alertClose.addEventListener("click", hideAlert);
  ui.close.addEventListener("click", () => tellHost("close"));
  window.addEventListener("message", onHostMessage);
  window.addEventListener("offline", () => setConn("offline", "no network"));
  window.addEventListener("online", () => {
    if (!state.source || state.source.readyState === EventSource.CLOSED) connect();
    else if (state.source.readyState === EventSource.OPEN && state.everLive) setConn("live");
    else setConn(state.everLive ? "reconnecting" : "connecting");
  });
  // Close the stream as the page goes away, so the server sees the disconnect at once.
  window.addEventListener("pagehide", () => {
    if (state.source) state.source.close();
    state.source = null;
  });
  window.addEventListener("pageshow", (event) => {
    if (event.persisted) connect();
  });
}

// A guest session (embed.js with no token: `guest=1`): a short-lived token for an anonymous
// visitor from POST /session, refreshed (same guest) at four fifths of its life.
async function guestSession() {
  const session = await new Api(token).post("/session", {});
  clearTimeout(state.guestTimer);
  state.guestTimer = setTimeout(() => {
    guestSession()
      .then(setToken)
      .catch(() => {}); // the next 401 shows the sign-in problem
  }, session.expires_in * 800);
  return session.token;
}

async function boot() {
  applyLook();
  wire();
  tellHost("hello"); // embed.js: the browser let this page run inside the host site
  if (!token && params.get("guest") === "1") {
    try {
      token = await guestSession();
      api = new Api(token);
    } catch (err) {
      setConn("offline", "no guest session");
      showAlert(err.readable || String(err));
      return;
    }
  }
  if (!token) {
    setConn("offline", "no access token");
    state.authAlert = true;
    showAlert(
      embedded
        ? "Waiting for the site to sign you in…"
        : "This page needs an access token: open the link that `archiver serve` prints (it ends in #token=…).",
    );
    tellHost("token-request");
    return;
  }
  const claims = readClaims(token);
  if (claims.sub) ui.status.title = `Signed in as ${claims.sub}`;
  await loadDialog();
  connect();
  if (!embedded) ui.input.focus();
}

boot();
