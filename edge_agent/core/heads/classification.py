"""The classification head: scores to the winning class, its label, and the top k."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edge_agent.core.heads.spec import ClassificationHead


def activate(x: np.ndarray, activation: str, axis: int = -1) -> np.ndarray:
    if activation == "sigmoid":
        return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)
    if activation == "softmax":
        shifted = x - x.max(axis=axis, keepdims=True)
        e = np.exp(shifted)
        return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)
    return x


def class_scores(head: ClassificationHead, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The head's scores, (N, C) float32, activation applied."""
    assert head.output is not None  # check_head fills it
    x = np.asarray(outputs[head.output], dtype=np.float32)
    return activate(x.reshape(len(x), -1), head.activation)


def decode_classification(
    head: ClassificationHead, outputs: Mapping[str, np.ndarray], rows: int
) -> list[dict[str, Any]]:
    scores = class_scores(head, outputs)
    labels = head.labels
    k = min(head.top_k, scores.shape[1])
    results = []
    for row in scores[:rows]:
        order = np.argsort(-row, kind="stable")[:k]
        top = int(order[0])
        results.append(
            {
                "task": "classification",
                "class": top,
                "label": labels[top] if top < len(labels) else None,
                "score": float(row[top]),
                "scores": [float(s) for s in row],
                "top_k": [
                    {
                        "class": int(c),
                        "label": labels[c] if c < len(labels) else None,
                        "score": float(row[c]),
                    }
                    for c in order
                ],
            }
        )
    return results
