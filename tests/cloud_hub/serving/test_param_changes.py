"""A change to an endpoint's run-time parameters, applied to the ones in force."""

from __future__ import annotations

from cloud_hub.serving.engine.param_changes import ParamChanges
from cloud_hub.serving.engine.params import EndpointParams

CURRENT = EndpointParams(kill=["a"], steps={"gate": {"min_score": 0.5}, "split": {"w": [1, 1]}})


def test_kills_sets_and_unsets_apply_over_the_current_params() -> None:
    changes = ParamChanges(
        kill=["b", "b", "a"], unkill=["a"], set=[("gate", "min_score", 0.8)], unset=[("split", "w")]
    )
    assert changes.changing
    got = changes.applied_to(CURRENT)
    assert got == EndpointParams(kill=["b"], steps={"gate": {"min_score": 0.8}})


def test_reset_starts_from_nothing_and_no_change_is_no_change() -> None:
    assert ParamChanges(reset=True, kill=["c"]).applied_to(CURRENT) == EndpointParams(kill=["c"])
    assert not ParamChanges().changing
    assert ParamChanges().applied_to(CURRENT) == CURRENT
