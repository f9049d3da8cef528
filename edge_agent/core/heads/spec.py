"""What a version's task head is: a pydantic model per task, picked by `task`.

A head names the output tensors it reads (by name, as the version's signature lists them) and
how to read them. `check_head` validates a head against a signature: every error names the field
and what the signature has instead. `default_head` fills what can be inferred from a signature.
The JSON schema (`HEAD_SCHEMA`) is published with the hub's OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

__all__ = [
    "HEAD_ADAPTER",
    "TASKS",
    "AnchorSpec",
    "ClassificationHead",
    "DetectionHead",
    "EmbeddingHead",
    "HeadError",
    "HeadSpec",
    "KeypointsHead",
    "RawHead",
    "RegressionHead",
    "SegmentationHead",
    "Task",
    "YoloSpec",
    "parse_head",
]

Task = Literal[
    "classification", "detection", "keypoints", "segmentation", "embedding", "regression", "raw"
]
TASKS: tuple[str, ...] = get_args(Task)


class _Head(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassificationHead(_Head):
    """Class scores: the winning class, its label and score, and the top k."""

    task: Literal["classification"] = "classification"
    output: str | None = Field(
        default=None, description="the scores output [default: the first rank-2 float output]"
    )
    labels: list[str] = Field(default_factory=list, description="class names, in class order")
    top_k: int = Field(default=5, ge=1, le=1000)
    activation: Literal["none", "softmax", "sigmoid"] = Field(
        default="none", description="applied to the output before it is read (logits)"
    )


class AnchorSpec(_Head):
    """SSD anchors as MediaPipe's SsdAnchorsCalculator makes them (its option names)."""

    num_layers: int = Field(ge=1, le=16)
    strides: list[int] = Field(min_length=1)
    input_size_height: int = Field(ge=1)
    input_size_width: int = Field(ge=1)
    min_scale: float = 0.1484375
    max_scale: float = 0.75
    anchor_offset_x: float = 0.5
    anchor_offset_y: float = 0.5
    aspect_ratios: list[float] = Field(default_factory=lambda: [1.0])
    interpolated_scale_aspect_ratio: float = 1.0
    fixed_anchor_size: bool = True
    reduce_boxes_in_lowest_layer: bool = False


class YoloSpec(_Head):
    """A YOLO-style output: one row per candidate, box then (objectness) then class scores."""

    objectness: bool = Field(
        default=True, description="a column of objectness after the box (YOLOv5); false: v8"
    )
    transposed: bool = Field(
        default=False, description="the output is [N, values, candidates] (YOLOv8 exports)"
    )


class DetectionHead(_Head):
    """Boxes with scores and labels, after score filtering and non-maximum suppression."""

    task: Literal["detection"] = "detection"
    decoder: Literal["boxes", "anchors", "yolo"] = Field(
        default="boxes",
        description="boxes: decoded boxes (and scores/classes outputs); anchors: SSD offsets "
        "against anchors; yolo: one output of candidates",
    )
    boxes: str = Field(description="the output holding boxes (or box offsets, or candidates)")
    scores: str | None = Field(default=None, description="the output holding scores")
    classes: str | None = Field(default=None, description="an output of class ids per box")
    count: str | None = Field(default=None, description="an output of the number of boxes")
    box_format: Literal["xyxy", "yxyx", "xywh", "cxcywh"] = "xyxy"
    normalized: bool = Field(
        default=True,
        description="coordinates are fractions of the model's input, else its input pixels "
        "[default: true; decoder 'yolo': false; 'anchors' always decodes to fractions]",
    )
    score_activation: Literal["none", "sigmoid", "softmax"] = "none"
    score_threshold: float = Field(default=0.5, ge=0, le=1)
    iou_threshold: float = Field(default=0.45, ge=0, le=1)
    max_detections: int = Field(default=100, ge=1, le=10_000)
    labels: list[str] = Field(default_factory=list)
    anchors: AnchorSpec | None = Field(default=None, description="decoder 'anchors'")
    box_scale: list[float] | None = Field(
        default=None,
        min_length=4,
        max_length=4,
        description="anchors: offsets are divided by (x, y, w, h) scale [default: input size]",
    )
    box_exp: bool = Field(
        default=False,
        description="anchors: w, h offsets are logs (exp(w / w_scale) * anchor w), as in TF SSDs",
    )
    keypoints: int = Field(
        default=0, ge=0, description="anchors: keypoints (x, y) per box after its 4 values"
    )
    yolo: YoloSpec | None = Field(default=None, description="decoder 'yolo'")


class KeypointsHead(_Head):
    """Points per instance (landmarks, a pose): x, y (z), with visibility and presence."""

    task: Literal["keypoints"] = "keypoints"
    output: str = Field(description="the output holding the points")
    points: int | None = Field(
        default=None, ge=1, description="points per instance [default: from the output's size]"
    )
    values_per_point: int = Field(
        default=3, ge=2, le=5, description="x, y[, z[, visibility[, presence]]]"
    )
    normalized: bool = Field(
        default=False, description="coordinates are fractions of the input (else input pixels)"
    )
    presence: str | None = Field(default=None, description="an output scoring the instance")
    presence_activation: Literal["none", "sigmoid"] = "none"
    visibility_activation: Literal["none", "sigmoid"] = "sigmoid"
    names: list[str] = Field(default_factory=list, description="point names, in order")


class SegmentationHead(_Head):
    """A per-pixel class map: pixel counts per class and, on request, the mask as PNG."""

    task: Literal["segmentation"] = "segmentation"
    output: str = Field(description="the mask output: [N, H, W, C], [N, C, H, W] or [N, H, W]")
    layout: Literal["NHWC", "NCHW"] = "NHWC"
    labels: list[str] = Field(default_factory=list)
    activation: Literal["none", "sigmoid", "softmax"] = "none"
    threshold: float = Field(
        default=0.5, ge=0, le=1, description="one channel: foreground at or above this"
    )


class EmbeddingHead(_Head):
    """A vector per input (for search, re-identification, clustering)."""

    task: Literal["embedding"] = "embedding"
    output: str | None = Field(default=None, description="[default: the only output]")
    normalize: bool = Field(default=False, description="L2-normalise the vector")


class RegressionHead(_Head):
    """Numbers per input."""

    task: Literal["regression"] = "regression"
    output: str | None = Field(default=None, description="[default: the only output]")
    names: list[str] = Field(default_factory=list, description="what each value is")


class RawHead(_Head):
    """No head: the output tensors are the answer."""

    task: Literal["raw"] = "raw"


HeadSpec = Annotated[
    ClassificationHead
    | DetectionHead
    | KeypointsHead
    | SegmentationHead
    | EmbeddingHead
    | RegressionHead
    | RawHead,
    Field(discriminator="task"),
]
HEAD_ADAPTER: TypeAdapter[Any] = TypeAdapter(HeadSpec)


class HeadError(ValueError):
    """A head that does not fit the signature: `field` is the head's field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"head.{field}: {message}")
        self.field = field
        self.message = message


def parse_head(doc: dict[str, Any]) -> Any:
    """A head from JSON (pydantic's ValidationError for a malformed one)."""
    return HEAD_ADAPTER.validate_python(doc)
