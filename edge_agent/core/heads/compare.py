"""How much two head results of the same task agree: the measure behind shadow comparisons.

    agreement(a, b) -> float in [0, 1]      agrees(a, b) -> bool

`a` and `b` are the dicts `edge_agent.core.heads.decode` returns for one row (see its docstring),
from
two models (live and shadow) given the same input. Per task:

- classification: the same class (1.0) or not (0.0).
- detection: boxes matched greedily (best score first) to an unmatched box of the same class at
  IoU >= `IOU_MATCH`; the score is matched / max(len(a), len(b)) (1.0 when both found nothing);
  they agree when every box of both is matched.
- embedding: cosine similarity (clamped to [0, 1]); they agree at >= `EMBEDDING_AGREES`.
- regression and keypoints: the mean absolute difference (`mad`) of the values / coordinates,
  as the similarity 1 / (1 + mad); they agree when mad <= `tolerance`. Results of different
  sizes (another number of points or instances) do not agree at all (0.0).
- segmentation: the overlap of the per-class pixel fractions, 1 - half the L1 distance of the
  fraction vectors; they agree at >= `SEGMENTATION_AGREES`.

Plain numpy, so the device's shadow runner and the hub's shadow step score alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_TOLERANCE",
    "EMBEDDING_AGREES",
    "IOU_MATCH",
    "SEGMENTATION_AGREES",
    "agreement",
    "agrees",
    "iou",
]

IOU_MATCH = 0.5
"""Two detections are the same object at this intersection over union (or more)."""
EMBEDDING_AGREES = 0.9
"""Two embeddings agree at this cosine similarity (or more)."""
SEGMENTATION_AGREES = 0.9
"""Two class maps agree at this overlap of their class fractions (or more)."""
DEFAULT_TOLERANCE = 0.05
"""Regression values / keypoint coordinates agree at this mean absolute difference (or less)."""

Result = Mapping[str, Any]


def _task(a: Result, b: Result) -> str:
    ta, tb = a.get("task"), b.get("task")
    if ta != tb:
        raise ValueError(f"cannot compare a {ta!r} result with a {tb!r} result")
    if not isinstance(ta, str):
        raise ValueError("a head result must say its task")
    return ta


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes (0.0 when both are empty)."""
    ax1, ay1, ax2, ay2 = (float(v) for v in a)
    bx1, by1, bx2, by2 = (float(v) for v in b)
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = max(0.0, ax2 - ax1) * max(0.0, ay2 - ay1) + max(0.0, bx2 - bx1) * max(0.0, by2 - by1)
    union -= inter
    return inter / union if union > 0 else 0.0


def _matched_boxes(a: Sequence[Result], b: Sequence[Result]) -> int:
    """Greedy one-to-one matching, a's boxes best score first, each to b's best free box."""
    order = sorted(range(len(a)), key=lambda i: -float(a[i].get("score", 0.0)))
    free = list(range(len(b)))
    matched = 0
    for i in order:
        best, best_iou = -1, IOU_MATCH
        for j in free:
            if b[j].get("class") != a[i].get("class"):
                continue
            overlap = iou(a[i]["box"], b[j]["box"])
            if overlap >= best_iou:
                best, best_iou = j, overlap
        if best >= 0:
            free.remove(best)
            matched += 1
    return matched


def _detection(a: Result, b: Result) -> tuple[float, bool]:
    da, db = list(a.get("detections") or []), list(b.get("detections") or [])
    most = max(len(da), len(db))
    if most == 0:
        return 1.0, True
    matched = _matched_boxes(da, db)
    return matched / most, matched == len(da) == len(db)


def _cosine(a: Result, b: Result) -> float:
    va = np.asarray(a.get("embedding") or [], dtype=np.float64).ravel()
    vb = np.asarray(b.get("embedding") or [], dtype=np.float64).ravel()
    if va.shape != vb.shape:
        return 0.0
    na, nb = float(np.linalg.norm(va)), float(np.linalg.norm(vb))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return min(1.0, max(0.0, float(va @ vb) / (na * nb)))


def _points(result: Result) -> np.ndarray | None:
    """Every coordinate of every instance, flattened; None when instances are ragged."""
    rows = []
    for inst in result.get("instances") or []:
        rows.append(np.asarray(inst.get("points") or [], dtype=np.float64).ravel())
    if not rows:
        return np.zeros(0)
    try:
        return np.concatenate(rows)
    except ValueError:
        return None


def _mad(a: Result, b: Result, task: str) -> float:
    """Mean absolute difference; inf when the results have different sizes."""
    if task == "regression":
        va = np.asarray(a.get("values") or [], dtype=np.float64).ravel()
        vb = np.asarray(b.get("values") or [], dtype=np.float64).ravel()
    else:
        ia, ib = a.get("instances") or [], b.get("instances") or []
        if len(ia) != len(ib):
            return math.inf
        pa, pb = _points(a), _points(b)
        if pa is None or pb is None:
            return math.inf
        va, vb = pa, pb
    if va.shape != vb.shape:
        return math.inf
    if va.size == 0:
        return 0.0
    return float(np.mean(np.abs(va - vb)))


def _fractions(result: Result) -> dict[int, float]:
    return {int(c["class"]): float(c.get("fraction", 0.0)) for c in result.get("classes") or []}


def _segmentation(a: Result, b: Result) -> float:
    fa, fb = _fractions(a), _fractions(b)
    l1 = sum(abs(fa.get(k, 0.0) - fb.get(k, 0.0)) for k in set(fa) | set(fb))
    return min(1.0, max(0.0, 1.0 - l1 / 2.0))


def _score(a: Result, b: Result, tolerance: float) -> tuple[float, bool]:
    task = _task(a, b)
    if task == "classification":
        same = a.get("class") == b.get("class")
        return (1.0 if same else 0.0), same
    if task == "detection":
        return _detection(a, b)
    if task == "embedding":
        cos = _cosine(a, b)
        return cos, cos >= EMBEDDING_AGREES
    if task in ("regression", "keypoints"):
        mad = _mad(a, b, task)
        if math.isinf(mad):
            return 0.0, False
        return 1.0 / (1.0 + mad), mad <= tolerance
    if task == "segmentation":
        overlap = _segmentation(a, b)
        return overlap, overlap >= SEGMENTATION_AGREES
    raise ValueError(f"{task!r} results carry no answer to compare (compare the tensors)")


def agreement(a: Result, b: Result, tolerance: float = DEFAULT_TOLERANCE) -> float:
    """How much two results of the same task agree, in [0, 1] (see the module's docstring).
    ValueError for results of different tasks, or of a task without an answer (raw)."""
    return _score(a, b, tolerance)[0]


def agrees(a: Result, b: Result, tolerance: float = DEFAULT_TOLERANCE) -> bool:
    """Whether two results of the same task agree (see the module's docstring)."""
    return _score(a, b, tolerance)[1]


def logged_answers_agree(a: Any, b: Any) -> bool:
    """Two answers as a log stores them agree: a head result (a dict with `task`) as `agrees`
    says, or a list of class scores (from agents before heads) with the same top class. Answers
    of different kinds, or raw ones, never agree."""
    if isinstance(a, list) and isinstance(b, list):
        return bool(a) and bool(b) and int(np.argmax(a)) == int(np.argmax(b))
    if isinstance(a, list):
        a = {"task": "classification", "scores": a}
    if isinstance(b, list):
        b = {"task": "classification", "scores": b}
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return False
    a, b = _with_class(a), _with_class(b)
    try:
        return agrees(a, b)
    except (ValueError, KeyError, TypeError):
        return False


def _with_class(result: dict[str, Any]) -> dict[str, Any]:
    if result.get("task") == "classification" and "class" not in result and result.get("scores"):
        return {**result, "class": int(np.argmax(result["scores"]))}
    return result
