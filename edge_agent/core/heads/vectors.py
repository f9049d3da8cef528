"""Embedding and regression heads: one vector of numbers per row."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def decode_vectors(head: Any, outputs: Mapping[str, np.ndarray], rows: int) -> list[dict[str, Any]]:
    x = np.asarray(outputs[head.output], dtype=np.float32)
    x = x.reshape(len(x), -1)[:rows]
    if head.task == "regression":
        return [{"task": "regression", "values": [float(v) for v in row]} for row in x]
    norms = np.linalg.norm(x, axis=1)
    results = []
    for row, norm in zip(x, norms, strict=True):
        vec = row / norm if head.normalize and norm > 0 else row
        results.append(
            {"task": "embedding", "embedding": [float(v) for v in vec], "norm": float(norm)}
        )
    return results
