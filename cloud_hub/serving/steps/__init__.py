"""The built-in step kinds. Importing this package registers them."""

from cloud_hub.serving.steps.caches import DataCacheStep, PredictionCacheStep
from cloud_hub.serving.steps.compose import ParallelStep, SelectStep
from cloud_hub.serving.steps.model import ModelStep
from cloud_hub.serving.steps.preprocess import PreprocessStep
from cloud_hub.serving.steps.time_differential import TimeDifferentialStep

__all__ = [
    "DataCacheStep",
    "ModelStep",
    "ParallelStep",
    "PredictionCacheStep",
    "PreprocessStep",
    "SelectStep",
    "TimeDifferentialStep",
]
