// What a scan sounds and feels like: one distinct beep pattern and vibration per outcome, so a
// person can keep their eyes on the bags. Browsers play audio only after a tap or key press on
// the page, so the first one unlocks it (a wedge scanner's keys count as key presses).

// [frequency Hz, duration s, wave] per beep; beeps are separated by a short gap.
const BEEPS = {
  ok: [[1320, 0.1, "sine"]],
  duplicate: [[700, 0.09, "triangle"], [700, 0.09, "triangle"]],
  rejected: [[180, 0.5, "square"]],
  pending: [[520, 0.05, "sine"]],
  // The 30th child: a rising three-note tune, "this bag is full, take the next one".
  complete: [[880, 0.1, "sine"], [1175, 0.1, "sine"], [1568, 0.2, "sine"]],
  // Another parent while one was half full: two notes down and up, "mind the switch".
  switch: [[988, 0.08, "sine"], [659, 0.08, "sine"], [988, 0.14, "sine"]],
  // A child taken out again: a falling pair.
  undo: [[784, 0.09, "triangle"], [523, 0.16, "triangle"]],
  // A code offered for a person to check (no Enter, too slow, cut): a rising "question".
  check: [[523, 0.12, "triangle"], [784, 0.2, "triangle"]],
  // A scanner stopped in the middle of a code: a low warble, then scan again.
  interrupted: [
    [330, 0.1, "square"],
    [220, 0.1, "square"],
    [330, 0.1, "square"],
    [220, 0.2, "square"],
  ],
};
const GAP_S = 0.07;
const VOLUME = {
  ok: 0.35,
  duplicate: 0.4,
  rejected: 0.28,
  pending: 0.2,
  complete: 0.35,
  switch: 0.4,
  undo: 0.35,
  check: 0.4,
  interrupted: 0.25,
};
// navigator.vibrate is missing on iOS, where this is simply silent.
const VIBRATION = {
  ok: [40],
  duplicate: [70, 90, 70],
  rejected: [300, 120, 300],
  pending: [15],
  complete: [60, 60, 60, 60, 200],
  switch: [40, 60, 40, 60, 120],
  undo: [120],
  check: [60, 80, 200],
  interrupted: [100, 60, 100, 60, 300],
};

let audio = null;

export function soundIsOn() {
  return audio !== null && audio.state === "running";
}

/** Start audio (call it from a tap or key press); resolves once it is running, or not. */
export async function unlockSound() {
  const Context = window.AudioContext ?? window.webkitAudioContext;
  if (!Context) return;
  audio ??= new Context();
  if (audio.state === "suspended") await audio.resume().catch(() => {});
}

function beep(start, [frequency, seconds, wave], volume) {
  const oscillator = audio.createOscillator();
  const gain = audio.createGain();
  oscillator.type = wave;
  oscillator.frequency.value = frequency;
  // A quick ramp in and out: a hard start or stop clicks.
  gain.gain.setValueAtTime(0.0001, start);
  gain.gain.exponentialRampToValueAtTime(volume, start + 0.01);
  gain.gain.exponentialRampToValueAtTime(0.0001, start + seconds);
  oscillator.connect(gain).connect(audio.destination);
  oscillator.start(start);
  oscillator.stop(start + seconds + 0.02);
  return start + seconds + GAP_S;
}

/** Play the outcome's sound and vibration; `element.dataset.lastSound` records which. */
export function signal(outcome, element = document.body) {
  const beeps = BEEPS[outcome];
  if (!beeps) return;
  element.dataset.lastSound = outcome;
  element.dataset.soundCount = String(Number(element.dataset.soundCount ?? 0) + 1);
  if (soundIsOn()) {
    let at = audio.currentTime + 0.01;
    for (const b of beeps) at = beep(at, b, VOLUME[outcome]);
  }
  navigator.vibrate?.(VIBRATION[outcome]);
}
