"""Head steps: `classify`, `detect`, `keypoints`, `segment`, `embed`. Each reads the raw tensors
of a `model` step with `head: none` and answers with its task's structured result (`classify`:
class scores, as a model step with its head gives them; the others one result per row).

Params are the head's options (edge_agent.core.heads.spec, without `task`), all optional: what is
not given comes from the feeding model version's own head when it is of the same task. The head
is checked against that model's outputs when the endpoint is created: a head naming a missing
output, or an output of the wrong rank, is refused naming the step and the field. `segment`
also takes `include_mask` (the class map as a base64 PNG in each answer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import ConfigDict, ValidationError

from cloud_hub.serving.engine.heads import HEAD_STEP_TASKS, apply_head, signature_of
from cloud_hub.serving.engine.step import (
    BuildEnv,
    RunContext,
    Signature,
    Step,
    StepParams,
    register_step,
)
from cloud_hub.serving.engine.values import Value
from edge_agent.core.heads import HeadError, check_head, parse_head


class HeadParams(StepParams):
    """The head's options (checked against the model's outputs when the graph is built)."""

    model_config = ConfigDict(extra="allow")


class HeadStep(Step):
    Params = HeadParams
    arity = (1, 1)
    task: ClassVar[str]

    def __init__(self, name: str, inputs: list[str], params: Any, env: BuildEnv) -> None:
        super().__init__(name, inputs, params, env)
        options = dict(params.model_extra or {})
        self.include_mask = bool(options.pop("include_mask", False))
        if "task" in options and options.pop("task") != self.task:
            raise self.fail(f"a {self.kind} step's head is of task {self.task!r}")
        self.options = options
        self.head: Any = None
        self.specs: tuple[Any, ...] = ()
        self.labels: tuple[str, ...] = ()

    def signature(self, inputs: list[Signature], target: Callable[[str], Signature]) -> Signature:
        got = inputs[0]
        head = self._checked(got)
        return signature_of(head, got, self._labels(got))

    def bind(self, inputs: list[Signature], target: Callable[[str], Signature]) -> None:
        got = inputs[0]
        self.head = self._checked(got)
        self.specs = got.outputs or ()
        self.labels = self._labels(got)

    @staticmethod
    def _labels(got: Signature) -> tuple[str, ...]:
        return tuple(getattr(got.head, "labels", None) or ())

    def _checked(self, got: Signature) -> Any:
        """The step's head (the version's, under the step's options), checked against the
        model's outputs; SpecError if it does not fit them."""
        if got.kind != "tensors" or got.outputs is None:
            raise self.fail(
                f"its input {self.inputs[0]!r} gives {got.describe()}, not a model's tensors: "
                f'feed it a model step with "head": "none"'
            )
        base: dict[str, Any] = {}
        if got.head is not None and got.head.task == self.task:
            base = got.head.model_dump()
        doc = {**base, **self.options, "task": self.task}
        try:
            head = check_head(parse_head(doc), list(got.outputs))
        except ValidationError as exc:
            msgs = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'][1:]) or 'params'}: "
                + e["msg"].removeprefix("Value error, ")
                for e in exc.errors()
            )
            raise self.fail(f"bad head params: {msgs}") from None
        except HeadError as exc:
            raise self.fail(f"{exc} (model {got.model})") from None
        return head

    def run(self, ctx: RunContext, inputs: list[Value]) -> Value:
        (given,) = inputs
        assert given.tensors is not None
        return apply_head(
            self.head,
            self.specs,
            given.tensors,
            given.rows,
            labels=self.labels,
            version=given.version,
            geometry=given.geometry,
            include_mask=self.include_mask,
        )


def _head_step(kind: str) -> type[HeadStep]:
    cls = type(
        f"{kind.capitalize()}Step",
        (HeadStep,),
        {
            "kind": kind,
            "task": HEAD_STEP_TASKS[kind],
            "__doc__": f"`{kind}`: a head step.",
            "__module__": __name__,  # where it is defined (not `abc`, type()'s caller)
        },
    )
    register_step(cls)
    return cls


ClassifyStep = _head_step("classify")
DetectStep = _head_step("detect")
KeypointsStep = _head_step("keypoints")
SegmentStep = _head_step("segment")
EmbedStep = _head_step("embed")
