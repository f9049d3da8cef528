"""A model's raw outputs to the Value a head gives, shared by the model step (`head: auto`) and
the head steps (`classify`, `detect`, `keypoints`, `segment`, `embed`).

Classification gives today's `scores` value (the head's scores, activation applied, with the
class names); raw gives the `tensors` themselves; every other task gives `results`, one
`edge_agent.core.heads.decode` dict per row. Each keeps the raw tensors it was decoded from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cloud_hub.serving.engine.step import Signature
from cloud_hub.serving.engine.values import Value
from edge_agent.core.heads import decode
from edge_agent.core.heads.classification import class_scores
from edge_agent.core.runtimes import TensorSpec

HEAD_STEP_TASKS = {
    "classify": "classification",
    "detect": "detection",
    "keypoints": "keypoints",
    "segment": "segmentation",
    "embed": "embedding",
}


def dequantized(
    specs: Sequence[TensorSpec], tensors: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The numeric outputs as float32 (quantized ones dequantized), as heads read them."""
    quant = {s.name: s.quantization for s in specs}
    out: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiub":
            continue
        q = quant.get(name)
        if q is not None:
            out[name] = ((arr.astype(np.float32) - q.zero_point) * q.scale).astype(np.float32)
        else:
            out[name] = arr.astype(np.float32, copy=False)
    return out


def head_labels(head: Any, fallback: Sequence[str] = ()) -> tuple[str, ...]:
    """The class names a head answers with (its own, else the version's)."""
    labels = getattr(head, "labels", None) or []
    return tuple(labels) or tuple(fallback)


def signature_of(head: Any, base: Signature, labels: Sequence[str]) -> Signature:
    """What applying `head` to the tensors `base` describes gives."""
    common = {"outputs": base.outputs, "head": head, "model": base.model, "task": head.task}
    if head.task == "classification":
        assert base.outputs is not None
        spec = next(s for s in base.outputs if s.name == head.output)
        return Signature("scores", (None, spec.shape[1]), head_labels(head, labels), **common)
    if head.task == "raw":
        return Signature("tensors", **common)
    return Signature("results", labels=head_labels(head, labels) or None, **common)


def apply_head(
    head: Any,
    specs: Sequence[TensorSpec],
    tensors: Mapping[str, np.ndarray],
    rows: int,
    *,
    labels: Sequence[str] = (),
    version: np.ndarray | None = None,
    geometry: Sequence[Any] | None = None,
    include_mask: bool = False,
) -> Value:
    """The head's answer for `rows` rows of raw outputs `tensors`."""
    raw = dict(tensors)
    if head.task == "raw":
        return Value(kind="tensors", rows=rows, tensors=raw, version=version, task="raw")
    values = dequantized(specs, raw)
    if head.task == "classification":
        scores = class_scores(head, values)
        return Value(
            kind="scores",
            rows=rows,
            x=scores,
            labels=head_labels(head, labels),
            version=version,
            tensors=raw,
            task="classification",
        )
    geo = list(geometry) if geometry is not None else None
    results = decode(head, values, rows, geo, include_mask=include_mask)
    return Value(
        kind="results",
        rows=rows,
        results=tuple(results),
        labels=head_labels(head, labels) or None,
        version=version,
        tensors=raw,
        task=head.task,
    )
