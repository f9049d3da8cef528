// A keyed table (cards on a phone): rows are kept by key, and only the cells whose text
// changed are written.

import { clear, el, setText } from "../dom.js";

/**
 * columns: [{label, text(row) -> string, num?, link?(row) -> href}]; key(row) -> string;
 * rowClass(row) -> the row's class names.
 * Returns {node, set(rows)}.
 */
export function keyedTable(columns, key, { id, empty = "Nothing here.", rowClass = null } = {}) {
  const tbody = el("tbody");
  const table = el(
    "table",
    { class: "cards", id },
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", { scope: "col", class: c.num ? "num" : null }, c.label)))),
    tbody,
  );
  const none = el("p", { class: "muted" }, empty);
  const node = el("div", {}, table, none);
  let rows = new Map();
  let order = "";

  function build(row) {
    const cells = columns.map((c) => {
      const td = el("td", { class: c.num ? "num" : null, dataset: { label: c.label } });
      const target = c.link ? el("a") : td;
      if (c.link) td.append(target);
      return { td, target };
    });
    return { tr: el("tr", { dataset: { key: key(row) } }, cells.map((c) => c.td)), cells };
  }

  function paint(entry, row) {
    columns.forEach((c, i) => {
      setText(entry.cells[i].target, c.text(row));
      if (c.link) entry.cells[i].target.setAttribute("href", c.link(row));
    });
    if (rowClass) entry.tr.className = rowClass(row);
  }

  function set(list) {
    const keys = list.map(key);
    none.hidden = list.length > 0;
    table.hidden = list.length === 0;
    const next = new Map();
    list.forEach((row, i) => {
      const entry = rows.get(keys[i]) || build(row);
      paint(entry, row);
      next.set(keys[i], entry);
    });
    const joined = keys.join("\u0000");
    if (joined !== order) {
      order = joined;
      clear(tbody);
      for (const k of keys) tbody.append(next.get(k).tr);
    }
    rows = next;
  }

  return { node, set };
}
