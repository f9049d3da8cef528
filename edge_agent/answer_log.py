"""What an inference log keeps of an answer: one rule for the served model's logs
(`inference`) and the shadow's (`shadow`)."""

from __future__ import annotations

from typing import Any

__all__ = ["log_output"]


def log_output(answer: dict[str, Any], served: dict[str, Any]) -> dict[str, Any]:
    """What a log keeps of an answer: the head's result as the model gave it (a detection's
    boxes as served), without a mask PNG; a classification's class, label, score and scores (to
    6 decimals, as before heads: its top k is in its scores)."""
    task = answer.get("task")
    if task == "classification":
        return {
            "task": task,
            "class": answer["class"],
            "label": answer["label"],
            "score": answer["score"],
            "scores": [round(v, 6) for v in answer["scores"]],
        }
    out = served if task == "detection" else answer
    return {k: v for k, v in out.items() if k != "mask_png"}
