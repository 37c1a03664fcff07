// The live connection (SPEC §8): one websocket to /ws that survives network blips and server
// restarts, resumes from the last event it applied, and hands each event to the page once.
//
//   const live = connectLive({ view: "wall", onEvents, onCounters, onResync, onStatus });
//   live.send({ type: "scan", id, code, as: "parent" });  // false when not connected
//   live.close();

const PING_EVERY_MS = 20_000; // also keeps idle displays alive through proxies
const OPEN_TIMEOUT_MS = 10_000; // no welcome by then: the attempt is dead, try again
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 15_000;
const RESTART_DELAY_MS = 1_000; // 1012: spread the reconnects of every client over a second
const DEDUPE_IDS = 5_000; // ids commit out of order, so a late one may arrive below the max
const SERVICE_RESTART = 1012;
const SESSION_ENDED = 4401;

const noop = () => {};

export function connectLive({
  view = "",
  onWelcome = noop,
  onEvents = noop,
  onCounters = noop,
  onAck = noop,
  onMetrics = noop,
  onError = noop,
  onStatus = noop,
  onResync = noop,
  // Extra fields for the hello (a scanner names the parent it is working on).
  hello = () => ({}),
  // A refused handshake looks like any network failure to a page, so after failed attempts
  // this URL says whether we are still signed in (401: no). Display links pass null.
  probe = "/api/v1/session",
} = {}) {
  const storageKey = `tt-live:last-event-id:${view || "default"}`;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const url = `${scheme}//${location.host}/ws${view ? `?view=${encodeURIComponent(view)}` : ""}`;
  const seen = new Set(); // recently applied ids; insertion order makes it a ring
  let lastId = readStored(storageKey);
  let socket = null;
  let attempt = 0; // failures since the last welcome: drives the backoff
  let everLive = false;
  let closed = false;
  let retryTimer = null;
  let pingTimer = null;
  let openTimer = null;
  let awaitingPong = false;
  let status = null;

  function connect() {
    retryTimer = null;
    if (closed) return;
    setStatus(everLive ? "reconnecting" : "connecting");
    const ws = new WebSocket(url);
    socket = ws;
    // The resume point is fixed now: the replay brings us from here to the welcome's id.
    const resumedFrom = lastId;
    let welcomed = false;
    openTimer = setTimeout(() => drop(ws), OPEN_TIMEOUT_MS);
    ws.onopen = () =>
      ws.send(JSON.stringify({ ...hello(), type: "hello", last_event_id: resumedFrom }));
    // A failed attempt: browsers follow with a close (1006), some runtimes never do.
    ws.onerror = () => drop(ws);
    ws.onmessage = (message) => {
      const data = parse(message.data);
      if (data === null) return;
      if (data.type === "welcome") {
        welcomed = true;
        clearTimeout(openTimer);
        attempt = 0;
        everLive = true;
        // Starting fresh, the welcome's counters cover everything up to its id. Resuming,
        // only applied events count: replay frames may still be on their way.
        if (resumedFrom === null) remember(data.last_event_id);
        startPings(ws);
        onWelcome(data);
        setStatus("live");
      } else if (data.type === "events") {
        const fresh = data.events.filter((event) => !seen.has(event.id));
        for (const event of fresh) markSeen(event.id);
        if (fresh.length) {
          remember(Math.max(lastId ?? 0, ...fresh.map((event) => event.id)));
          onEvents(fresh);
        }
      } else if (data.type === "resync") {
        // Too far behind or too slow: the page reloads its snapshot; resume from live.
        remember(null);
        setStatus("resynced");
        onResync(data.reason);
      } else if (data.type === "pong") {
        awaitingPong = false;
      } else if (data.type === "error") {
        // With an id: that scan, undo or finish was not saved and may be sent again.
        console.warn("live:", data.message);
        onError(data);
      } else {
        ({ counters: onCounters, ack: onAck, metrics: onMetrics })[data.type]?.(data);
      }
    };
    ws.onclose = (event) => {
      if (socket !== ws) return; // an attempt we already gave up on
      stopTimers();
      socket = null;
      if (event.code === SESSION_ENDED) return signIn();
      if (event.code === SERVICE_RESTART) {
        // Not a failure: another worker (or this one, restarted) takes us straight back.
        attempt = 0;
        schedule(Math.random() * RESTART_DELAY_MS);
        return;
      }
      attempt += 1;
      if (!welcomed && attempt >= 2) checkSignedIn();
      // Full jitter: a whole floor of screens must not reconnect in lockstep.
      schedule(Math.random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt));
    };
  }

  function startPings(ws) {
    clearInterval(pingTimer);
    awaitingPong = false;
    pingTimer = setInterval(() => {
      // No pong for a whole interval: a half-open connection (Wi-Fi gone, NAT expired)
      // that the browser would only notice minutes later.
      if (awaitingPong) return drop(ws);
      awaitingPong = true;
      ws.send(JSON.stringify({ type: "ping" }));
    }, PING_EVERY_MS);
  }

  // Give up on a socket now: its close handshake may never finish on a dead network.
  function drop(ws) {
    if (socket !== ws) return;
    ws.onclose({ code: 4000 }); // schedules the next attempt, with backoff
    ws.onclose = ws.onmessage = ws.onerror = null;
    ws.close();
  }

  function schedule(delay) {
    if (closed || retryTimer !== null) return;
    setStatus(everLive ? "reconnecting" : "connecting");
    retryTimer = setTimeout(connect, delay);
  }

  function setStatus(next) {
    if (next !== status) onStatus((status = next));
  }

  function stopTimers() {
    clearTimeout(openTimer);
    clearInterval(pingTimer);
  }

  async function checkSignedIn() {
    if (!probe) return;
    try {
      const response = await fetch(probe, { headers: { Accept: "application/json" } });
      if (response.status === 401) signIn();
    } catch {
      // offline: keep retrying
    }
  }

  function signIn() {
    closed = true;
    clearTimeout(retryTimer);
    location.assign(`/login?next=${encodeURIComponent(location.pathname)}`);
  }

  function markSeen(id) {
    seen.add(id);
    if (seen.size > DEDUPE_IDS) seen.delete(seen.values().next().value); // the oldest
  }

  function remember(id) {
    lastId = id;
    try {
      if (id === null) sessionStorage.removeItem(storageKey);
      else sessionStorage.setItem(storageKey, String(id));
    } catch {
      // storage off (private mode, quota): we still resume within this page's life
    }
  }

  // Back online, or the tab shown again: no reason to sit out the rest of a long backoff.
  function retryNow() {
    if (retryTimer === null || closed) return;
    clearTimeout(retryTimer);
    retryTimer = null;
    connect();
  }
  const onVisible = () => document.visibilityState === "visible" && retryNow();
  window.addEventListener("online", retryNow);
  document.addEventListener("visibilitychange", onVisible);

  connect();

  return {
    send(message) {
      if (socket?.readyState !== WebSocket.OPEN) return false;
      socket.send(JSON.stringify(message));
      return true;
    },
    close() {
      closed = true;
      clearTimeout(retryTimer);
      stopTimers();
      window.removeEventListener("online", retryNow);
      document.removeEventListener("visibilitychange", onVisible);
      const ws = socket;
      socket = null;
      ws?.close(1000, "page closed");
    },
  };
}

function parse(text) {
  try {
    const data = JSON.parse(text);
    return typeof data?.type === "string" ? data : null;
  } catch {
    return null; // not ours to crash on
  }
}

function readStored(key) {
  try {
    const value = Number.parseInt(sessionStorage.getItem(key) ?? "", 10);
    return Number.isSafeInteger(value) && value >= 0 ? value : null;
  } catch {
    return null;
  }
}
