"""The step interface: what every kind of step implements, and the registry of kinds.

A step is built once per endpoint from its `StepSpec` (params validated by the kind's `Params`)
and then run once per request. Its data inputs are evaluated for it; it may also *call* other
steps through the `RunContext`: one of them (a router), several at once (fan-out), or another
when the first fails (a fallback). Those other steps are its `targets()`: the graph checks that
they exist, that there is no cycle, and gives their signatures to `signature()`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from cloud_hub.serving.engine.errors import SpecError
from cloud_hub.serving.engine.values import Value, ValueKind
from edge_agent.core.runtimes import TensorSpec, dims

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from cloud_hub.serving.engine.devices import DeviceFacts
    from cloud_hub.serving.engine.models import LoadedModel
    from cloud_hub.serving.engine.spec import BatchingSpec, StepSpec


@dataclass(frozen=True, eq=False)
class Signature:
    """What a step produces, as far as is known before any request: the value kind, its shape
    (None for the batch dimension or anything unknown), and class names for scores.

    For what a model gives (tensors, scores, results) also: the head's `task`, the model's
    `outputs` (their names, shapes, dtypes, quantization: what a head step checks its head
    against), the version's own `head` (a head step's defaults) and the `model` ref."""

    kind: ValueKind
    shape: tuple[int | None, ...] | None = None
    labels: tuple[str, ...] | None = None
    task: str | None = None
    outputs: tuple[TensorSpec, ...] | None = None
    head: Any = None
    model: str | None = None

    def describe(self) -> str:
        if self.kind == "results":
            return f"results ({self.task})"
        if self.kind == "tensors" and self.outputs is not None:
            return "tensors {" + ", ".join(f"{o.name} {dims(o.shape)}" for o in self.outputs) + "}"
        if self.shape is None:
            return self.kind
        shape = ", ".join("None" if d is None else str(d) for d in self.shape)
        return f"{self.kind} [{shape}]"


REQUEST = Signature(kind="request")


def shapes_compatible(want: Sequence[int | None], got: Sequence[int | None] | None) -> bool:
    if got is None:
        return True  # unknown until a request comes
    if len(want) != len(got):
        return False
    return all(w is None or g is None or w == g for w, g in zip(want, got, strict=True))


class BuildEnv(Protocol):
    """What a step may use while it is built: the endpoint's models and settings."""

    batching: BatchingSpec

    def model(self, alias: str, *, step: str) -> LoadedModel: ...

    def resolve_path(self, path: str) -> str: ...

    # the endpoint's name (a salt for sticky routing)
    endpoint: str
    # the engine's fan-out pool: work a step runs beside the request (a shadow) or waits on
    # with a timeout (a circuit breaker)
    fanout: Executor

    def device(self, device_id: str) -> DeviceFacts | None:
        """A device of the hub's registry (condition routing); None if unknown or no registry."""


class RunContext(Protocol):
    """What a step may do while it runs (one request)."""

    @property
    def key(self) -> str | None:
        """The caller's key (for sticky routing), if it gave one."""

    @property
    def request_id(self) -> str:
        """This request's id (the caller's, or one made for it): in the response and the log."""

    @property
    def attributes(self) -> Mapping[str, str | int | float | bool]:
        """The request's attributes (condition routing)."""

    @property
    def headers(self) -> Mapping[str, str]:
        """The HTTP request's headers, lower-case names (empty for jobs and the CLI)."""

    def params(self, step: Step) -> Any:
        """`step`'s params as in force now: the spec's, with the endpoint's run-time
        parameters for that step merged over them (see `runtime_params`)."""

    def killed(self, model_alias: str) -> bool:
        """Whether the endpoint's run-time parameters switched this model off."""

    def killed_version(self, version_id: int) -> bool:
        """Whether the model serving this registry version is switched off (an answer cached
        from it must not be served)."""

    def tag(self, key: str, value: str) -> None:
        """Say something about this request for the response and the prediction log (the
        A/B variant, a fallback taken, the route chosen)."""

    def log(
        self, step: str, role: str, value: Value, latency_ms: float, error: str | None = None
    ) -> None:
        """Log another answer to this request beside the one returned, under the same request
        id: a shadow model's (`role="shadow"`), say. May be called after the answer went out
        (a step that lets work finish in the background): it is logged then."""

    def observe(self, version_id: int, x: np.ndarray) -> None:
        """A model step says what input its version saw (all the request's rows): the log
        keeps a summary of it per row, for drift monitoring."""

    def fork(self) -> RunContext:
        """A context for work a step runs beside the request (a shadow's candidates): the
        same request, memo and log, but what it tags, counts and traces never shows in the
        answer."""

    def call(self, step: str, rows: np.ndarray | None = None) -> Value:
        """Run `step` on this request: on all rows (once per request, then remembered), or on
        the rows given (indices into the request's rows; what feeds it is computed for those
        rows only, unless it was already computed for all)."""

    def call_many(self, steps: Sequence[str], rows: np.ndarray | None = None) -> list[Value]:
        """Run several steps concurrently; their values in the order asked."""

    def note(self, counter: str, n: int = 1) -> None:
        """Count something for the response and the endpoint's stats (cache hits, misses...)."""

    def defer(self, step: str) -> None:
        """Run `step` on this request later, as a job (time-differential): the caller gets the
        job's id now and the step's answer through the job (poll, MQTT)."""


class StepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Step(ABC):
    """One node of an endpoint's graph. Subclasses set `kind` and `Params`, and register."""

    kind: ClassVar[str]
    Params: ClassVar[type[StepParams]] = StepParams
    # how many data inputs the step takes: (min, max); (0, 0) means it reads the request
    arity: ClassVar[tuple[int, int]] = (0, 1)
    # params the endpoint's run-time parameters may change without a rebuild (ctx.params(self))
    runtime_params: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str, inputs: list[str], params: Any, env: BuildEnv) -> None:
        self.name = name
        self.inputs = inputs
        self.params = params

    def targets(self) -> list[str]:
        """Steps this one may call (control edges)."""
        return []

    @abstractmethod
    def signature(self, inputs: list[Signature], target: Callable[[str], Signature]) -> Signature:
        """What this step outputs given its inputs' signatures; SpecError if they do not fit.
        A query: it changes nothing (what the step keeps from its inputs is `bind`'s job)."""

    def bind(  # noqa: B027  (most steps keep nothing from their inputs)
        self, inputs: list[Signature], target: Callable[[str], Signature]
    ) -> None:
        """Called once, when the graph is built, after `signature()` accepted the inputs: keep
        what `run()` needs from their signatures (their classes, a head checked against the
        model's outputs)."""

    @abstractmethod
    def run(self, ctx: RunContext, inputs: list[Value]) -> Value:
        """Map the N rows of its inputs (the request's, if it has none) to N rows."""

    def stats(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:  # noqa: B027  (most steps hold nothing)
        """Release what the step holds (threads, caches)."""

    def fail(self, message: str) -> SpecError:
        return SpecError(message, step=self.name)


STEP_KINDS: dict[str, type[Step]] = {}


def register_step(cls: type[Step]) -> type[Step]:
    """Class decorator: make a kind of step available to endpoint specs."""
    STEP_KINDS[cls.kind] = cls
    return cls


def build_step(spec: StepSpec, env: BuildEnv) -> Step:
    cls = STEP_KINDS.get(spec.kind)
    if cls is None:
        raise SpecError(
            f"unknown step kind {spec.kind!r}; known kinds: {', '.join(sorted(STEP_KINDS))}",
            step=spec.name,
        )
    low, high = cls.arity
    if not low <= len(spec.inputs) <= high:
        want = str(low) if low == high else f"{low} to {high}"
        raise SpecError(
            f"a {spec.kind} step takes {want} inputs, got {len(spec.inputs)}", step=spec.name
        )
    try:
        params = cls.Params.model_validate(spec.params)
    except ValidationError as exc:
        msgs = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'params'}: "
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
        raise SpecError(f"bad params: {msgs}", step=spec.name) from None
    return cls(spec.name, list(spec.inputs), params, env)
