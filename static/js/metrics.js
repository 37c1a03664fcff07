// Admin system health (templates/monitoring/system_health.html): the last hour from
// /system_health/history, then one merged view of every worker per second from
// /ws?view=metrics. Charts keep at most an hour of points (flat memory).

import { connectLive } from "/static/js/live.js";
import { lineChart } from "/static/js/charts.js";

const HOUR_POINTS = 3600;
const root = document.querySelector("[data-health]");
const numberFormat = new Intl.NumberFormat();

// The same series, in the same order of meaning, as the server's monitor.SERIES.
const SERIES = {
  events_per_s: (v) => v.events_per_s,
  scans_per_s: (v) => v.scans_per_s,
  ack_p50: (v) => v.ack_ms.p50,
  ack_p95: (v) => v.ack_ms.p95,
  ack_p99: (v) => v.ack_ms.p99,
  fanout_p99: (v) => v.fanout_ms.p99,
  pool_usage_pct: (v) => v.pool.busiest_worker_pct,
  pool_checked_out: (v) => v.pool.checked_out,
  clients: (v) => v.clients_total,
  error_rate_pct: (v) => v.errors.error_rate_pct,
  memory_mb: (v) => Math.round((v.memory_bytes / 2 ** 20) * 10) / 10,
  cpu_pct: (v) => v.cpu_pct,
};

const COLORS = { a: "#0b5cad", b: "#0a7d32", c: "#b3261e" };
const WARN = [
  { value: 70, color: "#a35f00" },
  { value: 85, color: "#d9480f" },
  { value: 95, color: "#b3261e" },
];
const CHARTS = {
  traffic: () => [line("events_per_s", COLORS.a), line("scans_per_s", COLORS.b)],
  ack: () => [line("ack_p50", COLORS.b), line("ack_p95", COLORS.a), line("ack_p99", COLORS.c)],
  fanout: () => [line("fanout_p99", COLORS.a)],
  pool: () => [line("pool_usage_pct", COLORS.a)],
  clients: () => [line("clients", COLORS.a)],
  errors: () => [line("error_rate_pct", COLORS.c)],
  memory: () => [line("memory_mb", COLORS.a)],
  cpu: () => [line("cpu_pct", COLORS.a)],
};
const OPTIONS = { pool: { max: 100, thresholds: WARN }, errors: { unit: "%" }, cpu: { unit: "%" } };

const history = { t: [], series: Object.fromEntries(Object.keys(SERIES).map((k) => [k, []])) };
let dirty = true;

function line(name, color) {
  return { values: history.series[name], color };
}

function append(at, view) {
  history.t.push(at);
  for (const [name, read] of Object.entries(SERIES)) history.series[name].push(read(view) ?? null);
  if (history.t.length > HOUR_POINTS) {
    const extra = history.t.length - HOUR_POINTS;
    history.t.splice(0, extra);
    for (const values of Object.values(history.series)) values.splice(0, extra);
  }
  dirty = true;
}

function draw() {
  if (!dirty || document.hidden) return;
  dirty = false;
  for (const [name, lines] of Object.entries(CHARTS)) {
    lineChart(root.querySelector(`[data-chart="${name}"]`), history.t, lines(), OPTIONS[name]);
  }
}

// Figures ----------------------------------------------------------------------------------

function set(name, value) {
  const element = root.querySelector(`[data-value="${name}"]`);
  if (element && element.textContent !== value) element.textContent = value;
}

function ms(value) {
  return value === null || value === undefined ? "–" : `${value < 10 ? value.toFixed(1) : Math.round(value)} ms`;
}

function bytes(value) {
  if (value === null || value === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (value >= 1024 && i < units.length - 1) {
    value /= 1024;
    i += 1;
  }
  return `${value.toFixed(i ? 1 : 0)} ${units[i]}`;
}

const LEVELS = {
  ok: "",
  warning: "Over 70 % of the pool in use on the busiest worker.",
  high: "Over 85 % of the pool in use: scans may soon wait for a connection.",
  critical: "Over 95 % of the pool in use: scans are waiting for connections.",
};

function show(view) {
  set("workers", String(view.workers.length));
  set("at", new Date(view.at).toLocaleTimeString());
  const pool = view.pool;
  set("pool.usage", `${pool.busiest_worker_pct} %`);
  set("pool.checked_out", String(pool.checked_out));
  set("pool.capacity", String(pool.capacity));
  set("pool.size", String(pool.size));
  set("pool.overflow", String(pool.overflow));
  set("pool.level", LEVELS[pool.level] ?? "");
  root.querySelector("[data-pool-level]").dataset.poolLevel = pool.level;
  root.querySelector("[data-pool-fill]").style.width = `${Math.min(100, pool.busiest_worker_pct)}%`;
  const db = view.database;
  set("db.size", db ? bytes(db.size_bytes) : "–");
  set("db.cache", db?.cache_hit_pct != null ? `${db.cache_hit_pct} %` : "–");
  set("db.connections", db ? String(db.connections) : "–");
  set("events_per_s", numberFormat.format(view.events_per_s));
  set("scans_per_s", numberFormat.format(view.scans_per_s));
  set("scans_last_minute", numberFormat.format(view.scans_last_minute));
  for (const q of ["p50", "p95", "p99"]) {
    set(`ack.${q}`, ms(view.ack_ms[q]));
    set(`fanout.${q}`, ms(view.fanout_ms[q]));
  }
  set("clients_total", numberFormat.format(view.clients_total));
  const roles = Object.entries(view.clients).filter(([, n]) => n > 0);
  set("clients.by_role", roles.length ? roles.map(([role, n]) => `${role} ${n}`).join(" · ") : "none");
  const bus = view.bus;
  set("bus.state", bus.up ? "Up" : "Down");
  root.querySelector("[data-bus-up]").dataset.busUp = String(bus.up);
  set("bus.kind", bus.kind === "redis" ? "Redis" : "in-process");
  set("bus.reconnects", String(bus.reconnects));
  set("bus.leader", bus.leader ?? (bus.kind === "redis" ? "none" : "this worker"));
  const errors = view.errors;
  set("errors.rate", `${errors.error_rate_pct} %`);
  set("errors.server", String(errors.server_errors_last_minute));
  set("errors.logged", String(errors.logged_last_minute));
  root.querySelector("[data-errors]").dataset.errors =
    errors.server_errors_last_minute || errors.logged_last_minute ? "some" : "none";
  set("memory", bytes(view.memory_bytes));
  set("cpu", `${view.cpu_pct} %`);
  showWorkers(view.workers);
  showSlowQueries(view.slow_queries);
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const content of cells) {
    const td = document.createElement("td");
    td.textContent = content;
    tr.append(td);
  }
  return tr;
}

function showWorkers(workers) {
  root.querySelector("[data-workers]").replaceChildren(
    ...workers.map((w) =>
      row([
        `${w.worker}${w.leader ? " (relay)" : ""}`,
        Object.entries(w.clients).map(([role, n]) => `${role} ${n}`).join(" · ") || "0",
        `${w.pool.checked_out}/${w.pool.capacity} (${w.pool.usage_pct} %)`,
        bytes(w.memory_bytes),
        `${w.cpu_pct} %`,
        String(w.position),
        w.bus_up ? "up" : "down",
      ]),
    ),
  );
}

function showSlowQueries(slow) {
  const body = root.querySelector("[data-slow-queries]");
  if (!slow.length) {
    body.replaceChildren(row(["None so far.", "", "", "", "", ""]));
    return;
  }
  body.replaceChildren(
    ...slow.map((s) => {
      const tr = row([
        s.shape,
        numberFormat.format(s.count),
        ms(s.total_ms / s.count),
        ms(s.max_ms),
        ms(s.last_ms),
        new Date(s.last_at * 1000).toLocaleTimeString(),
      ]);
      tr.firstElementChild.className = "shape";
      return tr;
    }),
  );
}

// Start ------------------------------------------------------------------------------------

async function loadHistory() {
  const response = await fetch("/system_health/history", { headers: { Accept: "application/json" } });
  if (!response.ok) return;
  const { history: past, latest } = await response.json();
  // Live points may have come in meanwhile: put the past before them.
  const firstLive = history.t[0] ?? Infinity;
  const older = past.t.findIndex((t) => t >= firstLive);
  const count = older === -1 ? past.t.length : older;
  const overflow = Math.max(0, count + history.t.length - HOUR_POINTS);
  history.t.unshift(...past.t.slice(overflow, count));
  for (const name of Object.keys(SERIES)) {
    history.series[name].unshift(...(past.series[name] ?? []).slice(overflow, count));
  }
  if (latest?.pool && history.t.length === count - overflow) show(latest);
  dirty = true;
  draw();
}

function setStatus(status) {
  const box = root.querySelector(".health-status");
  box.dataset.status = status;
  box.textContent = { live: "Live", reconnecting: "Reconnecting…", resynced: "Live" }[status] ?? "Connecting…";
}

connectLive({
  view: "metrics",
  onMetrics(frame) {
    if (!frame.system?.pool) return;
    // Each worker sends its merged view every second: draw each moment once.
    if (frame.system.t > (history.t[history.t.length - 1] ?? 0)) append(frame.system.t, frame.system);
    show(frame.system);
  },
  onStatus: setStatus,
});
loadHistory();
setInterval(draw, 1_000);
window.addEventListener("resize", () => ((dirty = true), draw()));
