"""The shadow: a candidate model run on the same live inputs as the active one, answering nobody.

`InferenceService.infer` hands each request (its model-ready batch, request id and the active
model's top classes and latency) to `ShadowRunner.submit` and answers at once; one background
thread runs the shadow on it, logs the shadow's output to the outbox under the same request id
(LogRecord role "shadow"), and counts agreement (same top class) and both models' latencies for
telemetry. The queue is bounded: when the shadow cannot keep up, requests are not run on it
(counted as `dropped`), so the shadow never slows down or blocks an answer.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.model_manager import ModelManager, NoActiveModel
from edge_agent.outbox import BatchWriter
from edge_agent.telemetry import DEFAULT_RESERVOIR, percentiles
from edge_agent.wire import ShadowStats

__all__ = ["ShadowRunner"]

log = logging.getLogger(__name__)

DEFAULT_QUEUE = 64


@dataclass(frozen=True)
class _Job:
    x: np.ndarray
    request_id: str
    active_version: int
    active_top: np.ndarray
    active_latency_ms: float
    digests: list[str]
    source: str


@dataclass
class _Counts:
    active_version: int
    shadow_version: int
    reservoir: int
    compared: int = 0
    agreed: int = 0
    dropped: int = 0
    errors: int = 0
    active_ms: deque[float] = field(default_factory=deque)
    shadow_ms: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.active_ms = deque(maxlen=self.reservoir)
        self.shadow_ms = deque(maxlen=self.reservoir)

    def stats(self) -> ShadowStats:
        return ShadowStats(
            active_version=self.active_version,
            shadow_version=self.shadow_version,
            compared=self.compared,
            agreed=self.agreed,
            dropped=self.dropped,
            errors=self.errors,
            active_latency_ms=percentiles(list(self.active_ms)) if self.active_ms else {},
            shadow_latency_ms=percentiles(list(self.shadow_ms)) if self.shadow_ms else {},
        )


class ShadowRunner:
    """Runs the manager's shadow on submitted requests, in one background thread."""

    def __init__(
        self,
        manager: ModelManager,
        writer: BatchWriter,
        *,
        queue_size: int = DEFAULT_QUEUE,
        reservoir: int = DEFAULT_RESERVOIR,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, not {queue_size}")
        self.manager = manager
        self.writer = writer
        self.reservoir = reservoir
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._window: _Counts | None = None  # since the last telemetry sample
        self._total: _Counts | None = None  # since the shadow was loaded (for /v1/status)
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread within `timeout`: requests still queued are not run on the shadow
        (counted as dropped), the one being run finishes and its logs are submitted. Never
        waits for a full queue to empty (a slow shadow must not hold up the agent's stop, nor
        write its logs after the writer is closed)."""
        if not self._started:
            return
        self._discard_queued()
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:  # requests kept coming meanwhile
            log.warning("the shadow's thread did not stop: its queue stays full")
            return
        self._thread.join(timeout)

    def _discard_queued(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            try:
                shadow = self.manager.shadow
                if job is not None and shadow is not None:
                    with self._lock:
                        for counts in self._counts(job.active_version, shadow.version_id):
                            counts.dropped += len(job.x)
            finally:
                self._queue.task_done()

    # -- the request side ------------------------------------------------------------------------
    def submit(
        self,
        x: np.ndarray,
        *,
        request_id: str,
        active_version: int,
        active_scores: np.ndarray,
        active_latency_ms: float,
        digests: list[str],
        source: str,
    ) -> bool:
        """Queue one request for the shadow; False (and counted as dropped) when there is no
        room, or nothing when no shadow is loaded. Never blocks."""
        shadow = self.manager.shadow
        if shadow is None:
            return False
        job = _Job(
            x,
            request_id,
            active_version,
            active_scores.argmax(axis=1),
            active_latency_ms,
            digests,
            source,
        )
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            with self._lock:
                for counts in self._counts(active_version, shadow.version_id):
                    counts.dropped += len(x)
            return False
        return True

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every queued request has been run (tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    # -- statistics --------------------------------------------------------------------------------
    def _counts(self, active_version: int, shadow_version: int) -> list[_Counts]:
        """The window's and the total's counters for this pair (new ones when the pair changed).
        Call with the lock held."""
        out = []
        for name in ("_window", "_total"):
            counts: _Counts | None = getattr(self, name)
            if counts is None or (counts.active_version, counts.shadow_version) != (
                active_version,
                shadow_version,
            ):
                counts = _Counts(active_version, shadow_version, self.reservoir)
                setattr(self, name, counts)
            out.append(counts)
        return out

    def window(self, reset: bool = True) -> ShadowStats | None:
        """The shadow's statistics since the last reset (a TelemetryRecord's `shadow`)."""
        with self._lock:
            counts = self._window
            if counts is None:
                return None
            if reset:
                self._window = None
            return counts.stats()

    def totals(self) -> dict[str, Any] | None:
        """Statistics since this pair of versions started (for the agent's /v1/status)."""
        shadow, active = self.manager.shadow, self.manager.active
        with self._lock:
            counts = self._total
            if (
                shadow is None
                or active is None
                or counts is None
                or (counts.active_version, counts.shadow_version)
                != (active.version_id, shadow.version_id)
            ):
                return None  # nothing compared yet between the pair loaded now
            stats = counts.stats()
        doc = stats.model_dump()
        doc["agreement"] = round(stats.agreed / stats.compared, 4) if stats.compared else None
        return doc

    # -- the shadow's thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._one(job)
            except Exception:
                log.exception("the shadow failed on request %s", job.request_id if job else "-")
            finally:
                self._queue.task_done()

    def _one(self, job: _Job) -> None:
        try:
            pred = self.manager.predict_shadow(job.x)
        except NoActiveModel:
            return  # the shadow was dropped meanwhile
        except Exception as exc:
            shadow = self.manager.shadow
            if shadow is not None:
                with self._lock:
                    for counts in self._counts(job.active_version, shadow.version_id):
                        counts.errors += len(job.x)
            log.warning("the shadow failed on request %s: %s", job.request_id, exc)
            return
        n = len(job.x)
        agreed = int(np.count_nonzero(pred.scores.argmax(axis=1) == job.active_top))
        with self._lock:
            for counts in self._counts(job.active_version, pred.version_id):
                counts.compared += n
                counts.agreed += agreed
                counts.active_ms.append(job.active_latency_ms)
                counts.shadow_ms.append(pred.latency_ms)
        now = time.time()
        for i in range(n):
            future = self.writer.submit(
                "log",
                {
                    "request_id": job.request_id if n == 1 else f"{job.request_id}/{i}",
                    "model_version": pred.version_id,
                    "input_digest": job.digests[i],
                    "output": [round(float(v), 6) for v in pred.scores[i]],
                    "latency_ms": round(pred.latency_ms, 4),
                    "ts": now,
                    "source": job.source,
                    "role": "shadow",
                },
                deferred=True,  # nobody waits for it; committed with the next group commit
            )
            future.add_done_callback(_log_failure)


def _log_failure(future: Future[int]) -> None:
    exc = future.exception()
    if exc is not None:
        log.warning("a shadow log was not stored: %s", exc)
