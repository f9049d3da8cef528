"""`model`: a registered version run on its runtime, every output by name (`Runtime.run`).

Its input is a tensor (from a preprocess or data_cache step), another model's scores (a serial
chain), or the request's rows: model-ready rows, or for a model of several inputs rows by
input name (`"inputs": {"a": [...], "b": [...]}`), fed by name.

`head: auto` (the default) applies the version's task head: a classifier gives class scores (as
it always has), a raw model its tensors, any other task one structured result per row (boxes,
points, a class map's counts, a vector). `head: none` gives the raw tensors, for a head step
(`detect`, `classify`, ...) with options of its own. A model with a fixed batch dimension takes
any number of rows (its runtime runs them in chunks of that size); a row that does not fit the
model's other dimensions is bad input (422), naming the shape it takes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
from pydantic import Field

from cloud_hub.serving.engine.errors import BadInput, ModelOff
from cloud_hub.serving.engine.heads import apply_head, signature_of
from cloud_hub.serving.engine.step import (
    BuildEnv,
    RunContext,
    Signature,
    Step,
    StepParams,
    register_step,
    shapes_compatible,
)
from cloud_hub.serving.engine.values import Value
from edge_agent.core.runtimes import InputError


class ModelParams(StepParams):
    model: str  # alias in the endpoint's `models`
    head: Literal["auto", "none"] = Field(
        default="auto",
        description="auto: the version's task head answers; none: the raw output tensors",
    )


def _dims(shape: list[int | None]) -> str:
    return "[" + ", ".join("None" if d is None else str(d) for d in shape) + "]"


@register_step
class ModelStep(Step):
    kind = "model"
    Params = ModelParams
    arity = (0, 1)

    def __init__(self, name: str, inputs: list[str], params: Any, env: BuildEnv) -> None:
        super().__init__(name, inputs, params, env)
        self.model = env.model(params.model, step=name)
        self.input_shape = list(self.model.runtime.input.shape)
        self.tensors = Signature(
            "tensors",
            outputs=tuple(self.model.runtime.outputs),
            head=self.model.head,
            model=self.model.version.ref,
            task=self.model.task,
        )

    def signature(self, inputs: list[Signature], target: Callable[[str], Signature]) -> Signature:
        if inputs:
            got = inputs[0]
            if got.kind == "request":
                pass  # model-ready rows straight from the caller: checked per request
            elif got.kind in ("tensors", "results"):
                raise self.fail(
                    f"its input {self.inputs[0]!r} gives {got.describe()}, not model inputs"
                )
            elif len(self.model.runtime.inputs) > 1:
                names = ", ".join(s.name for s in self.model.runtime.inputs)
                raise self.fail(
                    f"model {self.model.version.ref} takes {len(self.model.runtime.inputs)} "
                    f"inputs ({names}): feed it the request's inputs by name, not "
                    f"{self.inputs[0]!r}'s {got.describe()}"
                )
            elif not shapes_compatible(self.input_shape[1:], (got.shape or (None,))[1:]) or (
                got.shape is not None and len(got.shape) != len(self.input_shape)
            ):
                raise self.fail(
                    f"input shape mismatch: model {self.model.version.ref} takes "
                    f"{_dims(self.input_shape)}, but {self.inputs[0]!r} gives {got.describe()}"
                )
        if self.params.head == "none":
            return self.tensors
        return signature_of(self.model.head, self.tensors, self.model.labels)

    def check(self, x: np.ndarray) -> np.ndarray:
        want = self.input_shape
        ok = x.ndim == len(want) and all(
            w is None or w == g for w, g in zip(want[1:], x.shape[1:], strict=True)
        )
        if not ok:
            raise BadInput(
                f"model {self.model.version.ref} takes input shape {_dims(want)}, "
                f"got {tuple(x.shape)}",
                step=self.name,
            )
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise BadInput("input contains NaN or infinity", step=self.name)
        return x

    def _feeds(self, given: Value) -> np.ndarray | Mapping[str, np.ndarray]:
        if given.feeds is not None:
            return given.feeds
        if given.x is None:
            raise BadInput(
                "this step needs numeric rows: send 'inputs' (or add a preprocess step for "
                "images, a data_cache step for ids)",
                step=self.name,
            )
        if len(self.model.runtime.inputs) > 1:
            expected = ", ".join(f"{s.name} {_dims(s.shape)}" for s in self.model.runtime.inputs)
            raise BadInput(
                f"model {self.model.version.ref} takes {len(self.model.runtime.inputs)} inputs "
                f'({expected}): send "inputs" as rows by input name',
                step=self.name,
            )
        return self.check(given.x)

    def run(self, ctx: RunContext, inputs: list[Value]) -> Value:
        (given,) = inputs
        if ctx.killed(self.params.model):
            raise ModelOff(self.params.model, step=self.name)
        feeds = self._feeds(given)
        try:
            outputs = self.model.run(feeds)
        except InputError as exc:
            raise BadInput(f"model {self.model.version.ref}: {exc}", step=self.name) from None
        for out_name, value in outputs.items():
            if getattr(value, "ndim", 0) == 0 or len(value) != given.rows:
                shape = tuple(getattr(value, "shape", ()))
                raise RuntimeError(
                    f"model {self.model.version.ref} returned {out_name} of shape {shape} for "
                    f"{given.rows} rows"
                )
        first = feeds if isinstance(feeds, np.ndarray) else next(iter(feeds.values()))
        ctx.observe(self.model.version.id, first)
        version = np.full(given.rows, self.model.version.id, dtype=np.int64)
        if self.params.head == "none":
            return Value(
                kind="tensors",
                rows=given.rows,
                tensors=outputs,
                version=version,
                task=self.model.task,
                geometry=given.geometry,
            )
        return apply_head(
            self.model.head,
            self.model.runtime.outputs,
            outputs,
            given.rows,
            labels=self.model.labels,
            version=version,
            geometry=given.geometry,
        )

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model.version.ref, "task": self.model.task}
        if self.model.batcher is not None:
            out["batching"] = self.model.batcher.stats.snapshot()
        return out
