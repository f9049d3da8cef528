// GET /api/v1/stream (server-sent events) read with fetch() and a ReadableStream: EventSource
// cannot send the Authorization header. Reconnects with Last-Event-ID after a dropped
// connection (backing off up to 5 s); a refused token stops it.

import { API, authHeaders } from "./api.js";
import { stats } from "./dom.js";

const MAX_BACKOFF_MS = 5000;

/** Parse text/event-stream lines into events: {id, event, data} (data: the joined lines). */
export class EventParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.reset();
  }

  reset() {
    this.id = null;
    this.kind = "";
    this.data = [];
  }

  push(chunk) {
    this.buffer += chunk;
    let start = 0;
    for (;;) {
      const nl = this.buffer.indexOf("\n", start);
      if (nl < 0) break;
      let line = this.buffer.slice(start, nl);
      if (line.endsWith("\r")) line = line.slice(0, -1);
      start = nl + 1;
      this.line(line);
    }
    this.buffer = this.buffer.slice(start);
  }

  line(line) {
    if (line === "") {
      if (this.data.length) {
        this.onEvent({ id: this.id, event: this.kind || "message", data: this.data.join("\n") });
      }
      this.reset();
      return;
    }
    if (line.startsWith(":")) return; // a comment (": ping")
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.kind = value;
    else if (field === "id") this.id = value;
  }
}

/**
 * The live stream. `onEvent({id, kind, data})` for each event (data parsed), `onAuth(err)`
 * when the hub refuses the token, `onState(state)` on connecting/live/reconnecting.
 * `lastEventId` is where it resumes (the overview's last_event_id at first).
 */
export class Stream {
  constructor({ onEvent, onAuth, onState, onBadResume }) {
    this.onEvent = onEvent;
    this.onAuth = onAuth;
    this.onState = onState;
    this.onBadResume = onBadResume;
    this.lastEventId = null;
    this.controller = null;
    this.running = false;
    this.generation = 0; // a loop of an older start() ends at its next step
  }

  start(lastEventId) {
    this.lastEventId = lastEventId ?? this.lastEventId;
    if (this.running) return;
    this.running = true;
    this.generation += 1;
    this.loop(this.generation);
  }

  stop() {
    this.running = false;
    this.generation += 1;
    this.controller?.abort();
    this.state("stopped");
  }

  current(generation) {
    return this.running && generation === this.generation;
  }

  state(value) {
    stats.stream = value;
    this.onState?.(value);
  }

  async loop(generation) {
    let backoff = 250;
    let first = true;
    while (this.current(generation)) {
      this.state(first ? "connecting" : "reconnecting");
      first = false;
      try {
        const opened = await this.readOnce();
        if (opened) backoff = 250;
      } catch (err) {
        if (!this.current(generation)) return;
        if (err?.name !== "AbortError") console.warn("stream:", err?.message || err);
      }
      if (!this.current(generation)) return;
      stats.reconnects += 1;
      this.state("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, backoff * (0.75 + Math.random() / 2)));
      backoff = Math.min(MAX_BACKOFF_MS, backoff * 2);
    }
  }

  /** One connection, read to its end; whether it was accepted. */
  async readOnce() {
    this.controller = new AbortController();
    const headers = { Accept: "text/event-stream", ...authHeaders() };
    if (this.lastEventId) headers["Last-Event-ID"] = this.lastEventId;
    const resp = await fetch(`${API}/stream`, {
      headers,
      cache: "no-store",
      signal: this.controller.signal,
    });
    if (resp.status === 401 || resp.status === 403) {
      this.stop();
      this.onAuth?.(resp.status);
      return false;
    }
    if (resp.status === 400 && this.lastEventId) {
      // a resume point the hub does not take: start over from a fresh overview
      this.lastEventId = null;
      await this.onBadResume?.();
      return false;
    }
    if (!resp.ok || !resp.body) return false;
    this.state("live");
    const parser = new EventParser((raw) => this.dispatch(raw));
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.push(value);
      }
    } finally {
      reader.releaseLock();
    }
    return true;
  }

  dispatch(raw) {
    if (raw.id) {
      this.lastEventId = raw.id;
      stats.lastEventId = raw.id;
    }
    let data;
    try {
      data = JSON.parse(raw.data);
    } catch {
      console.warn("stream: an event that is not JSON", raw.event);
      return;
    }
    this.onEvent({ id: raw.id, kind: raw.event, data });
  }
}

/** The sequence number of an event id `<boot>-<n>` (null for another format). */
export function eventSeq(id) {
  const match = /^([0-9a-f]+)-(\d+)$/.exec(id || "");
  return match ? { boot: match[1], n: Number(match[2]) } : null;
}
