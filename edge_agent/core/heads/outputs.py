"""Finding a head's output tensors in a signature, with errors that name the head's field."""

from __future__ import annotations

from collections.abc import Sequence

from edge_agent.core.heads.spec import HeadError
from edge_agent.core.runtimes import TensorSpec, dims

__all__ = ["check_rank", "find_output"]


def find_output(outputs: Sequence[TensorSpec], name: str, field: str) -> TensorSpec:
    for spec in outputs:
        if spec.name == name:
            return spec
    have = ", ".join(f"{s.name} {dims(s.shape)}" for s in outputs)
    raise HeadError(field, f"the model has no output {name!r} (it has: {have})")


def check_rank(spec: TensorSpec, field: str, allowed: Sequence[int], what: str) -> None:
    if len(spec.shape) not in allowed:
        ranks = " or ".join(str(r) for r in allowed)
        raise HeadError(
            field,
            f"{what} output {spec.name} must have rank {ranks}, "
            f"it has shape {dims(spec.shape)} (rank {len(spec.shape)})",
        )
