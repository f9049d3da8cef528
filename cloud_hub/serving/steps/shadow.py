"""`shadow`: traffic mirrored to candidate steps; only the primary's answer returns.

The primary answers the request. Each candidate then runs on the same request in the background
(the engine's fan-out pool), never delaying the answer, and its answer is logged in the
prediction log with `role: "shadow"` under the same request id (the primary's is the normal
`answer` record); a candidate that fails is logged with its error. `sample` (changeable at run
time) mirrors only that share of the requests; at most `max_pending` mirrored calls run at once,
past that a request is not mirrored (counted as `dropped`), so a slow candidate cannot pile work
up behind the served traffic. Class scores agree when the winning labels do; head results
(detection, embeddings, ...) agree per task as `edge_agent.core.heads.compare` says, and the mean
agreement score is in the stats (`similarity`). `GET /api/v1/endpoints/{name}/reports/shadow`
compares them.

The candidates run in a fork of the request's context: what they tag or count (a candidate
behind a threshold or a breaker) never shows in the answer's tags, counters or steps. An
endpoint retired (updated, deleted, the hub stopping) waits up to `DRAIN_S` for the mirrored
calls in flight before its steps close, so their records still reach the log.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from pydantic import Field, field_validator

from cloud_hub.serving.engine.step import (
    BuildEnv,
    RunContext,
    Signature,
    Step,
    StepParams,
    register_step,
)
from cloud_hub.serving.engine.values import Value
from cloud_hub.serving.steps.routing import Latencies, check_same_classes
from edge_agent.core.heads import compare


def agreement(primary: Value, got: Value) -> tuple[int, float]:
    """Rows on which the candidate agrees with the primary, and the sum of their agreement
    scores: class scores by the winning label; head results per task
    (`edge_agent.core.heads.compare`: boxes matched at IoU 0.5, cosine of embeddings, ...)."""
    if primary.kind == "results" or got.kind == "results":
        same, total = 0, 0.0
        for a, b in zip(primary.results or (), got.results or (), strict=True):
            try:
                same += compare.agrees(a, b)
                total += compare.agreement(a, b)
            except ValueError:  # results of different tasks: no agreement
                continue
        return same, total
    top, theirs = primary.winners(), got.winners()
    labels, other = primary.labels or (), got.labels or ()
    same = sum(
        1
        for a, b in zip(top.tolist(), theirs.tolist(), strict=True)
        if a < len(labels) and b < len(other) and labels[a] == other[b]
    )
    return same, float(same)


# the primary's own latency, in the answer's tags: the report compares it with the candidates'
PRIMARY_MS_TAG = "shadow_primary_ms"
# how long closing the step waits for the mirrored calls in flight
DRAIN_S = 10.0


class ShadowParams(StepParams):
    primary: str = Field(description="the step whose answer returns")
    candidates: list[str] = Field(min_length=1, description="steps mirrored, answers logged")
    sample: float = Field(default=1.0, ge=0, le=1, description="share of requests mirrored")
    max_pending: int = Field(default=64, ge=1, le=10_000, description="mirrored calls at once")

    @field_validator("candidates")
    @classmethod
    def _distinct(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError("a candidate is named twice")
        return names


@register_step
class ShadowStep(Step):
    kind = "shadow"
    Params = ShadowParams
    arity = (0, 0)
    runtime_params = frozenset({"sample"})

    def __init__(self, name: str, inputs: list[str], params: Any, env: BuildEnv) -> None:
        super().__init__(name, inputs, params, env)
        if params.primary in params.candidates:
            raise self.fail(f"candidates: {params.primary!r} is the primary")
        self.fanout: Executor = env.fanout
        self.random = random.Random()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when nothing is pending
        self._pending = 0
        self._counts: dict[str, Counter[str]] = {c: Counter() for c in params.candidates}
        self._latency = {c: Latencies() for c in params.candidates}
        self._similarity: dict[str, float] = dict.fromkeys(params.candidates, 0.0)
        self._primary_latency = Latencies()
        self._requests = 0
        self._dropped = 0
        self._skipped = 0

    def targets(self) -> list[str]:
        return [self.params.primary, *self.params.candidates]

    def signature(self, inputs: list[Signature], target: Callable[[str], Signature]) -> Signature:
        # candidates may have other classes (a new model): compared by label, not by column;
        # head results must be of the primary's task (compared by edge_agent.core.heads.compare)
        primary = target(self.params.primary)
        for name in self.params.candidates:
            if primary.kind == "results":
                check_same_classes(
                    self, {self.params.primary: primary, name: target(name)}, "candidate"
                )
            else:
                check_same_classes(self, {name: target(name)}, "candidate", results=False)
        return check_same_classes(self, {self.params.primary: primary}, "primary")

    def run(self, ctx: RunContext, inputs: list[Value]) -> Value:
        params: ShadowParams = ctx.params(self)
        start = time.perf_counter()
        value = ctx.call(self.params.primary)
        primary_ms = (time.perf_counter() - start) * 1000
        with self._lock:
            self._requests += 1
            mirror = params.sample >= 1 or self.random.random() < params.sample
            if not mirror:
                self._skipped += 1
            elif self._pending >= params.max_pending:
                self._dropped += 1
                mirror = False
            else:
                self._pending += 1
        if mirror:
            # the primary's own latency, for the report to compare on the same requests
            self._primary_latency.add(primary_ms)
            ctx.tag(PRIMARY_MS_TAG, f"{primary_ms:.3f}")
            try:
                self.fanout.submit(self._mirror, ctx.fork(), value)
            except RuntimeError:  # the pool is shut down (the engine is closing)
                self._end_one()
        return value

    def _end_one(self) -> None:
        with self._lock:
            self._pending -= 1
            if self._pending <= 0:
                self._idle.notify_all()

    def close(self) -> None:
        """Wait (up to DRAIN_S) for the mirrored calls in flight: they log their answers."""
        with self._lock:
            self._idle.wait_for(lambda: self._pending <= 0, timeout=DRAIN_S)

    def _mirror(self, ctx: RunContext, primary: Value) -> None:
        """Every candidate, one after the other, each logged as it ends."""
        try:
            for name in self.params.candidates:
                start = time.perf_counter()
                counts = self._counts[name]
                try:
                    got = ctx.call(name)
                except Exception as exc:  # logged, never raised: the caller has its answer
                    ms = (time.perf_counter() - start) * 1000
                    text = (str(exc).strip() or type(exc).__name__).splitlines()[0][:300]
                    with self._lock:
                        counts["errors"] += 1
                    ctx.log(name, "shadow", primary.take([]), ms, error=text)
                    continue
                ms = (time.perf_counter() - start) * 1000
                self._latency[name].add(ms)
                ctx.log(name, "shadow", got, ms)
                same, similarity = agreement(primary, got)
                with self._lock:
                    counts["requests"] += 1
                    counts["rows"] += primary.rows
                    counts["agree"] += same
                    self._similarity[name] += similarity
        finally:
            self._end_one()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            counts = {name: dict(c) for name, c in self._counts.items()}
            similarity = dict(self._similarity)
            out: dict[str, Any] = {
                "requests": self._requests,
                "skipped": self._skipped,
                "dropped": self._dropped,
                "pending": self._pending,
                "primary_latency_ms": self._primary_latency.summary(),
            }
        out["candidates"] = {
            name: {
                "requests": c.get("requests", 0),
                "errors": c.get("errors", 0),
                "agreement": round(c["agree"] / c["rows"], 4) if c.get("rows") else None,
                "similarity": (round(similarity[name] / c["rows"], 4) if c.get("rows") else None),
                "latency_ms": self._latency[name].summary(),
            }
            for name, c in counts.items()
        }
        return out
