// The scanner screen (SPEC §2): scan a parent, then its children, all day long.
//
// Every scan, undo and finish goes into the outbox (IndexedDB) first, then over the live
// websocket; its ack settles it. Child scans name their parent, so a scan sent late (after a
// reload, or when the Wi-Fi comes back) means exactly what it meant when it was made.
//
// Parent or child is decided by the screen's step: with no current parent every code is a
// parent scan. With one, a code in the parent format (SB#####, M444-#####) switches to that
// parent - such a code is never meant as a child, and sending it as one would turn a parent
// label into a child bag forever - and any other code is a child of the current parent.
//
// Scanning another parent while the current one is part filled is said out loud (its own
// banner and sound), and the parent left behind goes on a list of unfinished parents, kept for
// the shift, each one tap from being resumed. A wedge code that was not sent whole (wedge.js)
// is offered for a person to save or discard; the next scan replaces the offer.

import { hasCamera, startCamera } from "/static/js/camera.js";
import { signal, soundIsOn, unlockSound } from "/static/js/feedback.js";
import { connectLive } from "/static/js/live.js";
import { openOutbox } from "/static/js/outbox.js";
import {
  forgetTerminator,
  keepFocus,
  learnedTerminator,
  listenForWedge,
} from "/static/js/wedge.js";

const SEND_WINDOW = 20; // messages sent but not yet acked
const RESEND_AFTER_MS = 15_000; // on the same socket an ack is only late, never lost
const RETRY_NOT_SAVED_MS = 2_000; // the server said "not saved, send it again"
const SLOW_ACK_MS = 300; // until then the previous banner stays (no flicker per scan)
const GIVE_UP_WAITING_MS = 2_500; // then the scan is reported as kept on the phone
const FLUSH_EVERY_MS = 5_000;
const RECENT = 8;
const PRUNE_ABOVE = 400; // records kept in the outbox before old answered ones are dropped
const SHIFT_MS = 12 * 3600_000; // how long a parent left unfinished stays on the list

const root = document.querySelector("[data-scanner]");
const $ = (selector) => root.querySelector(selector);
const ui = {
  wedge: $("#wedge"),
  linkState: $("[data-link-state]"),
  pending: $("[data-pending]"),
  pendingCount: $("[data-pending-count]"),
  soundHint: $("[data-sound-hint]"),
  banner: $("[data-banner]"),
  bannerTitle: $("[data-banner-title]"),
  bannerMessage: $("[data-banner-message]"),
  confirm: $("[data-confirm]"),
  confirmCode: $("[data-confirm-code]"),
  confirmSave: $("[data-confirm-save]"),
  confirmDiscard: $("[data-confirm-discard]"),
  unfinished: $("[data-unfinished]"),
  unfinishedList: $("[data-unfinished-list]"),
  step: $("[data-step-text]"),
  parentCode: $("[data-parent-code]"),
  parentState: $("[data-parent-state]"),
  progress: $("[data-progress]"),
  progressFill: $("[data-progress-fill]"),
  lastChild: $("[data-last-child]"),
  undo: $("[data-undo]"),
  finish: $("[data-finish]"),
  rejected: $("[data-rejected]"),
  rejectedPill: $("[data-rejected-pill]"),
  rejectedCount: $("[data-rejected-count]"),
  rejectedList: $("[data-rejected-list]"),
  clearRejected: $("[data-clear-rejected]"),
  manual: $("[data-manual]"),
  manualHint: $("[data-manual-hint]"),
  cameraCard: $("[data-camera-card]"),
  cameraToggle: $("[data-camera-toggle]"),
  cameraView: $("[data-camera-view]"),
  cameraStatus: $("[data-camera-status]"),
  recentList: $("[data-recent-list]"),
  wedgeSettings: $("[data-wedge-settings]"),
  wedgeReset: $("[data-wedge-reset]"),
};

const user = root.dataset.user;
const MAX_CHILDREN = Number(root.dataset.maxChildren);
const PARENT_FORMAT = new RegExp(`^(?:${root.dataset.parentPattern})$`);
const TITLES = {
  ok: "OK",
  duplicate: "Already scanned",
  rejected: "Rejected",
  pending: "Waiting to send",
  sending: "Sending…",
  idle: "Ready",
  complete: "Bag full",
  undone: "Undone",
  switched: "Parent changed",
  check: "Check the code",
  interrupted: "Scan interrupted",
};
// Why a wedge code is offered instead of sent (wedge.js), and what to do about it.
const CHECKS = {
  unterminated: () =>
    "The scanner did not end this code, so it is not saved yet: save it only if it matches " +
    "the label.",
  slow: () =>
    "That was typed too slowly to be a scanner: check the code and press Save, or scan again.",
  paused: () =>
    "The scanner paused inside this code: check it and press Save, or scan again.",
  tail: (head) =>
    `This came right after a scan that was cut off (${head}…), so it may be only the end of a ` +
    "code: check it and press Save, or scan again.",
};
const LINK_STATES = { live: "Online", offline: "Offline", connecting: "Connecting…" };
const CHIPS = { ok: "OK", duplicate: "Again", rejected: "Rejected", pending: "Waiting" };

// --- State that outlives a reload: the current parent and what the banner says ----------------

const stateKey = `tt-scanner:${user}`;
const state = loadState();

function loadState() {
  // awaiting: the id of the latest scan, whose answer the banner is waiting for; held: a wedge
  // code offered for confirmation; unfinished: parents left part filled, latest first.
  const empty = {
    parent: null,
    lastChild: null,
    banner: null,
    awaiting: null,
    held: null,
    unfinished: [],
  };
  try {
    const saved = { ...empty, ...JSON.parse(localStorage.getItem(stateKey) ?? "{}") };
    saved.unfinished = saved.unfinished.filter((p) => Date.now() - p.at < SHIFT_MS);
    return saved;
  } catch {
    return empty;
  }
}

function saveState() {
  try {
    localStorage.setItem(stateKey, JSON.stringify(state));
  } catch {
    // storage full or off: the screen still works, it just forgets on reload
  }
}

// --- Keyboard-wedge settings: the page's defaults, overridable per device -----------------------

const settingsKey = "tt-scanner:wedge";
const defaults = {
  msPerKey: Number(root.dataset.wedgeMsPerKey),
  minChars: Number(root.dataset.wedgeMinChars),
  silenceMs: Number(root.dataset.wedgeSilenceMs),
  stallMs: Number(root.dataset.wedgeStallMs),
  terminator: root.dataset.wedgeTerminator,
};
let wedgeSettings = readWedgeSettings();

function readWedgeSettings() {
  try {
    return { ...defaults, ...JSON.parse(localStorage.getItem(settingsKey) ?? "{}") };
  } catch {
    return { ...defaults };
  }
}

function showWedgeSettings() {
  const form = ui.wedgeSettings;
  form.elements.ms_per_key.value = wedgeSettings.msPerKey;
  form.elements.min_chars.value = wedgeSettings.minChars;
  form.elements.silence_ms.value = wedgeSettings.silenceMs;
  form.elements.stall_ms.value = wedgeSettings.stallMs;
  form.elements.terminator.value = wedgeSettings.terminator;
  form.querySelector("[data-wedge-learned]").textContent = learnedTerminator()
    ? `This device's scanner was seen to end its codes with ${learnedTerminator()}.`
    : "Not seen yet: codes are offered for a check until the scanner sends Enter or Tab.";
}

ui.wedgeSettings.addEventListener("submit", (event) => {
  event.preventDefault();
  const form = ui.wedgeSettings.elements;
  wedgeSettings = {
    msPerKey: Number(form.ms_per_key.value),
    minChars: Number(form.min_chars.value),
    silenceMs: Number(form.silence_ms.value),
    stallMs: Number(form.stall_ms.value),
    terminator: form.terminator.value,
  };
  localStorage.setItem(settingsKey, JSON.stringify(wedgeSettings));
});
ui.wedgeReset.addEventListener("click", () => {
  localStorage.removeItem(settingsKey);
  forgetTerminator();
  wedgeSettings = { ...defaults };
  showWedgeSettings();
});

// --- Making scans ------------------------------------------------------------------------------

let outbox = null;
let live = null;
let link = "connecting";
let records = []; // this user's outbox, oldest first (refreshed after every change)
const inflight = new Map(); // id -> when it was sent

function normalize(raw) {
  const code = String(raw ?? "").trim();
  // ASCII only, like the server: upper-casing "ß" would make "SS".
  return /^[\x20-\x7e]*$/.test(code) ? code.toUpperCase() : code;
}

function describe(message) {
  if (message.type === "undo") return `Undo the last child of ${message.parent}`;
  if (message.type === "finish") return `Finish ${message.parent}`;
  if (message.as === "parent") return `Parent ${message.code}`;
  return `${message.code} into ${message.parent}`;
}

async function scan(raw) {
  const code = normalize(raw);
  if (!code) return;
  unlockSound().then(render);
  state.held = null; // a new scan replaces a code on offer (never saved)
  wedge?.settle();
  if (PARENT_FORMAT.test(code)) {
    const before = state.parent;
    const known = before?.code === code ? before : null;
    // Leaving a part-filled parent for another is worth saying, and remembering.
    const count = before && !known ? countOf(before) : 0;
    const left =
      count > 0 && count < MAX_CHILDREN && before.status !== "completed"
        ? { code: before.code, children: count, at: Date.now() }
        : null;
    const resumed = state.unfinished.find((p) => p.code === code) ?? null;
    state.unfinished = state.unfinished.filter((p) => p.code !== code && p.code !== left?.code);
    if (left) state.unfinished.unshift(left);
    state.parent = { code, children: known?.children ?? null, status: known?.status ?? "pending" };
    state.lastChild = null;
    const message = { type: "scan", id: crypto.randomUUID(), code, as: "parent" };
    await submit(message, { before, left, resumed });
  } else if (state.parent) {
    const id = crypto.randomUUID();
    state.lastChild = { code, id };
    await submit({ type: "scan", id, code, as: "child", parent: state.parent.code });
  } else {
    // Not worth a round trip (and never worth queueing offline): it cannot be a parent.
    state.awaiting = null;
    showBanner("rejected", `${code}: ${root.dataset.parentFormatMessage}`);
    signal("rejected", root);
    saveState();
    render();
  }
}

// --- Wedge codes that were not sent whole (wedge.js) -----------------------------------------

let wedge = null;

function offer(held) {
  if (held === null) {
    // Its burst went on: whatever it becomes is told next, or else nothing was saved.
    state.held = null;
    if (state.banner?.kind === "check") showBanner("idle", "Nothing saved.");
    render();
    return;
  }
  state.held = { ...held, code: normalize(held.code) };
  state.awaiting = null; // a late answer to an earlier scan must not cover the question
  showBanner("check", CHECKS[held.reason](held.head));
  signal("check", root);
  saveState();
  render();
}

function interrupted({ head, tail }) {
  state.held = null;
  state.awaiting = null;
  const got = tail ? `${head}… ${tail}` : `${head}…`;
  showBanner(
    "interrupted",
    `The scanner stopped in the middle of a code (${got}): nothing was saved. Scan the bag again.`,
  );
  signal("interrupted", root);
  saveState();
  render();
}

function saveHeld() {
  const held = state.held;
  if (held) scan(held.code);
}

function discardHeld() {
  const held = state.held;
  if (!held) return;
  state.held = null;
  wedge?.settle();
  showBanner("idle", `${held.code} discarded: nothing saved. Scan the bag again if needed.`);
  saveState();
  render();
}

async function undoLast() {
  if (!state.parent) return;
  unlockSound().then(render);
  state.lastChild = null;
  await submit({ type: "undo", id: crypto.randomUUID(), parent: state.parent.code });
}

async function finishParent() {
  if (!state.parent) return;
  unlockSound().then(render);
  const before = state.parent;
  state.parent = null;
  state.lastChild = null;
  await submit({ type: "finish", id: crypto.randomUUID(), parent: before.code }, { before });
}

async function submit(message, context = {}) {
  state.awaiting = message.id;
  try {
    await outbox.add(message, context);
  } catch (error) {
    // Storage full or broken: still try to send it, but say it is not kept.
    console.error("scanner: outbox", error);
    showBanner("rejected", `${describe(message)}: this phone could not keep it; scan it again.`);
    signal("rejected", root);
    live?.send(message);
    saveState();
    render();
    return;
  }
  await refresh();
  saveState();
  if (canSend()) {
    flush();
    setTimeout(() => stillWaiting(message, "sending"), SLOW_ACK_MS);
    setTimeout(() => stillWaiting(message, "pending"), GIVE_UP_WAITING_MS);
  } else {
    stillWaiting(message, "pending");
  }
  render();
}

function stillWaiting(message, how) {
  const record = records.find((r) => r.id === message.id);
  if (message.id !== state.awaiting || record?.outcome !== "pending") return;
  if (how === "sending") {
    showBanner("sending", `${describe(message)}…`);
  } else {
    showBanner("pending", `${describe(message)}: kept on this phone, sent when the link is back.`);
    signal("pending", root);
  }
  saveState();
  render();
}

// --- Sending and acks --------------------------------------------------------------------------

function canSend() {
  return link === "live" && navigator.onLine !== false && live !== null;
}

let flushing = false;
let flushAgain = false;

/** Send what is pending, oldest first, a window at a time (the server answers in order). */
async function flush() {
  if (flushing) {
    flushAgain = true;
    return;
  }
  flushing = true;
  try {
    do {
      flushAgain = false;
      if (!canSend()) return;
      const now = performance.now();
      for (const record of await outbox.pending()) {
        if (inflight.size >= SEND_WINDOW) break;
        const sentAt = inflight.get(record.id);
        if (sentAt !== undefined && now - sentAt < RESEND_AFTER_MS) continue;
        if (!live.send(record.message)) break;
        inflight.set(record.id, now);
      }
    } while (flushAgain);
  } finally {
    flushing = false;
  }
}

// The server could not save it (database restarting, busy parent, too fast): it stays in the
// outbox, and goes again shortly, with the same id.
function onError(error) {
  if (typeof error.id !== "string" || !inflight.has(error.id)) return;
  inflight.set(error.id, performance.now() - RESEND_AFTER_MS + RETRY_NOT_SAVED_MS);
  if (error.id === state.awaiting) {
    showBanner("pending", `${error.message} Retrying…`);
    render();
  }
  setTimeout(flush, RETRY_NOT_SAVED_MS);
}

// Acks are applied one at a time, in the order they came: each carries the parent's count
// after its scan, and a later one must not be overwritten by an earlier one still saving.
let acks = Promise.resolve();
function onAck(ack) {
  acks = acks.then(() => applyAck(ack)).catch((error) => console.error("scanner:", error));
}

async function applyAck(ack) {
  const settled = await outbox.settle(ack);
  inflight.delete(ack.id); // only now: until it is settled, a flush would send it again
  if (settled === null) return; // another person's, or not from the outbox
  const { record, first } = settled;
  applyToParent(record, ack);
  if (ack.id === state.awaiting) {
    const { kind, text, sound } = present(record, ack);
    showBanner(ack.outcome, text, kind);
    if (first) signal(sound, root);
  } else if (first && ack.outcome === "rejected") {
    // An earlier scan (made offline, or overtaken) was refused: it goes to the list, loudly.
    signal("rejected", root);
  }
  saveState();
  await refresh();
  render();
  flush();
}

/** How an answer is shown and heard: a full bag, an undo and a switch each have their own. */
function present(record, ack) {
  const message = record.message;
  const plain = { kind: ack.outcome, text: ack.message, sound: ack.outcome };
  if (ack.outcome !== "ok") return plain;
  if (message.type === "undo") return { kind: "undone", text: ack.message, sound: "undo" };
  if (message.as === "child" && ack.parent?.status === "completed") {
    const text = `${ack.message} — ${message.parent} is full. Scan the next parent.`;
    return { kind: "complete", text, sound: "complete" };
  }
  const left = record.context?.left;
  if (message.as === "parent" && left && ack.parent) {
    const now = `${ack.parent.code} ${ack.parent.children}/${MAX_CHILDREN}`;
    const text = `Left ${left.code} at ${left.children}/${MAX_CHILDREN} — now ${now}`;
    return { kind: "switched", text, sound: "switch" };
  }
  return plain;
}

function applyToParent(record, ack) {
  const message = record.message;
  if (ack.parent && state.parent?.code === ack.parent.code) {
    state.parent.children = ack.parent.children;
    state.parent.status = ack.parent.status;
  }
  const refusedParent =
    ack.outcome === "rejected" && message.type === "scan" && message.as === "parent";
  if (refusedParent && state.parent?.code === message.code) {
    // Back to the parent being worked on before, if any: a wrong label must not end a bag.
    const { before = null, left = null, resumed = null } = record.context ?? {};
    state.parent = before;
    state.lastChild = null;
    state.unfinished = state.unfinished.filter((p) => p.code !== left?.code);
    if (resumed) state.unfinished.unshift(resumed);
  }
}

function onEvents(events) {
  // Someone else (another scanner, an admin's undo) changed the current parent.
  for (const event of events) {
    const parent = event.data?.parent;
    if (parent && event.data.by !== user && parent.code === state.parent?.code) {
      state.parent.children = parent.children;
      state.parent.status = parent.status;
    }
  }
  saveState();
  render();
}

function onStatus(status) {
  if (status === "live") {
    link = "live";
    inflight.clear(); // what was sent on a previous socket may never have arrived
    flush();
  } else if (status !== "resynced") {
    link = status;
    inflight.clear();
  }
  render();
}

async function refresh() {
  records = await outbox.records();
  if (records.length > PRUNE_ABOVE) {
    await outbox.prune();
    records = await outbox.records();
  }
}

// --- Drawing -----------------------------------------------------------------------------------

/** `outcome`: what happened to the scan; `kind`: how it is shown (a full bag is an ok too). */
function showBanner(outcome, message, kind = outcome) {
  state.banner = { outcome, kind, message, at: Date.now() };
}

function pendingDelta(code) {
  let delta = 0;
  for (const { message, outcome } of records) {
    if (outcome !== "pending" || message.parent !== code) continue;
    if (message.type === "scan") delta += 1;
    if (message.type === "undo") delta -= 1;
  }
  return delta;
}

function countOf(parent) {
  const count = (parent.children ?? 0) + pendingDelta(parent.code);
  return Math.min(Math.max(count, 0), MAX_CHILDREN);
}

function render() {
  const online = navigator.onLine !== false;
  const pending = records.filter((r) => r.outcome === "pending");
  root.dataset.link = online ? link : "offline";
  ui.linkState.textContent = LINK_STATES[root.dataset.link] ?? "Reconnecting…";
  ui.linkState.className = `link-state is-${root.dataset.link}`;
  ui.pendingCount.textContent = String(pending.length);
  ui.pending.classList.toggle("has-pending", pending.length > 0);
  ui.soundHint.textContent = soundIsOn() ? "Sound on" : "Sound off: tap";
  ui.soundHint.classList.toggle("is-off", !soundIsOn());

  const banner = state.banner ?? {
    outcome: "idle",
    message: state.parent ? "Scan child bags." : "Scan a parent bag to start.",
  };
  const kind = banner.kind ?? banner.outcome;
  ui.banner.dataset.outcome = banner.outcome;
  ui.banner.dataset.kind = kind;
  ui.banner.className = `scan-banner is-${kind}`;
  ui.banner.classList.toggle("is-long", banner.message.length > 70);
  ui.bannerTitle.textContent = TITLES[kind] ?? kind;
  ui.bannerMessage.textContent = banner.message;
  ui.confirm.hidden = state.held === null;
  ui.confirmCode.textContent = state.held?.code ?? "";

  const parent = state.parent;
  root.dataset.step = parent ? "child" : "parent";
  if (parent) {
    const count = countOf(parent);
    const complete = parent.status === "completed";
    ui.step.replaceChildren(
      complete ? "Full · Scan the next " : "Step 2 · Scan ",
      strong(complete ? "parent" : "child bags"),
    );
    ui.parentCode.textContent = parent.code;
    const status = parent.children === null ? "unconfirmed" : complete ? "completed" : "pending";
    ui.parentState.textContent = status;
    ui.parentState.className = `parent-state is-${status}`;
    ui.progress.textContent = `${count}/${MAX_CHILDREN}`;
    ui.progressFill.style.width = `${(100 * count) / MAX_CHILDREN}%`;
    ui.progressFill.classList.toggle("is-complete", complete);
  } else {
    ui.step.replaceChildren("Step 1 · Scan a ", strong("parent"), " bag");
    ui.parentCode.textContent = "No parent";
    ui.parentState.textContent = "";
    ui.parentState.className = "parent-state";
    ui.progress.textContent = `0/${MAX_CHILDREN}`;
    ui.progressFill.style.width = "0%";
    ui.progressFill.classList.remove("is-complete");
  }
  const lastChild = state.lastChild;
  const lastOutcome = records.find((r) => r.id === lastChild?.id)?.outcome ?? "pending";
  ui.lastChild.replaceChildren(lastChild ? lastChild.code : "—");
  if (lastChild && lastOutcome !== "ok") {
    const chip = document.createElement("span");
    chip.className = `chip is-${lastOutcome}`;
    chip.textContent = CHIPS[lastOutcome];
    ui.lastChild.append(" ", chip);
  }
  ui.undo.disabled = !parent;
  ui.finish.disabled = !parent;
  renderUnfinished();

  const rejected = records.filter((r) => r.outcome === "rejected" && !r.dismissed).reverse();
  ui.rejected.hidden = rejected.length === 0;
  ui.rejectedCount.textContent = `(${rejected.length})`;
  ui.rejectedPill.hidden = rejected.length === 0;
  ui.rejectedPill.textContent = `${rejected.length} rejected`;
  ui.rejectedList.replaceChildren(...rejected.map(item));
  ui.recentList.replaceChildren(...records.slice(-RECENT).reverse().map(item));
}

let shownUnfinished = "";

function renderUnfinished() {
  // Redrawn only when it changes: a button replaced under a finger loses the tap.
  const key = JSON.stringify(state.unfinished);
  if (key === shownUnfinished) return;
  shownUnfinished = key;
  ui.unfinished.hidden = state.unfinished.length === 0;
  ui.unfinishedList.replaceChildren(
    ...state.unfinished.map(({ code, children }) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "button big resume";
      const what = document.createElement("span");
      what.className = "resume-code";
      what.textContent = code;
      const count = document.createElement("span");
      count.className = "resume-count";
      count.textContent = `${children}/${MAX_CHILDREN}`;
      const action = document.createElement("span");
      action.className = "resume-action";
      action.textContent = "Resume ›";
      button.append(what, count, action);
      button.addEventListener("click", () => scan(code));
      const li = document.createElement("li");
      li.append(button);
      return li;
    }),
  );
}

function strong(text) {
  const element = document.createElement("strong");
  element.textContent = text;
  return element;
}

/** One outbox record as a list line: what was scanned, and the server's answer if it matters. */
function item(record) {
  const { outcome, reply } = record;
  const li = document.createElement("li");
  li.dataset.outcome = outcome;
  const chip = document.createElement("span");
  chip.className = `chip is-${outcome}`;
  chip.textContent = CHIPS[outcome];
  const text = document.createElement("span");
  text.className = "what";
  // An answer like "C0012 linked (12/30)" says it all; a refusal also needs what was scanned.
  text.textContent = outcome === "ok" || outcome === "duplicate" ? reply : describe(record.message);
  const time = document.createElement("time");
  time.textContent = new Date(record.madeAt).toLocaleTimeString([], {
    hour: "2-digit",
    minute: "2-digit",
  });
  li.append(chip, text, time);
  if (outcome === "rejected") {
    const why = document.createElement("span");
    why.className = "why";
    why.textContent = reply;
    li.append(why);
  }
  return li;
}

// --- Camera ------------------------------------------------------------------------------------

let camera = null;

async function toggleCamera() {
  if (camera) {
    camera.stop();
    camera = null;
    ui.cameraView.hidden = true;
    ui.cameraToggle.textContent = "Scan with camera";
    ui.cameraStatus.textContent = "";
    return;
  }
  ui.cameraStatus.textContent = "Starting the camera…";
  try {
    ui.cameraView.hidden = false;
    camera = await startCamera(ui.cameraView, (code) => scan(code));
    root.dataset.cameraDecoder = camera.decoder;
    ui.cameraToggle.textContent = "Stop camera";
    ui.cameraStatus.textContent = "Hold a QR code in the frame at the top.";
    window.scrollTo({ top: 0, behavior: "smooth" });
  } catch (error) {
    ui.cameraView.hidden = true;
    ui.cameraStatus.textContent = error.message;
  }
}

// --- Start -------------------------------------------------------------------------------------

async function start() {
  outbox = await openOutbox(user);
  await outbox.prune();
  await refresh();
  if (!outbox.durable) {
    showBanner("pending", "This browser cannot keep scans offline: stay connected.");
  }
  showWedgeSettings();
  render();

  wedge = listenForWedge({
    field: ui.wedge,
    onScan: scan,
    onCheck: offer,
    onInterrupted: interrupted,
    onIgnored: () => {
      ui.manualHint.hidden = false;
    },
    settings: () => wedgeSettings,
  });
  keepFocus(ui.wedge);

  // Audio may start only after a tap or key press. A tap unlocks it; so does each scan (at
  // its end: creating the audio context takes long enough to split a wedge burst in two).
  // The screen is redrawn after the tap, not during it: a layout change between finger down
  // and finger up would make the tap miss its button.
  document.addEventListener("pointerdown", () => unlockSound(), { capture: true });
  document.addEventListener("click", () => setTimeout(render, 0));

  ui.manual.addEventListener("submit", (event) => {
    event.preventDefault();
    const input = ui.manual.elements.code;
    const code = input.value;
    input.value = "";
    scan(code);
  });
  ui.confirmSave.addEventListener("click", saveHeld);
  ui.confirmDiscard.addEventListener("click", discardHeld);
  ui.undo.addEventListener("click", undoLast);
  ui.finish.addEventListener("click", finishParent);
  ui.clearRejected.addEventListener("click", async () => {
    await outbox.dismissRejected();
    await refresh();
    render();
  });
  if (hasCamera()) {
    ui.cameraCard.hidden = false;
    ui.cameraToggle.addEventListener("click", toggleCamera);
  }

  live = connectLive({
    view: "scanner",
    onAck,
    onError,
    onEvents,
    onStatus,
    hello: () => ({ parent: state.parent?.code ?? null }),
  });
  // Background Sync is Chromium-only: send again whenever the link may be back.
  window.addEventListener("online", () => {
    render();
    flush();
  });
  window.addEventListener("offline", render);
  window.addEventListener("focus", flush);
  document.addEventListener("visibilitychange", flush);
  setInterval(flush, FLUSH_EVERY_MS);
}

start();
