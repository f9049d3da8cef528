"""`condition`: condition-based prediction. Ordered `routes`, each `{"when": {...}, "step": ...}`,
and a `default` step: the first route whose conditions all hold answers the request (the route
taken is tagged `route`); if its model is switched off (kill switch) the next route that holds
answers, then the default.

Conditions (all those given in one `when` must hold):

- `attribute`: `{"name": "region", "equals": "eu"}`, or `"in": [...]`, or a comparison
  `"gt" / "gte" / "lt" / "lte": number`, or `"exists": true|false`: a request attribute (the
  body's `attributes`).
- `header`: the same on an HTTP header (name in any case; a header's value is text).
- `time_of_day`: `{"start": 9, "end": 17, "tz": "Europe/Paris"}`: the hour (or `"HH:MM"`) in
  that time zone (default UTC) is in [start, end); a range past midnight (22 → 6) wraps.
- `device_tag`, `device_type`, `device_group`: the device named by the request attribute
  `device_id` (`device_attribute`), looked up in the hub's device registry: it has that tag (or
  one of several), its hardware is that (case-insensitive), it is in that group. An unknown
  device matches none of them.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cloud_hub.serving.engine.devices import DeviceFacts
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
from cloud_hub.serving.steps.routing import check_same_classes

Scalar = str | int | float | bool


class Match(BaseModel):
    """A test on one named value (an attribute or a header)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    equals: Scalar | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in", min_length=1)
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None
    exists: bool | None = None

    @model_validator(mode="after")
    def _some(self) -> Match:
        tests = (self.equals, self.in_, self.gt, self.gte, self.lt, self.lte, self.exists)
        if all(t is None for t in tests):
            raise ValueError("give a test: equals, in, gt, gte, lt, lte or exists")
        return self

    def holds(self, got: Scalar | None) -> bool:
        if self.exists is not None and (got is not None) != self.exists:
            return False
        if got is None:
            return self.exists is False
        if self.equals is not None and not _same(got, self.equals):
            return False
        if self.in_ is not None and not any(_same(got, v) for v in self.in_):
            return False
        bounds = (self.gt, self.gte, self.lt, self.lte)
        if any(b is not None for b in bounds):
            number = _number(got)
            if number is None:
                return False
            if self.gt is not None and not number > self.gt:
                return False
            if self.gte is not None and not number >= self.gte:
                return False
            if self.lt is not None and not number < self.lt:
                return False
            if self.lte is not None and not number <= self.lte:
                return False
        return True


def _same(got: Scalar, want: Scalar) -> bool:
    if isinstance(got, bool) or isinstance(want, bool):
        return str(got).lower() == str(want).lower()
    if isinstance(want, int | float) and not isinstance(got, int | float):
        return _number(got) == want  # a header's "3" equals 3
    if isinstance(got, int | float) and not isinstance(want, int | float):
        return str(got) == want
    return got == want


def _number(got: Scalar) -> float | None:
    if isinstance(got, bool):
        return None
    try:
        return float(got)
    except (TypeError, ValueError):
        return None


def _minutes(value: int | float | str) -> int:
    if isinstance(value, str):
        hours, sep, minutes = value.partition(":")
        if not sep or not hours.isdigit() or not minutes.isdigit():
            raise ValueError(f"{value!r}: give an hour (0-24) or 'HH:MM'")
        total = int(hours) * 60 + int(minutes)
    else:
        if not math.isfinite(value):  # round() of inf raises OverflowError, not ValueError
            raise ValueError(f"{value!r} is not a time of day (0 to 24 h)")
        total = round(float(value) * 60)
    if not 0 <= total <= 24 * 60:
        raise ValueError(f"{value!r} is not a time of day (0 to 24 h)")
    return total


class TimeOfDay(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: int | float | str = Field(description="hour or 'HH:MM', inclusive")
    end: int | float | str = Field(description="hour or 'HH:MM', exclusive")
    tz: str = Field(default="UTC", description="an IANA time zone name")

    @field_validator("start", "end")
    @classmethod
    def _time(cls, value: int | float | str) -> int | float | str:
        _minutes(value)
        return value

    @field_validator("tz")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # "Europe": a folder of zones
            raise ValueError(
                f"{value!r} is not a known time zone (e.g. UTC, Europe/Paris)"
            ) from None
        return value

    def holds(self, now: float) -> bool:
        local = datetime.fromtimestamp(now, ZoneInfo(self.tz))
        minute = local.hour * 60 + local.minute
        start, end = _minutes(self.start), _minutes(self.end)
        if start <= end:
            return start <= minute < end
        return minute >= start or minute < end  # past midnight


class When(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attribute: Match | None = None
    header: Match | None = None
    time_of_day: TimeOfDay | None = None
    device_tag: str | list[str] | None = Field(default=None, description="has this tag (any of)")
    device_type: str | None = Field(default=None, description="its hardware")
    device_group: str | None = None

    @model_validator(mode="after")
    def _some(self) -> When:
        if all(v is None for v in self.__dict__.values()):
            raise ValueError(
                "give a condition: attribute, header, time_of_day, device_tag, device_type or "
                "device_group"
            )
        return self

    @property
    def on_device(self) -> bool:
        return (self.device_tag, self.device_type, self.device_group) != (None, None, None)


class Route(BaseModel):
    model_config = ConfigDict(extra="forbid")

    when: When
    step: str


class ConditionParams(StepParams):
    routes: list[Route] = Field(min_length=1)
    default: str = Field(description="the step that answers when no route holds")
    device_attribute: str = Field(
        default="device_id", description="the request attribute naming the device"
    )


class _Request:
    """What the conditions look at, read once per request."""

    def __init__(self, step: ConditionStep, ctx: RunContext) -> None:
        self.step = step
        self.ctx = ctx
        self._now: float | None = None
        self._device: DeviceFacts | None = None
        self._looked = False

    @property
    def now(self) -> float:
        if self._now is None:
            self._now = self.step.clock()
        return self._now

    def device(self) -> DeviceFacts | None:
        if not self._looked:
            self._looked = True
            device_id = self.ctx.attributes.get(self.step.params.device_attribute)
            if device_id is not None:
                self._device = self.step.devices(str(device_id))
        return self._device

    def holds(self, when: When) -> bool:
        ctx = self.ctx
        if when.attribute is not None and not when.attribute.holds(
            ctx.attributes.get(when.attribute.name)
        ):
            return False
        if when.header is not None and not when.header.holds(
            ctx.headers.get(when.header.name.lower())
        ):
            return False
        if when.time_of_day is not None and not when.time_of_day.holds(self.now):
            return False
        if when.on_device:
            device = self.device()
            if device is None:
                return False
            tags = [when.device_tag] if isinstance(when.device_tag, str) else when.device_tag
            if tags is not None and not device.tags.intersection(tags):
                return False
            if when.device_type is not None and device.hardware.lower() != when.device_type.lower():
                return False
            if when.device_group is not None and device.group != when.device_group:
                return False
        return True


@register_step
class ConditionStep(Step):
    kind = "condition"
    Params = ConditionParams
    arity = (0, 0)

    def __init__(self, name: str, inputs: list[str], params: Any, env: BuildEnv) -> None:
        super().__init__(name, inputs, params, env)
        self.devices: Callable[[str], DeviceFacts | None] = env.device
        self.clock: Callable[[], float] = time.time  # tests move it
        self._lock = threading.Lock()
        self._taken: Counter[str] = Counter()
        # (route name as tagged, step), precomputed
        self._choices = [(f"{i}:{r.step}", r.step) for i, r in enumerate(params.routes)]
        self._default = (f"default:{params.default}", params.default)
        self._notes = {c: f"{name}:{c}" for c, _ in [*self._choices, self._default]}

    def targets(self) -> list[str]:
        return list(dict.fromkeys([*(r.step for r in self.params.routes), self.params.default]))

    def signature(self, inputs: list[Signature], target: Callable[[str], Signature]) -> Signature:
        return check_same_classes(self, {s: target(s) for s in self.targets()}, "route")

    def run(self, ctx: RunContext, inputs: list[Value]) -> Value:
        request = _Request(self, ctx)
        off: ModelOff | None = None
        tried: set[str] = set()
        choices = [
            c
            for c, route in zip(self._choices, self.params.routes, strict=True)
            if request.holds(route.when)
        ]
        choices.append(self._default)
        for route, step in choices:
            if step in tried:
                continue  # switched off a moment ago on an earlier route
            tried.add(step)
            try:
                value = ctx.call(step)
            except ModelOff as exc:
                off = exc
                self._count(f"killed {route}")
                continue
            ctx.tag("route", route)
            if off is not None:
                ctx.tag("route_skipped", f"{off.alias} switched off")
            ctx.note(self._notes[route])
            self._count(route)
            return value
        assert off is not None
        raise off

    def _count(self, what: str) -> None:
        with self._lock:
            self._taken[what] += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"routes_taken": dict(self._taken)}
