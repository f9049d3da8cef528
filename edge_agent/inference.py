"""One way in for every inference on the device: run the active model, log it durably.

The HTTP API, the OpenCV source and the MQTT request topic all call `InferenceService.infer`.
Each call runs the model through the ModelManager (hot-swap safe), records latency for telemetry,
and writes one log record to the outbox before it returns, so a logged request is never lost.

A frame source has nobody waiting for an answer, and waiting for each frame's commit (an fsync)
would cap it at one frame per fsync. It calls `infer(..., wait=False)`: the log is submitted to
the group commit as deferred (committed within the writer's `deferred_delay_s`, 10 ms, together
with whatever else came meanwhile) and the call returns at once; at most `max_unflushed` logs are
ever left uncommitted (past that the call waits for the oldest), and `flush()` waits for all of
them. So durability lags a source by about 10 ms; every log still lands in the outbox.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.model_manager import ModelManager, NoActiveModel
from edge_agent.outbox import BatchWriter
from edge_agent.telemetry import LatencyTracker

__all__ = ["InferenceResult", "InferenceService", "NoActiveModel"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceResult:
    request_id: str
    model_version: int
    scores: np.ndarray  # (N, C)
    labels: list[str] | None  # top label per sample, when the model has labels
    latency_ms: float
    seqs: list[int]  # outbox sequence numbers of the logs (one per sample); [] if not waited for

    def to_json(self) -> dict[str, Any]:
        top = self.scores.argmax(axis=1)
        return {
            "request_id": self.request_id,
            "model_version": self.model_version,
            "latency_ms": round(self.latency_ms, 3),
            "predictions": [
                {
                    "class": int(c),
                    "label": self.labels[i] if self.labels else None,
                    "score": float(self.scores[i, c]),
                    "scores": [float(s) for s in self.scores[i]],
                }
                for i, c in enumerate(top)
            ],
        }


def input_digest(x: np.ndarray) -> str:
    """A short content digest of one input sample (what was asked, without storing it)."""
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()[:16]


class InferenceService:
    def __init__(
        self,
        manager: ModelManager,
        writer: BatchWriter,
        tracker: LatencyTracker,
        *,
        labels: Callable[[], list[str]] | None = None,
        max_unflushed: int = 256,
    ) -> None:
        if max_unflushed < 1:
            raise ValueError(f"max_unflushed must be at least 1, not {max_unflushed}")
        self.manager = manager
        self.writer = writer
        self.tracker = tracker
        self.max_unflushed = max_unflushed
        self._labels = labels or (lambda: [])
        self._count_lock = threading.Lock()
        self.count = 0
        self._unflushed: deque[Future[int]] = deque()  # logs submitted with wait=False
        self._unflushed_lock = threading.Lock()

    def infer(
        self,
        x: np.ndarray,
        *,
        source: str = "api",
        request_id: str | None = None,
        wait: bool = True,
    ) -> InferenceResult:
        """Run a batch (N, ...) of model-ready inputs. Raises NoActiveModel, or ValueError for an
        input the model cannot take (wrong shape or dtype); neither is logged as a model error.

        With `wait` (every request someone answers) the logs are committed before this returns.
        Without it (a frame source) they are submitted and committed shortly after: see the
        module's docstring; the result's `seqs` is then empty."""
        request_id = request_id or uuid.uuid4().hex
        if x.dtype.kind not in "fiu":
            raise ValueError(f"input dtype {x.dtype} is not numeric")
        x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise ValueError("input contains NaN or infinity")
        try:
            pred = self.manager.predict(x)
        except (NoActiveModel, ValueError):
            raise
        except Exception:
            self.tracker.record(None, 0.0, ok=False)
            raise
        self.tracker.record(pred.version_id, pred.latency_ms)
        now = time.time()
        futures = [
            self.writer.submit(
                "log",
                {
                    "request_id": request_id if len(x) == 1 else f"{request_id}/{i}",
                    "model_version": pred.version_id,
                    "input_digest": input_digest(x[i]),
                    "output": [round(float(v), 6) for v in pred.scores[i]],
                    "latency_ms": round(pred.latency_ms, 4),
                    "ts": now,
                    "source": source,
                },
                deferred=not wait,
            )
            for i in range(len(x))
        ]
        if wait:
            seqs = [f.result() for f in futures]  # durable before we answer
        else:
            seqs = []
            self._defer(futures)
        with self._count_lock:  # requests arrive on many threads (HTTP, MQTT, a source)
            self.count += len(x)
        labels = self._labels()
        top = pred.scores.argmax(axis=1)
        top_labels = [labels[c] if c < len(labels) else str(c) for c in top] if labels else None
        return InferenceResult(
            request_id, pred.version_id, pred.scores, top_labels, pred.latency_ms, seqs
        )

    def _defer(self, futures: list[Future[int]]) -> None:
        """Keep track of logs nobody waits for; wait for the oldest beyond `max_unflushed`."""
        overdue: list[Future[int]] = []
        with self._unflushed_lock:
            pending = self._unflushed
            pending.extend(futures)
            while pending and (pending[0].done() or len(pending) > self.max_unflushed):
                overdue.append(pending.popleft())
        for future in overdue:
            future.result()  # a failed commit raises here, in the source's thread

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every log submitted with wait=False is committed (or failed)."""
        with self._unflushed_lock:
            pending = list(self._unflushed)
            self._unflushed.clear()
        for future in pending:
            try:
                future.result(timeout)
            except Exception as exc:  # reported where it happened; nothing to answer here
                log.warning("a log submitted by a frame source was not stored: %s", exc)
