"""A model input's feature summary: what the prediction log keeps of each input, so that the
hub can compare the inputs a model sees with those it was trained on (drift).

The same function runs on the device (in the logs it forwards), in the hub's endpoints and on
the training set (the baseline), so the three are comparable. An input of at most `WIDTH` values
is kept as it is; a larger one (an image) is averaged down to `WIDTH` values, in order (for an
image: bands of pixels), which keeps its overall brightness and layout but not its detail.
Numpy only: it runs on a Raspberry Pi.
"""

from __future__ import annotations

import numpy as np

WIDTH = 64


def summarize(x: np.ndarray) -> np.ndarray:
    """(N, ...) model inputs → (N, ≤ WIDTH) float32 summaries, one row per input."""
    flat = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    width = flat.shape[1]
    if width <= WIDTH:
        return flat
    edges = np.linspace(0, width, WIDTH + 1).astype(np.int64)
    sums = np.add.reduceat(flat, edges[:-1], axis=1)
    return (sums / np.diff(edges)).astype(np.float32)


def summary_lists(x: np.ndarray, decimals: int = 4) -> list[list[float]]:
    """`summarize` as rounded Python lists (for a JSON log record)."""
    out: list[list[float]] = np.round(summarize(x), decimals).tolist()
    return out


def encode(row: np.ndarray | list[float]) -> bytes:
    """One summary as stored at the hub: float32, little-endian (a BLOB: 4 bytes a value,
    about twenty times cheaper to write than the same numbers as JSON text)."""
    return np.asarray(row, dtype="<f4").reshape(-1).tobytes()


def decode(stored: bytes | str | None) -> np.ndarray | None:
    """A stored summary as a float32 row: `encode`'s bytes (or a JSON list of numbers); None
    when it is missing or damaged (not a whole number of float32s, not a flat list)."""
    if stored is None:
        return None
    if isinstance(stored, bytes | bytearray | memoryview):
        raw = bytes(stored)
        if not raw or len(raw) % 4:
            return None
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    import json

    try:
        row = np.asarray(json.loads(stored), dtype=np.float32)
    except (ValueError, TypeError):
        return None
    return row if row.ndim == 1 else None
