"""What a verified model is for: the deployment's model (activated) or its shadow (loaded beside
it), or a candidate of an `auto` deployment (a "trial": measured, never installed until chosen).
The transfer and the verification are the same for all; a `Target` says where each step is
reported and what is done with the installed model."""

from __future__ import annotations

from typing import Literal, Protocol

from edge_agent.core.wire import DeploymentState, DesiredState, ModelRef

__all__ = ["Role", "Target", "sha_of"]

Role = Literal["model", "shadow", "trial"]


class Target(Protocol):
    role: Role

    def report(
        self,
        desired: DesiredState,
        state: DeploymentState,
        reason: str | None,
        received: int | None = None,
    ) -> None:
        """Report a step (`received`: the bytes transferred for it, 0 from the store)."""

    def use(self, desired: DesiredState, ref: ModelRef, received: int | None) -> None:
        """Put the installed `ref` to work, and report the outcome."""


def sha_of(ref: ModelRef | None) -> str | None:
    """The ref's sha256 in lower case (None for no ref)."""
    return None if ref is None else ref.sha256.lower()
