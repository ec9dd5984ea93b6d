// Shared by the chat widget and the review page: the token, the JSON API, time formatting.
//
// The token arrives in the URL fragment (#token=<jwt>), which never reaches a server log.
// We remove it from the address bar at once (so it is not bookmarked or shared) and keep
// it in sessionStorage, which is per tab: a reload or a move to /review in the same tab
// still works, another tab or a copied link does not carry it.

const TOKEN_KEY = "archiver_token";

/** Read the fragment once, then drop it from the address bar. */
export function takeFragment() {
  const raw = location.hash.startsWith("#") ? location.hash.slice(1) : "";
  const params = new URLSearchParams(raw);
  if (raw) {
    history.replaceState(history.state, "", location.pathname + location.search);
  }
  return params;
}

/** The token from the fragment (remembered for this tab) or the one remembered earlier. */
export function resolveToken(params) {
  const fromFragment = params.get("token");
  if (fromFragment) {
    rememberToken(fromFragment);
    return fromFragment;
  }
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return ""; // storage can be blocked (third-party iframes, privacy modes)
  }
}

export function rememberToken(token) {
  try {
    sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    /* not fatal: the token still lives in memory for this page */
  }
}

/** The JWT's claims, unverified: a UI hint only (the server decides what a token may do). */
export function readClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return {};
  }
}

const FALLBACK_DETAIL = {
  0: "Could not reach the chat server. Check your connection and try again.",
  400: "The server could not accept that request.",
  401: "Your session has expired or the access token is not valid.",
  403: "You are not allowed to do that.",
  404: "Not found.",
  409: "A reply is still being written. Wait for it to finish or press Stop.",
  413: "That message is too long.",
  429: "Too many requests. Please wait a moment.",
  502: "The assistant is unavailable right now. Please try again in a moment.",
  503: "The service is temporarily unavailable. Please try again in a moment.",
  504: "The assistant took too long to answer. Please try again.",
};

export class ApiError extends Error {
  constructor(status, code, detail, retryAfter = null) {
    super(detail);
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }

  /** One readable sentence (or two) for the person in front of the screen. */
  get readable() {
    if (this.retryAfter != null && this.retryAfter > 0) {
      return `${this.detail} You can try again in ${this.retryAfter} s.`;
    }
    return this.detail;
  }
}

async function errorFrom(response) {
  let code = `http_${response.status}`;
  let detail = "";
  try {
    const body = await response.json();
    if (body && typeof body === "object") {
      code = typeof body.error === "string" ? body.error : code;
      detail = typeof body.detail === "string" ? body.detail : "";
    }
  } catch {
    /* not JSON: a proxy's HTML error page, say */
  }
  if (!detail) {
    detail = FALLBACK_DETAIL[response.status] || `The request failed (HTTP ${response.status}).`;
  }
  const seconds = Number.parseInt(response.headers.get("Retry-After") || "", 10);
  return new ApiError(response.status, code, detail, Number.isFinite(seconds) ? seconds : null);
}

/** A tiny client for the archiver HTTP API; every call carries the Bearer token. */
export class Api {
  constructor(token) {
    this.token = token;
  }

  async request(method, path, { json, accept = "application/json", signal, headers: extra } = {}) {
    const headers = { Accept: accept, ...(extra || {}) };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    const init = { method, headers, signal, cache: "no-store", credentials: "omit" };
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(json);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      if (err && err.name === "AbortError") throw err;
      throw new ApiError(0, "network", FALLBACK_DETAIL[0]);
    }
    if (!response.ok) throw await errorFrom(response);
    return response;
  }

  async json(method, path, options) {
    const response = await this.request(method, path, options);
    return response.json();
  }

  get(path, options) {
    return this.json("GET", path, options);
  }

  post(path, body, options = {}) {
    return this.json("POST", path, { ...options, json: body ?? {} });
  }
}

/** Server timestamps are UTC strings like 2026-11-21T10:30:05.420Z. */
export function parseTime(at) {
  if (!at) return null;
  const date = new Date(at);
  return Number.isNaN(date.getTime()) ? null : date;
}

function sameDay(a, b) {
  return a.getFullYear() === b.getFullYear() && a.getMonth() === b.getMonth() && a.getDate() === b.getDate();
}

/** Short local time for chat bubbles: "10:30", or "21 Nov, 10:30" on another day. */
export function shortTime(date) {
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (sameDay(date, new Date())) return time;
  return `${date.toLocaleDateString([], { day: "numeric", month: "short" })}, ${time}`;
}

/** Full local date and time for the review page. */
export function longTime(date) {
  return date.toLocaleString([], {
    year: "numeric",
    month: "short",
    day: "numeric",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
  });
}

/** A <time> element whose text is local time and whose datetime/title keep the exact UTC value. */
export function timeElement(at, format = shortTime) {
  const el = document.createElement("time");
  const date = parseTime(at);
  if (!date) return el;
  el.dateTime = at;
  el.title = date.toISOString();
  el.textContent = format(date);
  return el;
}

/** Build an element with a class and optional text (always as text, never as HTML). */
export function make(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text != null) el.textContent = text;
  return el;
}

export const REASONS = {
  disconnect: "Disconnected",
  timeout: "Timed out",
  shutdown: "Server shutdown",
  recovery: "Recovered",
  user: "Ended by user",
};

export function reasonLabel(reason) {
  return REASONS[reason] || reason || "Unknown";
}
