"""What a user asks to train: the same document from the CLI, the REST API and a schedule."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from cloud_hub.registry.datasets import DATASETS
from cloud_hub.registry.schemas import NAME_PATTERN

MODEL_TYPES = ("logreg", "mlp", "random_forest", "cnn")


class TrainRequest(BaseModel):
    project: str = Field(pattern=NAME_PATTERN)
    dataset: str = Field(description=f"one of {', '.join(DATASETS)}")
    model_type: str = Field(description=f"one of {', '.join(MODEL_TYPES)}")
    model_name: str | None = Field(default=None, pattern=NAME_PATTERN)
    experiment: str | None = Field(default=None, pattern=NAME_PATTERN)
    path: str | None = Field(
        default=None,
        description="CSV file or image folder; over REST inside the hub's data roots (a relative "
        "path starts at the first)",
    )
    label_column: str | None = None
    image_size: tuple[int, int] | None = None
    color: Literal["gray", "rgb"] = "gray"
    params: dict[str, Any] = Field(default_factory=dict)
    test_size: float = Field(default=0.2, gt=0.0, lt=0.9)
    seed: int = 0
    threshold: float = Field(default=0.99, ge=0.0, le=1.0)
    formats: list[Literal["onnx", "tflite"]] | None = None
    quantize: bool = True

    @model_validator(mode="after")
    def _known_choices(self) -> TrainRequest:
        if self.dataset not in DATASETS:
            raise ValueError(
                f"unknown dataset {self.dataset!r}: choose one of {', '.join(DATASETS)}"
            )
        if self.model_type not in MODEL_TYPES:
            raise ValueError(
                f"unknown model type {self.model_type!r}: choose one of {', '.join(MODEL_TYPES)}"
            )
        if self.dataset in ("csv", "images") and not self.path:
            raise ValueError(f"dataset {self.dataset!r} needs a path")
        if self.dataset == "csv" and not self.label_column:
            raise ValueError("dataset 'csv' needs label_column")
        return self

    @property
    def resolved_model_name(self) -> str:
        return self.model_name or f"{self.dataset}-{self.model_type}".replace("_", "-")

    @property
    def resolved_experiment(self) -> str:
        return self.experiment or self.resolved_model_name
