// A device's inference logs as the hub stored them (GET /devices/{id}/logs), newest first.

import { getJson } from "../api.js";
import { clock, el, num, setText } from "../dom.js";
import { store } from "../store.js";
import { keyedTable } from "./table.js";

const LIMIT = 100;

function outputText(output) {
  if (output === null || output === undefined) return "–";
  if (typeof output === "object" && !Array.isArray(output)) {
    const top = output.label ?? output.class ?? output.top1;
    if (top !== undefined) return String(top);
  }
  const text = JSON.stringify(output);
  return text.length > 80 ? `${text.slice(0, 79)}…` : text;
}

const COLUMNS = [
  { label: "Time", text: (r) => clock(r.ts) },
  { label: "Request", text: (r) => r.request_id },
  { label: "Model", text: (r) => (r.model_version === null ? "–" : `v${r.model_version}`) },
  { label: "Role", text: (r) => r.role },
  { label: "Output", text: (r) => outputText(r.output) },
  { label: "ms", text: (r) => num(r.latency_ms, 1), num: true },
];

/** The logs of `deviceId` with a refresh button (and a device picker when `picker`). */
export function mountLogs(main, { deviceId = null, picker = true, heading = "Logs" } = {}) {
  const table = keyedTable(COLUMNS, (r) => `${r.epoch}:${r.seq}`, { id: "logs", empty: "No logs stored for this device." });
  const note = el("p", { class: "muted", role: "status" });
  const refresh = el("button", { type: "button" }, "Refresh");
  const select = el("select", { "aria-label": "device", id: "logs-device" });
  const tools = el("div", { class: "toolbar" });
  if (picker) tools.append(select);
  tools.append(refresh);
  main.append(el(picker ? "h1" : "h2", {}, heading), tools, note, table.node);
  let current = deviceId;
  let controller = null;

  function fillPicker() {
    if (!picker) return;
    const ids = [...store.devices.keys()].sort();
    if (select.options.length === ids.length) return;
    select.replaceChildren(...ids.map((id) => el("option", { value: id, selected: id === current }, id)));
    if (!current && ids.length) current = ids[0];
  }

  async function load() {
    if (!current) {
      setText(note, "No devices yet.");
      table.set([]);
      return;
    }
    controller?.abort();
    controller = new AbortController();
    setText(note, "Loading…");
    try {
      const rows = await getJson(`/devices/${encodeURIComponent(current)}/logs?limit=${LIMIT}`, { signal: controller.signal });
      table.set(rows);
      setText(note, rows.length ? `The newest ${rows.length} of ${current}'s logs.` : "");
    } catch (err) {
      if (err.name !== "AbortError") setText(note, `Could not load the logs: ${err.message}`);
    }
  }

  select.addEventListener("change", () => {
    current = select.value;
    history.replaceState(null, "", `#/logs/${encodeURIComponent(current)}`);
    load();
  });
  refresh.addEventListener("click", load);
  fillPicker();
  load();
  return {
    update(change) {
      if (change.all) fillPicker();
    },
    destroy() {
      controller?.abort();
    },
  };
}
