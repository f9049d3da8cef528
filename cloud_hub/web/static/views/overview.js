// The fleet overview: counts on top, then a table of devices (cards on a phone). Only the rows
// on screen exist (a page of PAGE devices, filtered); a change updates only the cells whose
// text changed.

import { DASH, clear, clock, el, num, pct, setText, stats } from "../dom.js";
import { store } from "../store.js";

const PAGE = 200;

const COLUMNS = [
  { key: "status", label: "Status", text: (d) => d.status },
  { key: "device", label: "Device", text: (d) => d.id },
  { key: "model", label: "Model", text: model },
  { key: "last_seen", label: "Last seen", text: (d) => clock(d.last_seen) },
  { key: "cpu", label: "CPU", text: (d) => pct(d.cpu), num: true },
  { key: "memory", label: "Mem", text: (d) => pct(d.memory), num: true },
  { key: "temperature", label: "Temp", text: (d) => temp(d.temperature), num: true },
  { key: "inferences_per_s", label: "Infer/s", text: (d) => num(d.inferences_per_s, 1), num: true },
  { key: "latency_p50", label: "p50 ms", text: (d) => num(d.latency_p50, 1), num: true },
  { key: "latency_p99", label: "p99 ms", text: (d) => num(d.latency_p99, 1), num: true },
  { key: "outbox_backlog", label: "Backlog", text: (d) => num(d.outbox_backlog), num: true },
  { key: "open_alerts", label: "Alerts", text: (d) => (d.open_alerts ? String(d.open_alerts) : DASH), num: true },
];

function model(d) {
  if (!d.active_model) return DASH;
  const art = d.artifact ? ` ${d.artifact}` : "";
  return d.shadow ? `${d.active_model}${art} (shadow ${d.shadow})` : `${d.active_model}${art}`;
}

function temp(value) {
  return value === null || value === undefined ? DASH : `${num(value, 0)}°C`;
}

function matches(d, text, status) {
  if (status && d.status !== status) return false;
  if (!text) return true;
  const hay = `${d.id} ${d.name || ""} ${d.active_model || ""} ${d.group || ""} ${(d.tags || []).join(" ")}`;
  return hay.toLowerCase().includes(text);
}

export function mountOverview(main) {
  const countNodes = {};
  const counts = el("section", { class: "counts", "aria-label": "fleet counts" });
  for (const [key, label] of [
    ["total", "devices"],
    ["online", "online"],
    ["offline", "offline"],
    ["unknown", "unknown"],
    ["alerts", "open alerts"],
    ["live", "rollouts"],
  ]) {
    countNodes[key] = el("span", { class: "count-value" }, "0");
    counts.append(el("a", { class: `count count-${key}`, href: hrefFor(key), dataset: { count: key } }, countNodes[key], el("span", { class: "count-label" }, label)));
  }

  const search = el("input", { type: "search", placeholder: "Filter: id, name, model, tag", "aria-label": "filter devices", id: "filter" });
  const statusSel = el(
    "select",
    { "aria-label": "status", id: "status-filter" },
    el("option", { value: "" }, "any status"),
    el("option", { value: "online" }, "online"),
    el("option", { value: "offline" }, "offline"),
    el("option", { value: "unknown" }, "unknown"),
  );
  const pager = el("span", { class: "pager" });
  const prev = el("button", { type: "button", class: "link" }, "‹ prev");
  const next = el("button", { type: "button", class: "link" }, "next ›");
  const shown = el("span", { class: "muted" });
  pager.append(prev, shown, next);

  const thead = el("thead", {}, el("tr", {}, COLUMNS.map((c) => el("th", { class: c.num ? "num" : null, scope: "col" }, c.label))));
  const tbody = el("tbody");
  const table = el("table", { class: "devices cards", id: "devices" }, thead, tbody);
  const empty = el("p", { class: "muted", hidden: true }, "No devices match.");
  main.append(
    el("h1", {}, "Fleet"),
    counts,
    el("div", { class: "toolbar" }, search, statusSel, pager),
    table,
    empty,
  );

  let page = 0;
  let visible = new Map(); // id -> {tr, cells, values}
  let ids = [];

  function rowFor(d) {
    const cells = COLUMNS.map((c) => el("td", { class: c.num ? "num" : null, dataset: { label: c.label, col: c.key } }));
    const link = el("a", { href: `#/device/${encodeURIComponent(d.id)}` });
    const name = el("span", { class: "sub" });
    cells[1].append(link, name);
    const dot = el("span", { class: "dot", "aria-hidden": "true" });
    const status = el("span", { class: "status-text" });
    cells[0].append(dot, status);
    const tr = el("tr", { dataset: { id: d.id } }, cells);
    const row = { tr, cells, values: new Array(COLUMNS.length).fill(null), link, name, status, statusValue: null };
    paintRow(row, d);
    return row;
  }

  function paintRow(row, d) {
    for (let i = 0; i < COLUMNS.length; i++) {
      const text = COLUMNS[i].text(d);
      if (row.values[i] === text) continue;
      row.values[i] = text;
      stats.cells += 1;
      if (i === 0) {
        row.status.textContent = text;
        row.tr.dataset.status = d.status;
        if (row.statusValue !== null && row.statusValue !== d.status) {
          stats.statusPainted[d.id] = { status: d.status, at: Date.now(), since: d.status_since };
        }
        row.statusValue = d.status;
      } else if (i === 1) {
        row.link.textContent = d.id;
        row.name.textContent = d.name && d.name !== d.id ? d.name : "";
      } else {
        row.cells[i].textContent = text;
      }
    }
    row.tr.classList.toggle("has-alerts", d.open_alerts > 0);
  }

  function filtered() {
    const text = search.value.trim().toLowerCase();
    const status = statusSel.value;
    const all = [...store.devices.values()].filter((d) => matches(d, text, status));
    all.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    return all;
  }

  function rebuild() {
    const list = filtered();
    const pages = Math.max(1, Math.ceil(list.length / PAGE));
    page = Math.min(page, pages - 1);
    const slice = list.slice(page * PAGE, page * PAGE + PAGE);
    const rows = new Map();
    const frag = document.createDocumentFragment();
    for (const d of slice) {
      const row = visible.get(d.id) || rowFor(d);
      if (visible.has(d.id)) paintRow(row, d);
      rows.set(d.id, row);
      frag.append(row.tr);
    }
    clear(tbody);
    tbody.append(frag);
    visible = rows;
    ids = slice.map((d) => d.id);
    empty.hidden = list.length > 0;
    setText(shown, list.length > PAGE ? ` ${page * PAGE + 1}–${page * PAGE + slice.length} of ${list.length} ` : ` ${list.length} `);
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
    pager.hidden = list.length <= PAGE;
  }

  function paintCounts() {
    const c = store.counts();
    for (const [key, node] of Object.entries(countNodes)) setText(node, String(c[key] ?? 0));
  }

  const filterChanged = () => {
    page = 0;
    rebuild();
  };
  search.addEventListener("input", filterChanged);
  statusSel.addEventListener("change", filterChanged);
  prev.addEventListener("click", () => {
    page = Math.max(0, page - 1);
    rebuild();
  });
  next.addEventListener("click", () => {
    page += 1;
    rebuild();
  });

  rebuild();
  paintCounts();

  return {
    update(change) {
      if (change.all) {
        rebuild();
        paintCounts();
        return;
      }
      let membership = false;
      const status = statusSel.value;
      for (const id of change.devices) {
        const d = store.devices.get(id);
        const row = visible.get(id);
        if (!d) continue;
        if (status && (d.status === status) !== Boolean(row)) membership = true;
        if (row) paintRow(row, d);
      }
      if (membership) rebuild();
      if (change.devices.size || change.alerts || change.deployments.size) paintCounts();
    },
    visibleIds: () => ids,
  };
}

function hrefFor(key) {
  if (key === "alerts") return "#/alerts";
  if (key === "live") return "#/deployments";
  return "#/";
}
