// The fleet as the page knows it: GET /overview, then the stream's events merged in (the
// contract's merging rule). Views subscribe; changes are batched into one animation frame.

import { schedule, stats, timed } from "./dom.js";

const LIVE_STATES = new Set(["canary", "rolling_out"]);
const KEEP_FINISHED = 20;

function emptyChange() {
  return {
    all: false,
    devices: new Set(),
    deployments: new Set(),
    alerts: false,
    endpoints: new Set(),
    telemetry: [],
  };
}

class Store {
  constructor() {
    this.devices = new Map();
    this.deployments = new Map();
    this.alerts = new Map();
    this.endpoints = new Map();
    this.lastEventId = null;
    this.serverOffset = 0; // hub clock - this clock, seconds
    this.loaded = false;
    this.listeners = new Set();
    this.change = emptyChange();
    this.onUnknownDevice = null;
    this.deliver = () => this.flush();
  }

  subscribe(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  notify() {
    schedule(this.deliver);
  }

  flush() {
    const change = this.change;
    this.change = emptyChange();
    for (const fn of [...this.listeners]) fn(change);
  }

  /** Replace everything with an overview document. */
  load(overview) {
    this.devices = new Map(overview.devices.map((d) => [d.id, d]));
    this.deployments = new Map(overview.deployments.map((d) => [d.id, d]));
    this.alerts = new Map(overview.alerts.map((a) => [a.id, a]));
    this.endpoints = new Map(overview.endpoints.map((e) => [e.name, e]));
    this.lastEventId = overview.last_event_id;
    this.serverOffset = overview.server_time - Date.now() / 1000;
    this.loaded = true;
    this.change.all = true;
    this.notify();
  }

  /** One stream event (already parsed); whether the store knew what it was about. */
  apply(event) {
    return timed(() => {
      stats.events += 1;
      const d = event.data;
      switch (event.kind) {
        case "device":
        case "telemetry": {
          const known = this.devices.get(d.id);
          if (!known) {
            this.onUnknownDevice?.(d.id);
            return false;
          }
          Object.assign(known, d);
          this.change.devices.add(d.id);
          if (event.kind === "telemetry") this.change.telemetry.push(d);
          break;
        }
        case "deployment":
          this.deployments.set(d.id, d);
          this.pruneDeployments();
          this.change.deployments.add(d.id);
          break;
        case "alert":
          if (d.open === false) this.alerts.delete(d.id);
          else this.alerts.set(d.id, d);
          this.change.alerts = true;
          break;
        case "endpoint":
          this.endpoints.set(d.name, d);
          this.change.endpoints.add(d.name);
          break;
        case "hello":
          if (typeof d.server_time === "number") {
            this.serverOffset = d.server_time - Date.now() / 1000;
          }
          return true;
        default:
          return true; // a kind this page does not show
      }
      this.notify();
      return true;
    });
  }

  pruneDeployments() {
    const finished = [...this.deployments.values()]
      .filter((d) => !LIVE_STATES.has(d.state))
      .sort((a, b) => b.id - a.id);
    for (const old of finished.slice(KEEP_FINISHED)) this.deployments.delete(old.id);
  }

  /** Deployments as the page lists them: live ones first, then the newest. */
  sortedDeployments() {
    return [...this.deployments.values()].sort((a, b) => {
      const live = Number(isLive(b)) - Number(isLive(a));
      return live || b.id - a.id;
    });
  }

  sortedAlerts() {
    const rank = { critical: 0, error: 1, warning: 2, info: 3 };
    return [...this.alerts.values()].sort(
      (a, b) => (rank[a.severity] ?? 9) - (rank[b.severity] ?? 9) || String(b.since).localeCompare(String(a.since)),
    );
  }

  counts() {
    const c = { total: 0, online: 0, offline: 0, unknown: 0, alerts: this.alerts.size, live: 0 };
    for (const d of this.devices.values()) {
      c.total += 1;
      c[d.status] = (c[d.status] ?? 0) + 1;
    }
    for (const d of this.deployments.values()) if (isLive(d)) c.live += 1;
    return c;
  }

  /** The hub's clock now (unix s). */
  hubNow() {
    return Date.now() / 1000 + this.serverOffset;
  }
}

export function isLive(deployment) {
  return LIVE_STATES.has(deployment.state);
}

export const store = new Store();
