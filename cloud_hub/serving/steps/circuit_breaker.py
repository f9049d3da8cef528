"""`circuit_breaker`: a guard around a step that calls out (a slow model, a remote device, an HTTP
backend).

Closed, it calls the target; a call that fails, or is slower than `timeout_ms` (the caller gets
the fallback then, without waiting longer: the target runs on the engine's fan-out pool and is
waited on with a timeout), counts as a failure. `failures` failures within `window_s` open it:
while open it answers with the fallback at once, without calling. After `cooldown_s` it is
half-open: one trial call goes through (other requests meanwhile get the fallback); a success
closes it, a failure opens it again. A target switched off by a kill switch also gets the
fallback (not counted as a failure: the backend did nothing wrong). Bad input is the caller's:
it is raised, not counted.

The fallback is required: `{"label": "..."}` (every row answered that label; a label that is
not one of the target's classes is added as an extra class) or `{"step": "..."}` (another step
answers, with the target's classes).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
from cloud_hub.serving.steps.routing import check_same_classes, fixed_answer, with_extra_class

State = Literal["closed", "open", "half_open"]


class Fallback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(default=None, min_length=1, description="a fixed answer")
    step: str | None = Field(default=None, description="a step that answers instead")

    @model_validator(mode="after")
    def _one(self) -> Fallback:
        if (self.label is None) == (self.step is None):
            raise ValueError(
                "give exactly one of 'label' (a fixed answer) or 'step' (a step that answers)"
            )
        return self


class CircuitBreakerParams(StepParams):
    target: str = Field(description="the step it guards")
    fallback: Fallback | None = Field(
        default=None, description='what it answers when open: {"label": ...} or {"step": ...}'
    )
    failures: int = Field(default=5, ge=1, le=100_000, description="failures that open it")
    window_s: float = Field(default=30.0, gt=0, le=86_400, description="…within this window")
    cooldown_s: float = Field(
        default=10.0, gt=0, le=86_400, description="open this long, then one trial call"
    )
    timeout_ms: float | None = Field(
        default=None, gt=0, le=600_000, description="a call slower than this counts as failed"
    )


class _Timeout(Exception):
    pass


@register_step
class CircuitBreakerStep(Step):
    kind = "circuit_breaker"
    Params = CircuitBreakerParams
    arity = (0, 0)
    runtime_params = frozenset({"failures", "window_s", "cooldown_s", "timeout_ms"})

    def __init__(self, name: str, inputs: list[str], params: Any, env: BuildEnv) -> None:
        super().__init__(name, inputs, params, env)
        if params.fallback is None:
            raise self.fail(
                'fallback: required: what the breaker answers while open, {"label": "..."} '
                '(a fixed answer) or {"step": "..."} (another step)'
            )
        if params.fallback.step == params.target:
            raise self.fail("fallback.step: the fallback must be another step than the target")
        self.fanout: Executor = env.fanout
        self.labels: tuple[str, ...] = ()
        self._extra = False
        self.clock: Callable[[], float] = time.monotonic  # tests move it
        self._lock = threading.Lock()
        self._state: State = "closed"
        self._failed_at: deque[float] = deque()
        self._opened_at = 0.0
        self._trial = False
        self._counts: Counter[str] = Counter()
        self._transitions: deque[dict[str, Any]] = deque(maxlen=50)
        self._in_force: CircuitBreakerParams = params  # as last in force (run-time parameters)

    def targets(self) -> list[str]:
        step = self.params.fallback.step
        return [self.params.target] + ([step] if step is not None else [])

    def signature(self, inputs: list[Signature], target: Callable[[str], Signature]) -> Signature:
        return self._output(target)[0]

    def bind(self, inputs: list[Signature], target: Callable[[str], Signature]) -> None:
        _, self.labels, self._extra = self._output(target)

    def _output(
        self, target: Callable[[str], Signature]
    ) -> tuple[Signature, tuple[str, ...], bool]:
        """What the step gives, its classes, and whether the fallback's label is an extra one."""
        sigs = {name: target(name) for name in self.targets()}
        first = check_same_classes(self, sigs, "step")
        label = self.params.fallback.label
        if first.kind == "results":
            if label is not None:
                raise self.fail(
                    f"fallback.label: the target gives {first.describe()}, not class scores: "
                    'fall back to another step ({"step": "..."})'
                )
            return first, (), False
        labels = first.labels or ()
        extra = False
        if label is not None and label not in labels:
            if first.labels is None:
                raise self.fail(f"fallback.label: the target's classes are unknown: {label!r}")
            labels = (*labels, label)  # an extra class: the fallback's own answer
            extra = True
        width = len(labels) if extra else (first.shape or (None, None))[-1]
        return Signature("scores", (None, width), labels), labels, extra

    # -- the state machine -------------------------------------------------------------------
    def _move(self, to: State, reason: str) -> None:
        """Under the lock."""
        self._transitions.append(
            {"at": round(time.time(), 3), "from": self._state, "to": to, "reason": reason}
        )
        self._counts[f"to_{to}"] += 1
        self._state = to
        if to == "open":
            self._opened_at = self.clock()
        elif to == "closed":
            self._failed_at.clear()

    def _admit(self, params: CircuitBreakerParams) -> tuple[bool, bool, State]:
        """(call the target?, is it the half-open trial?, the state it saw)."""
        with self._lock:
            if self._state == "open":
                if self.clock() - self._opened_at < params.cooldown_s:
                    return False, False, "open"
                self._move("half_open", "cool-down over")
            if self._state == "half_open":
                if self._trial:
                    return False, False, "half_open"  # one trial at a time
                self._trial = True
                return True, True, "half_open"
            return True, False, "closed"

    def _done(self, trial: bool, outcome: str, params: CircuitBreakerParams) -> None:
        """Record a call's outcome: ok, failed, timeout, or neutral (killed, bad input)."""
        with self._lock:
            self._counts[outcome] += 1
            if trial:
                self._trial = False
                if outcome == "ok":
                    self._move("closed", "trial call succeeded")
                elif outcome in ("failed", "timeout"):
                    self._move("open", f"trial call {outcome}")
                return
            if outcome not in ("failed", "timeout") or self._state != "closed":
                return
            now = self.clock()
            self._failed_at.append(now)
            while self._failed_at and self._failed_at[0] <= now - params.window_s:
                self._failed_at.popleft()
            if len(self._failed_at) >= params.failures:
                self._move("open", f"{len(self._failed_at)} failures within {params.window_s:g} s")

    # -- a request -----------------------------------------------------------------------------
    def _call(self, ctx: RunContext, params: CircuitBreakerParams) -> Value:
        if params.timeout_ms is None:
            return ctx.call(self.params.target)
        future = self.fanout.submit(ctx.call, self.params.target)
        try:
            return future.result(timeout=params.timeout_ms / 1000)
        except TimeoutError:
            future.cancel()  # not started yet (a busy pool): it need not run at all
            raise _Timeout from None

    def run(self, ctx: RunContext, inputs: list[Value]) -> Value:
        params: CircuitBreakerParams = ctx.params(self)
        self._in_force = params
        call, trial, seen = self._admit(params)
        if not call:
            return self._fallback(ctx, inputs[0].rows, seen)
        try:
            value = self._call(ctx, params)
        except _Timeout:
            self._done(trial, "timeout", params)
            return self._fallback(ctx, inputs[0].rows, "timeout")
        except ModelOff:
            self._done(trial, "killed", params)
            return self._fallback(ctx, inputs[0].rows, "killed")
        except InvalidInput:
            self._done(trial, "bad_input", params)
            raise
        except Exception:
            self._done(trial, "failed", params)
            return self._fallback(ctx, inputs[0].rows, "failed")
        except BaseException:  # not answered here, but a trial must end: never half-open for good
            self._done(trial, "failed", params)
            raise
        self._done(trial, "ok", params)
        return with_extra_class(value, self.labels) if self._extra else value

    def _fallback(self, ctx: RunContext, rows: int, reason: str) -> Value:
        with self._lock:
            self._counts["fallbacks"] += 1
            self._counts[f"fallback_{reason}"] += 1
        ctx.tag("fallback", reason)
        ctx.note(f"{self.name}:fallback_{reason}")
        fallback = self.params.fallback
        if fallback.label is not None:
            return fixed_answer(rows, self.labels, fallback.label)
        value = ctx.call(fallback.step)
        return with_extra_class(value, self.labels) if self._extra else value

    @property
    def state(self) -> State:
        with self._lock:
            return self._state

    def stats(self) -> dict[str, Any]:
        with self._lock:
            counts = dict(self._counts)
            out: dict[str, Any] = {
                "state": self._state,
                "failures_in_window": len(self._failed_at),
                "calls": sum(counts.get(k, 0) for k in ("ok", "failed", "timeout", "killed")),
                "successes": counts.get("ok", 0),
                "failures": counts.get("failed", 0),
                "timeouts": counts.get("timeout", 0),
                "killed": counts.get("killed", 0),
                "fallbacks": counts.get("fallbacks", 0),
                "short_circuited": counts.get("fallback_open", 0)
                + counts.get("fallback_half_open", 0),
                "opened": counts.get("to_open", 0),
                "transitions": list(self._transitions),
            }
            if self._state == "open":
                left = self._in_force.cooldown_s - (self.clock() - self._opened_at)
                out["half_open_in_s"] = round(max(left, 0.0), 3)
        return out
