"""The segmentation head: a per-pixel class map, its pixel counts per class, the mask as PNG.

The output is [N, H, W, C] (`layout` NHWC), [N, C, H, W] (NCHW) or [N, H, W]. When the head
does not name a layout, `check` takes NCHW for a rank-4 output whose dimension 1 is smaller than
its last one ([N, 3, 16, 16]), else NHWC ([1, 256, 256, 1]). Several channels: the class of a
pixel is its best channel (after `activation`). One channel ([N, H, W, 1] or [N, H, W]): class 1
(foreground) where the activated score is at or above `threshold`, else 0; except that an
[N, H, W] output with more than 2 labels already holds class ids. `shape` is the class map's
[H, W] (the model's output size); `mask_png` is the class map as a grayscale PNG (uint8; uint16
past 256 classes), base64, on request.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge_agent.core.heads.outputs import check_rank, find_output
from edge_agent.core.heads.spec import HeadError, SegmentationHead
from edge_agent.core.runtimes import TensorSpec, dims

__all__ = ["check", "class_map", "decode_segmentation"]


def _channels(head: SegmentationHead, spec: TensorSpec) -> int | None:
    if len(spec.shape) == 3:
        return 1
    return spec.shape[1] if head.layout == "NCHW" else spec.shape[3]


def check(head: Any, outputs: Sequence[TensorSpec]) -> Any:
    """The head with its layout filled; HeadError naming the field when the output is missing,
    has the wrong rank, or its labels do not match its classes."""
    spec = find_output(outputs, head.output, "output")
    check_rank(spec, "output", (3, 4), "a segmentation")
    update: dict[str, Any] = {}
    if "layout" not in head.model_fields_set and len(spec.shape) == 4:
        c_first, c_last = spec.shape[1], spec.shape[3]
        if c_first is not None and c_last is not None and c_first < c_last:
            update["layout"] = "NCHW"
    head = head.model_copy(update=update)
    channels = _channels(head, spec)
    if head.labels and channels is not None:
        ids = len(spec.shape) == 3 and len(head.labels) > 2
        want = 2 if channels == 1 else channels
        if not ids and len(head.labels) != want:
            raise HeadError(
                "labels",
                f"{len(head.labels)} labels for {want} classes of output {spec.name} "
                f"{dims(spec.shape)} ({head.layout}"
                + (", one channel: background and foreground" if channels == 1 else "")
                + ")",
            )
    return head


def _activate(x: np.ndarray, activation: str, axis: int) -> np.ndarray:
    if activation == "sigmoid":
        out: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(x, -100.0, 100.0)))
        return out
    if activation == "softmax":
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        soft: np.ndarray = e / e.sum(axis=axis, keepdims=True)
        return soft
    return x


def class_map(head: SegmentationHead, row: np.ndarray) -> np.ndarray:
    """One row of the output to an (H, W) int64 class map."""
    x = np.asarray(row, dtype=np.float32)
    if x.ndim == 2:
        if len(head.labels) > 2:
            return np.rint(x).astype(np.int64)
        return (_activate(x, head.activation, -1) >= head.threshold).astype(np.int64)
    if head.layout == "NCHW":
        x = np.moveaxis(x, 0, -1)
    if x.shape[-1] == 1:
        return (_activate(x[..., 0], head.activation, -1) >= head.threshold).astype(np.int64)
    result: np.ndarray = _activate(x, head.activation, -1).argmax(axis=-1).astype(np.int64)
    return result


def _png(classes: np.ndarray) -> str:
    import cv2

    dtype = np.uint8 if classes.max(initial=0) < 256 else np.uint16
    ok, buf = cv2.imencode(".png", classes.astype(dtype))
    if not ok:
        raise ValueError("OpenCV could not encode the class map as PNG")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def decode_segmentation(
    head: SegmentationHead,
    outputs: Mapping[str, np.ndarray],
    rows: int,
    *,
    include_mask: bool = False,
) -> list[dict[str, Any]]:
    """One `{"task": "segmentation", ...}` per row (see the module's docstring)."""
    data = np.asarray(outputs[head.output])
    results = []
    for r in range(rows):
        row = data[r]
        classes = class_map(head, row)
        if row.ndim == 3:
            count = row.shape[0] if head.layout == "NCHW" else row.shape[-1]
            count = max(2, count)
        else:
            count = 2 if len(head.labels) <= 2 else len(head.labels)
        count = max(count, len(head.labels), int(classes.max(initial=0)) + 1)
        pixels = np.bincount(classes.reshape(-1).clip(0), minlength=count)
        total = int(classes.size)
        result: dict[str, Any] = {
            "task": "segmentation",
            "shape": [int(classes.shape[0]), int(classes.shape[1])],
            "classes": [
                {
                    "class": c,
                    "label": head.labels[c] if c < len(head.labels) else None,
                    "pixels": int(pixels[c]),
                    "fraction": float(pixels[c]) / total if total else 0.0,
                }
                for c in range(count)
            ],
        }
        if include_mask:
            result["mask_png"] = _png(classes)
        results.append(result)
    return results
