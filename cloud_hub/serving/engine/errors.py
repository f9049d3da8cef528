"""Serving errors: a bad spec (422 naming the step) and bad input to a predict call (4xx)."""

from __future__ import annotations

from cloud_hub.core.errors import InvalidInput


class SpecError(InvalidInput):
    """An endpoint spec that cannot be built; `step` names the step at fault, if one is."""

    def __init__(self, message: str, *, step: str | None = None) -> None:
        super().__init__(f"step {step!r}: {message}" if step else message)
        self.step = step


class BadInput(InvalidInput):
    """A predict request whose content is wrong: shape, dtype, NaN/inf, an unreadable image."""

    def __init__(self, message: str, *, step: str | None = None) -> None:
        super().__init__(f"step {step!r}: {message}" if step else message)
        self.step = step


class PayloadTooLarge(InvalidInput):
    """A request body over the endpoint's size limit (413)."""


class ModelOff(Exception):
    """A model switched off by the endpoint's run-time parameters (a kill switch): 503, unless a
    router or guard of the graph answers without it."""

    def __init__(self, alias: str, step: str | None = None) -> None:
        super().__init__(f"model {alias!r} is switched off (kill switch)")
        self.alias = alias
        self.step = step
        self.tags: dict[str, str] | None = None  # as StepFailed.tags
