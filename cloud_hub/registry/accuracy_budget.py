"""Which artifacts of a version are within an accuracy budget: each artifact's accuracy is the
one its conversion report measured (`Artifact.metrics["accuracy"]`, a fraction). Where no
artifact has one (an uploaded file), every artifact is kept; where some have one, those without
are left out, since nothing says what they lose. Used by `--artifact auto` for devices
(`cloud_hub.fleet.variant_choice`) and for hub endpoints (`cloud_hub.serving.engine.variants`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from cloud_hub.registry.schemas import Artifact

__all__ = ["DEFAULT_BUDGET_POINTS", "accuracy_of", "within_budget"]

DEFAULT_BUDGET_POINTS = 1.0


def accuracy_of(artifact: Artifact) -> float | None:
    """The artifact's accuracy in its conversion report (None: it has none)."""
    value = artifact.metrics.get("accuracy")
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def within_budget(
    artifacts: Sequence[Artifact], budget_points: float
) -> tuple[list[Artifact], dict[str, str]]:
    """(the artifacts kept, in the order given; FORMAT/PRECISION -> why each other was left
    out)."""
    known = {a.id: acc for a in artifacts if (acc := accuracy_of(a)) is not None}
    if not known:
        return list(artifacts), {}
    best = max(known.values())
    floor = best - budget_points / 100
    kept: list[Artifact] = []
    excluded: dict[str, str] = {}
    for a in artifacts:
        name = f"{a.format}/{a.precision}"
        acc = known.get(a.id)
        if acc is None:
            excluded[name] = "no accuracy in the conversion report"
        elif acc < floor - 1e-12:
            excluded[name] = (
                f"accuracy {acc:.2%} is more than {budget_points:g} points below the best "
                f"({best:.2%})"
            )
        else:
            kept.append(a)
    return kept, excluded
