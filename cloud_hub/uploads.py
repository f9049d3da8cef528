"""Registering an external model file: validated by loading it, before anything is stored."""

from __future__ import annotations

from typing import Any

from cloud_hub.errors import InvalidInput
from cloud_hub.registry import NewArtifact, Registry, check_name
from cloud_hub.schemas import Version
from cloud_hub.signature import signature_of


def register_upload(
    registry: Registry,
    *,
    project: str,
    model: str,
    data: bytes,
    filename: str | None,
    labels: list[str] | None = None,
    preprocessing: dict[str, Any] | None = None,
    parent_id: int | None = None,
) -> Version:
    from converters import InvalidModelFile, inspect_model_file

    check_name("project", project)
    check_name("model", model)
    try:
        info = inspect_model_file(data, filename)
    except InvalidModelFile as exc:
        raise InvalidInput(str(exc)) from None
    precision = "int8" if any(t.dtype in ("int8", "uint8") for t in info.inputs) else "fp32"
    if info.format == "onnx" and _has_qdq(data):
        precision = "int8"
    signature = signature_of(info)
    return registry.register_version(
        project,
        model,
        artifacts=[
            NewArtifact(
                format=info.format,
                precision=precision,
                data=data,
                method="uploaded",
                signature=signature,
            )
        ],
        source="uploaded",
        parent_id=parent_id,
        labels=labels,
        preprocessing=preprocessing,
    )


def _has_qdq(data: bytes) -> bool:
    import onnx

    graph = onnx.load_from_string(data).graph
    return any(n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") for n in graph.node)
