"""The prediction log's writer: records queued by the serving path, written by one thread.

A predict call only appends tuples to an in-memory queue (no SQLite write on the request's
path); a background thread writes them in batches, one transaction each, every `flush_s`. The
queue is bounded: past `max_pending` records (the database stalled for long) new ones are
dropped and counted (`dropped`, in the endpoint stats and /metrics), so serving never waits for
the log. `close()` writes whatever is queued; records added after it (a shadow's answer that
ends late) are written at once, by the caller.

A record keeps the answer, not the model's raw tensors: class scores (float32, encoded), or a
head's result (JSON: `{"task": "detection", "detections": [...]}`), and `outputs_digest`, the
sha256 of the row's raw output tensors (written where the table has that column).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cloud_hub.predlog import endpoint_logs
from edge_agent.core.features import encode as encode_floats

if TYPE_CHECKING:
    from cloud_hub.core.db import Database

log = logging.getLogger(__name__)

Row = tuple[Any, ...]  # in COLUMNS order


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One record: one row of one answer (the returned one, or a shadow's) to one request."""

    ts: float
    request_id: str
    endpoint: str
    outcome: str  # ok | bad_input | failed | unavailable | model_off
    step: str | None = None
    role: str = "answer"
    model_version: int | None = None
    variant: str | None = None
    row: int = 0
    input_digest: str | None = None
    label: str | None = None
    score: float | None = None
    output: list[float] | dict[str, Any] | None = None
    latency_ms: float | None = None
    error: str | None = None
    tags: dict[str, str] | None = None
    # edge_agent.core.features.summarize of the model input (a numpy row: rounded when written)
    features: Any = None
    outputs_digest: str | None = None  # sha256 of the row's raw output tensors

    def as_row(self) -> Row:
        return (
            self.ts,
            self.request_id,
            self.endpoint,
            self.step,
            self.role,
            self.model_version,
            self.variant,
            self.row,
            self.input_digest,
            self.label,
            self.score,
            _encode_output(self.output),
            self.latency_ms,
            self.outcome,
            self.error,
            json.dumps(self.tags) if self.tags else None,
            None if self.features is None else encode_floats(self.features),
            self.outputs_digest,
        )


def _encode_output(output: list[float] | dict[str, Any] | None) -> str | bytes | None:
    if output is None:
        return None
    if isinstance(output, dict):
        return json.dumps(output, separators=(",", ":"))
    return encode_floats(output)


class PredictionLogWriter:
    def __init__(
        self,
        db: Database,
        *,
        flush_s: float = 0.2,
        max_pending: int = 200_000,
        batch_rows: int = 5000,
    ) -> None:
        self.db = db
        self.flush_s = flush_s
        self.max_pending = max_pending
        self.batch_rows = batch_rows
        self._queue: deque[LogEntry] = deque()
        self._cond = threading.Condition()
        self._writing = 0
        self._stop = False
        self._closed = False  # no thread writes any more: `add` writes itself
        self._urgent = False
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self._thread: threading.Thread | None = None

    def start(self) -> PredictionLogWriter:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="prediction-log", daemon=True)
            self._thread.start()
        return self

    def add(self, rows: Sequence[LogEntry]) -> None:
        """Queue records (never blocks; drops and counts them past `max_pending`). They are
        encoded (JSON) on the writer's thread, not the caller's."""
        with self._cond:
            if self._closed:
                self._writing += bool(rows)
            else:
                room = self.max_pending - len(self._queue)
                if room < len(rows):
                    self.dropped += len(rows) - max(room, 0)
                    rows = rows[: max(room, 0)]
                self._queue.extend(rows)
                return
        self._write(list(rows))

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued so far is written (tests, the CLI, shutdown)."""
        if self._thread is None:
            self._write_all()
            return True
        deadline = time.monotonic() + timeout
        with self._cond:
            self._urgent = True
            self._cond.notify_all()
            while self._queue or self._writing:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
                self._urgent = True
                self._cond.notify_all()
        return True

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        with self._cond:
            self._closed = True
        self._write_all()

    def stats(self) -> dict[str, int]:
        with self._cond:
            pending = len(self._queue)
        return {
            "written": self.written,
            "pending": pending,
            "dropped": self.dropped,
            "failed": self.failed,
        }

    def _take(self) -> list[LogEntry]:
        n = min(len(self._queue), self.batch_rows)
        taken = [self._queue.popleft() for _ in range(n)]
        self._writing += len(taken) > 0
        return taken

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not (self._stop or self._urgent or len(self._queue) >= self.batch_rows):
                    self._cond.wait(self.flush_s)
                self._urgent = False
                if self._stop and not self._queue:
                    return
                rows = self._take()
            self._write(rows)

    def _write_all(self) -> None:
        while True:
            with self._cond:
                rows = self._take()
            if not rows:
                return
            self._write(rows)

    def _write(self, entries: list[LogEntry]) -> None:
        if not entries:
            return
        written = False
        try:
            rows = [e.as_row() for e in entries]
            with self.db.transaction():
                endpoint_logs.insert(self.db.conn, rows)
            written = True
        except Exception:
            log.exception("could not write %d prediction log records", len(entries))
        finally:
            with self._cond:  # after close, several callers may write at once
                if written:
                    self.written += len(entries)
                else:
                    self.failed += len(entries)
                self._writing -= 1
                self._cond.notify_all()
