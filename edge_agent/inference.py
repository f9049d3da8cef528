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

Serving parameters (`wire.ServingParams`, from the desired state) are read on every call, so a
change takes effect on the next request: below `min_score` a sample is answered with the
default label (`thresholded`); with the kill switch on the model is not run at all (each sample
is answered with the default label, or ServingDisabled is raised when there is none). A shadow
(`shadow.ShadowRunner`) gets each request after the active model has answered it.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.features import summary_lists
from edge_agent.model_manager import ModelManager, NoActiveModel
from edge_agent.outbox import BatchWriter
from edge_agent.shadow import ShadowRunner
from edge_agent.telemetry import LatencyTracker
from edge_agent.wire import ServingParams

__all__ = ["InferenceResult", "InferenceService", "NoActiveModel", "ServingDisabled"]


class ServingDisabled(Exception):
    """The deployment's kill switch is on and gives no default answer."""


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceResult:
    request_id: str
    model_version: int | None  # None when the kill switch answered (no model ran)
    scores: np.ndarray  # (N, C); (N, 0) when the kill switch answered
    labels: list[str] | None  # top label per sample, when the model has labels
    latency_ms: float
    seqs: list[int]  # outbox sequence numbers of the logs (one per sample); [] if not waited for
    thresholded: tuple[bool, ...] = ()  # per sample: below min_score, answered with the default
    default_label: str | None = None
    disabled: bool = False  # the kill switch answered every sample with the default label

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "request_id": self.request_id,
            "model_version": self.model_version,
            "latency_ms": round(self.latency_ms, 3),
        }
        if self.disabled:
            doc["disabled"] = True
            doc["predictions"] = [
                {"class": None, "label": self.default_label, "score": None, "disabled": True}
                for _ in range(len(self.scores))
            ]
            return doc
        top = self.scores.argmax(axis=1)
        predictions = []
        for i, c in enumerate(top):
            low = bool(self.thresholded and self.thresholded[i])
            predictions.append(
                {
                    "class": None if low else int(c),
                    "label": self.default_label
                    if low
                    else (self.labels[i] if self.labels else None),
                    "score": float(self.scores[i, c]),
                    "scores": [float(s) for s in self.scores[i]],
                    "thresholded": low,
                }
            )
        doc["predictions"] = predictions
        return doc


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
        params: Callable[[], ServingParams] | None = None,
        shadow: ShadowRunner | None = None,
        max_unflushed: int = 256,
    ) -> None:
        if max_unflushed < 1:
            raise ValueError(f"max_unflushed must be at least 1, not {max_unflushed}")
        self.manager = manager
        self.writer = writer
        self.tracker = tracker
        self.max_unflushed = max_unflushed
        self._labels = labels or (lambda: [])
        self._params = params or ServingParams
        self.shadow = shadow
        self._count_lock = threading.Lock()
        self._sampler = random.Random()  # which requests go to the shadow (`shadow_sample`)
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
        params = self._params()
        if params.disabled:
            return self._switched_off(x, params, source=source, request_id=request_id, wait=wait)
        try:
            pred = self.manager.predict(x)
        except (NoActiveModel, ValueError):
            raise
        except Exception:
            self.tracker.record(None, 0.0, ok=False)
            raise
        self.tracker.record(pred.version_id, pred.latency_ms)
        now = time.time()
        if params.min_score is None:
            thresholded = tuple(False for _ in range(len(x)))
        else:
            top_scores = pred.scores.max(axis=1)
            thresholded = tuple(bool(s < params.min_score) for s in top_scores)
        digests = [input_digest(x[i]) for i in range(len(x))]
        features = summary_lists(x)  # what the hub compares with the training baseline
        futures = [
            self.writer.submit(
                "log",
                {
                    "request_id": request_id if len(x) == 1 else f"{request_id}/{i}",
                    "model_version": pred.version_id,
                    "input_digest": digests[i],
                    "output": [round(float(v), 6) for v in pred.scores[i]],
                    "latency_ms": round(pred.latency_ms, 4),
                    "ts": now,
                    "source": source,
                    "thresholded": thresholded[i],
                    "features": features[i],
                },
                deferred=not wait,
            )
            for i in range(len(x))
        ]
        mirror = params.shadow_sample >= 1 or self._sampler.random() < params.shadow_sample
        if self.shadow is not None and mirror:  # runs while this request waits for its commit
            self.shadow.submit(
                x,
                request_id=request_id,
                active_version=pred.version_id,
                active_scores=pred.scores,
                active_latency_ms=pred.latency_ms,
                digests=digests,
                source=source,
            )
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
            request_id,
            pred.version_id,
            pred.scores,
            top_labels,
            pred.latency_ms,
            seqs,
            thresholded=thresholded,
            default_label=params.default_label,
        )

    def _switched_off(
        self, x: np.ndarray, params: ServingParams, *, source: str, request_id: str, wait: bool
    ) -> InferenceResult:
        """The kill switch: no model runs; each sample gets the default label, logged."""
        if params.default_label is None:
            raise ServingDisabled(
                "serving is switched off by the deployment's parameters "
                "(disabled, and no default_label to answer with)"
            )
        now = time.time()
        futures = [
            self.writer.submit(
                "log",
                {
                    "request_id": request_id if len(x) == 1 else f"{request_id}/{i}",
                    "model_version": None,
                    "input_digest": input_digest(x[i]),
                    "output": {"disabled": True, "label": params.default_label},
                    "latency_ms": 0.0,
                    "ts": now,
                    "source": source,
                },
                deferred=not wait,
            )
            for i in range(len(x))
        ]
        if wait:
            seqs = [f.result() for f in futures]
        else:
            seqs = []
            self._defer(futures)
        with self._count_lock:
            self.count += len(x)
        return InferenceResult(
            request_id,
            None,
            np.zeros((len(x), 0), dtype=np.float32),
            None,
            0.0,
            seqs,
            default_label=params.default_label,
            disabled=True,
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
