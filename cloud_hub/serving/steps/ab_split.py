"""`ab_split`: online A/B. Each request goes to one variant, by weight; the variant is in the
response's tags and in the prediction log (`variant`), and
`GET /api/v1/endpoints/{name}/reports/ab` compares the variants with a significance test.

`sticky` says what keeps a caller on its variant: `key` (the request's `key`),
`attribute:NAME` (a request attribute, a device id say) or `header:NAME`. The key is hashed with
the endpoint and step names as salt to a bucket in [0, 1), and the buckets are cut by the
weights in the order the variants are given: the same key always gets the same variant (while
the weights stay). A request without the key (or with no `sticky`) is placed at random.
`weights` change at run time (`PUT .../params`). A variant whose model is switched off (kill
switch) sends the request to another variant, chosen the same way among the others by weight
(tagged `variant_failover`).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from cloud_hub.core.errors import InvalidInput
from cloud_hub.serving.engine.errors import ModelOff
from cloud_hub.serving.engine.step import (
    BuildEnv,
    RunContext,
    Signature,
    Step,
    StepParams,
    register_step,
)
from cloud_hub.serving.engine.values import Value
from cloud_hub.serving.steps.routing import Latencies, bucket, check_same_classes


class AbSplitParams(StepParams):
    variants: dict[str, str] = Field(min_length=1, description="variant name → the step")
    weights: dict[str, float] = Field(description="variant name → its share (any scale)")
    sticky: str | None = Field(
        default=None,
        pattern=r"^(key|attribute:.+|header:.+)$",
        description='"key", "attribute:NAME" or "header:NAME"; none: random',
    )

    @field_validator("weights")
    @classmethod
    def _weights(cls, weights: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        variants = info.data.get("variants")
        if variants is None:
            return weights  # variants refused already
        unknown = sorted(set(weights) - set(variants))
        if unknown:
            raise ValueError(f"{unknown} are not variants (variants: {sorted(variants)})")
        missing = sorted(set(variants) - set(weights))
        if missing:
            raise ValueError(f"no weight for variants {missing}: give one for each variant")
        negative = sorted(n for n, w in weights.items() if not w >= 0)
        if negative:
            raise ValueError(f"weights of {negative} are negative: each must be ≥ 0")
        if not sum(weights.values()) > 0:
            raise ValueError("the weights sum to 0: at least one must be > 0")
        if not math.isfinite(sum(weights.values())):  # inf, or finite ones whose sum is not
            raise ValueError("weights must be finite, and so must their sum")
        return weights


def choose(names: list[str], weights: dict[str, float], point: float) -> str | None:
    """The variant whose share of [0, 1) holds `point` (the variants in the order given)."""
    live = [(n, weights[n]) for n in names if weights[n] > 0]
    total = sum(w for _, w in live)
    if not live:
        return None
    edge = 0.0
    for name, w in live:
        edge += w / total
        if point < edge:
            return name
    return live[-1][0]


@register_step
class AbSplitStep(Step):
    kind = "ab_split"
    Params = AbSplitParams
    arity = (0, 0)
    runtime_params = frozenset({"weights"})

    def __init__(self, name: str, inputs: list[str], params: Any, env: BuildEnv) -> None:
        super().__init__(name, inputs, params, env)
        self.salt = f"{env.endpoint}/{name}"
        self.names = list(params.variants)
        self.random = random.Random()
        self._lock = threading.Lock()
        self._counts: dict[str, Counter[str]] = {n: Counter() for n in self.names}
        self._scores: dict[str, float] = dict.fromkeys(self.names, 0.0)
        self._latency = {n: Latencies() for n in self.names}
        self._weights = params.weights  # as last in force (run-time parameters)
        where, _, sticky_name = (params.sticky or "").partition(":")
        self._sticky = (where, sticky_name.lower() if where == "header" else sticky_name)
        self._notes = {n: f"{name}:{n}" for n in self.names}

    def targets(self) -> list[str]:
        return list(dict.fromkeys(self.params.variants.values()))

    def signature(self, inputs: list[Signature], target: Callable[[str], Signature]) -> Signature:
        return check_same_classes(
            self, {v: target(s) for v, s in self.params.variants.items()}, "variant"
        )

    def key_of(self, ctx: RunContext) -> str | None:
        where, name = self._sticky
        if where == "key":
            return ctx.key
        if where == "attribute":
            got = ctx.attributes.get(name)
            return None if got is None else str(got)
        if where == "header":
            return ctx.headers.get(name)
        return None

    def run(self, ctx: RunContext, inputs: list[Value]) -> Value:
        params: AbSplitParams = ctx.params(self)
        key = self.key_of(ctx)
        point = self.random.random() if key is None else bucket(self.salt, key)
        names = list(self.names)
        first = choose(names, params.weights, point)
        variant = first
        self._weights = params.weights
        off: ModelOff | None = None
        while variant is not None:
            ctx.tag("variant", variant)
            start = time.perf_counter()
            try:
                value = ctx.call(params.variants[variant])
            except ModelOff as exc:
                off = exc
                self._count(variant, "killed")
                names.remove(variant)
                variant = choose(names, params.weights, point)
                continue
            except InvalidInput:
                raise
            except Exception:
                self._count(variant, "errors")
                raise
            self._done(variant, value, (time.perf_counter() - start) * 1000)
            if variant != first:
                assert first is not None
                ctx.tag("variant_failover", first)
                self._count(variant, "failover_in")
            ctx.note(self._notes[variant])
            return value
        # every variant is switched off (or weighs 0): the request fails with the last switch
        if off is None:
            raise RuntimeError("no variant has a weight above 0")
        ctx.tag("variant", first or "")
        raise off

    def _count(self, variant: str, what: str) -> None:
        with self._lock:
            self._counts[variant][what] += 1

    def _done(self, variant: str, value: Value, ms: float) -> None:
        x = value.x
        if x is None:  # head results: no class score to average
            self._latency[variant].add(ms)
            with self._lock:
                c = self._counts[variant]
                c["requests"] += 1
                c["rows"] += value.rows
            return
        if value.top is None:
            top = (
                sum(max(r) for r in x.tolist()) if value.rows <= 16 else float(x.max(axis=1).sum())
            )
        else:
            top = float(np.take_along_axis(x, value.top[:, None], axis=1).sum())
        self._latency[variant].add(ms)
        with self._lock:
            c = self._counts[variant]
            c["requests"] += 1
            c["rows"] += value.rows
            self._scores[variant] += top

    def stats(self) -> dict[str, Any]:
        with self._lock:
            counts = {n: dict(c) for n, c in self._counts.items()}
            scores = dict(self._scores)
        return {
            "variants": {
                name: {
                    "step": self.params.variants[name],
                    "weight": self._weights[name],
                    "requests": c.get("requests", 0),
                    "rows": c.get("rows", 0),
                    "errors": c.get("errors", 0),
                    "killed": c.get("killed", 0),
                    "failover_in": c.get("failover_in", 0),
                    "mean_score": round(scores[name] / c["rows"], 4) if c.get("rows") else None,
                    "latency_ms": self._latency[name].summary(),
                }
                for name, c in counts.items()
            }
        }
