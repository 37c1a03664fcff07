// The bill page: parents scanned into the box are linked without reloading the page, one at a
// time and in order (a keyboard-wedge scanner can send the next code before the last is saved),
// and the totals follow what others scan, over the shared live connection when there is one.
const live = document.getElementById("bill-live");
const form = document.getElementById("bill-scan");
const log = document.getElementById("scan-log");
const notices = document.getElementById("bill-notices");
const liveStatus = document.getElementById("live-status");
const billNumber = live?.dataset.billNumber ?? "";
const LOG_LINES = 15;
const RETRIES = 5;
const REFRESH_DELAY_MS = 250;
const CLASS_FOR = { ok: "ok", duplicate: "warn", rejected: "error", pending: "pending" };

function csrfToken() {
  return document.querySelector('meta[name="csrf-token"]')?.content ?? "";
}

function newClientId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  // Plain http (not localhost) has no randomUUID; random bytes do as well.
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) =>
    b.toString(16).padStart(2, "0"),
  ).join("");
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function logLine(text) {
  const line = document.createElement("li");
  line.textContent = text;
  log.prepend(line);
  while (log.children.length > LOG_LINES) log.lastElementChild.remove();
  return line;
}

function mark(line, outcome, text) {
  line.className = `banner ${CLASS_FOR[outcome] ?? "error"}`;
  line.dataset.outcome = outcome;
  line.textContent = text;
}

class Refused extends Error {}

async function send(scan) {
  const body = new URLSearchParams({ code: scan.code, client_id: scan.id, csrf_token: csrfToken() });
  const response = await fetch(form.action, {
    method: "POST",
    body,
    credentials: "same-origin",
    headers: { Accept: "application/json", "X-CSRF-Token": csrfToken() },
  });
  const type = response.headers.get("Content-Type") ?? "";
  if (response.ok && type.includes("application/json")) return response.json();
  if (response.status >= 500) throw new Error(`the server answered ${response.status}`);
  const reason = {
    403: "your session or this page has expired: reload the page and scan it again",
    404: "this bill no longer exists: go back to the bill list",
    429: "too many scans at once: wait a moment and scan it again",
  }[response.status];
  throw new Refused(reason ?? `refused (${response.status}): reload the page and scan it again`);
}

// Scans wait here and go out one by one; a retry reuses the scan's id, so it is never saved twice.
const queue = [];
let sending = false;

async function drain() {
  if (sending) return;
  sending = true;
  while (queue.length) {
    const scan = queue.shift();
    for (let attempt = 1; ; attempt += 1) {
      try {
        const answer = await send(scan);
        mark(scan.line, answer.outcome, answer.message);
        if (answer.outcome === "ok") navigator.vibrate?.(60);
        else navigator.vibrate?.([120, 60, 120]);
        break;
      } catch (error) {
        if (error instanceof Refused || attempt >= RETRIES) {
          const why = error instanceof Refused ? error.message : "check the connection and scan it again";
          mark(scan.line, "rejected", `${scan.code}: not saved — ${why}.`);
          break;
        }
        mark(scan.line, "pending", `${scan.code}: connection problem, trying again (${attempt}/${RETRIES - 1})…`);
        await sleep(500 * 2 ** attempt);
      }
    }
    scheduleRefresh();
  }
  sending = false;
}

form?.addEventListener("submit", (event) => {
  event.preventDefault();
  const input = form.elements.code;
  const code = input.value.trim();
  input.value = "";
  input.focus();
  if (!code) return;
  const line = logLine(`${code}: saving…`);
  mark(line, "pending", `${code}: saving…`);
  queue.push({ code, id: newClientId(), line });
  drain();
});

let refreshTimer = null;
let refreshing = false;

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, REFRESH_DELAY_MS);
}

async function refresh() {
  if (!live) return;
  if (refreshing) {
    scheduleRefresh();
    return;
  }
  refreshing = true;
  try {
    const response = await fetch(live.dataset.liveUrl, {
      credentials: "same-origin",
      headers: { Accept: "text/html" },
    });
    if (response.ok) {
      live.innerHTML = await response.text();
      live.dataset.refreshedAt = String(Date.now());
    } else if (response.status === 404) {
      showNotice("This bill has been deleted. Go back to the bill list.");
    }
  } catch {
    // Offline for a moment: the next event or scan refreshes again.
  } finally {
    refreshing = false;
  }
}

function showNotice(text) {
  const banner = document.createElement("p");
  banner.className = "banner error";
  banner.setAttribute("role", "alert");
  banner.textContent = text;
  notices?.replaceChildren(banner);
}

function parentsShown() {
  return new Set(Array.from(live.querySelectorAll("[data-parent-code]"), (row) => row.dataset.parentCode));
}

function concernsThisBill(event) {
  const data = event?.data ?? {};
  if (String(event?.kind ?? "").startsWith("bill.")) return data.bill?.number === billNumber;
  return data.parent?.code !== undefined && parentsShown().has(data.parent.code);
}

function setLiveStatus(state) {
  if (!liveStatus) return;
  const up = state === "live" || state === "resynced"; // live.js: connecting, reconnecting, …
  liveStatus.hidden = false;
  liveStatus.dataset.state = up ? "live" : "down";
  liveStatus.textContent = up ? "Live: updates as bags are scanned." : "Live updates paused: reconnecting…";
}

async function connect() {
  if (!live) return;
  let module;
  try {
    module = await import("./live.js");
  } catch {
    return; // No live connection on this installation: the page still works, reload to update.
  }
  module.connectLive?.({
    view: "bill",
    onWelcome: () => scheduleRefresh(), // whatever happened while we were away
    onEvents: (events) => {
      const list = Array.isArray(events) ? events : events?.events ?? [events];
      if (list.some(concernsThisBill)) scheduleRefresh();
    },
    onResync: () => scheduleRefresh(),
    onStatus: setLiveStatus,
    onCounters: () => {},
    onAck: () => {},
  });
}

connect();
