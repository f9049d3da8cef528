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
