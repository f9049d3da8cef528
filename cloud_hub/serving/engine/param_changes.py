"""A change to an endpoint's run-time parameters, applied to the current ones: kill switches on
and off, step params set and unset, or everything dropped first."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from cloud_hub.serving.engine.params import EndpointParams


class ParamChanges(BaseModel):
    kill: list[str] = Field(default_factory=list, description="model aliases to switch off")
    unkill: list[str] = Field(default_factory=list, description="model aliases to switch on")
    set: list[tuple[str, str, Any]] = Field(
        default_factory=list, description="(step, field, value) to set"
    )
    unset: list[tuple[str, str]] = Field(
        default_factory=list, description="(step, field) back to the spec's value"
    )
    reset: bool = Field(default=False, description="drop every run-time parameter first")

    @property
    def changing(self) -> bool:
        return bool(self.kill or self.unkill or self.set or self.unset or self.reset)

    def applied_to(self, current: EndpointParams) -> EndpointParams:
        """The parameters after the change (steps left with no value are dropped)."""
        kills = [] if self.reset else list(current.kill)
        kills += [alias for alias in dict.fromkeys(self.kill) if alias not in kills]
        kills = [alias for alias in kills if alias not in set(self.unkill)]
        steps = {} if self.reset else {s: dict(v) for s, v in current.steps.items()}
        for step, field, value in self.set:
            steps.setdefault(step, {})[field] = value
        for step, field in self.unset:
            steps.get(step, {}).pop(field, None)
        return EndpointParams(kill=kills, steps={s: v for s, v in steps.items() if v})
