"""The built-in step kinds. Importing this package registers them."""

from cloud_hub.serving.steps.ab_split import AbSplitStep
from cloud_hub.serving.steps.caches import DataCacheStep, PredictionCacheStep
from cloud_hub.serving.steps.circuit_breaker import CircuitBreakerStep
from cloud_hub.serving.steps.compose import ParallelStep, SelectStep
from cloud_hub.serving.steps.condition import ConditionStep
from cloud_hub.serving.steps.heads import (
    ClassifyStep,
    DetectStep,
    EmbedStep,
    KeypointsStep,
    SegmentStep,
)
from cloud_hub.serving.steps.http import HttpStep
from cloud_hub.serving.steps.model import ModelStep
from cloud_hub.serving.steps.preprocess import PreprocessStep
from cloud_hub.serving.steps.shadow import ShadowStep
from cloud_hub.serving.steps.threshold import ThresholdStep
from cloud_hub.serving.steps.time_differential import TimeDifferentialStep

__all__ = [
    "BUILTIN_KINDS",
    "AbSplitStep",
    "CircuitBreakerStep",
    "ClassifyStep",
    "ConditionStep",
    "DataCacheStep",
    "DetectStep",
    "EmbedStep",
    "HttpStep",
    "KeypointsStep",
    "ModelStep",
    "ParallelStep",
    "PredictionCacheStep",
    "PreprocessStep",
    "SegmentStep",
    "SelectStep",
    "ShadowStep",
    "ThresholdStep",
    "TimeDifferentialStep",
]

#: The kinds this package ships (the reference docs list these, not kinds a plugin or test adds).
BUILTIN_KINDS: tuple[str, ...] = tuple(
    sorted(
        cls.kind
        for cls in (
            AbSplitStep,
            CircuitBreakerStep,
            ClassifyStep,
            ConditionStep,
            DataCacheStep,
            DetectStep,
            EmbedStep,
            HttpStep,
            KeypointsStep,
            ModelStep,
            ParallelStep,
            PredictionCacheStep,
            PreprocessStep,
            SegmentStep,
            SelectStep,
            ShadowStep,
            ThresholdStep,
            TimeDifferentialStep,
        )
    )
)
