"""Caches: `prediction_cache` (repeat inputs skip the model) and `data_cache` (inputs fetched by
id from a data source, their preprocessed tensors kept; the model still runs every time)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from cloud_hub.serving.engine.errors import BadInput
from cloud_hub.serving.engine.prep import output_signature, parse_spec, prepare_images, prepare_rows
from cloud_hub.serving.engine.step import (
    BuildEnv,
    RunContext,
    Signature,
    Step,
    StepParams,
    register_step,
)
from cloud_hub.serving.engine.ttl_cache import TTLCache
from cloud_hub.serving.engine.values import Value, concat, merge
from cloud_hub.serving.jobs.datasource import DataSource, SourceSpec, open_source


class PredictionCacheParams(StepParams):
    target: str = Field(description="the step whose answers are cached")
    key: Literal["content", "id"] = Field(
        default="content", description="a digest of the row's content, or the request's data id"
    )
    ttl_s: float = Field(default=300.0, gt=0)
    max_entries: int = Field(default=10_000, ge=1)


@register_step
class PredictionCacheStep(Step):
    """Answers repeated rows from memory; only the rows it has not seen go to `target`."""

    kind = "prediction_cache"
    Params = PredictionCacheParams
    arity = (0, 1)

    def __init__(self, name: str, inputs: list[str], params: Any, env: BuildEnv) -> None:
        super().__init__(name, inputs, params, env)
        # one row of the target's answer (scores or results), with the version that gave it
        self.cache: TTLCache[tuple[Value, int]] = TTLCache(
            max_entries=params.max_entries, ttl_s=params.ttl_s
        )
        self.labels: tuple[str, ...] | None = None

    def targets(self) -> list[str]:
        return [self.params.target]

    def signature(self, inputs: list[Signature], target: Callable[[str], Signature]) -> Signature:
        sig = target(self.params.target)
        if sig.kind not in ("scores", "results"):
            raise self.fail(
                f"target {self.params.target!r} gives {sig.describe()}, not scores or results"
            )
        return sig

    def bind(self, inputs: list[Signature], target: Callable[[str], Signature]) -> None:
        self.labels = target(self.params.target).labels

    def keys(self, value: Value) -> list[str]:
        if self.params.key == "id":
            if value.ids is None:
                raise BadInput("this endpoint caches by data id: send 'id' or 'ids'")
            return [f"id:{i}" for i in value.ids]
        return value.row_digests()

    def run(self, ctx: RunContext, inputs: list[Value]) -> Value:
        (given,) = inputs
        keys = self.keys(given)
        found = [self.cache.get(k) for k in keys]
        # an answer cached from a model switched off since is not served: the row goes to the
        # target again, which fails or routes around the killed model
        found = [None if f is not None and ctx.killed_version(f[1]) else f for f in found]
        miss = np.asarray([i for i, f in enumerate(found) if f is None], dtype=np.int64)
        hit = np.asarray([i for i, f in enumerate(found) if f is not None], dtype=np.int64)
        ctx.note("cache_hits", len(hit))
        ctx.note("cache_misses", len(miss))
        parts: list[tuple[np.ndarray, Value]] = []
        if len(miss):
            fresh = ctx.call(self.params.target, miss)
            if fresh.kind == "scores":  # the winner as answered (a vote) is what is cached
                fresh = replace(fresh, top=fresh.winners())
            versions = fresh.version if fresh.version is not None else np.full(len(miss), -1)
            for j, row in enumerate(miss):
                self.cache.put(keys[row], (fresh.take([j]), int(versions[j])))
            parts.append((miss, fresh))
        if len(hit):
            cached = concat([f[0] for f in found if f is not None])
            if parts and cached.kind == "scores":
                cached = replace(cached, labels=parts[0][1].labels)
            parts.append((hit, cached))
        return merge(parts, given.rows)

    def stats(self) -> dict[str, Any]:
        return {"cache": self.cache.snapshot()}


class DataCacheParams(StepParams):
    source: SourceSpec
    model: str | None = Field(
        default=None, description="alias whose preprocessing spec prepares the fetched inputs"
    )
    spec: dict[str, Any] | None = None
    ttl_s: float | None = Field(default=None, gt=0, description="[default: until evicted]")
    max_entries: int = Field(default=10_000, ge=1)


@register_step
class DataCacheStep(Step):
    """Request ids → preprocessed tensors, fetched from the source once and then kept."""

    kind = "data_cache"
    Params = DataCacheParams
    arity = (0, 0)

    def __init__(self, name: str, inputs: list[str], params: Any, env: BuildEnv) -> None:
        super().__init__(name, inputs, params, env)
        raw = params.spec
        if params.model is not None:
            raw = env.model(params.model, step=name).preprocessing
        try:
            self.spec = parse_spec(raw or {"input_kind": "tabular", "layout": "NF"})
        except ValueError as exc:
            raise self.fail(f"bad preprocessing spec: {exc}") from None
        path = Path(env.resolve_path(params.source.path))
        try:
            self.source: DataSource = open_source(params.source, path)
        except ValueError as exc:
            raise self.fail(str(exc)) from None
        self.cache: TTLCache[np.ndarray] = TTLCache(
            max_entries=params.max_entries, ttl_s=params.ttl_s
        )
        self.fetches = 0

    def signature(self, inputs: list[Signature], target: Callable[[str], Signature]) -> Signature:
        return output_signature(self.spec)

    def _prepare(self, item: bytes | np.ndarray) -> np.ndarray:
        if isinstance(item, bytes):
            return prepare_images((item,), self.spec)
        return prepare_rows(item.reshape(1, -1), self.spec)

    def run(self, ctx: RunContext, inputs: list[Value]) -> Value:
        (request,) = inputs
        if request.ids is None:
            raise BadInput("this endpoint reads its inputs by id: send 'id' or 'ids'")
        rows = []
        for item_id in request.ids:
            tensor = self.cache.get(item_id)
            if tensor is None:
                ctx.note("data_cache_misses")
                self.fetches += 1
                tensor = self._prepare(self.source.fetch(item_id))
                self.cache.put(item_id, tensor)
            else:
                ctx.note("data_cache_hits")
            rows.append(tensor)
        return Value(kind="tensor", rows=request.rows, x=np.concatenate(rows), ids=request.ids)

    def stats(self) -> dict[str, Any]:
        return {"cache": self.cache.snapshot(), "fetches": self.fetches}
