"""The endpoint spec: a name, the model versions it serves, and a graph of named steps.

Each step has a `kind` (a registered Step class), `params` (validated by that kind's own params
model when the endpoint is built) and `inputs`: the steps whose outputs it consumes (none: it
reads the request). Steps may also name other steps in their params (a cache's `target`, a
parallel step's `branches`, a select step's `routes`): those are control edges, called on demand.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from cloud_hub.registry.schemas import NAME_PATTERN

STEP_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"


class ModelRef(BaseModel):
    """A registered version: `PROJECT/MODEL:N` (or `:latest`) or a version id, and which of its
    artifacts to run (default: ONNX fp32 if it has one, else its first ready artifact)."""

    model_config = ConfigDict(extra="forbid")

    ref: str = Field(description="PROJECT/MODEL[:N|:latest] or a numeric version id")
    format: Literal["onnx", "tflite"] | None = None
    precision: Literal["fp32", "int8"] | None = None
    threads: int = Field(default=1, ge=1, le=64, description="runtime threads")
    artifact: Literal["auto"] | None = Field(
        default=None,
        description="auto: measure the version's artifacts (format x precision x threads 1, 2, "
        "4 up to the cores) when the endpoint is built and run the fastest within "
        "`accuracy_budget` (serving/engine/variants.py); not with format, precision or threads",
    )
    accuracy_budget: float = Field(
        default=1.0,
        ge=0,
        le=100,
        description="auto: accuracy points a candidate may lose against the best artifact in "
        "the version's conversion report",
    )

    @model_validator(mode="after")
    def _auto_alone(self) -> ModelRef:
        if self.artifact == "auto" and (
            self.format is not None or self.precision is not None or self.threads != 1
        ):
            raise ValueError(
                "artifact 'auto' measures every format, precision and thread count: give "
                "format, precision and threads only without it"
            )
        return self


class BatchingSpec(BaseModel):
    """Adaptive micro-batching of concurrent requests at each model step."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | Literal["auto"] = Field(
        default="auto",
        description="auto: batch a model only where its cost per row, measured when the "
        "endpoint is built, drops enough in a batch (serving/engine/batch_policy.py)",
    )
    max_batch_size: int = Field(default=64, ge=1, le=4096, description="rows per model call")
    max_wait_ms: float = Field(
        default=2.0, ge=0, le=1000, description="longest a row waits for others to join it"
    )
    max_concurrent_batches: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="batches of one model run at once [default: the cores the model's "
        "runtime threads leave free, at least 1]",
    )


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=STEP_NAME_PATTERN)
    kind: str
    inputs: list[str] = Field(default_factory=list, description="steps feeding this one")
    params: dict[str, Any] = Field(default_factory=dict)


class EndpointSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    models: dict[str, ModelRef | str] = Field(
        default_factory=dict, description="alias → version reference, used by steps' `model`"
    )
    steps: list[StepSpec] = Field(min_length=1)
    output: str | None = Field(
        default=None, description="the step whose value is the answer [default: the only sink]"
    )
    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    max_body_bytes: int | None = Field(
        default=None, gt=0, description="request body limit [default: the hub's]"
    )
    max_in_flight_bytes: int | None = Field(
        default=None,
        gt=0,
        description="request body bytes this endpoint holds at once; past it a predict call is "
        "a 503 with Retry-After [default: the hub's serving_max_in_flight_bytes]",
    )
    max_queued_rows: int | None = Field(
        default=None,
        gt=0,
        description="rows admitted and not yet answered; past it a predict call is a 503 with "
        "Retry-After [default: the hub's serving_max_queued_rows]",
    )
    public: bool = Field(
        default=False,
        description="POST /endpoints/{name}/predict without a token; everything else about the "
        "endpoint (its jobs too) still needs one",
    )

    @model_validator(mode="after")
    def _unique_steps(self) -> EndpointSpec:
        seen: set[str] = set()
        for step in self.steps:
            if step.name in seen:
                raise ValueError(f"step name {step.name!r} is used twice")
            seen.add(step.name)
        return self

    def model_refs(self) -> dict[str, ModelRef]:
        return {
            alias: ref if isinstance(ref, ModelRef) else ModelRef(ref=ref)
            for alias, ref in self.models.items()
        }


class _StepBranch(BaseModel):
    """What every step of the published schema has, whatever its kind."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=STEP_NAME_PATTERN)
    inputs: list[str] = Field(default_factory=list, description="steps feeding this one")


def _branch(kind: str, params: type[BaseModel]) -> type[BaseModel]:
    """One kind's step: `kind` fixed, `params` that kind's params model."""
    title = "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", kind)) + "Step"
    required = any(field.is_required() for field in params.model_fields.values())
    default: Any = Field(...) if required else Field(default_factory=dict)
    fields: dict[str, Any] = {
        "kind": (Literal[kind], Field(...)),
        "params": (params, default),
    }
    return create_model(title, __base__=_StepBranch, __doc__=params.__doc__, **fields)


def endpoint_spec_schema(kinds: Iterable[str] | None = None) -> dict[str, Any]:
    """The JSON schema of an endpoint spec document (what editors validate specs against): the
    steps are a union discriminated on `kind`, one branch per kind in `kinds` (default: every
    registered kind, custom kinds too), each with that kind's typed `params`."""
    from cloud_hub.serving.engine.step import STEP_KINDS

    chosen = sorted(STEP_KINDS if kinds is None else kinds)
    branches = tuple(_branch(kind, STEP_KINDS[kind].Params) for kind in chosen)
    step: Any = Annotated[Union[branches], Field(discriminator="kind")]  # noqa: UP007
    document = create_model(
        "EndpointSpec",
        __base__=EndpointSpec,
        steps=(list[step], Field(min_length=1)),
    )
    return document.model_json_schema()
