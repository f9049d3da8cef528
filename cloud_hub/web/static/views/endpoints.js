// Endpoints served by the hub, with their request counts, errors and latency.

import { el, num } from "../dom.js";
import { store } from "../store.js";
import { keyedTable } from "./table.js";

const COLUMNS = [
  { label: "Endpoint", text: (e) => e.name },
  { label: "Requests", text: (e) => String(e.requests), num: true },
  { label: "Errors", text: (e) => String(e.errors), num: true },
  { label: "Error rate", text: (e) => (e.requests ? `${num((100 * e.errors) / e.requests, 1)}%` : "–"), num: true },
  { label: "Rows", text: (e) => String(e.rows), num: true },
  { label: "p50 ms", text: (e) => num(e.p50_ms, 1), num: true },
  { label: "p99 ms", text: (e) => num(e.p99_ms, 1), num: true },
];

export function mountEndpoints(main) {
  const table = keyedTable(COLUMNS, (e) => e.name, {
    id: "endpoints",
    empty: "No endpoints.",
    rowClass: (e) => (e.errors > 0 ? "has-errors" : ""),
  });
  main.append(el("h1", {}, "Endpoints"), table.node);
  const render = () =>
    table.set([...store.endpoints.values()].sort((a, b) => a.name.localeCompare(b.name)));
  render();
  return {
    update(change) {
      if (change.all || change.endpoints.size) render();
    },
  };
}
