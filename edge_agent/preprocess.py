"""Raw images to model-ready tensors, with the version's preprocessing spec.

The spec is the hub's `PreprocessingSpec` (cloud_hub/training/preprocessing.py) as JSON: the same
steps the hub took at training time, done here with OpenCV the way the hub's image loader does:
read gray or colour, resize to (H, W) with INTER_AREA, BGR→RGB for "rgb", times `scale`, flatten
for a tabular model, then `(x - mean) / std` when given. OpenCV is imported on first use.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ImageError", "decode_image", "prepare_frame", "require_image_spec"]


class ImageError(ValueError):
    """Bytes that are not a decodable image, or a model that takes no images."""


def require_image_spec(spec: dict[str, Any] | None) -> dict[str, Any]:
    if not spec or spec.get("input_kind") != "image":
        raise ImageError("the active model takes no images (its preprocessing spec is not 'image')")
    return spec


def decode_image(data: bytes, spec: dict[str, Any]) -> np.ndarray:
    """Decode PNG/JPEG/... bytes as the spec's colour: (H, W) gray or (H, W, 3) BGR."""
    import cv2

    if not data:
        raise ImageError("empty image")
    flag = cv2.IMREAD_GRAYSCALE if spec.get("color", "gray") == "gray" else cv2.IMREAD_COLOR
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    if image is None:
        raise ImageError("the body is not an image OpenCV can decode (PNG, JPEG, ...)")
    return np.asarray(image)


def prepare_frame(image: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """One image (gray, or BGR as OpenCV reads it) to a batch of one model-ready sample."""
    import cv2

    color = spec.get("color") or "gray"
    if color == "gray" and image.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        image = cv2.cvtColor(image, code) if image.shape[2] != 1 else image[..., 0]
    elif color == "rgb":
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        elif image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    size = spec.get("size")
    if size:
        height, width = int(size[0]), int(size[1])
        if image.shape[:2] != (height, width):
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    if color == "rgb":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    height, width = image.shape[:2]
    x: np.ndarray = image.reshape(1, height, width, -1).astype(np.float32)
    x *= np.float32(spec.get("scale", 1.0))
    if spec.get("flatten"):
        x = x.reshape(1, -1)
    mean, std = spec.get("mean"), spec.get("std")
    if mean is not None and std is not None:
        x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return x.astype(np.float32)
