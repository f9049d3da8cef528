"""Fitting the preprocessing spec saved on a version (the spec itself is
`edge_agent.core.preprocess`).

The same spec is applied at training time here, and later by the agent and the serving engine,
so a model always sees inputs prepared the way it was trained.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from edge_agent.core.preprocess import PreprocessingSpec

__all__ = ["fit_spec"]


def fit_spec(
    *,
    kind: Literal["tabular", "image"],
    X_train: np.ndarray,
    value_max: float,
    color: Literal["gray", "rgb", "bgr"],
    flatten: bool,
    feature_names: list[str],
) -> PreprocessingSpec:
    """Describe how to prepare raw inputs for the model."""
    if kind == "image":
        spec = PreprocessingSpec(
            input_kind="image",
            layout="NF" if flatten else "NHWC",
            size=(int(X_train.shape[1]), int(X_train.shape[2])),
            color=color,
            scale=1.0 / value_max,
            flatten=flatten,
        )
        return spec
    # tabular models carry their own scaler (fitted on the training split) inside the model file
    return PreprocessingSpec(input_kind="tabular", layout="NF", feature_names=feature_names)
