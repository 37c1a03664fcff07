// Keyboard-wedge scanners "type" a code, usually followed by Enter. Their keys are caught from
// anywhere on the page (except fields where a person types) and told apart from a person by
// the gaps between keys: scanners type ~7-8 ms per key, people over 100 ms.
//
// The rule: a code is saved only when the scanner sent it whole - never a piece of one. Busy
// phones and Bluetooth scanners do pause in the middle of a code, and a piece saved as a bag
// (the head before the pause, or the tail after it) is a wrong bag in a parent.
// - Terminator. Once a scanner-speed burst ends with Enter or Tab, this device remembers it
//   (localStorage; or the settings say so). From then on only the terminator ends a code,
//   silence never does: a pause just continues the code, so `UX812`, a pause, `PAUSE1`, Enter
//   is one code, UX812PAUSE1, for the server to judge.
// - Stall. Keys that stop for `stallMs` (1.5 s) without their terminator are dropped with a
//   "scan interrupted" signal: joining keys that far apart would join unrelated things. What
//   ends with a terminator in the next TAIL_MS may be the rest of that code, so it is only
//   offered for confirmation (unless it is the cut code again, whole).
// - No terminator yet (a new device) or none at all (set so): a burst that ends on
//   `silenceMs` of silence is offered for confirmation ("Did you scan ...?"), never saved.
//   Keys that follow within `stallMs` still belong to it.
// - Speed is judged per key: the median gap says scanner (at most `msPerKey`), slow scanner
//   (at most twice that) or person (dropped: people type in the box made for it). A steady
//   slow scanner with its terminator is taken; one with a person's gaps (over twice
//   `msPerKey`) is offered instead. So is a lone key STRAY_GAP_MS or more away from the rest
//   (a stray key press just before a scan, or a scanner stalling after its first key): no
//   person presses a key and pulls a trigger faster, and a scanner's hiccups are shorter.
// - Under MIN_CODE characters nothing is sent or offered: no code is that short.
//
// A hidden `inputmode="none"` field holds the focus: handheld Android scanners deliver their
// keys to the focused field, and `inputmode="none"` keeps the soft keyboard from popping up.

const TYPING_FIELDS = "input, textarea, select, [contenteditable]";
const MIN_CODE = 4; // SPEC §1: shorter codes do not exist
const TAIL_MS = 5_000;
const STRAY_GAP_MS = 300;
const LEARNED = "tt-scanner:wedge-terminator";

/** The terminator this device's scanner was seen to send ("Enter" or "Tab"), or null. */
export function learnedTerminator() {
  try {
    return localStorage.getItem(LEARNED);
  } catch {
    return null;
  }
}

export function forgetTerminator() {
  try {
    localStorage.removeItem(LEARNED);
  } catch {
    // storage off: nothing was remembered either
  }
}

function learn(key) {
  try {
    if (localStorage.getItem(LEARNED) !== key) localStorage.setItem(LEARNED, key);
  } catch {
    // storage off: codes without a terminator keep being offered for confirmation
  }
}

/** The lengths of the runs of keys that gaps over `limit` ms separate. */
function pieces(gaps, limit) {
  const runs = [1];
  for (const gap of gaps) {
    if (gap > limit) runs.push(1);
    else runs[runs.length - 1] += 1;
  }
  return runs;
}

/**
 * How a burst was typed: its speed from the median gap; `paused` when a gap over twice
 * `msPerKey` (a person's) is in it; `loneKey` when a single key stands STRAY_GAP_MS apart.
 */
export function judge(times, msPerKey) {
  const gaps = times.slice(1).map((at, i) => at - times[i]);
  const sorted = [...gaps].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  const median = !sorted.length
    ? 0
    : sorted.length % 2
      ? sorted[middle]
      : (sorted[middle - 1] + sorted[middle]) / 2;
  const speed = median <= msPerKey ? "scanner" : median <= 2 * msPerKey ? "slow" : "person";
  const apart = pieces(gaps, STRAY_GAP_MS);
  return {
    speed,
    paused: gaps.some((gap) => gap > 2 * msPerKey),
    loneKey: apart.length > 1 && apart.includes(1),
  };
}

/**
 * Listen for wedge scans. Callbacks: `onScan(code)` a whole code to send; `onCheck({ code,
 * reason, head })` a code to offer for confirmation (reason: "unterminated", "slow", "paused"
 * or "tail", head: the cut code before it), or `onCheck(null)` to take an offer back because
 * its burst went on; `onInterrupted({ head, tail })` a code cut off, nothing to save;
 * `onIgnored(text)` keys that were no scan. `settings()` gives msPerKey, minChars, silenceMs,
 * stallMs and terminator ("auto", "enter" or "none"). Returns `settle()`, to call once a person
 * has saved or discarded an offer, and `stop()`.
 */
export function listenForWedge({
  field,
  onScan,
  onCheck,
  onInterrupted,
  onIgnored = () => {},
  settings,
}) {
  let text = "";
  let times = [];
  let offered = false; // this burst is on offer (it went silent without its terminator)
  let cut = null; // { head, until }: the last burst that ended without its terminator
  let silenceTimer = null;
  let stallTimer = null;

  const shortest = () => Math.max(MIN_CODE, settings().minChars || 0);

  function expectsTerminator() {
    const { terminator } = settings();
    return terminator === "enter" || (terminator !== "none" && learnedTerminator() !== null);
  }

  function take() {
    clearTimeout(silenceTimer);
    clearTimeout(stallTimer);
    const burst = { code: text, times, offered };
    text = "";
    times = [];
    offered = false;
    return burst;
  }

  function recentCut() {
    const recent = cut !== null && performance.now() <= cut.until ? cut : null;
    cut = null;
    return recent;
  }

  function add(characters, at) {
    const { silenceMs, stallMs } = settings();
    if (times.length && at - times.at(-1) > stallMs) stalled();
    text += characters;
    for (let i = 0; i < characters.length; i += 1) times.push(at);
    clearTimeout(silenceTimer);
    clearTimeout(stallTimer);
    if (!expectsTerminator()) silenceTimer = setTimeout(silent, silenceMs);
    stallTimer = setTimeout(stalled, stallMs);
  }

  // No terminator expected: offer what came so far. The burst stays open until it stalls.
  function silent() {
    if (text.length < shortest()) return;
    const { speed } = judge(times, settings().msPerKey);
    if (speed === "person") return;
    offered = true;
    onCheck({ code: text, reason: speed === "slow" ? "slow" : "unterminated" });
  }

  function stalled() {
    const { code, times: at, offered: wasOffered } = take();
    if (!code) return;
    if (code.length > 1 && judge(at, settings().msPerKey).speed === "person") {
      if (wasOffered) onCheck(null);
      onIgnored(code);
      return;
    }
    // Even a single key: a scanner may stall after its first one.
    cut = { head: code, until: performance.now() + TAIL_MS };
    if (wasOffered) return; // it stays on offer, for a person to judge
    if (code.length > 1 && expectsTerminator()) onInterrupted({ head: code, tail: "" });
    else onIgnored(code);
  }

  function terminated(key) {
    const { code, times: at, offered: wasOffered } = take();
    const after = recentCut();
    if (wasOffered) onCheck(null);
    const { speed, paused, loneKey } = judge(at, settings().msPerKey);
    if (speed === "person") {
      onIgnored(code);
      return;
    }
    if (code.length < shortest()) {
      if (after) onInterrupted({ head: after.head, tail: code });
      else onIgnored(code);
      return;
    }
    if (settings().terminator === "auto") learn(key);
    if (after && !code.startsWith(after.head)) {
      onCheck({ code, reason: "tail", head: after.head });
    } else if (speed === "slow" && paused) {
      onCheck({ code, reason: "slow" });
    } else if (loneKey) {
      onCheck({ code, reason: "paused" });
    } else {
      onScan(code);
    }
  }

  function isPersonTyping(target) {
    return target !== field && target instanceof Element && target.matches(TYPING_FIELDS);
  }

  function onKeyDown(event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return;
    if (isPersonTyping(event.target)) return;
    if (event.key === "Enter" || event.key === "Tab") {
      // Ends a burst; with nothing buffered it keeps its usual meaning (e.g. press a button).
      if (text) {
        event.preventDefault();
        terminated(event.key);
      }
      return;
    }
    // Space outside a burst keeps its meaning too (pressing a focused button).
    if (event.key.length !== 1 || (event.key === " " && !text)) return;
    event.preventDefault();
    add(event.key, event.timeStamp);
  }

  // Some Android keyboards (and scanners in "keystroke" mode) send key code 229 and deliver
  // the text as an input event instead, possibly the whole code at once.
  function onInput(event) {
    const characters = event.data ?? field.value;
    field.value = "";
    if (characters) add(characters, event.timeStamp);
  }

  document.addEventListener("keydown", onKeyDown, true);
  field.addEventListener("input", onInput);
  return {
    // A person saved or discarded the offer: its burst is over, whatever comes next is new.
    settle() {
      take();
      cut = null;
    },
    stop() {
      document.removeEventListener("keydown", onKeyDown, true);
      field.removeEventListener("input", onInput);
      take();
    },
  };
}

/** Keep the wedge field focused, unless a person is using another field. */
export function keepFocus(field) {
  const refocus = () => {
    const active = document.activeElement;
    if (active === field || (active instanceof Element && active.matches(TYPING_FIELDS))) return;
    if (document.visibilityState === "visible") field.focus({ preventScroll: true });
  };
  // After a tap on a button the focus stays on it, and a scanner's Enter would press it again.
  // (Clicks made with the keyboard have detail 0: a keyboard user keeps their place.)
  document.addEventListener("click", (event) => event.detail > 0 && setTimeout(refocus, 0));
  field.addEventListener("blur", () =>
    setTimeout(() => document.activeElement === document.body && refocus(), 0),
  );
  document.addEventListener("visibilitychange", refocus);
  window.addEventListener("focus", refocus);
  refocus();
  return refocus;
}
