"""The statistics monitoring computes: quantile bins, population stability index, percentiles,
and the distance between two class distributions. Numpy only, no state.

Bins. A feature's bins are cut at the deciles of its training values (deduplicated, so a feature
with many equal values has fewer bins), with three more: values below the training minimum
(underflow), values equal to the minimum (a point mass there is common: black pixels, zero
counts), and values above the training maximum (overflow). Underflow and overflow are empty in
training, so inputs that leave the training range count as drift even for a feature that was
constant in training.

PSI = Σ (a − e) · ln(a / e) over the bins, with e the training share and a the window's share of
each bin, both floored at `EPSILON` so that an empty bin contributes a large finite term. The
usual reading: < 0.1 stable, 0.1–0.25 a moderate shift, > 0.25 a significant one. A window of n
records has a noise floor of roughly (bins − 1) / n, so windows need enough records (the alert
rules' `min_count`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

EPSILON = 1e-4
QUANTILES = np.linspace(0.0, 1.0, 11)  # 10 bins between the deciles


def quantile_edges(values: np.ndarray) -> list[float]:
    """The deduplicated deciles (0 %, 10 %, … 100 %) of one feature's training values."""
    col = np.asarray(values, dtype=np.float32)
    edges = np.unique(np.quantile(col, QUANTILES).astype(np.float32))
    return [float(e) for e in edges]


def bin_count(edges: Sequence[float]) -> int:
    """Bins of a feature cut at `edges`: underflow, the minimum, the quantile bins, overflow."""
    return len(edges) + 2


def bin_index(edges: Sequence[float], values: np.ndarray) -> np.ndarray:
    """The bin of each value: 0 below edges[0], 1 equal to edges[0], i + 1 in
    (edges[i - 1], edges[i]], and len(edges) + 1 above the last edge or not a number (NaN
    is outside the training range too: searchsorted alone would file it in the last
    interval, where it would hide)."""
    cuts = np.asarray(edges, dtype=np.float32)
    x = np.asarray(values, dtype=np.float32)
    below = np.searchsorted(cuts, x, side="left")  # 0 for x <= edges[0]
    idx = below + (x >= cuts[0])
    idx[(x > cuts[-1]) | np.isnan(x)] = len(cuts) + 1
    return idx.astype(np.int64)


def proportions(edges: Sequence[float], values: np.ndarray) -> np.ndarray:
    counts = np.bincount(bin_index(edges, values), minlength=bin_count(edges))
    total = counts.sum()
    return counts / total if total else counts.astype(np.float64)


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float:
    """Population stability index of `actual` against `expected` (shares of the same bins)."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), EPSILON)
    a = np.maximum(np.asarray(actual, dtype=np.float64), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def percentiles(values: Sequence[float], qs: Sequence[int] = (50, 90, 99)) -> dict[str, float]:
    """{"p50": …, "p90": …, "p99": …} (nearest-rank on the sorted values); {} for none."""
    if not values:
        return {}
    return sorted_percentiles(np.sort(np.asarray(values, dtype=np.float64)), qs)


def sorted_percentiles(
    ordered: Sequence[float] | np.ndarray, qs: Sequence[int] = (50, 90, 99)
) -> dict[str, float]:
    """`percentiles` of values already sorted ascending (an incremental window keeps them so)."""
    out: dict[str, float] = {}
    for q in qs:
        if not len(ordered):
            return {}
        rank = max(int(np.ceil(q / 100 * len(ordered))), 1)
        out[f"p{q}"] = round(float(ordered[rank - 1]), 3)
    return out


def shares(labels: Sequence[str]) -> dict[str, float]:
    """Share of each label, largest first."""
    if not labels:
        return {}
    names, counts = np.unique(np.asarray(labels, dtype=object), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    total = counts.sum()
    return {str(names[i]): round(float(counts[i] / total), 6) for i in order}


def shares_of_counts(counts: Mapping[str, int]) -> dict[str, float]:
    """`shares` of labels given as counts (zero counts left out), in the same order: largest
    first, equal counts by name."""
    live = sorted((name, n) for name, n in counts.items() if n > 0)
    total = sum(n for _, n in live)
    live.sort(key=lambda item: -item[1])  # stable: equal counts stay in name order
    return {name: round(n / total, 6) for name, n in live}


def total_variation(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """Half the L1 distance of two distributions over labels: the share of answers that would
    have to change class for one to match the other (0 same, 1 disjoint)."""
    keys = set(p) | set(q)
    return round(0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys), 6)
