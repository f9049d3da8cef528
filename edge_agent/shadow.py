"""The shadow: a candidate model run on the same live inputs as the active one, answering nobody.

`InferenceService.infer` hands each request (its model-ready batch, request id, the active
model's head results and latency) to `ShadowRunner.submit` and answers at once; one background
thread runs the shadow on it, decodes it with the shadow's own head, logs that result to the
outbox under the same request id (LogRecord role "shadow"), and counts, for telemetry, both
models' latencies and their agreement per task (`edge_agent.core.heads.compare`: the same class; for
detection boxes matched at IoU >= 0.5; cosine similarity of embeddings; mean absolute difference
of keypoints and regressions; overlap of segmentation classes): `agreed` counts the samples that
agree, `similarity` is the mean agreement score. Two raw results agree when their tensors are
identical; results of different tasks never agree. The queue is bounded: when the shadow cannot
keep up, requests are not run on it (counted as `dropped`), so the shadow never slows down or
blocks an answer.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.answer_log import log_output
from edge_agent.core.digests import outputs_digest
from edge_agent.core.heads.compare import agreement, agrees
from edge_agent.core.wire import ShadowStats
from edge_agent.model_manager import ModelManager, NoActiveModel
from edge_agent.outbox import BatchWriter
from edge_agent.telemetry import DEFAULT_RESERVOIR, percentiles

__all__ = ["ShadowRunner"]

log = logging.getLogger(__name__)

DEFAULT_QUEUE = 64


Feeds = np.ndarray | Mapping[str, np.ndarray]


@dataclass(frozen=True)
class _Job:
    x: Feeds
    request_id: str
    active_version: int
    active_answers: list[dict[str, Any]]
    active_latency_ms: float
    digests: list[str]
    source: str
    geometry: Sequence[Any] | None = None
    active_outputs: list[str] | None = None  # outputs digests, to compare raw results

    @property
    def rows(self) -> int:
        return len(self.active_answers)


def compare(
    a: dict[str, Any], b: dict[str, Any], a_digest: str | None, b_digest: str | None
) -> tuple[float, bool]:
    """(agreement score, agrees) of two results for the same input (see the docstring)."""
    if a.get("task") == "raw" and b.get("task") == "raw":
        same = a_digest is not None and a_digest == b_digest
        return (1.0 if same else 0.0), same
    try:
        return agreement(a, b), agrees(a, b)
    except ValueError:  # different tasks: nothing in common to compare
        return 0.0, False


@dataclass
class _Counts:
    active_version: int
    shadow_version: int
    reservoir: int
    compared: int = 0
    agreed: int = 0
    similarity_sum: float = 0.0
    task: str | None = None
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
            task=self.task,
            similarity=round(self.similarity_sum / self.compared, 6) if self.compared else None,
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
                            counts.dropped += job.rows
            finally:
                self._queue.task_done()

    # -- the request side ------------------------------------------------------------------------
    def submit(
        self,
        x: Feeds,
        *,
        request_id: str,
        active_version: int,
        active_answers: list[dict[str, Any]],
        active_latency_ms: float,
        digests: list[str],
        source: str,
        geometry: Sequence[Any] | None = None,
        active_outputs: list[str] | None = None,
    ) -> bool:
        """Queue one request for the shadow: its feeds, and the active model's head result per
        row (`active_outputs`: the digests of its raw outputs per row, to compare raw results).
        False (and counted as dropped) when there is no room, or nothing when no shadow is
        loaded. Never blocks."""
        shadow = self.manager.shadow
        if shadow is None:
            return False
        job = _Job(
            x,
            request_id,
            active_version,
            active_answers,
            active_latency_ms,
            digests,
            source,
            geometry,
            active_outputs,
        )
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            with self._lock:
                for counts in self._counts(active_version, shadow.version_id):
                    counts.dropped += job.rows
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
            answers = pred.answers(job.geometry)
        except NoActiveModel:
            return  # the shadow was dropped meanwhile
        except Exception as exc:
            shadow = self.manager.shadow
            if shadow is not None:
                with self._lock:
                    for counts in self._counts(job.active_version, shadow.version_id):
                        counts.errors += job.rows
            log.warning("the shadow failed on request %s: %s", job.request_id, exc)
            return
        n = min(job.rows, len(answers))
        digests = [outputs_digest(pred.outputs, i, pred.rows) for i in range(n)]
        scores = []
        agreed = 0
        for i in range(n):
            theirs = job.active_outputs[i] if job.active_outputs else None
            score, same = compare(job.active_answers[i], answers[i], theirs, digests[i])
            scores.append(score)
            agreed += int(same)
        task = answers[0].get("task") if answers else None
        with self._lock:
            for counts in self._counts(job.active_version, pred.version_id):
                counts.compared += n
                counts.agreed += agreed
                counts.similarity_sum += float(sum(scores))
                counts.task = task
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
                    "output": log_output(answers[i], answers[i]),
                    "outputs_digest": digests[i],
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
