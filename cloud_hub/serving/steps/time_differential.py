"""`time_differential`: the fast step answers at once; the slow, better step runs later, as a
job, and its answer reaches the caller through the job (poll `GET /api/v1/jobs/{id}`, or MQTT
`{root}/jobs/{id}`). The response carries the job's id in `job`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import Field

from cloud_hub.serving.engine.step import (
    BuildEnv,
    RunContext,
    Signature,
    Step,
    StepParams,
    register_step,
)
from cloud_hub.serving.engine.values import Value


class TimeDifferentialParams(StepParams):
    fast: str = Field(description="the step that answers now")
    slow: str = Field(description="the step whose better answer is delivered later, by a job")


@register_step
class TimeDifferentialStep(Step):
    kind = "time_differential"
    Params = TimeDifferentialParams
    arity = (0, 0)

    def __init__(self, name: str, inputs: list[str], params: Any, env: BuildEnv) -> None:
        super().__init__(name, inputs, params, env)
        if params.fast == params.slow:
            raise self.fail("'fast' and 'slow' must be different steps")

    def targets(self) -> list[str]:
        return [self.params.fast, self.params.slow]

    def signature(self, inputs: list[Signature], target: Callable[[str], Signature]) -> Signature:
        fast, slow = target(self.params.fast), target(self.params.slow)
        if fast.kind == "results":
            if slow.kind != "results" or slow.task != fast.task:
                raise self.fail(f"slow step gives {slow.describe()}, not {fast.describe()}")
            return fast
        for role, sig in (("fast", fast), ("slow", slow)):
            if sig.kind != "scores":
                raise self.fail(f"{role} step gives {sig.describe()}, not class scores")
        if fast.labels != slow.labels:
            raise self.fail(
                f"fast and slow steps have different classes: {list(fast.labels or [])} and "
                f"{list(slow.labels or [])}"
            )
        return fast

    def run(self, ctx: RunContext, inputs: list[Value]) -> Value:
        value = ctx.call(self.params.fast)
        ctx.defer(self.params.slow)
        ctx.note(f"{self.name}:deferred")
        return value
