// Warns two minutes before the session ends, and lets the person keep it alive.
const WARN_BEFORE_S = 120;
const body = document.body;
const banner = document.getElementById("session-warning");

function csrfToken() {
  return document.querySelector('meta[name="csrf-token"]')?.content ?? "";
}

function secondsLeft() {
  return Number(body.dataset.sessionDeadline) - Date.now() / 1000;
}

function tick() {
  if (!body.dataset.sessionDeadline || !banner) return;
  const left = secondsLeft();
  if (left <= 0) {
    window.location.assign(`/login?next=${encodeURIComponent(location.pathname)}`);
    return;
  }
  banner.hidden = left > WARN_BEFORE_S;
  const m = Math.floor(left / 60);
  const s = String(Math.floor(left % 60)).padStart(2, "0");
  banner.querySelector("[data-countdown]").textContent = `${m}:${s}`;
}

banner?.querySelector("[data-keep-alive]")?.addEventListener("click", async () => {
  const response = await fetch("/api/v1/session", {
    method: "POST",
    headers: { "X-CSRF-Token": csrfToken(), Accept: "application/json" },
  });
  if (response.ok) {
    body.dataset.sessionDeadline = String((await response.json()).deadline);
    tick();
  }
});

setInterval(tick, 1000);
tick();
