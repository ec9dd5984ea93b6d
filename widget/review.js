// The transcript review page: a user's archives (an admin's pick of any user's), filtered in
// the browser, one opened as a conversation, its raw YAML or Markdown downloadable, printable;
// a full-text search box (GET /search) whose hits open the transcript at the message; for an
// admin, charts of GET /admin/stats drawn as inline SVG. Downloads go through fetch() because
// a plain link cannot carry the Bearer header. Text from archives is only ever set as text
// (textContent, text nodes), never parsed as HTML.

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
  downloadMd: $("download-md"),
  print: $("print"),
  actions: $("actions"),
  q: $("q"),
  hits: $("hits"),
  hitsStatus: $("hits-status"),
  stats: $("stats"),
  statsSummary: $("stats-summary"),
  chartDays: $("chart-days"),
  chartReplies: $("chart-replies"),
  chartFirst: $("chart-first"),
  chartUpstreams: $("chart-upstreams"),
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
  searchRequest: 0,
  searchTimer: 0,
  searchAbort: null,
};

const SEARCH_DELAY_MS = 250; // typing pauses this long before a search is sent
const SEARCH_LIMIT = 20;
const SVG = "http://www.w3.org/2000/svg";

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
  ui.actions.hidden = true;
  ui.facts.hidden = true;
  ui.facts.replaceChildren();
  ui.messages.replaceChildren();
  ui.transcriptEmpty.hidden = false;
}

async function openArchive(name, seq = null) {
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
  const target = seq == null ? null : ui.messages.querySelector(`.tmsg[data-seq="${Number(seq)}"]`);
  if (target) {
    target.classList.add("tmsg--hit");
    target.setAttribute("tabindex", "-1");
    target.focus({ preventScroll: true });
    target.scrollIntoView({ block: "center" });
    return;
  }
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
  ui.actions.hidden = false;
}

function transcriptMessage(m) {
  const role = m.role in WHO ? m.role : "assistant";
  const item = make("li", `tmsg tmsg--${role}`);
  item.dataset.role = role;
  item.dataset.seq = String(m.seq);
  const meta = make("p", "tmsg__meta");
  meta.append(make("span", "tmsg__who", WHO[role]), timeElement(m.at, longTime));
  if (m.interrupted) meta.append(make("span", "tmsg__flag", "stopped"));
  // Entries from before these were recorded have neither: show nothing then.
  const origin = [m.upstream, m.first_token_ms == null ? null : `first word ${m.first_token_ms} ms`];
  if (origin.some((part) => part != null)) {
    meta.append(make("span", "tmsg__origin", origin.filter((part) => part != null).join(" · ")));
  }
  item.append(meta, make("div", "tmsg__body", m.text ?? ""));
  return item;
}

function fileName(name, extension) {
  const base = state.admin ? `${state.user.replace(/[^\w.-]+/g, "_")}--${name}` : name;
  return extension ? base.replace(/\.yaml$/, extension) : base;
}

async function downloadAs(button, query, accept, type, extension) {
  const name = state.selected;
  if (!name) return;
  button.disabled = true;
  try {
    const response = await api.request("GET", archivesPath(name) + query, { accept });
    const blob = new Blob([await response.arrayBuffer()], { type });
    const url = URL.createObjectURL(blob);
    const link = make("a");
    link.href = url;
    link.download = fileName(name, extension);
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 30000);
  } catch (err) {
    showAlert(err.readable);
  } finally {
    button.disabled = false;
  }
}

const download = () => downloadAs(ui.download, "", "application/yaml", "application/yaml", "");
const downloadMarkdown = () =>
  downloadAs(ui.downloadMd, "?format=md", "text/markdown", "text/markdown", ".md");

// ---- search --------------------------------------------------------------------------

function scheduleSearch() {
  clearTimeout(state.searchTimer);
  state.searchTimer = setTimeout(runSearch, SEARCH_DELAY_MS);
}

async function runSearch() {
  const text = ui.q.value.trim();
  const request = ++state.searchRequest;
  if (state.searchAbort) state.searchAbort.abort();
  if (!text) {
    ui.hits.replaceChildren();
    ui.hitsStatus.textContent = "";
    return;
  }
  state.searchAbort = new AbortController();
  const query = new URLSearchParams({ q: text, limit: String(SEARCH_LIMIT) });
  let page;
  try {
    const response = await api.request("GET", `/search?${query}`, { signal: state.searchAbort.signal });
    page = await response.json();
  } catch (err) {
    if (request !== state.searchRequest || (err && err.name === "AbortError")) return;
    ui.hits.replaceChildren();
    ui.hitsStatus.textContent = err.readable || "The search failed.";
    ui.hitsStatus.dataset.kind = "error";
    return;
  }
  if (request !== state.searchRequest) return;
  const hits = Array.isArray(page.hits) ? page.hits : [];
  ui.hitsStatus.dataset.kind = "";
  ui.hitsStatus.textContent = hits.length
    ? `${hits.length}${page.next ? "+" : ""} matching message${hits.length === 1 ? "" : "s"}, best first`
    : "No message matches.";
  ui.hits.replaceChildren(...hits.map(hitItem));
}

/** A snippet alternates plain and matched text: matched pieces (odd indices) are marked. */
function snippetNodes(parts) {
  return (Array.isArray(parts) ? parts : []).map((part, i) =>
    i % 2 ? make("mark", "hit__mark", String(part)) : document.createTextNode(String(part)),
  );
}

function hitItem(hit) {
  const button = make("button", "hit");
  button.type = "button";
  button.dataset.archive = hit.archive;
  button.dataset.seq = String(hit.seq);
  const meta = make("span", "hit__meta");
  if (state.admin) meta.append(make("span", "hit__user", hit.user));
  meta.append(
    make("span", "hit__who", `${WHO[hit.role] || hit.role} #${hit.seq}`),
    timeElement(hit.at, longTime),
    make("span", "hit__archive", hit.archive),
  );
  const text = make("span", "hit__snippet");
  text.append(...snippetNodes(hit.snippet));
  button.append(meta, text);
  button.addEventListener("click", () => openHit(hit));
  const item = make("li", "search__item");
  item.append(button);
  return item;
}

async function openHit(hit) {
  if (state.admin && hit.user !== state.user) {
    state.user = hit.user;
    ui.user.value = hit.user;
    await loadArchives();
  }
  // The filters must not hide the archive the hit is in.
  if (!matching().some((a) => a.name === hit.archive)) {
    ui.from.value = "";
    ui.to.value = "";
    ui.reason.value = "";
    renderList();
  }
  await openArchive(hit.archive, hit.seq);
}

// ---- stats (admin) -------------------------------------------------------------------

const REASON_COLORS = {
  disconnect: "#2563eb",
  timeout: "#d97706",
  shutdown: "#7c3aed",
  recovery: "#dc2626",
  user: "#16a34a",
};

function svg(tag, attrs = {}, text = null) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  if (text != null) el.textContent = text;
  return el;
}

/** Bars (stacked when a bar has several parts), one per label, scaled to the tallest. */
function barChart(bars, { height = 140, label = "" } = {}) {
  const width = Math.max(240, bars.length * 14);
  const top = Math.max(1, ...bars.map((b) => b.parts.reduce((n, p) => n + p.value, 0)));
  const chart = svg("svg", {
    viewBox: `0 0 ${width} ${height + 18}`,
    role: "img",
    "aria-label": label,
    class: "chart__svg",
  });
  const step = width / Math.max(1, bars.length);
  bars.forEach((bar, i) => {
    let y = height;
    const group = svg("g", { class: "chart__bar" });
    group.append(svg("title", {}, `${bar.label}: ${bar.parts.map((p) => `${p.name} ${p.value}`).join(", ")}`));
    for (const part of bar.parts) {
      const h = (part.value / top) * (height - 4);
      y -= h;
      group.append(svg("rect", { x: i * step + 1, y, width: Math.max(1, step - 2), height: h, fill: part.color }));
    }
    chart.append(group);
  });
  if (bars.length) {
    chart.append(svg("text", { x: 0, y: height + 14, class: "chart__axis" }, bars[0].label));
    const last = bars[bars.length - 1].label;
    chart.append(svg("text", { x: width, y: height + 14, "text-anchor": "end", class: "chart__axis" }, last));
  }
  return chart;
}

function legend(names) {
  const list = make("ul", "chart__legend");
  for (const name of names) {
    const item = make("li");
    const swatch = make("span", "chart__swatch");
    swatch.style.background = REASON_COLORS[name] || "#6b7280";
    item.append(swatch, document.createTextNode(reasonLabel(name)));
    list.append(item);
  }
  return list;
}

function replyLabel(le) {
  if (le == null) return "more";
  return le < 1000 ? `≤${le} ms` : `≤${le / 1000} s`;
}

function drawStats(f) {
  const days = Array.isArray(f.by_day) ? f.by_day : [];
  const reasons = [...new Set(days.flatMap((d) => Object.keys(d.reasons || {})))].sort();
  const dayBars = days.map((d) => ({
    label: d.day,
    parts: reasons.map((r) => ({ name: r, value: d.reasons[r] || 0, color: REASON_COLORS[r] || "#6b7280" })),
  }));
  ui.chartDays.replaceChildren(
    make("figcaption", "", "Archives per day, by reason"),
    barChart(dayBars, { label: "Archives per day, by reason" }),
    legend(reasons),
  );
  drawTimes(ui.chartReplies, f.reply_ms, "Reply time", "Reply time distribution");
  // Archives from before entries recorded it have no first-token time: count says how many do.
  drawTimes(ui.chartFirst, f.first_token_ms, "First word", "Time to the first word distribution");
  drawUpstreams(Array.isArray(f.problems_by_upstream) ? f.problems_by_upstream : []);
  ui.statsSummary.textContent = `(${f.archives} archives, ${f.messages} messages, ${f.interrupted} interrupted, ${f.errors} failed)`;
  ui.stats.hidden = false;
}

const seconds = (ms) => (ms == null ? "—" : `${(ms / 1000).toFixed(2)} s`);

/** A figure of one time distribution ({count, p50, p95, histogram}) as bars. */
function drawTimes(figure, times = {}, name, label) {
  const bars = (times.histogram || []).map((b) => ({
    label: replyLabel(b.le),
    parts: [{ name: "replies", value: b.count, color: "#0f766e" }],
  }));
  const count = times.count || 0;
  const caption = `${name}: p50 ${seconds(times.p50)}, p95 ${seconds(times.p95)} (${count} ${count === 1 ? "reply" : "replies"})`;
  figure.replaceChildren(make("figcaption", "", caption), barChart(bars, { label }));
}

/** Replies, interrupted and failed ones per upstream, as a table ("unknown": older archives). */
function drawUpstreams(rows) {
  const table = make("table", "upstreams");
  const head = make("tr");
  head.append(make("th", "", "Upstream"));
  for (const title of ["Replies", "Interrupted", "Failed"]) head.append(make("th", "upstreams__n", title));
  table.append(head);
  for (const row of rows) {
    const tr = make("tr", "upstreams__row");
    tr.dataset.upstream = row.upstream;
    tr.append(make("td", "", row.upstream));
    for (const key of ["replies", "interrupted", "errors"]) tr.append(make("td", "upstreams__n", String(row[key])));
    table.append(tr);
  }
  ui.chartUpstreams.replaceChildren(make("figcaption", "", "Replies by upstream"), table);
}

async function loadStats() {
  try {
    drawStats(await api.get("/admin/stats"));
  } catch {
    ui.stats.hidden = true; // the index is off here, or not an admin: no charts
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
  ui.downloadMd.addEventListener("click", downloadMarkdown);
  ui.print.addEventListener("click", () => window.print());
  ui.q.addEventListener("input", scheduleSearch);
  ui.q.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      clearTimeout(state.searchTimer);
      runSearch();
    }
  });
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
  if (state.admin) loadStats();
  const wanted = query.get("archive");
  if (wanted && state.archives.some((a) => a.name === wanted)) await openArchive(wanted);
}

boot();
