"""Agreement between two head results: what a shadow comparison reports per task."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.core.heads import decode, parse_head
from edge_agent.core.heads.compare import agreement, agrees, iou


def _det(*boxes: tuple[list[float], float, int]) -> dict:
    return {
        "task": "detection",
        "detections": [{"box": b, "score": s, "class": c, "label": None} for b, s, c in boxes],
    }


def test_classification_compares_the_winning_class() -> None:
    head = parse_head({"task": "classification", "output": "y"})
    a, b, c = decode(head, {"y": np.array([[0.1, 0.9], [0.2, 0.8], [0.7, 0.3]])}, 3)
    assert agreement(a, b) == 1.0 and agrees(a, b)
    assert agreement(a, c) == 0.0 and not agrees(a, c)


def test_detection_matches_boxes_of_the_same_class_at_iou_half() -> None:
    a = _det(([0, 0, 10, 10], 0.9, 1), ([20, 20, 30, 30], 0.8, 2))
    shifted = _det(([1, 0, 11, 10], 0.7, 1), ([20, 20, 30, 30], 0.6, 2))
    assert agreement(a, shifted) == 1.0 and agrees(a, shifted)
    # Same place, other class: not a match.
    other_class = _det(([0, 0, 10, 10], 0.9, 3), ([20, 20, 30, 30], 0.8, 2))
    assert agreement(a, other_class) == 0.5 and not agrees(a, other_class)
    # Overlap below 0.5 (IoU 1/3): not a match.
    far = _det(([5, 0, 15, 10], 0.9, 1), ([20, 20, 30, 30], 0.8, 2))
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(1 / 3)
    assert agreement(a, far) == 0.5
    # A missing box counts against agreement: 1 matched of max(2, 1).
    one = _det(([0, 0, 10, 10], 0.9, 1))
    assert agreement(a, one) == 0.5 and not agrees(a, one)
    # Each box matches once: two boxes on one object are not two matches.
    twice = _det(([0, 0, 10, 10], 0.9, 1), ([0, 0, 10, 10], 0.8, 1))
    assert agreement(one, twice) == 0.5
    assert agreement(_det(), _det()) == 1.0 and agrees(_det(), _det())
    assert agreement(_det(), one) == 0.0


def test_embedding_is_cosine_similarity() -> None:
    head = parse_head({"task": "embedding", "output": "e"})
    vecs = np.array([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    a, b, c, d = decode(head, {"e": vecs}, 4)
    assert agreement(a, b) == pytest.approx(2 / np.hypot(2, 0.1), abs=1e-6)
    assert agrees(a, b)
    assert agreement(a, c) == pytest.approx(0.0) and not agrees(a, c)
    assert agreement(a, d) == 0.0  # opposite vectors: clamped into [0, 1]


def test_regression_and_keypoints_use_mean_absolute_difference() -> None:
    head = parse_head({"task": "regression", "output": "v"})
    a, b = decode(head, {"v": np.array([[1.0, 2.0], [1.5, 2.5]], dtype=np.float32)}, 2)
    assert agreement(a, b) == pytest.approx(1 / 1.5)
    assert not agrees(a, b) and agrees(a, b, tolerance=0.5)
    pa = {"task": "keypoints", "instances": [{"points": [[0, 0], [10, 10]]}]}
    pb = {"task": "keypoints", "instances": [{"points": [[1, 0], [10, 11]]}]}
    assert agreement(pa, pb) == pytest.approx(1 / 1.5)
    assert agrees(pa, pb, tolerance=1.0) and not agrees(pa, pb, tolerance=0.1)
    none = {"task": "keypoints", "instances": []}
    assert agreement(pa, none) == 0.0 and not agrees(pa, none, tolerance=100)


def test_segmentation_overlaps_class_fractions() -> None:
    a = {
        "task": "segmentation",
        "classes": [{"class": 0, "fraction": 0.75}, {"class": 1, "fraction": 0.25}],
    }
    b = {
        "task": "segmentation",
        "classes": [{"class": 0, "fraction": 0.5}, {"class": 2, "fraction": 0.5}],
    }
    assert agreement(a, a) == 1.0 and agrees(a, a)
    # L1 = 0.25 + 0.25 + 0.5 = 1.0 -> overlap 0.5.
    assert agreement(a, b) == pytest.approx(0.5) and not agrees(a, b)


def test_results_of_different_tasks_are_refused() -> None:
    with pytest.raises(ValueError, match="'detection' result with a 'embedding'"):
        agreement(_det(), {"task": "embedding", "embedding": [1.0]})
    with pytest.raises(ValueError, match="raw"):
        agrees({"task": "raw"}, {"task": "raw"})


def test_logged_answers_agree_across_agent_releases() -> None:
    """A shadow report pairs logs from agents before heads (scores lists) with head results."""
    from edge_agent.core.heads.compare import logged_answers_agree

    new = {"task": "classification", "class": 2, "scores": [0.1, 0.2, 0.7]}
    assert logged_answers_agree([0.1, 0.2, 0.7], [0.0, 0.1, 0.9])
    assert not logged_answers_agree([0.1, 0.8, 0.1], [0.0, 0.1, 0.9])
    assert logged_answers_agree([0.0, 0.3, 0.6], new)
    assert not logged_answers_agree({**new, "class": 0}, new)
    box = {"box": [0, 0, 10, 10], "score": 0.9, "class": 0}
    moved = {**box, "box": [20, 20, 30, 30]}
    assert logged_answers_agree(
        {"task": "detection", "detections": [box]}, {"task": "detection", "detections": [box]}
    )
    assert not logged_answers_agree(
        {"task": "detection", "detections": [box]}, {"task": "detection", "detections": [moved]}
    )
    assert not logged_answers_agree({"task": "raw"}, {"task": "raw"})
    assert not logged_answers_agree(new, {"task": "detection", "detections": []})
