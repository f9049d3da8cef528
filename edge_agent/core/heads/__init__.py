"""Task heads: output tensors to a structured answer, the same code on the device and the hub.

    decode(head, outputs, rows, geometry) -> one JSON-able dict per row

`outputs` are the runtime's outputs by name, already dequantized to float32 (`Runtime.dequantize`)
and with the batch's rows first. `geometry` (one per row, or None) maps the model's input pixels
back to the caller's image (a resize or a letterbox: `edge_agent.core.preprocess.Geometry`);
without it
coordinates are in model-input pixels. Each task's answer (every dict has `"task"`):

- classification: `class`, `label`, `score`, `scores` (every class), `top_k` [{class, label, score}]
- detection: `detections` [{box: [x1, y1, x2, y2] in image pixels, score, class, label,
  keypoints?: [[x, y], ...]}], best first, after score filtering and OpenCV's NMS
- keypoints: `instances` [{points: [[x, y(, z)], ...], visibility?: [...], score?}]
- segmentation: `shape` [H, W], `classes` [{class, label, pixels, fraction}], `mask_png` (base64
  PNG of the class map, on request)
- embedding: `embedding` [...], `norm`
- regression: `values` [...]
- raw: nothing more (the caller asks for the tensors)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge_agent.core.heads.checks import check_head, default_head
from edge_agent.core.heads.spec import (
    HEAD_ADAPTER,
    TASKS,
    HeadError,
    HeadSpec,
    Task,
    parse_head,
)
from edge_agent.core.preprocess import Geometry

__all__ = [
    "HEAD_ADAPTER",
    "TASKS",
    "Geometry",
    "HeadError",
    "HeadSpec",
    "Task",
    "check_head",
    "decode",
    "default_head",
    "parse_head",
]


def decode(
    head: Any,
    outputs: Mapping[str, np.ndarray],
    rows: int,
    geometry: Sequence[Geometry | None] | None = None,
    *,
    include_mask: bool = False,
) -> list[dict[str, Any]]:
    """One structured answer per row (see the module's docstring)."""
    geo = list(geometry) if geometry is not None else [None] * rows
    task = head.task
    if task == "classification":
        from edge_agent.core.heads.classification import decode_classification

        return decode_classification(head, outputs, rows)
    if task in ("embedding", "regression"):
        from edge_agent.core.heads.vectors import decode_vectors

        return decode_vectors(head, outputs, rows)
    if task == "raw":
        return [{"task": "raw"} for _ in range(rows)]
    if task == "detection":
        from edge_agent.core.heads.detection import decode_detection

        return decode_detection(head, outputs, rows, geo)
    if task == "keypoints":
        from edge_agent.core.heads.keypoints import decode_keypoints

        return decode_keypoints(head, outputs, rows, geo)
    if task == "segmentation":
        from edge_agent.core.heads.segmentation import decode_segmentation

        return decode_segmentation(head, outputs, rows, include_mask=include_mask)
    raise ValueError(f"unknown task {task!r}")
