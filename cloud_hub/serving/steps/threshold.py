"""`threshold`: parameter-based prediction. Its input gives class scores; a row whose top score
is below the bar gets the default answer instead: `default_label`. The bar is `min_score`, or
for a row whose top class is in `per_class`, that class's own bar.

`min_score`, `per_class` and `default_label` change at run time (`PUT .../params`), in force at
the next request with no rebuild. A `default_label` that is not one of the classes is added as
an extra class (the step's classes are the input's plus it; the signature says so). A row's
scores are kept as the model gave them (0 for the extra class): only its answer changes, so the
prediction log still shows what the model said. Rows thresholded are counted (`counters`,
stats) and tagged (`thresholded`: how many rows of the request).

On detection results (a model or `detect` step) the step filters boxes instead: a box whose
score is below the bar (`per_class` by its label, else `min_score`) is dropped from its row's
`detections`; `default_label` is not used there. Rows keep their order; boxes dropped are
counted (`thresholded`). Other head results (keypoints, embeddings, ...) are refused.

Refused at create and at `PUT .../params`, naming the field: a bar outside [0, 1], a
`per_class` class the input never outputs, and (at run time) a `default_label` that is neither a
class nor the spec's own default (the classes are fixed when the endpoint is built).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import Field, ValidationError, model_validator

from cloud_hub.serving.engine.step import (
    BuildEnv,
    RunContext,
    Signature,
    Step,
    StepParams,
    register_step,
)
from cloud_hub.serving.engine.values import Value

Bar = Annotated[float, Field(ge=0, le=1)]


class ThresholdParams(StepParams):
    min_score: Bar | None = Field(default=None, description="rows whose top score is below")
    default_label: str | None = Field(
        default=None,
        min_length=1,
        description="…get this answer (class scores: required; detections: unused)",
    )
    per_class: dict[str, Bar] = Field(
        default_factory=dict, description="class → its own bar (over min_score)"
    )

    # set on the subclass a built step validates its run-time parameters with
    classes: ClassVar[tuple[str, ...] | None] = None
    defaults: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _known(self) -> ThresholdParams:
        if self.min_score is None and not self.per_class:
            raise ValueError("give 'min_score' and/or 'per_class': the bar(s) rows must reach")
        classes = type(self).classes
        if classes is None:
            return self
        if self.default_label is None:
            raise ValueError("default_label: required: the answer of rows below their bar")
        unknown = sorted(set(self.per_class) - set(classes))
        if unknown:
            raise ValueError(f"per_class: {unknown} are not classes of the input {list(classes)}")
        if self.default_label not in classes and self.default_label not in type(self).defaults:
            raise ValueError(
                f"default_label: {self.default_label!r} is not one of the classes "
                f"{sorted(set(classes) | type(self).defaults)} (a new extra class needs a spec "
                "change)"
            )
        return self


@register_step
class ThresholdStep(Step):
    kind = "threshold"
    Params = ThresholdParams
    arity = (1, 1)
    runtime_params = frozenset({"min_score", "default_label", "per_class"})

    def __init__(self, name: str, inputs: list[str], params: Any, env: BuildEnv) -> None:
        super().__init__(name, inputs, params, env)
        self.classes: tuple[str, ...] = ()
        self.labels: tuple[str, ...] = ()
        self._lock = threading.Lock()
        self.rows = 0
        self.thresholded = 0
        self.by_class: dict[str, int] = {}
        self.index: dict[str, int] = {}
        self._note = f"{name}:thresholded"
        self.detection = False  # the input gives detections: boxes are filtered

    def signature(self, inputs: list[Signature], target: Callable[[str], Signature]) -> Signature:
        got = inputs[0]
        if got.kind == "results" and got.task == "detection":
            return got
        labels, _ = self._bound(got)
        return Signature("scores", (None, len(labels)), labels)

    def bind(self, inputs: list[Signature], target: Callable[[str], Signature]) -> None:
        got = inputs[0]
        if got.kind == "results" and got.task == "detection":
            self.detection = True
            return
        self.labels, self.params = self._bound(got)
        self.classes = got.labels or ()
        self.index = {label: i for i, label in enumerate(self.labels)}

    def _bound(self, got: Signature) -> tuple[tuple[str, ...], ThresholdParams]:
        """The classes the step answers (its input's, and the default label if new) and its
        params checked against them (as run-time parameters will be); SpecError if they do not
        fit the input."""
        if got.kind != "scores" or got.labels is None:
            raise self.fail(
                f"its input {self.inputs[0]!r} must give class scores with classes (or "
                f"detections), it gives {got.describe()}"
            )
        default = self.params.default_label
        if default is None:
            raise self.fail("default_label: required: the answer of rows below their bar")
        labels = got.labels if default in got.labels else (*got.labels, default)

        class Bound(ThresholdParams):  # what run-time parameters are checked against
            classes = got.labels
            defaults = frozenset({default})

        Bound.__name__ = Bound.__qualname__ = "ThresholdParams"
        try:
            return labels, Bound.model_validate(self.params.model_dump())
        except ValidationError as exc:
            first = exc.errors()[0]["msg"]
            raise self.fail(str(first).removeprefix("Value error, ")) from None

    def _low(self, given: Value, params: ThresholdParams) -> tuple[list[int], list[int]]:
        """The rows below their bar, and their top classes."""
        x = given.x
        assert x is not None
        bars = {self.index[label]: bar for label, bar in params.per_class.items()}
        default = params.min_score
        if given.rows <= 16:  # a few rows: plain Python beats numpy's cost per call
            tops = None if given.top is None else given.top.tolist()
            rows, classes = [], []
            for i, r in enumerate(x.tolist()):
                top = r.index(max(r)) if tops is None else tops[i]
                bar = bars.get(top, default)
                if bar is not None and r[top] < bar:
                    rows.append(i)
                    classes.append(top)
            return rows, classes
        top_ = x.argmax(axis=1) if given.top is None else given.top
        best = np.take_along_axis(x, top_[:, None], axis=1)[:, 0]
        bar_ = np.full(given.rows, -1.0 if default is None else default)
        for index, value in bars.items():
            bar_[top_ == index] = value
        low = np.flatnonzero(best < bar_)
        return low.tolist(), top_[low].tolist()

    def _boxes(self, ctx: RunContext, given: Value, params: ThresholdParams) -> Value:
        """Detections below their bar dropped, row by row."""
        assert given.results is not None
        default = params.min_score
        dropped = 0
        by_label: dict[str, int] = {}
        out = []
        for result in given.results:
            kept = []
            for det in result.get("detections") or []:
                label = det.get("label")
                bar = params.per_class.get(str(label), default) if label is not None else default
                if bar is not None and float(det.get("score", 0.0)) < bar:
                    dropped += 1
                    key = str(label if label is not None else det.get("class"))
                    by_label[key] = by_label.get(key, 0) + 1
                else:
                    kept.append(det)
            out.append({**result, "detections": kept})
        if dropped:
            ctx.note(self._note, dropped)
            ctx.tag("thresholded", str(dropped))
        with self._lock:
            self.rows += given.rows
            self.thresholded += dropped
            for key, n in by_label.items():
                self.by_class[key] = self.by_class.get(key, 0) + n
        return replace(given, results=tuple(out))

    def run(self, ctx: RunContext, inputs: list[Value]) -> Value:
        (given,) = inputs
        params: ThresholdParams = ctx.params(self)
        if self.detection:
            return self._boxes(ctx, given, params)
        x = given.x
        assert x is not None
        rows, classes = self._low(given, params)
        n = len(rows)
        if len(self.labels) > x.shape[1]:  # the default answer's own column, all zeros
            x = np.concatenate([x, np.zeros((given.rows, 1), dtype=x.dtype)], axis=1)
        answer = given.top
        if n:
            answer = given.winners().copy()
            assert params.default_label is not None
            answer[rows] = self.index[params.default_label]
            ctx.note(self._note, n)
            ctx.tag("thresholded", str(n))
        with self._lock:
            self.rows += given.rows
            self.thresholded += n
            for top in classes:
                label = self.classes[top]
                self.by_class[label] = self.by_class.get(label, 0) + 1
        return Value(
            kind="scores",
            rows=given.rows,
            x=x,
            labels=self.labels,
            top=answer,
            version=given.version,
            task=given.task,
            tensors=given.tensors,
        )

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "rows": self.rows,
                "thresholded": self.thresholded,
                "thresholded_ratio": round(self.thresholded / self.rows, 4) if self.rows else None,
                "thresholded_by_top_class": dict(self.by_class),
            }
