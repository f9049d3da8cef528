"""The keypoints head: landmarks or a pose, as points in image pixels.

The output holds, per row, `instances x points x values_per_point` numbers in that order (any
shape: [N, P * V], [N, P, V], MediaPipe's [N, 1, 1, P * V]); `points` defaults to all of it as
one instance. Each point is x, y[, z[, visibility[, presence]]]. x and y are model-input pixels
(or fractions of the input size with `normalized`; without a geometry they stay fractions) and
are mapped to image pixels with `Geometry.to_image`; z is reported as the model gives it.
Visibility and per-point presence get `visibility_activation`; the `presence` output (one value
per instance) gets `presence_activation` and is the instance's `score`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge_agent.core.heads.outputs import find_output
from edge_agent.core.heads.spec import HeadError, KeypointsHead
from edge_agent.core.preprocess import Geometry
from edge_agent.core.runtimes import TensorSpec, dims

__all__ = ["check", "decode_keypoints"]


def _per_row(spec: TensorSpec) -> int | None:
    rest = spec.shape[1:]
    if any(d is None for d in rest):
        return None
    return math.prod(d for d in rest if d is not None)


def check(head: Any, outputs: Sequence[TensorSpec]) -> Any:
    """The head with `points` filled from the output's size; HeadError naming the field when
    the output is missing, a scalar per row, or does not divide into points."""
    spec = find_output(outputs, head.output, "output")
    if len(spec.shape) < 2:
        raise HeadError(
            "output",
            f"a keypoints output {spec.name} must have rank 2 or more (rows first), "
            f"it has shape {dims(spec.shape)} (rank {len(spec.shape)})",
        )
    size = _per_row(spec)
    vpp = head.values_per_point
    points = head.points
    instances = 1
    if size is not None:
        if points is None:
            if size % vpp:
                raise HeadError(
                    "values_per_point",
                    f"output {spec.name} {dims(spec.shape)} holds {size} values per row, "
                    f"not a multiple of {vpp} values per point",
                )
            points = size // vpp
        elif size % (points * vpp):
            raise HeadError(
                "points",
                f"{points} points x {vpp} values do not divide output {spec.name} "
                f"{dims(spec.shape)} ({size} values per row)",
            )
        instances = size // (points * vpp)
    if head.presence:
        pres = find_output(outputs, head.presence, "presence")
        n = _per_row(pres)
        if len(pres.shape) < 1 or (n is not None and n not in (1, instances)):
            raise HeadError(
                "presence",
                f"presence output {pres.name} {dims(pres.shape)} must hold one score per "
                f"instance ({instances} per row)",
            )
    if head.names and points is not None and len(head.names) != points:
        raise HeadError("names", f"{len(head.names)} names for {points} points")
    return head.model_copy(update={"points": points})


def _activate(x: np.ndarray, activation: str) -> np.ndarray:
    if activation == "sigmoid":
        out: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(x, -100.0, 100.0)))
        return out
    return x


def decode_keypoints(
    head: KeypointsHead,
    outputs: Mapping[str, np.ndarray],
    rows: int,
    geometry: Sequence[Geometry | None] | None = None,
) -> list[dict[str, Any]]:
    """One `{"task": "keypoints", "instances": [...]}` per row (see the module's docstring)."""
    geo = list(geometry) if geometry is not None else [None] * rows
    vpp = head.values_per_point
    data = np.asarray(outputs[head.output], dtype=np.float64)
    flat = data.reshape(len(data), -1)
    points = head.points or flat.shape[1] // vpp
    instances = max(1, flat.shape[1] // (points * vpp))
    presence = None
    if head.presence:
        presence = np.asarray(outputs[head.presence], dtype=np.float64).reshape(len(data), -1)
        presence = _activate(presence, head.presence_activation)
    results = []
    for r in range(rows):
        values = flat[r, : instances * points * vpp].reshape(instances, points, vpp)
        g = geo[r]
        found = []
        for i in range(instances):
            v = values[i]
            x, y = v[:, 0], v[:, 1]
            if head.normalized and g is not None:
                x, y = x * g.input_width, y * g.input_height
            if g is not None:
                x, y = g.to_image(x, y)
            cols = [x, y] + ([v[:, 2]] if vpp >= 3 else [])
            inst: dict[str, Any] = {"points": [[float(c[p]) for c in cols] for p in range(points)]}
            if vpp >= 4:
                inst["visibility"] = [
                    float(s) for s in _activate(v[:, 3], head.visibility_activation)
                ]
            if vpp >= 5:
                inst["presence"] = [
                    float(s) for s in _activate(v[:, 4], head.visibility_activation)
                ]
            if presence is not None:
                inst["score"] = float(presence[r, min(i, presence.shape[1] - 1)])
            found.append(inst)
        results.append({"task": "keypoints", "instances": found})
    return results
