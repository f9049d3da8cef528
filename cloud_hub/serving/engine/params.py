"""An endpoint's run-time parameters: changed through the API, in force at the next request,
with no rebuild and no redeploy (the parameter-based prediction pattern).

Two kinds:
- `kill`: model aliases switched off. A model step whose model is off does not run: the request
  fails with 503 unless a router (A/B split, condition) routes around it or a guard (circuit
  breaker) answers with its fallback.
- `steps`: per step, values for the params its kind lets change at run time (`runtime_params`
  of the kind: a threshold's `min_score`, an A/B split's `weights`, ...). They are merged over the
  spec's params and validated by the kind's own params model, so a bad value is refused naming
  the step and the field, and the spec itself is never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloud_hub.serving.engine.errors import SpecError

if TYPE_CHECKING:
    from cloud_hub.serving.engine.step import Step, StepParams

log = logging.getLogger(__name__)


class EndpointParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kill: list[str] = Field(
        default_factory=list, description="model aliases switched off (kill switches)"
    )
    steps: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="step name → params that override the spec's while the endpoint runs",
    )


@dataclass(frozen=True)
class ResolvedParams:
    """Parameters checked against one compiled endpoint: what its requests read."""

    kill: frozenset[str] = frozenset()
    steps: dict[str, StepParams] = field(default_factory=dict)
    killed_versions: frozenset[int] = frozenset()  # the registry versions of the killed aliases

    def for_step(self, step: Step) -> StepParams:
        got = self.steps.get(step.name)
        return step.params if got is None else got


NO_PARAMS = ResolvedParams()


def resolve(
    params: EndpointParams,
    steps: dict[str, Step],
    models: set[str],
    *,
    strict: bool = True,
    versions: Mapping[str, int] | None = None,
) -> ResolvedParams:
    """`params` checked against an endpoint's steps and model aliases. Strict: SpecError naming
    the step and field at fault; lenient (a spec changed under stored params): what no longer
    fits is left out, with a warning."""

    def refuse(message: str, step: str | None = None) -> None:
        if strict:
            raise SpecError(message, step=step)
        log.warning(
            "ignoring run-time parameter: %s%s", f"step {step!r}: " if step else "", message
        )

    kill: set[str] = set()
    for alias in params.kill:
        if alias in models:
            kill.add(alias)
        else:
            known = ", ".join(sorted(models)) or "none"
            refuse(f"kill: {alias!r} is not a model alias of this endpoint (models: {known})")
    resolved: dict[str, StepParams] = {}
    for name, override in params.steps.items():
        step = steps.get(name)
        if step is None:
            refuse(f"steps: {name!r} is not a step of this endpoint")
            continue
        allowed = step.runtime_params
        fixed = sorted(set(override) - allowed)
        if fixed:
            can = ", ".join(sorted(allowed)) or "none"
            refuse(
                f"params {fixed} of a {step.kind} step cannot change at run time (those that "
                f"can: {can}); update the endpoint's spec instead",
                name,
            )
            continue
        merged = {**step.params.model_dump(), **override}
        try:
            resolved[name] = type(step.params).model_validate(merged)
        except ValidationError as exc:
            msgs = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'params'}: "
                + e["msg"].removeprefix("Value error, ")
                for e in exc.errors()
            )
            refuse(f"bad run-time params: {msgs}", name)
    versions = versions or {}
    killed_versions = frozenset(versions[a] for a in kill if a in versions)
    return ResolvedParams(kill=frozenset(kill), steps=resolved, killed_versions=killed_versions)
