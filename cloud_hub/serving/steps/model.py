"""`model`: a registered version run on its runtime. Its input is a tensor (from a preprocess
or data_cache step), another model's scores (a serial chain), or model-ready request rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from cloud_hub.serving.errors import BadInput, ModelOff
from cloud_hub.serving.step import (
    BuildEnv,
    RunContext,
    Signature,
    Step,
    StepParams,
    register_step,
    shapes_compatible,
)
from cloud_hub.serving.values import Value


class ModelParams(StepParams):
    model: str  # alias in the endpoint's `models`


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

    def signature(self, inputs: list[Signature], target: Callable[[str], Signature]) -> Signature:
        if inputs:
            got = inputs[0]
            if got.kind == "request":
                pass  # model-ready rows straight from the caller: checked per request
            elif not shapes_compatible(self.input_shape, got.shape):
                raise self.fail(
                    f"input shape mismatch: model {self.model.version.ref} takes "
                    f"{_dims(self.input_shape)}, but {self.inputs[0]!r} gives {got.describe()}"
                )
        classes = self.model.classes
        return Signature("scores", (None, classes), self.model.labels)

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
        if not np.isfinite(x).all():
            raise BadInput("input contains NaN or infinity", step=self.name)
        return x.astype(np.float32, copy=False)

    def run(self, ctx: RunContext, inputs: list[Value]) -> Value:
        (given,) = inputs
        if ctx.killed(self.params.model):
            raise ModelOff(self.params.model, step=self.name)
        if given.x is None:
            raise BadInput(
                "this step needs numeric rows: send 'inputs' (or add a preprocess step for "
                "images, a data_cache step for ids)",
                step=self.name,
            )
        x = self.check(given.x)
        scores = self.model.predict(x)
        if getattr(scores, "ndim", 0) != 2 or len(scores) != given.rows:
            shape = tuple(getattr(scores, "shape", ()))
            raise RuntimeError(
                f"model {self.model.version.ref} returned scores of shape {shape} for "
                f"{given.rows} rows"
            )
        ctx.observe(self.model.version.id, x)
        version = np.full(given.rows, self.model.version.id, dtype=np.int64)
        return Value(
            kind="scores", rows=given.rows, x=scores, labels=self.model.labels, version=version
        )

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model.version.ref}
        if self.model.batcher is not None:
            out["batching"] = self.model.batcher.stats.snapshot()
        return out
