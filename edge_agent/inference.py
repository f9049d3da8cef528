"""One way in for every inference on the device: run the active model, log it durably.

The HTTP API, the OpenCV source and the MQTT request topic all call `InferenceService.infer`.
Each call runs the model through the ModelManager (hot-swap safe), records latency for telemetry,
and writes one log record to the outbox before it returns, so a logged request is never lost.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.model_manager import ModelManager, NoActiveModel
from edge_agent.outbox import BatchWriter
from edge_agent.telemetry import LatencyTracker

__all__ = ["InferenceResult", "InferenceService", "NoActiveModel"]


@dataclass(frozen=True)
class InferenceResult:
    request_id: str
    model_version: int
    scores: np.ndarray  # (N, C)
    labels: list[str] | None  # top label per sample, when the model has labels
    latency_ms: float
    seqs: list[int]  # outbox sequence numbers of the logs (one per sample)

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
    ) -> None:
        self.manager = manager
        self.writer = writer
        self.tracker = tracker
        self._labels = labels or (lambda: [])
        self._count_lock = threading.Lock()
        self.count = 0

    def infer(
        self, x: np.ndarray, *, source: str = "api", request_id: str | None = None
    ) -> InferenceResult:
        """Run a batch (N, ...) of model-ready inputs. Raises NoActiveModel, or ValueError for an
        input the model cannot take (wrong shape or dtype); neither is logged as a model error."""
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
            )
            for i in range(len(x))
        ]
        seqs = [f.result() for f in futures]  # durable before we answer
        with self._count_lock:  # requests arrive on many threads (HTTP, MQTT, a source)
            self.count += len(x)
        labels = self._labels()
        top = pred.scores.argmax(axis=1)
        top_labels = [labels[c] if c < len(labels) else str(c) for c in top] if labels else None
        return InferenceResult(
            request_id, pred.version_id, pred.scores, top_labels, pred.latency_ms, seqs
        )
