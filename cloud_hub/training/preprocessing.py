"""The preprocessing spec saved on a version: what turns raw input into the model's tensor.

The same spec is applied at training time here, and later by the agent and the serving engine,
so a model always sees inputs prepared the way it was trained.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel


class PreprocessingSpec(BaseModel):
    input_kind: Literal["tabular", "image"]
    layout: Literal["NF", "NHWC"]
    # image inputs: resize to (H, W), colour, and scale pixel values into [0, 1]
    size: tuple[int, int] | None = None
    color: Literal["gray", "rgb"] | None = None
    scale: float = 1.0
    flatten: bool = False  # image data fed to a tabular model (e.g. an MLP on digits)
    # optional standardisation (x - mean) / std, e.g. for an uploaded model that needs it
    mean: list[float] | None = None
    std: list[float] | None = None
    feature_names: list[str] = []

    def apply(self, X: np.ndarray) -> np.ndarray:
        out: np.ndarray = X.astype(np.float32) * np.float32(self.scale)
        if self.flatten:
            out = out.reshape(out.shape[0], -1)
        if self.mean is not None and self.std is not None:
            mean = np.asarray(self.mean, np.float32)
            out = (out - mean) / np.asarray(self.std, np.float32)
        return out.astype(np.float32)


def fit_spec(
    *,
    kind: Literal["tabular", "image"],
    X_train: np.ndarray,
    value_max: float,
    color: Literal["gray", "rgb"],
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
