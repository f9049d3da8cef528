"""Whether a head fits a model's outputs (`check_head`), and the head a version gets when its
uploader names only a task (`default_head`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edge_agent.core.heads import detection, keypoints, segmentation
from edge_agent.core.heads.outputs import check_rank, find_output
from edge_agent.core.heads.spec import HeadError, parse_head
from edge_agent.core.runtimes import TensorSpec, dims

__all__ = ["check_head", "default_head"]


def _only(outputs: Sequence[TensorSpec], field: str) -> str:
    if len(outputs) == 1:
        return outputs[0].name
    names = ", ".join(s.name for s in outputs)
    raise HeadError(field, f"the model has {len(outputs)} outputs ({names}): name one")


def _score_output(outputs: Sequence[TensorSpec]) -> str | None:
    for spec in outputs:
        if len(spec.shape) == 2 and (spec.dtype.startswith("float") or spec.quantization):
            return spec.name
    return None


def _is_classifier(outputs: Sequence[TensorSpec]) -> bool:
    """A lone rank-2 float output, or a scikit-learn classifier's: one rank-2 float score output
    beside rank-1 integer label outputs."""
    scores = [
        s
        for s in outputs
        if len(s.shape) == 2 and (s.dtype.startswith("float") or s.quantization is not None)
    ]
    others = [s for s in outputs if s not in scores]
    return len(scores) == 1 and all(
        len(s.shape) == 1 and s.dtype.startswith(("int", "uint")) for s in others
    )


def check_head(head: Any, outputs: Sequence[TensorSpec]) -> Any:
    """The head, its defaults filled from the signature; HeadError when it does not fit."""
    task = head.task
    if task == "classification":
        name = head.output or _score_output(outputs)
        if name is None:
            have = ", ".join(f"{s.name} {dims(s.shape)}" for s in outputs)
            raise HeadError("output", f"no rank-2 float output holds class scores ({have})")
        spec = find_output(outputs, name, "output")
        check_rank(spec, "output", (2,), "a classification")
        classes = spec.shape[1]
        if head.labels and classes is not None and len(head.labels) != classes:
            raise HeadError(
                "labels", f"{len(head.labels)} labels for {classes} classes of output {name}"
            )
        return head.model_copy(update={"output": name})
    if task in ("embedding", "regression"):
        name = head.output or _only(outputs, "output")
        spec = find_output(outputs, name, "output")
        if len(spec.shape) < 1:
            raise HeadError("output", f"output {name} is a scalar: it has no rows")
        return head.model_copy(update={"output": name})
    if task == "raw":
        return head
    checker = {
        "detection": detection.check,
        "keypoints": keypoints.check,
        "segmentation": segmentation.check,
    }[task]
    return checker(head, outputs)


def default_head(
    task: str | None, outputs: Sequence[TensorSpec], labels: Sequence[str] = ()
) -> Any:
    """The head a version gets when its uploader names only a task (or nothing): classification
    when a rank-2 float output holds the scores (alone, or beside a scikit-learn classifier's
    integer labels), else raw. HeadError when the
    task needs options the signature cannot give (detection: which outputs are boxes)."""
    if task is None:
        task = "classification" if _is_classifier(outputs) else "raw"
    doc: dict[str, Any] = {"task": task}
    if task in ("classification", "segmentation") and labels:
        doc["labels"] = list(labels)
    if task in ("keypoints", "segmentation"):
        doc["output"] = _only(outputs, "output") if len(outputs) == 1 else outputs[0].name
    if task == "detection":
        raise HeadError("boxes", "a detection head must say which outputs are boxes and scores")
    return check_head(parse_head(doc), outputs)
