// Keyboard-wedge scanners "type" a code, usually followed by Enter. Their keys are caught from
// anywhere on the page (except fields where a person types) and told apart from a person by
// speed: scanners type ~7-8 ms per key, people over 100 ms (the way Odoo's barcode reader does).
//
// A burst ends with Enter or Tab, or after `silenceMs` without a key. It is a scan when it has
// at least `minChars` characters typed at no more than `msPerKey` on average; anything else
// was a person pressing keys, and is dropped.
//
// A hidden `inputmode="none"` field holds the focus: handheld Android scanners deliver their
// keys to the focused field, and `inputmode="none"` keeps the soft keyboard from popping up.

const TYPING_FIELDS = "input, textarea, select, [contenteditable]";

export function listenForWedge({ field, onScan, onIgnored = () => {}, settings }) {
  let text = "";
  let times = [];
  let timer = null;

  function end() {
    clearTimeout(timer);
    timer = null;
    const code = text;
    const span = times.length > 1 ? times.at(-1) - times[0] : 0;
    const count = times.length;
    text = "";
    times = [];
    if (!code) return false;
    const { msPerKey, minChars } = settings();
    if (code.length >= minChars && span / Math.max(count - 1, 1) <= msPerKey) {
      onScan(code);
      return true;
    }
    onIgnored(code);
    return false;
  }

  function add(characters, at) {
    const { silenceMs } = settings();
    if (times.length && at - times.at(-1) > silenceMs) end();
    text += characters;
    for (let i = 0; i < characters.length; i += 1) times.push(at);
    clearTimeout(timer);
    timer = setTimeout(end, silenceMs);
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
        end();
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
  return () => {
    document.removeEventListener("keydown", onKeyDown, true);
    field.removeEventListener("input", onInput);
    clearTimeout(timer);
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
