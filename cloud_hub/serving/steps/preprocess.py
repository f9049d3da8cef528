"""`preprocess`: the request (images or raw rows) → a model-ready tensor, with a version's
preprocessing spec (or one given inline)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import model_validator

from cloud_hub.serving.engine.errors import BadInput
from cloud_hub.serving.engine.prep import (
    output_signature,
    parse_spec,
    prepare_images_geometry,
    prepare_rows,
)
from cloud_hub.serving.engine.step import (
    BuildEnv,
    RunContext,
    Signature,
    Step,
    StepParams,
    register_step,
)
from cloud_hub.serving.engine.values import Value


class PreprocessParams(StepParams):
    model: str | None = None  # alias whose version's preprocessing spec is used
    spec: dict[str, Any] | None = None  # or a spec given here

    @model_validator(mode="after")
    def _one(self) -> PreprocessParams:
        if (self.model is None) == (self.spec is None):
            raise ValueError("give either 'model' (an alias) or 'spec'")
        return self


@register_step
class PreprocessStep(Step):
    kind = "preprocess"
    Params = PreprocessParams
    arity = (0, 0)

    def __init__(self, name: str, inputs: list[str], params: Any, env: BuildEnv) -> None:
        super().__init__(name, inputs, params, env)
        raw = params.spec
        if params.model is not None:
            loaded = env.model(params.model, step=name)
            raw = loaded.preprocessing
            if raw is None:
                raise self.fail(f"version {loaded.version.ref} has no preprocessing spec")
        try:
            self.spec = parse_spec(raw or {})
        except ValueError as exc:
            raise self.fail(f"bad preprocessing spec: {exc}") from None

    def signature(self, inputs: list[Signature], target: Callable[[str], Signature]) -> Signature:
        return output_signature(self.spec)

    def run(self, ctx: RunContext, inputs: list[Value]) -> Value:
        (request,) = inputs
        if request.raw is not None:
            x, geometry = prepare_images_geometry(request.raw, self.spec)
            return Value(kind="tensor", rows=request.rows, x=x, geometry=geometry)
        if request.x is not None:
            return Value(kind="tensor", rows=request.rows, x=prepare_rows(request.x, self.spec))
        if request.feeds is not None:
            raise BadInput(
                "this endpoint prepares one input: send 'inputs' as rows, not by input name"
            )
        raise BadInput("send images or rows of numbers to this endpoint, not ids")
