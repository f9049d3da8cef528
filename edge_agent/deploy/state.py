"""What the deployer keeps in `deploy.json` across restarts: the last outcome of the deployment's
model and of its shadow, the serving settings last desired, and the variant choice of the last
`auto` deployment (its candidates, what was measured and what was chosen), so a desired state
delivered again is not measured again.

Field names are those the agent has always written, so a file from an earlier agent loads as it
is. Saved serving params that no longer validate give the defaults, and saved threads that are
not a positive whole number are left out, and so is a saved variant choice that no longer
validates, each with a warning, the rest of the file still counting; a file that cannot be read
or parsed at all gives an empty state.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge_agent.core.fs import write_atomic
from edge_agent.core.wire import DeploymentState, ServingParams, VariantReport

__all__ = ["DeployState", "DeployStateFile", "ShadowOutcome", "VariantChoice"]

log = logging.getLogger(__name__)

#: The fields of the model's outcome (written together, on every report of the model).
OUTCOME_FIELDS = ("deployment_id", "version_id", "sha256", "state", "reason", "received_bytes")


class ShadowOutcome(BaseModel):
    """The last outcome of a deployment's shadow ("active", "failed" or "rolled_back")."""

    model_config = ConfigDict(extra="ignore")

    deployment_id: int | None = None
    version_id: int | None = None
    sha256: str | None = None
    state: DeploymentState | None = None
    reason: str | None = None


class VariantChoice(BaseModel):
    """An `auto` deployment measured on this device: its candidates (sha256s, the hub's order)
    and the VariantReport published for it (timings, chosen artifact and threads)."""

    model_config = ConfigDict(extra="ignore")

    deployment_id: int | None = None
    candidates: list[str]
    report: VariantReport

    def shown(self) -> dict[str, Any]:
        """For /v1/status: the table and the choice."""
        return {
            "deployment_id": self.deployment_id,
            "version_id": self.report.version_id,
            "chosen_sha256": self.report.chosen_sha256,
            "chosen_threads": self.report.chosen_threads,
            "timings": [t.model_dump() for t in self.report.timings],
        }


class DeployState(BaseModel):
    """The contents of `deploy.json`."""

    model_config = ConfigDict(extra="ignore")

    deployment_id: int | None = None
    version_id: int | None = None
    sha256: str | None = None
    state: DeploymentState | None = Field(
        default=None, description="None until the first report of a model"
    )
    reason: str | None = None
    received_bytes: int | None = Field(
        default=None, description="bytes transferred for the version so far (0: from the store)"
    )
    shadow: ShadowOutcome | None = None
    params: ServingParams = Field(default_factory=ServingParams)
    threads: int | None = Field(default=None, description="the last desired threads")
    variants: VariantChoice | None = Field(
        default=None, description="the last `auto` deployment's measurements and choice"
    )

    @field_validator("params", mode="wrap")
    @classmethod
    def _params_or_defaults(cls, value: Any, handler: Callable[[Any], ServingParams]) -> Any:
        try:
            return handler(value or {})
        except ValidationError as exc:
            log.warning("ignoring saved serving params: %s", exc)
            return ServingParams()

    @field_validator("threads", mode="before")
    @classmethod
    def _positive_threads(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        if value is not None:
            log.warning("ignoring saved threads %r", value)
        return None

    @field_validator("variants", mode="wrap")
    @classmethod
    def _choice_or_none(cls, value: Any, handler: Callable[[Any], VariantChoice | None]) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            log.warning("ignoring the saved variant choice: %s", exc)
            return None

    def outcome(self) -> dict[str, Any]:
        """The last outcome of the model and of the shadow, and the last variant table and
        choice, as /v1/status shows them: only what has been reported (an empty dict before
        the first report)."""
        shown: dict[str, Any] = {}
        if self.state is not None:
            shown.update(self.model_dump(include=set(OUTCOME_FIELDS)))
        if self.shadow is not None:
            shown["shadow"] = self.shadow.model_dump()
        if self.variants is not None:
            shown["variants"] = self.variants.shown()
        return shown


class DeployStateFile:
    """The state and the file it is kept in; safe to read and edit from any thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # guards the state; never held over a write
        self._saving = threading.Lock()  # one edit and its write at a time, in order
        self._state = load_state(path)

    def read(self) -> DeployState:
        """A copy of the state as it is now."""
        with self._lock:
            return self._state.model_copy(deep=True)

    @contextlib.contextmanager
    def editing(self) -> Iterator[DeployState]:
        """Change the state under the lock; it is saved when the block ends."""
        with self._saving:
            with self._lock:
                yield self._state
                text = self._state.model_dump_json()
            write_atomic(self.path, text)


def load_state(path: Path) -> DeployState:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return DeployState()
    except OSError as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return DeployState()
    try:
        return DeployState.model_validate_json(text)
    except ValueError as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return DeployState()
