// Open alerts, the most severe first; a device's alert links to its page.

import { el, isoClock } from "../dom.js";
import { store } from "../store.js";
import { keyedTable } from "./table.js";

const COLUMNS = [
  { label: "Severity", text: (a) => a.severity },
  { label: "Rule", text: (a) => a.rule },
  {
    label: "Subject",
    text: (a) => a.subject,
    link: (a) => (store.devices.has(a.subject) ? `#/device/${encodeURIComponent(a.subject)}` : "#/alerts"),
  },
  { label: "Message", text: (a) => a.message },
  { label: "State", text: (a) => a.state },
  { label: "Since", text: (a) => isoClock(a.since) },
];

/** The alerts table; `subject` limits it to one device's (the device page). */
export function mountAlerts(main, { subject = null, heading = "Alerts" } = {}) {
  const table = keyedTable(COLUMNS, (a) => String(a.id), {
    id: subject ? "device-alerts" : "alerts",
    empty: "No open alerts.",
    rowClass: (a) => `severity-${a.severity}`,
  });
  main.append(el(subject ? "h2" : "h1", {}, heading), table.node);
  const render = () =>
    table.set(store.sortedAlerts().filter((a) => subject === null || a.subject === subject));
  render();
  return {
    update(change) {
      if (change.all || change.alerts) render();
    },
  };
}
