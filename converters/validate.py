"""Checks that uploaded bytes are an ONNX or TFLite model the runtimes can load."""

from __future__ import annotations

from pathlib import PurePath

from pydantic import BaseModel, ConfigDict

from converters.errors import InvalidModelFile
from edge_agent.runtimes import (
    ModelFormat,
    ModelLoadError,
    TensorSpec,
    detect_format,
    load_runtime,
)

#: File extensions and the format each promises.
EXTENSIONS: dict[str, ModelFormat] = {".onnx": "onnx", ".tflite": "tflite"}
_FORMAT_NAMES = {"onnx": "ONNX", "tflite": "TFLite"}


class ModelFileInfo(BaseModel):
    """What a model file holds: its format and input/output tensors."""

    model_config = ConfigDict(frozen=True)

    format: ModelFormat
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


def inspect_model_file(data: bytes, filename: str | None = None) -> ModelFileInfo:
    """Detect the format of `data`, load it with the real runtime and describe it.

    Raises InvalidModelFile ("<name> is not an ONNX or TFLite model: <reason>") for empty,
    garbage or truncated bytes, for a model the runtime cannot load or that has no class-score
    output, and when a .onnx/.tflite extension does not match the content. RuntimeUnavailable
    (from edge_agent.runtimes) means the engine for the detected format is not installed.
    """
    name = filename or "the uploaded file"

    def invalid(reason: str) -> InvalidModelFile:
        return InvalidModelFile(f"{name} is not an ONNX or TFLite model: {reason}")

    if not data:
        raise invalid("the file is empty")
    fmt = detect_format(data)
    if fmt is None:
        raise invalid("its content is neither a TFLite flatbuffer nor an ONNX protobuf")
    if filename is not None:
        suffix = PurePath(filename).suffix.lower()
        expected = EXTENSIONS.get(suffix)
        if expected is not None and expected != fmt:
            raise invalid(
                f"the {suffix} extension promises {_FORMAT_NAMES[expected]} but the content is "
                f"{_FORMAT_NAMES[fmt]}"
            )
    try:
        runtime = load_runtime(data, fmt)
    except ModelLoadError as exc:
        raise invalid(str(exc)) from exc
    return ModelFileInfo(format=fmt, inputs=runtime.inputs, outputs=runtime.outputs)
