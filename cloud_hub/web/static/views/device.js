// One device: what it runs and its state, time-series charts of its telemetry (the last hour
// from GET /devices/{id}/metrics, then extended live by the stream's telemetry events), its
// open alerts and its logs.

import { getJson } from "../api.js";
import { DASH, clock, el, num, pct, setText, stats } from "../dom.js";
import { store } from "../store.js";
import { mountAlerts } from "./alerts.js";
import { mountLogs } from "./logs.js";

const WINDOW_S = 3600;
const HEIGHT = 170;

// history metric (GET .../metrics?metric=) and the telemetry event's field of the same value
const CHARTS = [
  { id: "cpu", title: "CPU (%)", series: [{ metric: "cpu", field: "cpu", label: "CPU %", color: "#2b7bd6" }] },
  { id: "memory", title: "Memory (%)", series: [{ metric: "memory", field: "memory", label: "memory %", color: "#8a56c9" }] },
  {
    id: "latency",
    title: "Inference latency (ms)",
    series: [
      { metric: "latency_p50", field: "latency_p50", label: "p50", color: "#1b9e77" },
      { metric: "latency_p99", field: "latency_p99", label: "p99", color: "#d95f02" },
    ],
  },
  { id: "temperature", title: "Temperature (°C)", series: [{ metric: "temperature", field: "temperature", label: "°C", color: "#c0392b" }] },
  { id: "outbox_backlog", title: "Outbox backlog (records)", series: [{ metric: "outbox_backlog", field: "outbox_backlog", label: "backlog", color: "#7f8c8d" }] },
];

const FIELDS = [
  ["Status", (d) => d.status],
  ["Since", (d) => clock(d.status_since)],
  ["Last seen", (d) => clock(d.last_seen)],
  ["Model", (d) => d.active_model || DASH],
  ["Artifact", (d) => d.artifact || DASH],
  ["Shadow", (d) => d.shadow || DASH],
  ["Agent", (d) => d.agent_version || DASH],
  ["Hardware", (d) => d.hardware || DASH],
  ["Group", (d) => d.group || DASH],
  ["Tags", (d) => (d.tags && d.tags.length ? d.tags.join(", ") : DASH)],
  ["CPU", (d) => pct(d.cpu)],
  ["Memory", (d) => (d.memory_rss === null || d.memory_rss === undefined ? pct(d.memory) : `${pct(d.memory)} (${num(d.memory_rss, 0)} MB)`)],
  ["Inferences/s", (d) => num(d.inferences_per_s, 1)],
  ["Latency p50 / p99", (d) => `${num(d.latency_p50, 1)} / ${num(d.latency_p99, 1)} ms`],
  ["Outbox", (d) => `${num(d.outbox_backlog)} pending, ${num(d.outbox_drops)} dropped`],
];

/** Merge per-metric point lists into uPlot's aligned data: [xs, ys1, ys2, ...]. */
function align(lists) {
  const xs = [...new Set(lists.flatMap((points) => points.map((p) => p.ts)))].sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const ys = lists.map((points) => {
    const col = new Array(xs.length).fill(null);
    for (const p of points) col[index.get(p.ts)] = p.value;
    return col;
  });
  return [xs, ...ys];
}

function chartFor(spec, host) {
  const uPlot = window.uPlot;
  const empty = el("p", { class: "muted chart-empty" }, "No data yet.");
  const plot = el("div", { class: "plot" });
  const box = el("figure", { class: "chart card", dataset: { chart: spec.id } }, el("figcaption", {}, spec.title), plot, empty);
  host.append(box);
  const data = [[], ...spec.series.map(() => [])];
  const opts = {
    width: Math.max(200, plot.clientWidth || host.clientWidth || 320),
    height: HEIGHT,
    series: [{}, ...spec.series.map((s) => ({ label: s.label, stroke: s.color, width: 1.5, spanGaps: true }))],
    scales: { x: { time: true } },
    axes: [{}, { size: 50 }],
    legend: { show: spec.series.length > 1 },
  };
  const u = uPlot ? new uPlot(opts, data, plot) : null;
  const chart = { spec, u, data, box, empty, dirty: false };
  const observer = new ResizeObserver(() => {
    const width = plot.clientWidth;
    if (u && width > 0 && Math.abs(width - u.width) > 2) u.setSize({ width, height: HEIGHT });
  });
  observer.observe(plot);
  chart.observer = observer;
  return chart;
}

function paintChart(chart) {
  const points = chart.data[0].length;
  stats.charts[chart.spec.id] = points;
  chart.box.dataset.points = String(points);
  chart.empty.hidden = points > 0;
  chart.u?.setData(chart.data);
  chart.dirty = false;
}

export function mountDevice(main, { id }) {
  const title = el("h1", {}, id);
  const statusBadge = el("span", { class: "badge status-badge" });
  const notice = el("p", { class: "muted", role: "status" });
  const dl = el("dl", { class: "facts", id: "device-facts" });
  const values = FIELDS.map(([label]) => {
    const dd = el("dd", { dataset: { label } });
    dl.append(el("div", {}, el("dt", {}, label), dd));
    return dd;
  });
  const charts = el("section", { class: "charts", id: "charts", "aria-label": "telemetry charts" });
  const extra = el("section", { class: "device-extra" });
  main.append(el("p", {}, el("a", { href: "#/" }, "‹ Fleet")), el("div", { class: "device-head" }, title, statusBadge), notice, dl, el("h2", {}, "Telemetry, last hour"), charts, extra);

  const alerts = mountAlerts(extra, { subject: id, heading: "Open alerts" });
  const logs = mountLogs(extra, { deviceId: id, picker: false, heading: "Logs" });
  const built = CHARTS.map((spec) => chartFor(spec, charts));
  let controller = new AbortController();

  function paintFacts() {
    const d = store.devices.get(id);
    if (!d) {
      setText(notice, store.loaded ? "This device is not in the fleet." : "");
      return;
    }
    setText(notice, "");
    if (d.name && d.name !== d.id) setText(title, `${d.name} (${d.id})`);
    setText(statusBadge, d.status);
    statusBadge.dataset.status = d.status;
    FIELDS.forEach(([, text], i) => setText(values[i], text(d)));
  }

  async function loadHistory() {
    const base = `/devices/${encodeURIComponent(id)}/metrics?since=1h&metric=`;
    await Promise.all(
      built.map(async (chart) => {
        try {
          const lists = await Promise.all(
            chart.spec.series.map((s) => getJson(base + s.metric, { signal: controller.signal }).then((r) => r.points)),
          );
          const live = chart.data;
          const merged = align(lists);
          // keep live points newer than the history (they arrived while it loaded)
          const last = merged[0].length ? merged[0][merged[0].length - 1] : -Infinity;
          for (let i = 0; i < live[0].length; i++) {
            if (live[0][i] > last) merged.forEach((col, j) => col.push(live[j][i]));
          }
          chart.data = merged;
          paintChart(chart);
        } catch (err) {
          if (err.name !== "AbortError") setText(chart.empty, `Could not load: ${err.message}`);
        }
      }),
    );
  }

  function addTelemetry(t) {
    const ts = t.telemetry_ts;
    if (typeof ts !== "number") return;
    for (const chart of built) {
      const xs = chart.data[0];
      if (xs.length && ts <= xs[xs.length - 1]) continue;
      const ys = chart.spec.series.map((s) => (typeof t[s.field] === "number" ? t[s.field] : null));
      if (ys.every((v) => v === null)) continue;
      xs.push(ts);
      ys.forEach((v, j) => chart.data[j + 1].push(v));
      let drop = 0;
      while (drop < xs.length && xs[drop] < ts - WINDOW_S) drop += 1;
      if (drop) chart.data.forEach((col) => col.splice(0, drop));
      chart.dirty = true;
    }
  }

  paintFacts();
  loadHistory();
  return {
    update(change) {
      if (change.all) {
        paintFacts();
        alerts.update(change);
        logs.update(change);
        return;
      }
      if (change.devices.has(id)) paintFacts();
      for (const t of change.telemetry) if (t.id === id) addTelemetry(t);
      for (const chart of built) if (chart.dirty) paintChart(chart);
      alerts.update(change);
    },
    destroy() {
      controller.abort();
      controller = null;
      logs.destroy();
      for (const chart of built) {
        chart.observer.disconnect();
        chart.u?.destroy();
      }
    },
  };
}
