// The wall display (templates/dashboard/wall.html): a TV across the room, left open for days.
//
// A snapshot from /api/v1/stats (bills, the latest scans, scans per minute, all as of event
// `position`) plus the live stream from /ws?view=wall: counters frames replace the counters,
// and events after `position` extend the feed and the sparklines. Memory stays flat: fixed
// 60-minute arrays, a feed of at most FEED_ROWS rows, and live.js's bounded dedupe.

import { connectLive } from "/static/js/live.js";
import { sparkline } from "/static/js/charts.js";

const FEED_ROWS = 40;
const PAGE_SIZE = 6;
const ROTATE_MS = 12_000;
const REFRESH_MS = 60_000; // version check, bills in progress, and a display session kept fresh
const RESYNCED_SHOWN_MS = 5_000;
const PROBE_MS = 5_000; // while reconnecting: still signed in?
const MAX_PENDING = 5_000;
const MINUTES = 60;
const NO_AREA = "-";
const SCAN_KINDS = new Set(["parent.scanned", "child.linked"]);
const FEED_KINDS = new Set([...SCAN_KINDS, "parent.completed", "child.unlinked"]);
const STATUS_TEXT = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  resynced: "Resynced",
};

const root = document.querySelector("[data-wall]");
const version = root.dataset.version;
const isDisplayLink = root.dataset.display === "link";
const feed = root.querySelector("[data-feed]");
const areasBox = root.querySelector("[data-areas]");
const cardTemplate = document.querySelector("template[data-area-card]");
const filterForm = root.querySelector("[data-filter]");
const timeFormat = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  hourCycle: "h23",
});
const clockFormat = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit",
  minute: "2-digit",
  hourCycle: "h23",
});
const dayFormat = new Intl.DateTimeFormat(undefined, {
  weekday: "short",
  day: "numeric",
  month: "short",
});
const numberFormat = new Intl.NumberFormat();

const state = {
  counters: null, // {day, total, areas}: the welcome's, then each counters frame's
  position: null, // the snapshot's last event id; null while a snapshot is loading
  pending: [], // events that arrived before the snapshot
  areas: [], // [{name, label}] this screen may show
  minutes: new Map(), // area -> counts of the last 60 minutes, oldest first
  lastMinute: 0, // epoch minute (server clock) of each array's last slot
  skewMinutes: 0,
  selected: readSelection(),
  rotate: readRotate(),
  page: 0,
  cards: new Map(), // area -> card element on screen
  sparksDirty: true,
  status: "connecting",
};

function clientMinute() {
  return Math.floor(Date.now() / 60_000);
}

function zeroes() {
  return new Array(MINUTES).fill(0);
}

// Selection and rotation: from the URL (a TV is set up once, by its bookmark), else storage.
function readSelection() {
  const given = new URLSearchParams(location.search).get("areas");
  let names = given;
  if (names === null) {
    try {
      names = localStorage.getItem("tt-wall:areas");
    } catch {
      names = null;
    }
  }
  return new Set((names ?? "").split(",").filter(Boolean));
}

function readRotate() {
  return new URLSearchParams(location.search).get("rotate") !== "0";
}

function saveSelection() {
  const names = [...state.selected].join(",");
  try {
    localStorage.setItem("tt-wall:areas", names);
  } catch {
    // storage off: the URL still carries it
  }
  const url = new URL(location.href);
  if (names) url.searchParams.set("areas", names);
  else url.searchParams.delete("areas");
  if (state.rotate) url.searchParams.delete("rotate");
  else url.searchParams.set("rotate", "0");
  history.replaceState(null, "", url);
}

function shownAreas() {
  const all = state.areas.map((a) => a.name);
  return state.selected.size ? all.filter((name) => state.selected.has(name)) : all;
}

function labelOf(name) {
  return state.areas.find((a) => a.name === name)?.label ?? name;
}

// Snapshot ---------------------------------------------------------------------------------

async function fetchStats() {
  const url = new URL("/api/v1/stats", location.origin);
  if (state.selected.size) url.searchParams.set("areas", [...state.selected].join(","));
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  if (response.status === 401 || response.status === 403) {
    signedOut();
    return null;
  }
  if (!response.ok) throw new Error(`stats: ${response.status}`);
  const stats = await response.json();
  if (stats.version !== version && mayReload()) {
    location.reload(); // a new deployment: take its page and scripts
    return null;
  }
  return stats;
}

// During a rolling deployment old and new servers answer in turn: reload at most once a minute.
function mayReload() {
  try {
    const last = Number(sessionStorage.getItem("tt-wall:reloaded-at") ?? 0);
    if (Date.now() - last < 60_000) return false;
    sessionStorage.setItem("tt-wall:reloaded-at", String(Date.now()));
  } catch {
    // no storage: reload anyway, the version check is what matters
  }
  return true;
}

let snapshotRetry = 1_000;
let snapshotRequest = 0;

async function loadSnapshot() {
  state.position = null;
  const request = (snapshotRequest += 1);
  let stats;
  try {
    stats = await fetchStats();
  } catch {
    if (request !== snapshotRequest) return;
    setTimeout(loadSnapshot, snapshotRetry); // offline at start: keep trying, gently
    snapshotRetry = Math.min(snapshotRetry * 2, 30_000);
    return;
  }
  if (!stats || request !== snapshotRequest) return; // a newer snapshot is on its way
  snapshotRetry = 1_000;
  state.areas = stats.areas;
  buildFilter();
  if (state.counters === null) state.counters = stats.counters;
  state.lastMinute = stats.per_minute.last_minute;
  state.skewMinutes = state.lastMinute - clientMinute();
  state.minutes = new Map(Object.entries(stats.per_minute.areas));
  showBills(stats.bills);
  feed.replaceChildren();
  for (const event of stats.feed) addFeedRow(event, false);
  const newest = stats.feed[stats.feed.length - 1];
  if (newest) setText(root.querySelector("[data-last-event]"), timeFormat.format(new Date(newest.at)));
  state.position = stats.position;
  const pending = state.pending;
  state.pending = [];
  applyEvents(pending);
  state.page = 0;
  renderAreas();
  renderCounters();
  renderRates();
}

async function refresh() {
  try {
    const stats = await fetchStats();
    if (stats) {
      showBills(stats.bills);
      if (stats.areas.length !== state.areas.length) {
        state.areas = stats.areas;
        buildFilter();
        renderAreas();
      }
    }
  } catch {
    // offline: the connection indicator already says so
  }
}

let billsTimer = null;
function refreshBillsSoon() {
  if (billsTimer === null) billsTimer = setTimeout(() => ((billsTimer = null), refresh()), 2_000);
}

function showBills(bills) {
  if (!bills) return; // an area-bound wall is not shown bills
  setText(root.querySelector('[data-bills="processing"]'), bills.processing);
}

function signedOut() {
  if (!isDisplayLink) {
    location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
    return;
  }
  live?.close();
  banner(
    "This display is signed out: its link was revoked, or the screen was off for over 12 hours. " +
      "Open the display link again, or ask an admin for a new one.",
  );
  setStatus("offline");
}

function banner(message) {
  const box = root.querySelector("[data-banner]");
  box.textContent = message;
  box.hidden = !message;
}

// Events -----------------------------------------------------------------------------------

const ANIMATE_AT_MOST = 5; // a burst (a replay after a blip) just appears: no flicker

function applyEvents(events) {
  const fresh = events.filter((event) => event.id > state.position);
  const animate = fresh.length <= ANIMATE_AT_MOST;
  for (const event of fresh) {
    if (SCAN_KINDS.has(event.kind)) countScan(event);
    if (FEED_KINDS.has(event.kind) && visibleArea(event.area)) addFeedRow(event, animate);
    if (event.kind.startsWith("bill.")) refreshBillsSoon();
  }
  if (fresh.length) renderRatesSoon();
}

let ratesTimer = null;
function renderRatesSoon() {
  if (ratesTimer === null) ratesTimer = setTimeout(() => ((ratesTimer = null), renderRates()), 250);
}

function visibleArea(area) {
  return !state.selected.size || area === null || state.selected.has(area);
}

function countScan(event) {
  const minute = Math.floor(Date.parse(event.at) / 60_000);
  if (minute > state.lastMinute) advanceTo(minute);
  const slot = MINUTES - 1 - (state.lastMinute - minute);
  if (slot < 0) return;
  const area = event.area ?? NO_AREA;
  if (!state.minutes.has(area)) state.minutes.set(area, zeroes());
  state.minutes.get(area)[slot] += 1;
  state.sparksDirty = true;
  setText(root.querySelector("[data-last-event]"), timeFormat.format(new Date(event.at)));
}

function advanceTo(minute) {
  const shift = Math.min(MINUTES, minute - state.lastMinute);
  if (shift <= 0) return;
  for (const counts of state.minutes.values()) {
    counts.splice(0, shift);
    for (let i = 0; i < shift; i += 1) counts.push(0);
  }
  state.lastMinute = minute;
  state.sparksDirty = true;
}

const OUTCOMES = {
  "parent.scanned": (d) => (d.created ? ["new parent", "is-new"] : ["parent reopened", "is-parent"]),
  "child.linked": (d) => [`linked ${d.parent.children}/30`, "is-linked"],
  "parent.completed": () => ["completed 30/30", "is-completed"],
  "child.unlinked": (d) => [`undone ${d.parent.children}/30`, "is-undone"],
};

function addFeedRow(event, fresh) {
  if (feed.querySelector(`[data-event-id="${event.id}"]`)) return; // never twice
  const data = event.data ?? {};
  const [outcome, tone] = OUTCOMES[event.kind](data);
  const row = document.createElement("li");
  row.className = `feed-row ${tone}${fresh ? " is-fresh" : ""}`;
  row.dataset.eventId = event.id;
  row.dataset.code = data.child ?? data.parent?.code ?? "";
  const bag =
    event.kind === "child.linked"
      ? [strong(data.child), text(" → "), text(data.parent.code)]
      : [strong(data.parent?.code ?? "")];
  row.append(
    cell("time", "feed-time", timeFormat.format(new Date(event.at))),
    cell("span", "feed-who", data.by ?? "—"),
    cell("span", "feed-bag", "", bag),
    cell("span", "feed-outcome", outcome),
    cell("span", "feed-area", event.area ? labelOf(event.area) : ""),
  );
  // Newest on top; ids can arrive a little out of order (late commits): keep id order.
  let before = feed.firstElementChild;
  while (before && Number(before.dataset.eventId) > event.id) before = before.nextElementSibling;
  feed.insertBefore(row, before);
  while (feed.childElementCount > FEED_ROWS) feed.lastElementChild.remove();
}

function cell(tag, className, content, children = []) {
  const element = document.createElement(tag);
  element.className = className;
  if (content) element.textContent = content;
  element.append(...children);
  return element;
}

function strong(content) {
  const element = document.createElement("strong");
  element.textContent = content;
  return element;
}

function text(content) {
  return document.createTextNode(content);
}

// Rendering --------------------------------------------------------------------------------

function setText(element, value) {
  if (!element) return;
  const shown = typeof value === "number" ? numberFormat.format(value) : String(value);
  if (element.textContent !== shown) element.textContent = shown;
}

function figures(area) {
  return state.counters?.areas?.[area] ?? { parents: 0, completed: 0, children: 0 };
}

function renderCounters() {
  if (!state.counters) return;
  const fields = ["parents", "completed", "children"];
  let totals = state.counters.total;
  if (state.selected.size) {
    totals = { ...totals };
    for (const field of fields) {
      totals[field] = shownAreas().reduce((sum, area) => sum + (figures(area)[field] ?? 0), 0);
    }
  }
  for (const field of [...fields, "bills_completed"]) {
    setText(root.querySelector(`[data-total="${field}"]`), totals[field] ?? 0);
  }
  for (const [area, card] of state.cards) {
    const found = figures(area);
    for (const field of fields) setText(card.querySelector(`[data-field="${field}"]`), found[field] ?? 0);
  }
}

function pages() {
  const areas = shownAreas();
  if (!state.rotate || areas.length <= PAGE_SIZE) return [areas];
  const result = [];
  for (let i = 0; i < areas.length; i += PAGE_SIZE) result.push(areas.slice(i, i + PAGE_SIZE));
  return result;
}

function renderAreas() {
  const all = pages();
  state.page %= all.length;
  const page = all[state.page] ?? [];
  state.cards = new Map();
  areasBox.replaceChildren();
  areasBox.dataset.count = String(page.length);
  for (const area of page) {
    const card = cardTemplate.content.firstElementChild.cloneNode(true);
    card.dataset.area = area;
    card.querySelector("[data-label]").textContent = labelOf(area);
    card.querySelector("[data-spark]").dataset.spark = area;
    areasBox.append(card);
    state.cards.set(area, card);
  }
  const pageLabel = root.querySelector("[data-page]");
  pageLabel.hidden = all.length < 2;
  pageLabel.textContent = `Page ${state.page + 1} of ${all.length}`;
  const scope = root.querySelector("[data-scope]");
  if (!isDisplayLink) {
    scope.textContent = state.selected.size ? shownAreas().map(labelOf).join(" · ") : "all areas";
  }
  renderCounters();
  state.sparksDirty = true;
}

function rate(counts) {
  // A sliding minute: this minute so far, plus the part of the last one it has not yet replaced.
  const elapsed = (Date.now() % 60_000) / 60_000;
  return Math.round(counts[MINUTES - 1] + counts[MINUTES - 2] * (1 - elapsed));
}

function renderRates() {
  advanceTo(clientMinute() + state.skewMinutes);
  const total = zeroes();
  for (const area of state.selected.size ? shownAreas() : state.minutes.keys()) {
    const counts = state.minutes.get(area);
    if (counts) counts.forEach((n, i) => (total[i] += n));
  }
  setText(root.querySelector('[data-total="rate"]'), rate(total));
  for (const [area, card] of state.cards) {
    setText(card.querySelector('[data-field="rate"]'), rate(state.minutes.get(area) ?? zeroes()));
  }
  if (!state.sparksDirty || document.hidden) return;
  state.sparksDirty = false;
  sparkline(root.querySelector('[data-spark="total"]'), total);
  for (const [area, card] of state.cards) {
    sparkline(card.querySelector("[data-spark]"), state.minutes.get(area) ?? zeroes());
  }
}

function buildFilter() {
  const box = filterForm.querySelector("[data-filter-areas]");
  const boxes = state.areas.map(({ name, label }) => {
    const wrapper = document.createElement("label");
    wrapper.className = "wall-check";
    const input = document.createElement("input");
    input.type = "checkbox";
    input.name = "area";
    input.value = name;
    input.checked = state.selected.has(name);
    wrapper.append(input, text(` ${label}`));
    return wrapper;
  });
  box.replaceChildren(...boxes);
  filterForm.elements.rotate.checked = state.rotate;
}

filterForm.addEventListener("change", () => {
  const ticked = [...filterForm.querySelectorAll('input[name="area"]:checked')];
  state.selected = new Set(ticked.map((input) => input.value));
  state.rotate = filterForm.elements.rotate.checked;
  saveSelection();
  renderAreas();
  loadSnapshot(); // the feed and sparklines of the areas now shown
});

// Connection indicator ---------------------------------------------------------------------

let resyncedTimer = null;
let probeTimer = null;
function setStatus(status) {
  state.status = status;
  const box = root.querySelector("[data-status]");
  box.dataset.status = status;
  box.querySelector("[data-status-text]").textContent = STATUS_TEXT[status] ?? "Offline";
  clearTimeout(resyncedTimer);
  // While it cannot get back in, ask over HTTP now and then: a revoked link or an ended
  // session answers 401 there (a refused websocket handshake does not say why).
  if (status === "reconnecting" && probeTimer === null) {
    probeTimer = setInterval(refresh, PROBE_MS);
  } else if (status !== "reconnecting" && probeTimer !== null) {
    clearInterval(probeTimer);
    probeTimer = null;
  }
  if (status === "resynced") {
    resyncedTimer = setTimeout(() => state.status === "resynced" && setStatus("live"), RESYNCED_SHOWN_MS);
  }
}

// Live -------------------------------------------------------------------------------------

let welcomed = false;
const live = connectLive({
  view: "wall",
  probe: isDisplayLink ? null : undefined,
  onWelcome(welcome) {
    state.counters = welcome.counters;
    renderCounters();
    // Back after a blip or a server restart: is this still the deployed version?
    if (welcomed) setTimeout(refresh, Math.random() * 5_000);
    welcomed = true;
  },
  onCounters({ type, ...counters }) {
    state.counters = counters;
    renderCounters();
  },
  onEvents(events) {
    if (state.position === null) {
      state.pending.push(...events);
      if (state.pending.length > MAX_PENDING) state.pending.splice(0, state.pending.length - MAX_PENDING);
      return;
    }
    applyEvents(events);
  },
  onResync() {
    state.pending = [];
    loadSnapshot();
  },
  onStatus: setStatus,
});

// Timers, screen ---------------------------------------------------------------------------

function tick() {
  const now = new Date();
  setText(root.querySelector("[data-clock]"), clockFormat.format(now));
  setText(root.querySelector("[data-day]"), dayFormat.format(now));
  renderRates();
}

setInterval(tick, 1_000);
setInterval(() => {
  if (pages().length < 2) return;
  state.page += 1;
  renderAreas();
}, ROTATE_MS);
setInterval(refresh, REFRESH_MS + Math.random() * 10_000);
window.addEventListener("resize", () => (state.sparksDirty = true));

// Keep a TV's screen on, and its mouse pointer out of the way.
async function keepAwake() {
  try {
    if (document.visibilityState === "visible") await navigator.wakeLock?.request("screen");
  } catch {
    // not allowed here (no user gesture, an old browser): the TV's own settings decide
  }
}
document.addEventListener("visibilitychange", keepAwake);
keepAwake();
let idleTimer = null;
document.addEventListener("mousemove", () => {
  document.body.classList.remove("is-idle");
  clearTimeout(idleTimer);
  idleTimer = setTimeout(() => document.body.classList.add("is-idle"), 3_000);
});

buildFilter();
loadSnapshot();
tick();
