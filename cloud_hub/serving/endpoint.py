"""A compiled endpoint: its spec, loaded models and graph, and the predict call."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from cloud_hub.serving.errors import SpecError
from cloud_hub.serving.graph import Graph, Run, compile_graph
from cloud_hub.serving.models import LoadedModel, ModelSource, load_model
from cloud_hub.serving.spec import BatchingSpec, EndpointSpec
from cloud_hub.serving.stats import EndpointStats
from cloud_hub.serving.values import PredictRequest, Value


class Prediction(BaseModel):
    label: str
    score: float
    scores: list[float]


class PredictResponse(BaseModel):
    endpoint: str
    labels: list[str] = Field(description="class names, in the order of each row's `scores`")
    predictions: list[Prediction]
    steps: list[str] = Field(description="the steps that ran, in the order they finished")
    cache: dict[str, int] = Field(description="prediction/data cache hits and misses")
    counters: dict[str, int]
    latency_ms: float
    job: str | None = Field(
        default=None,
        description="time-differential: the job that delivers the slower, better answer "
        "(GET /api/v1/jobs/{job}, or MQTT {root}/jobs/{job})",
    )


class _Env:
    """The BuildEnv steps see: models loaded on first use, one per alias."""

    def __init__(
        self, registry: ModelSource, spec: EndpointSpec, base_dir: Path, pending: Any
    ) -> None:
        self.registry = registry
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
    ) -> None:
        self.spec = spec
        self.stats = stats or EndpointStats()
        self._fanout = fanout
        self._lock = threading.Lock()
        self._in_flight = 0
        self._retired = False
        self._closed = False
        env = _Env(registry, spec, base_dir or Path.cwd(), self.pending)
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
        self, request: PredictRequest, output: str | None = None
    ) -> tuple[PredictResponse, list[str]]:
        """Run the graph for one request, up to its output (or the step `output`); also the
        steps that asked to run later (time-differential)."""
        if output is not None and output not in self.graph.steps:
            raise SpecError(f"endpoint {self.name!r} has no step {output!r}")
        start = time.perf_counter()
        run = Run(self.graph, request.to_value(), self._fanout, request_key=request.key)
        out = run.result(output)
        latency = (time.perf_counter() - start) * 1000
        self.stats.ok(out.rows, latency, run.trace, run.counters)
        return self._response(out, run, latency), list(run.deferred)

    def _response(self, out: Value, run: Run, latency_ms: float) -> PredictResponse:
        assert out.x is not None
        labels = list(out.labels or ())
        winners = out.winners()
        predictions = []
        for top, row in zip(winners.tolist(), out.x.tolist(), strict=True):
            scores = [round(s, 6) for s in row]  # Python floats: tolist() converts in one go
            label = labels[top] if top < len(labels) else str(top)
            # built from known types: no need to validate them again
            predictions.append(
                Prediction.model_construct(label=label, score=scores[top], scores=scores)
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
            labels=labels,
            predictions=predictions,
            steps=list(run.trace),
            cache=cache,
            counters=dict(c),
            latency_ms=round(latency_ms, 3),
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
