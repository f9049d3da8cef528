"""Raw images to model-ready tensors, with the version's preprocessing spec.

`PreprocessingSpec` is the one definition of a version's preprocessing: the hub applies it at
training time (`cloud_hub/training/preprocessing.py` fits it), and the agent and the serving
engine apply it to every image, with OpenCV: read gray or colour, resize to (H, W) (stretched
with INTER_AREA, letterboxed keeping the aspect ratio, or centre-cropped), to the colour order the
model wants, times `scale`, `(x - mean) / std` when given, to the model's dtype and layout (NHWC,
NCHW, or flattened for a tabular model). `prepare_image` also returns the `Geometry` that maps
model-input pixels back to the caller's image (how heads report boxes and points). OpenCV is
imported on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge_agent.core.runtimes import TensorSpec

__all__ = [
    "Geometry",
    "ImageError",
    "PreprocessingSpec",
    "decode_image",
    "infer_preprocessing",
    "prepare_frame",
    "prepare_image",
    "require_image_spec",
]


class ImageError(ValueError):
    """Bytes that are not a decodable image, or a model that takes no images."""


class PreprocessingSpec(BaseModel):
    """How raw input becomes the model's tensor."""

    model_config = ConfigDict(extra="forbid")

    input_kind: Literal["tabular", "image"]
    layout: Literal["NF", "NHWC", "NCHW"] = "NHWC"
    size: tuple[int, int] | None = Field(default=None, description="(height, width)")
    color: Literal["gray", "rgb", "bgr"] | None = None
    scale: float = Field(default=1.0, description="pixel values are multiplied by this")
    flatten: bool = Field(default=False, description="image data fed to a tabular model")
    mean: list[float] | None = Field(default=None, description="(x - mean) / std after scale")
    std: list[float] | None = None
    dtype: Literal["float32", "uint8", "int8"] = Field(
        default="float32", description="the tensor's dtype (uint8: pixels as they are)"
    )
    resize: Literal["stretch", "letterbox", "crop"] = Field(
        default="stretch",
        description="stretch to size; letterbox: keep the aspect ratio, pad; crop: centre crop",
    )
    pad_value: float = Field(default=0.0, description="letterbox padding, in pixel values")
    feature_names: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> PreprocessingSpec:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        if self.std is not None and any(s == 0 for s in self.std):
            raise ValueError("std must not contain 0")
        if self.size is not None and min(self.size) < 1:
            raise ValueError("size must be positive (height, width)")
        return self

    def apply(self, X: np.ndarray) -> np.ndarray:
        """Training data (already at size) to the model's tensor."""
        out: np.ndarray = X.astype(np.float32) * np.float32(self.scale)
        if self.flatten:
            out = out.reshape(out.shape[0], -1)
        if self.mean is not None and self.std is not None:
            mean = np.asarray(self.mean, np.float32)
            out = (out - mean) / np.asarray(self.std, np.float32)
        return out.astype(np.float32)


@dataclass(frozen=True)
class Geometry:
    """How an image became the model's input: model pixel (x, y) is image pixel
    ((x - pad_x) / scale_x, (y - pad_y) / scale_y)."""

    image_width: int
    image_height: int
    input_width: int
    input_height: int
    scale_x: float = 1.0
    scale_y: float = 1.0
    pad_x: float = 0.0
    pad_y: float = 0.0

    @classmethod
    def identity(cls, width: int, height: int) -> Geometry:
        return cls(width, height, width, height)

    def to_image(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model-input pixel coordinates to image pixel coordinates."""
        return (x - self.pad_x) / self.scale_x, (y - self.pad_y) / self.scale_y


def _spec(spec: PreprocessingSpec | dict[str, Any]) -> PreprocessingSpec:
    if isinstance(spec, PreprocessingSpec):
        return spec
    try:
        return PreprocessingSpec.model_validate(spec)
    except ValueError as exc:
        raise ImageError(f"the model's preprocessing spec is not valid: {exc}") from None


def require_image_spec(spec: dict[str, Any] | PreprocessingSpec | None) -> PreprocessingSpec:
    if not spec:
        raise ImageError("the active model takes no images (it has no preprocessing spec)")
    parsed = _spec(spec)
    if parsed.input_kind != "image":
        raise ImageError("the active model takes no images (its preprocessing spec is not 'image')")
    return parsed


def decode_image(data: bytes, spec: dict[str, Any] | PreprocessingSpec) -> np.ndarray:
    """Decode PNG/JPEG/... bytes as the spec's colour: (H, W) gray or (H, W, 3) BGR."""
    import cv2

    if not data:
        raise ImageError("empty image")
    color = _spec(spec).color or "gray"
    flag = cv2.IMREAD_GRAYSCALE if color == "gray" else cv2.IMREAD_COLOR
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    if image is None:
        raise ImageError("the body is not an image OpenCV can decode (PNG, JPEG, ...)")
    return np.asarray(image)


def prepare_frame(image: np.ndarray, spec: dict[str, Any] | PreprocessingSpec) -> np.ndarray:
    """One image (gray, or BGR as OpenCV reads it) to a batch of one model-ready sample."""
    return prepare_image(image, spec)[0]


def prepare_image(
    image: np.ndarray, spec: dict[str, Any] | PreprocessingSpec
) -> tuple[np.ndarray, Geometry]:
    """One image to a batch of one model-ready sample, and the geometry of the resize."""
    import cv2

    s = _spec(spec)
    color = s.color or "gray"
    if color == "gray" and image.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        image = cv2.cvtColor(image, code) if image.shape[2] != 1 else image[..., 0]
    elif color != "gray":
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        elif image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    src_h, src_w = image.shape[:2]
    geometry = Geometry.identity(src_w, src_h)
    if s.size:
        height, width = int(s.size[0]), int(s.size[1])
        image, geometry = _resize(image, width, height, s)
    if color == "rgb":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    height, width = image.shape[:2]
    x: np.ndarray = image.reshape(1, height, width, -1)
    if s.dtype == "uint8" and s.scale == 1.0 and s.mean is None:
        x = x.astype(np.uint8)
    else:
        x = x.astype(np.float32)
        if s.mean is not None and s.std is not None:  # (x * scale - mean) / std, in place
            std = np.asarray(s.std, np.float32)
            x *= np.float32(s.scale) / std
            x -= np.asarray(s.mean, np.float32) / std
        else:
            x *= np.float32(s.scale)
        if s.dtype != "float32":
            info = np.iinfo(np.dtype(s.dtype))
            x = np.clip(np.round(x), info.min, info.max).astype(s.dtype)
    if s.layout == "NCHW":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if s.flatten or s.layout == "NF":
        x = x.reshape(1, -1)
    return x, geometry


def _resize(
    image: np.ndarray, width: int, height: int, s: PreprocessingSpec
) -> tuple[np.ndarray, Geometry]:
    import cv2

    src_h, src_w = image.shape[:2]
    if (src_h, src_w) == (height, width):
        return image, Geometry.identity(width, height)
    if s.resize == "stretch":
        out = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        return out, Geometry(src_w, src_h, width, height, width / src_w, height / src_h)
    if s.resize == "letterbox":
        k = min(width / src_w, height / src_h)
        new_w, new_h = max(1, round(src_w * k)), max(1, round(src_h * k))
        inner = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        pad_x, pad_y = (width - new_w) // 2, (height - new_h) // 2
        out = cv2.copyMakeBorder(
            inner,
            pad_y,
            height - new_h - pad_y,
            pad_x,
            width - new_w - pad_x,
            cv2.BORDER_CONSTANT,
            value=[s.pad_value] * 3,
        )
        return out, Geometry(
            src_w, src_h, width, height, new_w / src_w, new_h / src_h, pad_x, pad_y
        )
    # crop: scale so the image covers the input, then cut the centre
    k = max(width / src_w, height / src_h)
    new_w, new_h = max(width, round(src_w * k)), max(height, round(src_h * k))
    scaled = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    off_x, off_y = (new_w - width) // 2, (new_h - height) // 2
    out = scaled[off_y : off_y + height, off_x : off_x + width]
    return out, Geometry(src_w, src_h, width, height, new_w / src_w, new_h / src_h, -off_x, -off_y)


def infer_preprocessing(inputs: Sequence[TensorSpec]) -> PreprocessingSpec | None:
    """What the signature says about images: a single rank-4 input with 1 or 3 channels last
    ([N, H, W, C]) or first ([N, C, H, W]) is an image of H×W; None when it is not one."""
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        return None
    spec = inputs[0]
    _, a, b, c = spec.shape
    dtype: Literal["float32", "uint8", "int8"] = (
        spec.dtype if spec.dtype in ("uint8", "int8") else "float32"  # type: ignore[assignment]
    )
    if c in (1, 3) and a and b:
        layout: Literal["NHWC", "NCHW"] = "NHWC"
        height, width, channels = a, b, c
    elif a in (1, 3) and b and c:
        layout, height, width, channels = "NCHW", b, c, a
    else:
        return None
    return PreprocessingSpec(
        input_kind="image",
        layout=layout,
        size=(int(height), int(width)),
        color="gray" if channels == 1 else "rgb",
        scale=1.0 if dtype != "float32" else 1.0 / 255.0,
        dtype=dtype,
    )
