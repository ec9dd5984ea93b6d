// The transcript review page: a user's archives (an admin's pick of any user's), filtered in
// the browser, one opened as a conversation, its raw YAML downloadable. Downloads go through
// fetch() because a plain link cannot carry the Bearer header.

import {
  Api,
  REASONS,
  longTime,
  make,
  parseTime,
  readClaims,
  reasonLabel,
  resolveToken,
  takeFragment,
  timeElement,
} from "/widget/common.js";

const $ = (id) => document.getElementById(id);
const ui = {
  who: $("who"),
  alert: $("alert"),
  filters: $("filters"),
  userField: $("user-field"),
  user: $("user"),
  from: $("from"),
  to: $("to"),
  reason: $("reason"),
  reset: $("reset"),
  refresh: $("refresh"),
  count: $("count"),
  list: $("archives"),
  listEmpty: $("archives-empty"),
  heading: $("transcript-heading"),
  download: $("download"),
  facts: $("facts"),
  transcriptEmpty: $("transcript-empty"),
  messages: $("messages"),
};

const WHO = { user: "User", assistant: "Assistant", error: "Error" };

const params = takeFragment();
const token = resolveToken(params);
const api = new Api(token);
const claims = readClaims(token);

const state = {
  admin: false,
  user: claims.sub || "",
  archives: [],
  selected: null,
  listRequest: 0,
  openRequest: 0,
};

function showAlert(text) {
  ui.alert.textContent = text;
  ui.alert.hidden = !text;
}

function archivesPath(name) {
  const base = state.admin ? `/users/${encodeURIComponent(state.user)}/archives` : "/archives";
  return name ? `${base}/${encodeURIComponent(name)}` : base;
}

function remember() {
  const query = new URLSearchParams();
  if (state.admin && state.user) query.set("user", state.user);
  if (state.selected) query.set("archive", state.selected);
  const search = query.toString();
  history.replaceState(history.state, "", `${location.pathname}${search ? `?${search}` : ""}`);
}

// ---- users (admin) -------------------------------------------------------------------

async function loadUsers(wanted) {
  let users;
  try {
    users = await api.get("/users");
  } catch (err) {
    if (err.status !== 403) showAlert(err.readable);
    return; // not an admin after all: the token's own archives
  }
  if (!Array.isArray(users)) return;
  state.admin = true;
  const names = users.map((u) => u.user);
  const previous = state.user;
  ui.user.replaceChildren(
    ...users.map((u) => {
      const label = `${u.user} — ${u.archives} archive${u.archives === 1 ? "" : "s"}${u.current ? ", chatting now" : ""}`;
      const option = make("option", "", label);
      option.value = u.user;
      return option;
    }),
  );
  state.user = [wanted, previous, claims.sub].find((u) => u && names.includes(u)) || names[0] || "";
  ui.user.value = state.user;
  ui.userField.hidden = false;
  ui.who.textContent = `Signed in as ${claims.sub || "?"} (admin)`;
}

// ---- the list ------------------------------------------------------------------------

function sortNewestFirst(rows) {
  const when = (a) => (parseTime(a.ended) || parseTime(a.started) || new Date(0)).getTime();
  return rows.sort((a, b) => when(b) - when(a) || String(b.name).localeCompare(String(a.name)));
}

async function loadArchives() {
  const request = ++state.listRequest;
  ui.list.setAttribute("aria-busy", "true");
  let rows = [];
  try {
    rows = state.admin && !state.user ? [] : await api.get(archivesPath());
    showAlert("");
  } catch (err) {
    if (request !== state.listRequest) return;
    showAlert(err.readable);
  }
  if (request !== state.listRequest) return;
  state.archives = sortNewestFirst(Array.isArray(rows) ? rows : []);
  fillReasons();
  renderList();
  ui.list.setAttribute("aria-busy", "false");
}

function fillReasons() {
  const chosen = ui.reason.value;
  const reasons = new Set(Object.keys(REASONS));
  for (const a of state.archives) if (a.reason) reasons.add(a.reason);
  const options = [...reasons].map((r) => {
    const option = make("option", "", reasonLabel(r));
    option.value = r;
    return option;
  });
  const any = make("option", "", "Any reason");
  any.value = "";
  ui.reason.replaceChildren(any, ...options);
  ui.reason.value = reasons.has(chosen) ? chosen : "";
}

/** Local calendar days: an archive matches when its [started, ended] overlaps [from, to]. */
function matching() {
  const from = ui.from.value ? new Date(`${ui.from.value}T00:00:00`) : null;
  const to = ui.to.value ? new Date(`${ui.to.value}T00:00:00`) : null;
  if (to) to.setDate(to.getDate() + 1);
  const reason = ui.reason.value;
  return state.archives.filter((a) => {
    if (reason && a.reason !== reason) return false;
    const start = parseTime(a.started) || parseTime(a.ended);
    const end = parseTime(a.ended) || start;
    if (from && end && end < from) return false;
    if (to && start && start >= to) return false;
    return true;
  });
}

function renderList() {
  const rows = matching();
  // A transcript the filters leave out (or no archive at all) is not shown beside the list.
  if (state.selected && !rows.some((a) => a.name === state.selected)) clearTranscript();
  const total = state.archives.length;
  ui.count.textContent =
    rows.length === total ? `(${total})` : `(${rows.length} of ${total})`;
  ui.list.replaceChildren(...rows.map(listItem));
  ui.listEmpty.hidden = rows.length > 0;
  ui.listEmpty.textContent = total
    ? "No archives match these filters."
    : "No archives yet. A conversation is archived when it ends.";
}

function listItem(a) {
  const button = make("button", "archive");
  button.type = "button";
  button.dataset.name = a.name;
  if (a.name === state.selected) button.setAttribute("aria-current", "true");

  const when = make("span", "archive__when");
  when.append(timeElement(a.started, longTime), make("span", "archive__arrow", " → "), timeElement(a.ended, longTime));
  const reason = make("span", `archive__reason reason reason--${a.reason || "unknown"}`, reasonLabel(a.reason));
  const count = make("span", "archive__count", `${a.messages} message${a.messages === 1 ? "" : "s"}`);
  const name = make("span", "archive__name", a.name);
  button.append(when, reason, count, name);
  button.addEventListener("click", () => openArchive(a.name));

  const item = make("li", "archives__item");
  item.append(button);
  return item;
}

// ---- one transcript ------------------------------------------------------------------

function clearTranscript() {
  state.selected = null;
  state.openRequest++; // an archive still loading is not shown after all
  ui.heading.textContent = "Transcript";
  ui.download.hidden = true;
  ui.facts.hidden = true;
  ui.facts.replaceChildren();
  ui.messages.replaceChildren();
  ui.transcriptEmpty.hidden = false;
}

async function openArchive(name) {
  const request = ++state.openRequest;
  state.selected = name;
  for (const button of ui.list.querySelectorAll(".archive")) {
    if (button.dataset.name === name) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
  }
  let doc;
  try {
    doc = await api.get(archivesPath(name));
  } catch (err) {
    if (request === state.openRequest) showAlert(err.readable);
    return;
  }
  if (request !== state.openRequest) return;
  showAlert("");
  renderTranscript(name, doc);
  remember();
  ui.heading.focus({ preventScroll: true });
  ui.heading.scrollIntoView({ block: "nearest" });
}

function fact(label, value) {
  const dt = make("dt", "", label);
  const dd = make("dd");
  if (value instanceof Node) dd.append(value);
  else dd.textContent = value ?? "—";
  return [dt, dd];
}

function renderTranscript(name, doc) {
  const started = parseTime(doc.started);
  ui.heading.textContent = started ? `Transcript · ${longTime(started)}` : `Transcript · ${name}`;
  const messages = Array.isArray(doc.messages) ? doc.messages : [];
  ui.facts.replaceChildren(
    ...fact("User", doc.user ?? state.user),
    ...fact("Dialog", doc.dialog),
    ...fact("Started", timeElement(doc.started, longTime)),
    ...fact("Ended", timeElement(doc.ended, longTime)),
    ...fact("Reason", reasonLabel(doc.reason)),
    ...fact("Messages", String(messages.length)),
    ...fact("File", name),
  );
  ui.facts.hidden = false;
  ui.messages.replaceChildren(...messages.map(transcriptMessage));
  ui.transcriptEmpty.hidden = messages.length > 0;
  ui.transcriptEmpty.textContent = "This archive has no messages.";
  ui.download.hidden = false;
}

function transcriptMessage(m) {
  const role = m.role in WHO ? m.role : "assistant";
  const item = make("li", `tmsg tmsg--${role}`);
  item.dataset.role = role;
  item.dataset.seq = String(m.seq);
  const meta = make("p", "tmsg__meta");
  meta.append(make("span", "tmsg__who", WHO[role]), timeElement(m.at, longTime));
  if (m.interrupted) meta.append(make("span", "tmsg__flag", "stopped"));
  item.append(meta, make("div", "tmsg__body", m.text ?? ""));
  return item;
}

async function download() {
  const name = state.selected;
  if (!name) return;
  ui.download.disabled = true;
  try {
    const response = await api.request("GET", archivesPath(name), { accept: "application/yaml" });
    const blob = new Blob([await response.arrayBuffer()], { type: "application/yaml" });
    const url = URL.createObjectURL(blob);
    const link = make("a");
    link.href = url;
    link.download = state.admin ? `${state.user.replace(/[^\w.-]+/g, "_")}--${name}` : name;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 30000);
  } catch (err) {
    showAlert(err.readable);
  } finally {
    ui.download.disabled = false;
  }
}

// ---- wiring --------------------------------------------------------------------------

function wire() {
  ui.filters.addEventListener("submit", (event) => event.preventDefault());
  for (const input of [ui.from, ui.to, ui.reason]) input.addEventListener("change", renderList);
  ui.reset.addEventListener("click", (event) => {
    event.preventDefault(); // a form reset would also reset the user picker
    ui.from.value = "";
    ui.to.value = "";
    ui.reason.value = "";
    renderList();
  });
  ui.refresh.addEventListener("click", async () => {
    if (state.admin) await loadUsers(state.user);
    await loadArchives();
  });
  ui.user.addEventListener("change", async () => {
    state.user = ui.user.value;
    clearTranscript();
    remember();
    await loadArchives();
  });
  ui.download.addEventListener("click", download);
}

async function boot() {
  if (!token) {
    showAlert("This page needs an access token: open it as /review#token=<jwt>, or from the chat page's Transcripts link.");
    ui.list.setAttribute("aria-busy", "false");
    return;
  }
  ui.who.textContent = claims.sub ? `Signed in as ${claims.sub}` : "";
  wire();
  const query = new URLSearchParams(location.search);
  if (claims.role === "admin") await loadUsers(query.get("user"));
  await loadArchives();
  const wanted = query.get("archive");
  if (wanted && state.archives.some((a) => a.name === wanted)) await openArchive(wanted);
}

boot();
