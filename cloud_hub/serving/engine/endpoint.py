"""A compiled endpoint: its spec, loaded models and graph, and the predict call."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_serializer

from cloud_hub.core.errors import InvalidInput
from cloud_hub.predlog.writer import LogEntry, PredictionLogWriter
from cloud_hub.serving.engine.errors import BadInput, ModelOff, SpecError
from cloud_hub.serving.engine.graph import ExtraAnswer, Graph, Run, StepFailed, compile_graph
from cloud_hub.serving.engine.models import LoadedModel, ModelSource, load_model
from cloud_hub.serving.engine.params import NO_PARAMS, ResolvedParams
from cloud_hub.serving.engine.spec import BatchingSpec, EndpointSpec
from cloud_hub.serving.engine.stats import EndpointStats
from cloud_hub.serving.engine.step import Signature
from cloud_hub.serving.engine.values import PredictRequest, Value
from edge_agent.core.digests import outputs_digest
from edge_agent.core.features import summarize

if TYPE_CHECKING:
    from cloud_hub.serving.engine.devices import DeviceFacts


class TensorOut(BaseModel):
    """One row of a raw output tensor."""

    shape: list[int]
    dtype: str
    data: Any = Field(description="the row's values, nested as its shape says")


class Ranked(BaseModel):
    """One of a row's best classes (`top_k`)."""

    label: str
    score: float


class Prediction(BaseModel):
    """One row's answer. Class scores: `label`, `score`, `scores`. A head's result (detection,
    keypoints, segmentation, embedding, regression): the head's own fields (`task`,
    `detections`, `instances`, `classes`, `embedding`, `values`, ...). With `"outputs": true`
    also every raw output tensor of the model that answered, by name."""

    model_config = ConfigDict(extra="allow")

    label: str | None = None
    score: float | None = None
    scores: list[float] | None = None
    task: str | None = Field(default=None, description="the head's task (head results)")
    model_version: int | None = Field(
        default=None, description="the registry version that gave this answer"
    )
    outputs: dict[str, TensorOut] | None = Field(
        default=None, description='every raw output tensor of this row (asked: "outputs")'
    )
    top_k: list[Ranked] | None = Field(
        default=None, description='the row\'s N best classes, best first (asked: "top_k")'
    )

    # no annotations: pydantic would publish the return type as the response's schema
    @model_serializer(mode="wrap")
    def _drop_unset(self, handler):  # type: ignore[no-untyped-def]
        """Fields a kind of answer does not have are left out, not null (a classifier's answer
        stays as it always was: label, score, scores, model_version)."""
        out: dict[str, Any] = handler(self)
        for name in ("label", "score", "scores", "task", "outputs", "top_k"):
            if out.get(name, 0) is None:
                del out[name]
        return out


class PredictResponse(BaseModel):
    endpoint: str
    request_id: str = Field(default="", description="this request's id in the prediction log")
    labels: list[str] = Field(
        description="class names, in the order of each row's `scores` (head results: the "
        "head's labels)"
    )
    predictions: list[Prediction]
    steps: list[str] = Field(description="the steps that ran, in the order they finished")
    cache: dict[str, int] = Field(description="prediction/data cache hits and misses")
    counters: dict[str, int]
    latency_ms: float
    tags: dict[str, str] = Field(
        default_factory=dict,
        description="what steps said of this request: the A/B variant, a fallback, a route",
    )
    job: str | None = Field(
        default=None,
        description="time-differential: the job that delivers the slower, better answer "
        "(GET /api/v1/jobs/{job}, or MQTT {root}/jobs/{job})",
    )


class _Env:
    """The BuildEnv steps see: models loaded on first use, one per alias."""

    def __init__(
        self,
        registry: ModelSource,
        spec: EndpointSpec,
        base_dir: Path,
        pending: Any,
        fanout: Executor,
        devices: Callable[[str], DeviceFacts | None] | None = None,
    ) -> None:
        self.registry = registry
        self.endpoint = spec.name
        self.fanout = fanout
        self.devices = devices
        self.batching: BatchingSpec = spec.batching
        self.refs = spec.model_refs()
        self.base_dir = base_dir
        self.pending = pending
        self.loaded: dict[str, LoadedModel] = {}

    def model(self, alias: str, *, step: str) -> LoadedModel:
        if alias not in self.loaded:
            ref = self.refs.get(alias)
            if ref is None:
                known = ", ".join(sorted(self.refs)) or "none"
                raise SpecError(f"unknown model alias {alias!r} (models: {known})", step=step)
            self.loaded[alias] = load_model(
                self.registry, alias, ref, batching=self.batching, pending=self.pending, step=step
            )
        return self.loaded[alias]

    def resolve_path(self, path: str) -> str:
        p = Path(path).expanduser()
        return str(p if p.is_absolute() else self.base_dir / p)

    def device(self, device_id: str) -> DeviceFacts | None:
        return None if self.devices is None else self.devices(device_id)

    def close(self) -> None:
        for model in self.loaded.values():
            model.close()


class CompiledEndpoint:
    def __init__(
        self,
        spec: EndpointSpec,
        registry: ModelSource,
        *,
        fanout: Executor,
        stats: EndpointStats | None = None,
        base_dir: Path | None = None,
        devices: Callable[[str], DeviceFacts | None] | None = None,
    ) -> None:
        self.spec = spec
        self.stats = stats or EndpointStats()
        self._fanout = fanout
        self.runtime: ResolvedParams = NO_PARAMS  # run-time parameters; swapped whole
        self.log: PredictionLogWriter | None = None
        self._lock = threading.Lock()
        self._in_flight = 0
        self._retired = False
        self._closed = False
        env = _Env(registry, spec, base_dir or Path.cwd(), self.pending, fanout, devices)
        try:
            self.graph: Graph = compile_graph(spec, env)
        except BaseException:
            env.close()
            raise
        self.models = env.loaded
        self._env = env

    @property
    def name(self) -> str:
        return self.spec.name

    def pending(self) -> int:
        return self._in_flight

    def acquire(self) -> bool:
        with self._lock:
            if self._retired:
                return False
            self._in_flight += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._in_flight -= 1
            done = self._retired and self._in_flight == 0
        if done:
            self._close()

    def retire(self) -> None:
        """No new requests; close once those in flight are done."""
        with self._lock:
            self._retired = True
            done = self._in_flight == 0
        if done:
            self._close()

    def _close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.graph.close()
        self._env.close()

    def run(self, request: PredictRequest) -> PredictResponse:
        """Run the graph for one request (the caller holds `acquire()`)."""
        return self.run_deferring(request)[0]

    def run_deferring(
        self, request: PredictRequest, output: str | None = None, *, request_id: str = ""
    ) -> tuple[PredictResponse, list[str]]:
        """Run the graph for one request, up to its output (or the step `output`); also the
        steps that asked to run later (time-differential)."""
        if output is not None and output not in self.graph.steps:
            raise SpecError(f"endpoint {self.name!r} has no step {output!r}")
        if request.top_k is not None:  # before the run: a 422 runs and logs nothing
            _check_top_k(self.graph.signatures.get(output or self.graph.output), request.top_k)
        start = time.perf_counter()
        run = Run(
            self.graph,
            request.to_value(),
            self._fanout,
            request_key=request.key,
            request_id=request_id or request.request_id or "",
            attributes=request.attributes,
            headers=request.headers,
            runtime=self.runtime,
        )
        try:
            out = run.result(output)
        except BaseException as exc:
            if isinstance(exc, StepFailed | ModelOff):
                exc.tags = dict(run.tags) or None
            if self.log is not None:
                # a shadow that ran before the request failed still logs its candidates
                extra_rows = self._extra_rows(run, dict(run.tags) or None)
                log = self.log
                for extra in run.close_log(lambda e: log.add(extra_rows(e))):
                    log.add(extra_rows(extra))
            raise
        latency = (time.perf_counter() - start) * 1000
        self.stats.ok(out.rows, latency, run.trace, run.counters)
        response = self._response(out, run, latency, outputs=request.outputs, top_k=request.top_k)
        if self.log is not None:
            self.log.add(self._log_rows(run, out, response, output or self.graph.output))
        return response, list(run.deferred)

    def _log_rows(
        self, run: Run, out: Value, response: PredictResponse, step: str
    ) -> list[LogEntry]:
        """The prediction log's records for this request: one per row of the answer, and of
        every other answer a step logged (a shadow's: also those it logs later)."""
        digests = _digests(run)
        tags = dict(run.tags) or None
        feats = _features(run)
        common: dict[str, Any] = {
            "ts": time.time(),
            "request_id": run.request_id,
            "endpoint": self.name,
            "step": step,
            "variant": run.tags.get("variant"),
            "latency_ms": response.latency_ms,
            "tags": tags,
        }
        rows = _entries(out, common, digests, feats)
        extra_rows = self._extra_rows(run, tags, digests, feats)
        log = self.log
        assert log is not None
        for extra in run.close_log(lambda e: log.add(extra_rows(e))):
            rows += extra_rows(extra)
        return rows

    def _extra_rows(
        self,
        run: Run,
        tags: dict[str, str] | None,
        digests: list[str] | None = None,
        feats: Callable[[int | None, int], np.ndarray | None] | None = None,
    ) -> Callable[[ExtraAnswer], list[LogEntry]]:
        """What makes the log records of another answer to the request (a shadow's); the
        digests and features are computed here, once, if not given."""
        variant = run.tags.get("variant")

        def extra_rows(extra: ExtraAnswer) -> list[LogEntry]:
            nonlocal digests, feats
            if digests is None or feats is None:
                digests, feats = _digests(run), _features(run)
            value = extra.value
            common: dict[str, Any] = {
                "ts": extra.ts,
                "request_id": run.request_id,
                "endpoint": self.name,
                "step": extra.step,
                "role": extra.role,
                "variant": variant,
                "latency_ms": round(extra.latency_ms, 3),
                "tags": tags,
            }
            answered = value.x is not None or value.results is not None or value.tensors
            if extra.error is not None or not answered:
                return [LogEntry(outcome="failed", error=extra.error, **common)]
            return _entries(value, common, digests, feats)

        return extra_rows

    def _response(
        self,
        out: Value,
        run: Run,
        latency_ms: float,
        *,
        outputs: bool = False,
        top_k: int | None = None,
    ) -> PredictResponse:
        labels = list(out.labels or ())
        versions = [None] * out.rows if out.version is None else out.version.tolist()
        tensors = out.tensors if (outputs or out.kind == "tensors") else None
        predictions = []
        if out.kind == "scores":
            assert out.x is not None
            winners = out.winners()
            best = _best(out.x, top_k) if top_k is not None else None
            for i, (top, scores, version) in enumerate(
                zip(winners.tolist(), out.rounded_scores, versions, strict=True)
            ):
                label = labels[top] if top < len(labels) else str(top)
                ranked = (
                    None
                    if best is None
                    else [
                        Ranked.model_construct(
                            label=labels[c] if c < len(labels) else str(c), score=scores[c]
                        )
                        for c in best[i]
                    ]
                )
                # built from known types: no need to validate them again
                predictions.append(
                    Prediction.model_construct(
                        task="classification",
                        label=label,
                        score=scores[top],
                        **{"class": top},
                        scores=scores,
                        model_version=None if version is None or version < 0 else version,
                        outputs=None if tensors is None else _row_tensors(tensors, i, out.rows),
                        top_k=ranked,
                    )
                )
        else:
            results = out.results or tuple({"task": out.task or "raw"} for _ in range(out.rows))
            for i, (result, version) in enumerate(zip(results, versions, strict=True)):
                predictions.append(
                    Prediction.model_construct(
                        **result,
                        model_version=None if version is None or version < 0 else version,
                        outputs=None if tensors is None else _row_tensors(tensors, i, out.rows),
                    )
                )
        c = run.counters
        cache = {
            "hits": c.get("cache_hits", 0),
            "misses": c.get("cache_misses", 0),
            "data_hits": c.get("data_cache_hits", 0),
            "data_misses": c.get("data_cache_misses", 0),
        }
        return PredictResponse(
            endpoint=self.name,
            request_id=run.request_id,
            labels=labels,
            predictions=predictions,
            steps=list(run.trace),
            cache=cache,
            counters=dict(c),
            latency_ms=round(latency_ms, 3),
            tags=dict(run.tags),
        )

    def describe(self) -> dict[str, Any]:
        return {
            "output": self.graph.output,
            "models": [m.describe() for m in self.models.values()],
            "signatures": {name: sig.describe() for name, sig in self.graph.signatures.items()},
        }

    def step_stats(self) -> dict[str, Any]:
        return {
            name: {"kind": step.kind, **step.stats()} for name, step in self.graph.steps.items()
        }


def _check_top_k(answer: Signature | None, k: int) -> None:
    """BadInput unless the endpoint answers class scores of at least `k` classes (as far as
    its graph says: an answer of more classes than known is cut to those it has)."""
    if answer is None:
        return
    if answer.kind != "scores":
        raise BadInput(
            f"top_k ranks class scores; this endpoint answers {answer.task or answer.kind}"
        )
    classes = answer.shape[1] if answer.shape is not None and len(answer.shape) > 1 else None
    if classes is not None and k > classes:
        raise BadInput(f"top_k is {k}, but this endpoint answers {classes} classes")


def _best(x: np.ndarray, k: int) -> list[list[int]]:
    """Each row's `k` best classes, best first (ties: the lower index first)."""
    order = np.argsort(-x, axis=1, kind="stable")[:, : min(k, x.shape[1])]
    best: list[list[int]] = order.tolist()
    return best


def _digests(run: Run) -> list[str]:
    """The request's rows' input digests (16 hex digits: the same input, the same digest), or
    none if it has nothing to digest. blake2b of the raw row: a few times cheaper than the
    prediction cache's sha256 keys, and this runs for every request."""
    x = run.request.x
    if x is not None:
        rows = np.ascontiguousarray(x)
        return [hashlib.blake2b(r.tobytes(), digest_size=8).hexdigest() for r in rows]
    try:
        return [d[:16] for d in run.request.row_digests()]
    except InvalidInput:
        return []


def _features(run: Run) -> Callable[[int | None, int], np.ndarray | None]:
    """A row's input summary as a model version saw it (drift monitoring), if it was seen."""
    features = {v: summarize(x) for v, x in run.observed.items()}

    def feats(version: int | None, row: int) -> np.ndarray | None:
        got = features.get(version) if version is not None else None
        return got[row] if got is not None and row < len(got) else None

    return feats


def _row_tensors(tensors: Mapping[str, np.ndarray], i: int, rows: int) -> dict[str, TensorOut]:
    """Row i of every raw output tensor, by name."""
    out = {}
    for name, value in tensors.items():
        arr = np.asarray(value)
        row = arr[i] if arr.ndim and len(arr) == rows else arr
        out[name] = TensorOut.model_construct(
            shape=[int(d) for d in row.shape], dtype=str(row.dtype), data=row.tolist()
        )
    return out


def _logged(result: dict[str, Any]) -> dict[str, Any]:
    """A head result as the log keeps it: without the segmentation mask's PNG."""
    return {k: v for k, v in result.items() if k != "mask_png"}


def _entries(
    value: Value,
    common: dict[str, Any],
    digests: list[str],
    feats: Callable[[int | None, int], np.ndarray | None],
) -> list[LogEntry]:
    """One log record per row of an answer: the label and scores of class scores, or the
    head's result; and the digest of the row's raw tensors (not the tensors)."""
    versions = value.version
    tensors = value.tensors
    out = []
    winners = value.winners().tolist() if value.kind == "scores" else None
    scores = value.rounded_scores if value.kind == "scores" and value.x is not None else None
    labels = value.labels or ()
    for i in range(value.rows):
        v = None if versions is None or versions[i] < 0 else int(versions[i])
        fields: dict[str, Any] = {}
        if winners is not None and scores is not None:
            top = winners[i]
            fields["label"] = labels[top] if top < len(labels) else str(top)
            fields["score"] = scores[i][top]
            fields["output"] = scores[i]
        elif value.kind == "tensors":
            fields["output"] = {"task": "raw"}  # the tensors are the answer: their digest
        elif value.results is not None:
            result = value.results[i]
            fields["output"] = _logged(result)
            if isinstance(result.get("label"), str):
                fields["label"] = result["label"]
        out.append(
            LogEntry(
                outcome="ok",
                model_version=v,
                row=i,
                input_digest=digests[i] if i < len(digests) else None,
                outputs_digest=None if tensors is None else outputs_digest(tensors, i, value.rows),
                features=feats(v, i),
                **fields,
                **common,
            )
        )
    return out
