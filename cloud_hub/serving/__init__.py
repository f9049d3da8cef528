"""The serving engine: endpoints as declarative graphs of steps over registered models.

See `spec.py` for the endpoint document, `step.py` for the step interface every kind implements,
`steps/` for the built-in kinds and `engine.py` for how endpoints are built, swapped and served.
"""

from cloud_hub.serving.engine.endpoint import Prediction, PredictResponse
from cloud_hub.serving.engine.engine import EndpointInfo, EndpointUnavailable, ServingEngine
from cloud_hub.serving.engine.errors import BadInput, PayloadTooLarge, SpecError
from cloud_hub.serving.engine.graph import StepFailed
from cloud_hub.serving.engine.spec import BatchingSpec, EndpointSpec, ModelRef, StepSpec
from cloud_hub.serving.engine.step import (
    STEP_KINDS,
    RunContext,
    Signature,
    Step,
    StepParams,
    register_step,
)
from cloud_hub.serving.engine.values import PredictRequest, Value

__all__ = [
    "STEP_KINDS",
    "BadInput",
    "BatchingSpec",
    "EndpointInfo",
    "EndpointSpec",
    "EndpointUnavailable",
    "ModelRef",
    "PayloadTooLarge",
    "PredictRequest",
    "PredictResponse",
    "Prediction",
    "RunContext",
    "ServingEngine",
    "Signature",
    "SpecError",
    "Step",
    "StepFailed",
    "StepParams",
    "StepSpec",
    "Value",
    "register_step",
]

from cloud_hub.serving import steps as _steps  # noqa: E402  (registers the built-in kinds)

del _steps
