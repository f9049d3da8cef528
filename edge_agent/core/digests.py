"""Digests a log keeps instead of the tensors: of each input row and of each row's raw outputs.

The device and the hub's engine compute them with these same functions, so a digest logged on
either side names the same tensors. numpy and hashlib only (the hub's model-in-image server
imports this without the agent's outbox).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

Feeds = np.ndarray | Mapping[str, Any]

__all__ = ["input_digest", "input_digests", "outputs_digest", "row_of"]


def row_of(value: np.ndarray, i: int, rows: int, batched: bool) -> np.ndarray:
    """Row i of a tensor (the whole tensor for a model without a batch dimension)."""
    if batched and value.ndim and len(value) == rows:
        return value[i]
    return value


def input_digest(x: np.ndarray) -> str:
    """A short content digest of one input sample (what was asked, without storing it)."""
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()[:16]


def input_digests(x: Feeds, rows: int) -> list[str]:
    if not isinstance(x, Mapping):
        arr = np.asarray(x)
        if arr.dtype == np.float64:  # JSON numbers: as the float32 the model takes
            arr = arr.astype(np.float32)
        return [input_digest(row_of(arr, i, rows, True)) for i in range(rows)]
    arrays = []
    for name in sorted(x):
        arr = np.asarray(x[name])
        arrays.append(arr.astype(np.float32) if arr.dtype == np.float64 else arr)
    digests = []
    for i in range(rows):
        h = hashlib.sha256()
        for arr in arrays:
            h.update(np.ascontiguousarray(row_of(arr, i, rows, True)).tobytes())
        digests.append(h.hexdigest()[:16])
    return digests


def outputs_digest(outputs: Mapping[str, np.ndarray], i: int, rows: int) -> str:
    """sha256 of row i of every raw output, in name order (what a log keeps of the tensors)."""
    h = hashlib.sha256()
    for name in sorted(outputs):
        row = row_of(outputs[name], i, rows, True)
        h.update(name.encode())
        h.update(repr(row.tolist()).encode() if row.dtype.kind == "O" else row.tobytes())
    return h.hexdigest()
