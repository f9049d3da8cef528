"""The keypoints head (being written)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge_agent.runtimes import TensorSpec


def check(head: Any, outputs: Sequence[TensorSpec]) -> Any:
    raise NotImplementedError


def decode_keypoints(
    head: Any, outputs: Mapping[str, np.ndarray], rows: int, *args: Any, **kw: Any
) -> list[dict[str, Any]]:
    raise NotImplementedError
