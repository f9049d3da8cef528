"""Raw inputs to model-ready tensors with a version's preprocessing spec.

Images go through the agent's OpenCV code (`edge_agent.core.preprocess`), numeric rows through the
hub's `PreprocessingSpec.apply`: the same steps that prepared the training data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cloud_hub.serving.engine.errors import BadInput
from cloud_hub.serving.engine.step import Signature
from edge_agent.core.preprocess import (
    Geometry,
    ImageError,
    PreprocessingSpec,
    decode_image,
    prepare_image,
)


def parse_spec(spec: dict[str, Any]) -> PreprocessingSpec:
    return PreprocessingSpec(**spec)


def image_shape(spec: PreprocessingSpec) -> tuple[int, int, int] | None:
    if spec.input_kind != "image" or spec.size is None:
        return None
    channels = 3 if spec.color == "rgb" else 1
    return int(spec.size[0]), int(spec.size[1]), channels


def output_signature(spec: PreprocessingSpec) -> Signature:
    """The tensor shape the spec produces, as far as it says."""
    shape = image_shape(spec)
    if shape is not None:
        if spec.flatten or spec.layout == "NF":
            return Signature("tensor", (None, shape[0] * shape[1] * shape[2]))
        if spec.layout == "NCHW":
            return Signature("tensor", (None, shape[2], shape[0], shape[1]))
        return Signature("tensor", (None, *shape))
    if spec.input_kind == "tabular" and spec.feature_names:
        return Signature("tensor", (None, len(spec.feature_names)))
    return Signature("tensor")


def prepare_images(images: tuple[Any, ...], spec: PreprocessingSpec) -> np.ndarray:
    """Encoded images (PNG, JPEG, ...) → one batch."""
    return prepare_images_geometry(images, spec)[0]


def prepare_images_geometry(
    images: tuple[Any, ...], spec: PreprocessingSpec
) -> tuple[np.ndarray, tuple[Geometry, ...]]:
    """Encoded images → one batch, and how each image became its row (a detection head gives
    boxes in the caller's image pixels with it)."""
    if spec.input_kind != "image":
        raise BadInput("this model takes no images (its preprocessing spec is tabular)")
    as_dict = spec.model_dump(mode="json")
    out, geometry = [], []
    for i, data in enumerate(images):
        try:
            x, geo = prepare_image(decode_image(bytes(data), as_dict), as_dict)
        except ImageError as exc:
            raise BadInput(f"image {i}: {exc}") from None
        out.append(x)
        geometry.append(geo)
    batch = np.concatenate(out)
    if batch.dtype.kind == "f":
        batch = batch.astype(np.float32)
    return batch, tuple(geometry)


def prepare_rows(x: np.ndarray, spec: PreprocessingSpec) -> np.ndarray:
    """Numeric rows → model-ready rows: raw pixel values for an image model (any layout with
    H×W×C values per row), raw features for a tabular one."""
    shape = image_shape(spec)
    if shape is not None:
        per_row = shape[0] * shape[1] * shape[2]
        got = int(np.prod(x.shape[1:]))
        if got != per_row:
            raise BadInput(
                f"expected images of {shape[0]}x{shape[1]}x{shape[2]} = {per_row} values per "
                f"row, got rows of shape {tuple(x.shape[1:])}"
            )
        x = x.reshape(len(x), *shape)
    elif (
        spec.input_kind == "tabular"
        and spec.feature_names
        and (x.ndim != 2 or x.shape[1] != len(spec.feature_names))
    ):
        raise BadInput(
            f"expected rows of {len(spec.feature_names)} features "
            f"({', '.join(spec.feature_names)}), got shape {tuple(x.shape[1:])}"
        )
    return spec.apply(x)
