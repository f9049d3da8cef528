"""Accuracy, agreement, size and latency of converted artifacts, as JSON-serialisable reports."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, computed_field

from converters.errors import ConversionError
from edge_agent.core.runtimes import ModelFormat, Runtime, load_runtime

DEFAULT_THRESHOLD = 0.99
RUNS_BATCH1 = 50
RUNS_BATCH64 = 20
WARMUP_RUNS = 3


class ArtifactReport(BaseModel):
    """How one artifact compares with the reference model on held-out data."""

    format: ModelFormat
    precision: str
    size_bytes: int
    sha256: str
    accuracy: float
    top1_agreement: float
    max_abs_diff: float | None
    latency_ms_p50_batch1: float
    latency_ms_p50_batch64: float
    passed: bool
    reason: str | None = None


class ReferenceMetrics(BaseModel):
    """The original (framework) model's metrics on the same data."""

    accuracy: float


class ConversionReport(BaseModel):
    """All artifacts of one conversion; passed when every artifact passed."""

    threshold: float
    reference: ReferenceMetrics
    artifacts: list[ArtifactReport]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def passed(self) -> bool:
        return bool(self.artifacts) and all(a.passed for a in self.artifacts)


def median_latency_ms(runtime: Runtime, batch: np.ndarray, runs: int, warmup: int = 3) -> float:
    """Median wall time of `runtime.predict(batch)` in milliseconds, after `warmup` runs."""
    for _ in range(warmup):
        runtime.predict(batch)
    times = np.empty(runs, dtype=np.float64)
    for i in range(runs):
        start = time.perf_counter_ns()
        runtime.predict(batch)
        times[i] = time.perf_counter_ns() - start
    return float(np.median(times) / 1e6)


def _batch_of(X: np.ndarray, n: int) -> np.ndarray:
    reps = -(-n // len(X))
    return np.ascontiguousarray(np.concatenate([X] * reps)[:n]) if reps > 1 else X[:n]


def evaluate_artifact(
    data: bytes,
    fmt: ModelFormat,
    *,
    precision: str,
    X: np.ndarray,
    y: np.ndarray,
    reference_scores: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    threads: int = 1,
    classes: Sequence[int] | None = None,
    runs_batch1: int = RUNS_BATCH1,
    runs_batch64: int = RUNS_BATCH64,
) -> ArtifactReport:
    """Run the artifact on X and compare it with the reference model's scores.

    `y` holds class labels; `classes` maps score columns to labels (default: column i is label i).
    The artifact passes when its top-1 predictions agree with the reference's on at least
    `threshold` of the samples.
    """
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y)
    reference_scores = np.asarray(reference_scores, dtype=np.float32)
    if len(X) == 0:
        raise ConversionError("evaluation data is empty")
    if not (len(X) == len(y) == len(reference_scores)):
        raise ConversionError(
            f"X, y and reference_scores disagree in length: "
            f"{len(X)}, {len(y)}, {len(reference_scores)}"
        )
    runtime = load_runtime(data, fmt, threads=threads)
    scores = runtime.predict(X)
    if scores.ndim != 2 or len(scores) != len(X):
        raise ConversionError(f"the artifact returned scores of shape {scores.shape}")
    labels = np.asarray(classes) if classes is not None else np.arange(scores.shape[1])
    if len(labels) != scores.shape[1]:
        raise ConversionError(
            f"the artifact scores {scores.shape[1]} classes, expected {len(labels)}"
        )
    predicted = scores.argmax(axis=1)
    accuracy = float(np.mean(labels[predicted] == y))
    agreement = float(np.mean(predicted == reference_scores.argmax(axis=1)))
    max_abs_diff = (
        float(np.max(np.abs(scores - reference_scores)))
        if scores.shape == reference_scores.shape
        else None
    )
    latency_1 = median_latency_ms(runtime, _batch_of(X, 1), runs_batch1, WARMUP_RUNS)
    latency_64 = median_latency_ms(runtime, _batch_of(X, 64), runs_batch64, WARMUP_RUNS)
    passed = agreement >= threshold
    reason = None if passed else f"top-1 agreement {agreement:.3f} below threshold {threshold:.3f}"
    return ArtifactReport(
        format=fmt,
        precision=precision,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        accuracy=accuracy,
        top1_agreement=agreement,
        max_abs_diff=max_abs_diff,
        latency_ms_p50_batch1=latency_1,
        latency_ms_p50_batch64=latency_64,
        passed=passed,
        reason=reason,
    )


def build_report(
    artifacts: list[ArtifactReport],
    *,
    reference_accuracy: float,
    threshold: float = DEFAULT_THRESHOLD,
) -> ConversionReport:
    """Gather artifact reports into one ConversionReport."""
    return ConversionReport(
        threshold=threshold,
        reference=ReferenceMetrics(accuracy=reference_accuracy),
        artifacts=artifacts,
    )
