// Small canvas charts, drawn by hand: a sparkline for the wall, line charts for system health.
// A canvas is sized to its CSS box at the screen's pixel density on every draw, so it stays
// sharp on a 4K TV and after the window is resized.

function fit(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
  const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  const context = canvas.getContext("2d");
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.clearRect(0, 0, canvas.clientWidth, canvas.clientHeight);
  return { context, width: canvas.clientWidth, height: canvas.clientHeight };
}

function cssColor(canvas, name, fallback) {
  return getComputedStyle(canvas).getPropertyValue(name).trim() || fallback;
}

// values: numbers, oldest first; the last one (the minute under way) is drawn as a dot.
export function sparkline(canvas, values) {
  if (!canvas.clientWidth) return;
  const { context, width, height } = fit(canvas);
  const top = Math.max(1, ...values);
  const inset = 4; // room for the end dot
  const step = (width - inset) / Math.max(1, values.length - 1);
  const y = (value) => height - inset - (value / top) * (height - 2 * inset);
  const line = cssColor(canvas, "--spark-line", "#4fd1ff");
  context.beginPath();
  values.forEach((value, i) => (i ? context.lineTo(i * step, y(value)) : context.moveTo(0, y(value))));
  context.lineTo(width, height);
  context.lineTo(0, height);
  context.closePath();
  context.fillStyle = cssColor(canvas, "--spark-fill", "rgba(79, 209, 255, .18)");
  context.fill();
  context.beginPath();
  values.forEach((value, i) => (i ? context.lineTo(i * step, y(value)) : context.moveTo(0, y(value))));
  context.strokeStyle = line;
  context.lineWidth = 2;
  context.stroke();
  const last = values.length - 1;
  context.beginPath();
  context.arc(last * step, y(values[last] ?? 0), 3, 0, 2 * Math.PI);
  context.fillStyle = line;
  context.fill();
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 2.5, 5, 10].map((m) => m * power).find((m) => m >= value);
}

function clock(seconds) {
  const at = new Date(seconds * 1000);
  return `${String(at.getHours()).padStart(2, "0")}:${String(at.getMinutes()).padStart(2, "0")}`;
}

// A line chart of one or more series over time.
//   lines: [{ values: [...], color: "#..." }], times: epoch seconds (same length as values)
//   options: { max, unit, thresholds: [{ value, color }] }
export function lineChart(canvas, times, lines, { max = null, unit = "", thresholds = [] } = {}) {
  if (!canvas.clientWidth) return;
  const { context, width, height } = fit(canvas);
  const left = 44;
  const bottom = 18;
  const plotWidth = width - left - 6;
  const plotHeight = height - bottom - 6;
  const seen = lines.flatMap((line) => line.values.filter((v) => v !== null && Number.isFinite(v)));
  const top = max ?? niceMax(Math.max(0, ...seen, ...thresholds.map((t) => t.value * 0.5)));
  const text = cssColor(canvas, "--chart-text", "#555");
  const grid = cssColor(canvas, "--chart-grid", "#dde1e6");
  context.font = "11px system-ui, sans-serif";
  context.fillStyle = text;
  context.strokeStyle = grid;
  context.lineWidth = 1;
  for (let i = 0; i <= 4; i += 1) {
    const y = 6 + plotHeight - (i / 4) * plotHeight;
    context.beginPath();
    context.moveTo(left, y);
    context.lineTo(left + plotWidth, y);
    context.stroke();
    const label = (top * i) / 4;
    context.fillText(`${Number(label.toPrecision(3))}${unit}`, 2, y + 4);
  }
  const first = times[0];
  const last = times[times.length - 1];
  if (times.length > 1) {
    context.fillText(clock(first), left, height - 4);
    const end = clock(last);
    context.fillText(end, left + plotWidth - context.measureText(end).width, height - 4);
  }
  const x = (t) => left + (last > first ? ((t - first) / (last - first)) * plotWidth : plotWidth);
  const y = (v) => 6 + plotHeight - (Math.min(v, top) / top) * plotHeight;
  for (const threshold of thresholds) {
    if (threshold.value > top) continue;
    context.setLineDash([4, 4]);
    context.strokeStyle = threshold.color;
    context.beginPath();
    context.moveTo(left, y(threshold.value));
    context.lineTo(left + plotWidth, y(threshold.value));
    context.stroke();
    context.setLineDash([]);
  }
  for (const line of lines) {
    context.strokeStyle = line.color;
    context.lineWidth = 1.8;
    context.beginPath();
    let drawing = false;
    line.values.forEach((value, i) => {
      if (value === null || !Number.isFinite(value)) {
        drawing = false; // a gap: nothing was measured then
        return;
      }
      if (drawing) context.lineTo(x(times[i]), y(value));
      else context.moveTo(x(times[i]), y(value));
      drawing = true;
    });
    context.stroke();
  }
}
