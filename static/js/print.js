// The print view's button (no inline scripts: the CSP forbids them).
document.querySelector("[data-print]")?.addEventListener("click", () => window.print());
