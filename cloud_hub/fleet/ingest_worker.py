"""Logs and telemetry stored off paho's network thread, many messages per SQLite commit.

paho's thread parses and checks each log/telemetry message (cheap) and `put`s it here. The
worker thread takes the first queued item, then more until it holds `max_messages` or
`max_delay_s` has passed since the first (0: only what is queued already), stores them all in
ONE transaction (`Ingest.store_many`: a savepoint per batch, in arrival order), and only once
that has committed hands each outcome, in order, to the callbacks the service gave it:
`stored(item, mark)` (the service acknowledges the mark and counts), or `refused(counter, item,
reason)` (logged, counted, recorded as the device's last rejection reason, NOT acknowledged).

- Ack only after commit: every mark handed to `stored` is committed; a group's acks go out
  together right after its one COMMIT, each within `max_delay_s` plus a commit of its arrival.
- Exactly once: a batch is stored by (device, epoch, seq) whatever group it lands in, and a
  batch sent twice in one group is stored once (the second finds the first's rows).
- Bounded queue: `put` blocks while `queue_size` items wait. paho's network thread then stops
  reading its socket and the broker holds the rest of the hub's QoS 1 messages (its session,
  TCP flow control): back-pressure to the broker, nothing dropped. (paho acknowledges a message
  to the broker when its callback returns, before the commit; an item lost with the process is
  never acknowledged to its agent, which keeps it in its outbox and sends it again.)
- Errors: a batch the rules refuse is `refused("rejected", ...)` and the rest of its group is
  stored. An unexpected exception for the whole transaction rolls the group back and does not
  end the thread: each item is then stored alone, and one that fails again is `refused("errors",
  ...)`. An exception from a callback is logged and counted; the worker goes on.
- `stop()` drains: everything queued before it is stored and handed on; an item `put` after it
  is stored at once on the caller's thread, as before this worker existed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cloud_hub.fleet.errors import Rejected
from cloud_hub.fleet.ingest import Batch, Ingest, Outcome

__all__ = ["IngestWorker", "Pending"]


@dataclass(frozen=True, slots=True)
class Pending:
    """One parsed, checked message waiting to be stored."""

    device_id: str
    topic: str
    batch: Batch


Stored = Callable[[Pending, int], None]  # after the commit: the epoch's new mark
Refused = Callable[[str, Pending, str], None]  # (counter, item, reason)

_STOP = object()


class IngestWorker:
    def __init__(
        self,
        ingest: Ingest,
        *,
        stored: Stored,
        refused: Refused,
        max_messages: int = 500,
        max_delay_s: float = 0.02,
        queue_size: int = 10_000,
        logger: logging.Logger | None = None,
    ) -> None:
        if max_messages < 1 or queue_size < 1 or max_delay_s < 0:
            raise ValueError("max_messages and queue_size must be at least 1, max_delay_s >= 0")
        self.ingest = ingest
        self.max_messages = max_messages
        self.max_delay_s = max_delay_s
        self.log = logger or logging.getLogger("cloud_hub.fleet.ingest")
        self._stored = stored
        self._refused = refused
        self._queue: queue.Queue[Pending | object] = queue.Queue(maxsize=queue_size)
        self._gate = threading.Lock()  # orders put() against stop()
        self._running = False
        self._thread: threading.Thread | None = None
        self._stats_lock = threading.Lock()
        self._commits = self._batches = self._errors = 0
        self._waiting = 0  # put, not handed on yet: queued or in the group being gathered
        self._group_last = self._group_max = 0

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        with self._gate:
            if self._running:
                return
            self._running = True
            self._thread = threading.Thread(target=self._run, name="fleet-ingest", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Store and hand on everything queued, then end the thread."""
        with self._gate:
            if not self._running:
                return
            self._running = False
            self._queue.put(_STOP)  # behind every queued item; the worker makes room
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def put(self, item: Pending) -> None:
        """Queue a message for the next group; blocks while the queue is full."""
        with self._gate:
            if self._running:
                with self._stats_lock:
                    self._waiting += 1
                self._queue.put(item)
                return
        self._flush([item])  # not running (stopped, or never started): store it here

    def depth(self) -> int:
        """Messages put and not stored yet (queued, or in the group being gathered)."""
        with self._stats_lock:
            return self._waiting

    def stats(self) -> dict[str, int]:
        """ingest_queue (put, not stored yet), commits, batches through them (commit_batches),
        transactions that failed (commit_errors), batches per commit (last, max)."""
        with self._stats_lock:
            return {
                "ingest_queue": self._waiting,
                "commits": self._commits,
                "commit_batches": self._batches,
                "commit_errors": self._errors,
                "batches_per_commit_last": self._group_last,
                "batches_per_commit_max": self._group_max,
            }

    # -- the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                return
            assert isinstance(first, Pending)
            group = [first]
            deadline = time.monotonic() + self.max_delay_s
            while len(group) < self.max_messages:
                left = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                assert isinstance(nxt, Pending)
                group.append(nxt)
            self._flush(group)
            with self._stats_lock:
                self._waiting -= len(group)

    def _flush(self, group: list[Pending]) -> None:
        try:
            outcomes = self.ingest.store_many([(p.device_id, p.batch) for p in group])
        except Exception:
            self.log.exception("storing %d batch(es) in one transaction failed", len(group))
            self._note(errors=1)
            self._one_by_one(group)
            return
        self._note(commits=1, batches=len(group))
        for item, outcome in zip(group, outcomes, strict=True):
            self._hand_on(item, outcome)

    def _one_by_one(self, group: list[Pending]) -> None:
        for item in group:
            try:
                (outcome,) = self.ingest.store_many([(item.device_id, item.batch)])
            except Exception as exc:
                self.log.exception("storing a batch from %s failed", item.device_id)
                self._call(self._refused, "errors", item, f"hub error: {exc}")
                continue
            self._note(commits=1, batches=1)
            self._hand_on(item, outcome)

    def _hand_on(self, item: Pending, outcome: Outcome) -> None:
        if isinstance(outcome, Rejected):
            self._call(self._refused, "rejected", item, str(outcome))
        else:
            self._call(self._stored, item, outcome)

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except Exception:
            self.log.exception("the ingest worker's callback %s failed", fn)
            self._note(errors=1)

    def _note(self, *, commits: int = 0, batches: int = 0, errors: int = 0) -> None:
        with self._stats_lock:
            self._commits += commits
            self._batches += batches
            self._errors += errors
            if commits:
                self._group_last = batches
                self._group_max = max(self._group_max, batches)
