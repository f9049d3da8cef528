"""Composition: `select` (a model's output chooses which step answers each row) and `parallel`
(several steps at once, their scores aggregated)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from pydantic import Field

from cloud_hub.serving.engine.step import (
    BuildEnv,
    RunContext,
    Signature,
    Step,
    StepParams,
    register_step,
)
from cloud_hub.serving.engine.values import Value, merge_scores


def _same_labels(step: Step, name: str, sig: Signature, first: Signature, what: str) -> None:
    if sig.kind != "scores":
        raise step.fail(f"{what} {name!r} gives {sig.describe()}, not class scores")
    if sig.labels != first.labels:
        raise step.fail(
            f"{what} {name!r} has classes {list(sig.labels or [])}, which differ from "
            f"{list(first.labels or [])}"
        )


class SelectParams(StepParams):
    routes: dict[str, str] = Field(
        default_factory=dict, description="winning class of the input → step that answers"
    )
    default: str | None = Field(
        default=None, description="step for the other rows [default: the input answers them]"
    )
    min_score: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="rows whose top score reaches this keep the input's answer (a cascade)",
    )


@register_step
class SelectStep(Step):
    """Serial chain where A's output selects which model runs next, row by row."""

    kind = "select"
    Params = SelectParams
    arity = (1, 1)
    runtime_params = frozenset({"min_score"})

    def __init__(self, name: str, inputs: list[str], params: Any, env: BuildEnv) -> None:
        super().__init__(name, inputs, params, env)
        if not params.routes and params.default is None:
            raise self.fail("give 'routes' and/or 'default': the steps a row may go to")

    def targets(self) -> list[str]:
        names = list(dict.fromkeys(self.params.routes.values()))
        if self.params.default is not None and self.params.default not in names:
            names.append(self.params.default)
        return names

    def signature(self, inputs: list[Signature], target: Callable[[str], Signature]) -> Signature:
        decider = inputs[0]
        if decider.kind != "scores":
            raise self.fail(f"its input {self.inputs[0]!r} must give class scores")
        unknown = set(self.params.routes) - set(decider.labels or ())
        if decider.labels is not None and unknown:
            raise self.fail(
                f"routes name classes {sorted(unknown)} that {self.inputs[0]!r} never outputs"
            )
        for name in self.targets():
            _same_labels(self, name, target(name), decider, "route")
        return decider

    def route(self, decider: Value, params: SelectParams) -> dict[str | None, list[int]]:
        assert decider.x is not None and decider.labels is not None
        winners = decider.winners()
        groups: dict[str | None, list[int]] = defaultdict(list)
        for row, top in enumerate(winners):
            score = float(decider.x[row, top])
            if params.min_score is not None and score >= params.min_score:
                groups[None].append(row)
                continue
            label = decider.labels[int(top)]
            groups[params.routes.get(label, params.default)].append(row)
        return groups

    def run(self, ctx: RunContext, inputs: list[Value]) -> Value:
        (decider,) = inputs
        parts: list[tuple[np.ndarray, Value]] = []
        for target, rows in self.route(decider, ctx.params(self)).items():
            index = np.asarray(rows, dtype=np.int64)
            value = decider.take(index) if target is None else ctx.call(target, index)
            parts.append((index, value))
            ctx.note(f"{self.name}:{target or self.inputs[0]}", len(rows))
        return merge_scores(parts, decider.rows)


Aggregate = Literal["max_score", "vote", "mean", "concat"]


class ParallelParams(StepParams):
    branches: list[str] = Field(min_length=2)
    aggregate: Aggregate = "max_score"


@register_step
class ParallelStep(Step):
    """Fan-out: every branch runs (concurrently) on the request; scores are aggregated."""

    kind = "parallel"
    Params = ParallelParams
    arity = (0, 0)

    def targets(self) -> list[str]:
        return list(self.params.branches)

    def signature(self, inputs: list[Signature], target: Callable[[str], Signature]) -> Signature:
        sigs = [target(b) for b in self.params.branches]
        if self.params.aggregate == "concat":
            width = 0
            labels: list[str] = []
            for name, sig in zip(self.params.branches, sigs, strict=True):
                if sig.kind != "scores" or sig.shape is None or sig.shape[-1] is None:
                    raise self.fail(f"branch {name!r} gives {sig.describe()}, not class scores")
                width += sig.shape[-1]
                labels += [f"{name}:{label}" for label in sig.labels or ()]
            return Signature("scores", (None, width), tuple(labels))
        for name, sig in zip(self.params.branches, sigs, strict=True):
            _same_labels(self, name, sig, sigs[0], "branch")
        return sigs[0]

    def run(self, ctx: RunContext, inputs: list[Value]) -> Value:
        values = ctx.call_many(self.params.branches)
        return aggregate(self.params.aggregate, values, self.params.branches)


def aggregate(how: Aggregate, values: list[Value], names: list[str]) -> Value:
    rows = values[0].rows
    scores = np.stack([v.x for v in values if v.x is not None])  # (branches, N, C)
    if how == "concat":
        labels = tuple(
            f"{n}:{label}" for n, v in zip(names, values, strict=True) for label in v.labels or ()
        )
        flat = np.concatenate(list(scores), axis=1)
        return Value(kind="scores", rows=rows, x=flat, labels=labels)
    labels_ = values[0].labels
    if how == "mean":
        return Value(kind="scores", rows=rows, x=scores.mean(axis=0), labels=labels_)
    if how == "max_score":
        best = scores.max(axis=2).argmax(axis=0)  # per row: the most confident branch
        x = scores[best, np.arange(rows)]
        return Value(kind="scores", rows=rows, x=x, labels=labels_)
    # vote: each branch's winner counts once; ties go to the higher mean score
    classes = scores.shape[2]
    votes = np.zeros((rows, classes), dtype=np.float32)
    for v in values:
        votes[np.arange(rows), v.winners()] += 1
    mean = scores.mean(axis=0)
    top = (votes + mean / (len(values) + 1)).argmax(axis=1)
    return Value(
        kind="scores", rows=rows, x=votes / len(values), labels=labels_, top=top.astype(np.int64)
    )
