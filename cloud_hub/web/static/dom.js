// DOM helpers, formatting, the page's update statistics and the one requestAnimationFrame
// flush every change goes through.

/** What the page spends on updates; read by the browser test and bench/dashboard_paint.py. */
export const stats = {
  updates: 0, // flushes that ran
  cells: 0, // table cells / fields whose text changed
  events: 0, // stream events applied
  lastUpdateMs: 0, // the last flush's duration
  maxUpdateMs: 0,
  workMs: 0, // everything the page did for updates (events + flushes), cumulative
  firstDataMs: null, // performance.now() when the first overview was on screen
  overviewFetches: 0,
  overviewMs: 0, // the last /overview's fetch + render
  stream: "idle", // idle | connecting | live | reconnecting | stopped
  lastEventId: null,
  reconnects: 0,
  missed: 0,
  view: null,
  statusPainted: {}, // device id -> {status, at (ms epoch), since (hub's status_since)}
  progressPainted: {}, // deployment id -> [progress values painted, in order]
  charts: {}, // metric -> points on the device page's chart
};
window.epStats = stats;

/** Measure `fn` into stats.workMs. */
export function timed(fn) {
  const t0 = performance.now();
  try {
    return fn();
  } finally {
    stats.workMs += performance.now() - t0;
  }
}

// What a flush costs the browser (style, layout, paint of what changed) hardly depends on how
// many cells changed: flushes come at most every MIN_FLUSH_MS, each with all that changed since.
export const MIN_FLUSH_MS = 250;
let pending = null;
let lastFlush = -Infinity;
const flushers = new Set();

/** Run `fn` in an animation frame soon (once however often it is asked for): the next frame,
 * or the first one MIN_FLUSH_MS after the last flush. */
export function schedule(fn) {
  flushers.add(fn);
  if (pending !== null) return;
  const wait = lastFlush + MIN_FLUSH_MS - performance.now();
  if (wait <= 0) {
    pending = requestAnimationFrame(flush);
  } else {
    pending = setTimeout(() => {
      pending = requestAnimationFrame(flush);
    }, wait);
  }
}

function flush() {
  pending = null;
  const t0 = performance.now();
  lastFlush = t0;
  const todo = [...flushers];
  flushers.clear();
  for (const fn of todo) {
    try {
      fn();
    } catch (err) {
      console.error("update failed", err);
    }
  }
  const ms = performance.now() - t0;
  stats.updates += 1;
  stats.lastUpdateMs = ms;
  stats.maxUpdateMs = Math.max(stats.maxUpdateMs, ms);
  stats.workMs += ms;
}

/** An element: el("td", {class: "num", dataset: {label: "CPU"}}, "12"). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Set a node's text only when it changed (counted in stats.cells). */
export function setText(node, text) {
  if (node.textContent !== text) {
    node.textContent = text;
    stats.cells += 1;
    return true;
  }
  return false;
}

export function clear(node) {
  while (node.firstChild) node.firstChild.remove();
}

export const DASH = "–";

export function num(value, digits = 0) {
  if (value === null || value === undefined || !Number.isFinite(value)) return DASH;
  return value.toFixed(digits);
}

export function pct(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return DASH;
  return `${num(value, Math.abs(value) < 10 ? 1 : 0)}%`;
}

const pad = (n) => String(n).padStart(2, "0");

/** A unix time as local HH:MM:SS today, else YYYY-MM-DD HH:MM. */
export function clock(unix) {
  if (unix === null || unix === undefined) return DASH;
  const d = new Date(unix * 1000);
  const now = new Date();
  const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  if (d.toDateString() === now.toDateString()) return hms;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${hms.slice(0, 5)}`;
}

/** An ISO string from the hub (UTC) shown as clock(). */
export function isoClock(text) {
  if (!text) return DASH;
  const ms = Date.parse(/[zZ]|[+-]\d\d:?\d\d$/.test(text) ? text : `${text}Z`);
  return Number.isNaN(ms) ? text : clock(ms / 1000);
}

export function deviceLink(id) {
  return el("a", { href: `#/device/${encodeURIComponent(id)}` }, id);
}
