"""A version's signature and what must fit it: its task head and its preprocessing spec.

The signature (stored on each artifact) lists every input and output tensor. A version's head is
checked against the outputs of every artifact it has (`resolve_head`), its preprocessing spec is
validated as `edge_agent.core.preprocess.PreprocessingSpec` (`check_preprocessing`). Every refusal
is
an `InvalidInput` (422 over REST, exit code 2 in the CLI) whose message starts with the field at
fault: `task`, `labels`, `head.<field>` or `preprocessing.<field>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from cloud_hub.core.errors import InvalidInput
from edge_agent.core.runtimes import Quantization, TensorSpec

if TYPE_CHECKING:
    from converters import ModelFileInfo

#: Tasks whose head carries class labels.
LABELLED_TASKS = ("classification", "detection", "segmentation")


def signature_of(info: ModelFileInfo) -> dict[str, Any]:
    dumped = info.model_dump(mode="json")
    return {"inputs": dumped["inputs"], "outputs": dumped["outputs"]}


def signature_from_model(data: bytes, fmt: str) -> dict[str, Any]:
    """The signature of model bytes, by loading them; {} when they do not load (a failed
    artifact keeps no signature)."""
    from dataclasses import asdict

    from edge_agent.core.runtimes import ModelLoadError, RuntimeUnavailable, load_runtime

    try:
        runtime = load_runtime(data, fmt)  # type: ignore[arg-type]
    except (ModelLoadError, RuntimeUnavailable, ValueError):
        return {}
    return {
        "inputs": [asdict(t) for t in runtime.inputs],
        "outputs": [asdict(t) for t in runtime.outputs],
    }


def tensors(signature: dict[str, Any], side: str) -> list[TensorSpec]:
    """The `inputs` or `outputs` of a stored signature as TensorSpecs."""
    out = []
    for doc in signature.get(side) or []:
        quant = doc.get("quantization")
        out.append(
            TensorSpec(
                name=str(doc["name"]),
                shape=list(doc.get("shape") or []),
                dtype=str(doc.get("dtype", "float32")),
                quantization=Quantization(float(quant["scale"]), int(quant["zero_point"]))
                if quant
                else None,
            )
        )
    return out


def _errors(prefix: str, exc: ValidationError) -> str:
    """pydantic's errors as `prefix.field: message` (a head's task tag left out of the path)."""
    from edge_agent.core.heads import TASKS

    parts = []
    for err in exc.errors()[:5]:
        path = list(err["loc"])
        if prefix == "head" and path and path[0] in TASKS:
            path = path[1:]
        if not path and err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            path = ["task"]
        loc = ".".join(str(p) for p in path)
        where = f"{prefix}.{loc}" if loc else prefix
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def check_preprocessing(doc: Any) -> dict[str, Any] | None:
    """A preprocessing spec as stored (defaults filled), or InvalidInput naming the field."""
    from edge_agent.core.preprocess import PreprocessingSpec

    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise InvalidInput("preprocessing: must be a JSON object")
    try:
        return PreprocessingSpec.model_validate(doc).model_dump(mode="json")
    except ValidationError as exc:
        raise InvalidInput(_errors("preprocessing", exc)) from None


def inferred_preprocessing(signature: dict[str, Any]) -> dict[str, Any] | None:
    """What the signature says about an image input (see `infer_preprocessing`), or None."""
    from edge_agent.core.preprocess import infer_preprocessing

    spec = infer_preprocessing(tensors(signature, "inputs"))
    return None if spec is None else spec.model_dump(mode="json")


def _head_for(
    task: str | None, head: dict[str, Any] | None, labels: Sequence[str], outputs: list[TensorSpec]
) -> dict[str, Any]:
    from edge_agent.core.heads import HeadError, check_head, default_head, parse_head

    try:
        if head is None:
            effective = default_head(task, outputs, labels)
        else:
            effective = check_head(parse_head(head), outputs)
    except HeadError as exc:
        raise InvalidInput(str(exc)) from None
    except ValidationError as exc:
        raise InvalidInput(_errors("head", exc)) from None
    dumped: dict[str, Any] = effective.model_dump(mode="json")
    return dumped


def resolve_head(
    *,
    task: str | None,
    head: dict[str, Any] | None,
    labels: Sequence[str] | None,
    signatures: Sequence[dict[str, Any]],
) -> tuple[str, dict[str, Any] | None, list[str]]:
    """The version's (task, effective head, labels) from what its uploader gave.

    - no head: `default_head(task, outputs, labels)` (no task either: classification for a lone
      score output, or a scikit-learn classifier's label and scores; else raw);
    - a head: its `task` must be `task` when both are given; checked against the outputs;
    - labels go into the head of a classification, detection or segmentation task (a head that
      has labels of its own keeps them: they must then equal `labels` when both are given).

    Each artifact's signature is checked; when they name their outputs differently (an ONNX and
    a TFLite conversion of one model), the head is kept as given, without the output names
    filled from one of them, and each runtime fills its own. InvalidInput names the field.
    """
    from edge_agent.core.heads import TASKS

    if task is not None and task not in TASKS:
        raise InvalidInput(f"task: {task!r} is not one of {', '.join(TASKS)}")
    if head is not None:
        if not isinstance(head, dict):
            raise InvalidInput("head: must be a JSON object")
        head_task = head.get("task")
        if task is not None and head_task is not None and head_task != task:
            raise InvalidInput(f"head.task: the head is for {head_task!r} but task is {task!r}")
        head = dict(head)
        if head_task is None and task is not None:
            head["task"] = task
        if labels and head.get("task") in LABELLED_TASKS:
            own = head.get("labels")
            if own and list(own) != list(labels):
                raise InvalidInput("labels: they differ from the head's labels (give one of them)")
            head["labels"] = list(labels)
    outputs = [tensors(sig, "outputs") for sig in signatures if sig.get("outputs")]
    if not outputs:
        chosen = head or {"task": task or "raw"}
        if chosen.get("task") not in (None, "raw"):
            raise InvalidInput("head: the version has no signature to check a head against")
        return "raw", {"task": "raw"}, list(labels or [])
    heads = [_head_for(task, head, labels or [], outs) for outs in outputs]
    effective = heads[0]
    if any(h != effective for h in heads[1:]):
        if head is not None:
            effective = head
        elif "output" in effective and effective["task"] in (
            "classification",
            "embedding",
            "regression",
        ):
            effective = {k: v for k, v in effective.items() if k != "output"}
    final_labels = list(labels or effective.get("labels") or [])
    return str(effective["task"]), effective, final_labels


def head_for_artifact(
    head: dict[str, Any] | None, signature: dict[str, Any]
) -> dict[str, Any] | None:
    """The version's head with the defaults filled for one artifact's outputs (what a device
    running that artifact gets); the head as stored when it does not fit (the device says so)."""
    from edge_agent.core.heads import HeadError, check_head, parse_head

    if head is None or not signature.get("outputs"):
        return head
    try:
        dumped: dict[str, Any] = check_head(
            parse_head(head), tensors(signature, "outputs")
        ).model_dump(mode="json")
    except (HeadError, ValidationError, NotImplementedError):
        return head
    return dumped


def stored_head(
    task: str, labels: Sequence[str], signatures: Sequence[dict[str, Any]]
) -> dict[str, Any] | None:
    """The head of a version registered before versions had one (stored NULL): the default for
    its task and signature, or None when the signature cannot give one."""
    try:
        return resolve_head(task=task, head=None, labels=labels, signatures=signatures)[1]
    except InvalidInput:
        return None
