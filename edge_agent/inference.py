"""One way in for every inference on the device: run the active model, answer with its head, log.

The HTTP API, the OpenCV source and the MQTT request topic all call `InferenceService.infer`
with a batch: one array (a one-input model) or arrays by input name, and, for images, the
`Geometry` of each row (from `preprocess.prepare_image`) so that boxes and points come back in
the caller's image pixels. Each call runs the model through the ModelManager (hot-swap safe),
decodes every row with the version's task head (`edge_agent.core.heads.decode`, outputs dequantized
first), records latency for telemetry, and writes one log record per row to the outbox before it
returns, so a logged request is never lost. A log's `output` is the head's result (a
segmentation's mask PNG left out) and `outputs_digest` the sha256 of the row's raw tensors.

A frame source has nobody waiting for an answer, and waiting for each frame's commit (an fsync)
would cap it at one frame per fsync. It calls `infer(..., wait=False)`: the log is submitted to
the group commit as deferred (committed within the writer's `deferred_delay_s`, 10 ms, together
with whatever else came meanwhile) and the call returns at once; at most `max_unflushed` logs are
ever left uncommitted (past that the call waits for the oldest), and `flush()` waits for all of
them. So durability lags a source by about 10 ms; every log still lands in the outbox.

Serving parameters (`wire.ServingParams`, from the desired state) are read on every call, so a
change takes effect on the next request. `min_score`: a classification whose top score is below
it is answered with the default label (`class` null, `thresholded` true); a detection drops the
boxes that score below it; other tasks ignore it. With the kill switch on the model is not run
at all (each sample is answered with the default label, or ServingDisabled is raised when there
is none). A shadow (`shadow.ShadowRunner`) gets each request after the active model answered.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.answer_log import log_output
from edge_agent.core.digests import input_digests, outputs_digest
from edge_agent.core.features import summary_lists
from edge_agent.core.preprocess import Geometry
from edge_agent.core.runtimes import TensorSpec
from edge_agent.core.wire import ServingParams
from edge_agent.model_manager import ModelManager, NoActiveModel, Prediction
from edge_agent.outbox import BatchWriter
from edge_agent.shadow import ShadowRunner
from edge_agent.telemetry import LatencyTracker

__all__ = [
    "HeadFailed",
    "InferenceResult",
    "InferenceService",
    "NoActiveModel",
    "ServingDisabled",
    "tensor_json",
]


class ServingDisabled(Exception):
    """The deployment's kill switch is on and gives no default answer."""


class HeadFailed(RuntimeError):
    """The version's head could not read the model's outputs (a model error, not the input's)."""


log = logging.getLogger(__name__)

Feeds = np.ndarray | Mapping[str, np.ndarray]


def tensor_json(value: np.ndarray, spec: TensorSpec | None = None) -> dict[str, Any]:
    """One raw output tensor as JSON: shape, dtype and the values exactly (a float32 written as
    the double it converts to reads back to the same float32); a quantized tensor's scale and
    zero point with it."""
    doc: dict[str, Any] = {
        "shape": list(value.shape),
        "dtype": value.dtype.name if value.dtype.kind != "O" else "str",
        "data": value.tolist(),
    }
    if spec is not None and spec.quantization is not None:
        doc["quantization"] = {
            "scale": spec.quantization.scale,
            "zero_point": spec.quantization.zero_point,
        }
    return doc


@dataclass(frozen=True)
class InferenceResult:
    request_id: str
    model_version: int | None  # None when the kill switch answered (no model ran)
    predictions: list[dict[str, Any]]  # the head's answer per sample (see `to_json`)
    latency_ms: float
    seqs: list[int]  # outbox sequence numbers of the logs (one per sample); [] if not waited for
    outputs: dict[str, dict[str, Any]] | None = None  # every raw output, when asked
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
        doc["predictions"] = self.predictions
        if self.outputs is not None:
            doc["outputs"] = self.outputs
        return doc


def _rows_of(x: Feeds) -> int:
    first = next(iter(x.values())) if isinstance(x, Mapping) else x
    return int(len(first)) if np.ndim(first) else 1


Record = dict[str, Any]


class _Summaries:
    """A request's digests and drift summaries, computed once, when the first of its log records
    is built (on the log writer's thread for a frame source)."""

    def __init__(self, x: Feeds, outputs: Mapping[str, np.ndarray], rows: int) -> None:
        self._x, self._outputs, self._rows = x, outputs, rows
        self._done: tuple[list[str], list[str], list[Any]] | None = None

    def record(
        self, build: Callable[[int, list[str], list[str], list[Any]], Record], i: int
    ) -> Record:
        if self._done is None:
            rows = self._rows
            self._done = (
                input_digests(self._x, rows),
                [outputs_digest(self._outputs, j, rows) for j in range(rows)],
                _features(self._x, rows),
            )
        return build(i, *self._done)


def _features(x: Feeds, rows: int) -> list[list[float] | None]:
    """Drift summaries of the (first) input, when it is numeric and has a row per sample."""
    first = next(iter(x.values())) if isinstance(x, Mapping) else x
    arr = np.asarray(first)
    if arr.dtype.kind not in "fiub" or arr.ndim == 0 or len(arr) != rows:
        return [None] * rows
    lists: list[list[float] | None] = list(summary_lists(arr))
    return lists


def _check_numeric(x: Feeds) -> None:
    items = x.items() if isinstance(x, Mapping) else [("", x)]
    for name, value in items:
        kind = np.asarray(value).dtype.kind
        if kind == "b":
            where = f"input {name}" if name else "inputs"
            raise ValueError(f"{where} must be numbers (got bool values)")


def _apply_min_score(
    answer: dict[str, Any], min_score: float | None, default_label: str | None
) -> tuple[dict[str, Any], bool]:
    """The answer as served under `min_score` (see the module's docstring) and whether it fell
    below it."""
    task = answer.get("task")
    if task == "classification":
        low = min_score is not None and answer["score"] < min_score
        served = dict(answer)
        if low:
            served["class"] = None
            served["label"] = default_label
        served["thresholded"] = low
        return served, low
    if task == "detection" and min_score is not None:
        kept = [d for d in answer.get("detections", []) if d["score"] >= min_score]
        return {**answer, "detections": kept}, False
    return answer, False


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
        x: Feeds,
        *,
        source: str = "api",
        request_id: str | None = None,
        wait: bool = True,
        geometry: Sequence[Geometry | None] | None = None,
        outputs: bool = False,
        mask: bool = False,
    ) -> InferenceResult:
        """Run a batch of model-ready inputs (one array, or arrays by input name) and answer each
        row with the head's result. `geometry` (one per row) maps model-input pixels to the
        caller's image; `outputs` adds every raw output tensor; `mask` adds a segmentation's
        mask PNG. Raises NoActiveModel, ServingDisabled, or ValueError (the runtime's
        InputError) for an input the model cannot take; neither is logged as a model error.

        With `wait` (every request someone answers) the logs are committed before this returns.
        Without it (a frame source) they are submitted and committed shortly after: see the
        module's docstring; the result's `seqs` is then empty."""
        request_id = request_id or uuid.uuid4().hex
        _check_numeric(x)
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
        rows = pred.rows
        if geometry is not None and len(geometry) != rows:
            geometry = None  # a geometry per row, or none (model-input pixels)
        try:
            answers = self._answers(pred, geometry, mask)
        except Exception as exc:
            self.tracker.record(pred.version_id, pred.latency_ms, ok=False)
            raise HeadFailed(f"the {pred.head.task} head failed on the outputs: {exc}") from exc
        self.tracker.record(pred.version_id, pred.latency_ms)
        now = time.time()
        served: list[dict[str, Any]] = []
        thresholded: list[bool] = []
        for answer in answers:
            one, low = _apply_min_score(answer, params.min_score, params.default_label)
            served.append(one)
            thresholded.append(low)
        mirror = self.shadow is not None and (
            params.shadow_sample >= 1 or self._sampler.random() < params.shadow_sample
        )

        def record(i: int, digests: list[str], out: list[str], features: list[Any]) -> Record:
            doc: Record = {
                "request_id": request_id if rows == 1 else f"{request_id}/{i}",
                "model_version": pred.version_id,
                "input_digest": digests[i],
                "output": log_output(answers[i], served[i]),
                "outputs_digest": out[i],
                "latency_ms": round(pred.latency_ms, 4),
                "ts": now,
                "source": source,
                "thresholded": thresholded[i],
            }
            if features[i] is not None:
                doc["features"] = features[i]
            return doc

        if not wait and not mirror:
            # Nobody waits and no shadow needs the digests now: the writer's thread computes
            # them (sha256 of the input and outputs, the drift summary) and the JSON, so a frame
            # source's thread only runs the model and the head.
            summaries = _Summaries(x, pred.outputs, rows)
            futures = [
                self.writer.submit_lazy("log", functools.partial(summaries.record, record, i))
                for i in range(rows)
            ]
            digests = out_digests = []
        else:
            digests = input_digests(x, rows)
            out_digests = [outputs_digest(pred.outputs, i, rows) for i in range(rows)]
            features = _features(x, rows)  # what the hub compares with the training baseline
            futures = [
                self.writer.submit(
                    "log", record(i, digests, out_digests, features), deferred=not wait
                )
                for i in range(rows)
            ]
        if self.shadow is not None and mirror:  # runs while this request waits for its commit
            self.shadow.submit(
                x,
                request_id=request_id,
                active_version=pred.version_id,
                active_answers=answers,
                active_latency_ms=pred.latency_ms,
                digests=digests,
                source=source,
                geometry=geometry,
                active_outputs=out_digests,
            )
        if wait:
            seqs = [f.result() for f in futures]  # durable before we answer
        else:
            seqs = []
            self._defer(futures)
        with self._count_lock:  # requests arrive on many threads (HTTP, MQTT, a source)
            self.count += rows
        raw = None
        if outputs:
            specs = {spec.name: spec for spec in pred.specs}
            raw = {name: tensor_json(v, specs.get(name)) for name, v in pred.outputs.items()}
        return InferenceResult(
            request_id,
            pred.version_id,
            served,
            pred.latency_ms,
            seqs,
            outputs=raw,
            thresholded=tuple(thresholded),
            default_label=params.default_label,
        )

    def _answers(
        self, pred: Prediction, geometry: Sequence[Geometry | None] | None, mask: bool
    ) -> list[dict[str, Any]]:
        answers = pred.answers(geometry, include_mask=mask)
        fallback = self._labels()
        if pred.head.task == "classification" and not pred.head.labels and fallback:
            for answer in answers:  # labels the service was given, for a head without any
                for item in (answer, *answer.get("top_k", [])):
                    c = item["class"]
                    item["label"] = fallback[c] if c < len(fallback) else None
        return answers

    def _switched_off(
        self, x: Feeds, params: ServingParams, *, source: str, request_id: str, wait: bool
    ) -> InferenceResult:
        """The kill switch: no model runs; each sample gets the default label, logged."""
        if params.default_label is None:
            raise ServingDisabled(
                "serving is switched off by the deployment's parameters "
                "(disabled, and no default_label to answer with)"
            )
        rows = _rows_of(x)
        digests = input_digests(x, rows)
        now = time.time()
        futures = [
            self.writer.submit(
                "log",
                {
                    "request_id": request_id if rows == 1 else f"{request_id}/{i}",
                    "model_version": None,
                    "input_digest": digests[i],
                    "output": {"disabled": True, "label": params.default_label},
                    "latency_ms": 0.0,
                    "ts": now,
                    "source": source,
                },
                deferred=not wait,
            )
            for i in range(rows)
        ]
        if wait:
            seqs = [f.result() for f in futures]
        else:
            seqs = []
            self._defer(futures)
        with self._count_lock:
            self.count += rows
        predictions = [
            {"class": None, "label": params.default_label, "score": None, "disabled": True}
            for _ in range(rows)
        ]
        return InferenceResult(
            request_id,
            None,
            predictions,
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
