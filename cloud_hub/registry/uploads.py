"""Registering an external model file, and changing a version's metadata.

The model contract: a file is accepted when its runtime loads it (onnxruntime for ONNX, LiteRT
for TFLite, told apart by content), whatever its inputs and outputs; refused, with the runtime's
own reason, only when it does not load (or needs a custom op the runtime lacks). Its task head
and preprocessing spec are checked against its signature before anything is stored
(`cloud_hub.registry.signature`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cloud_hub.core.errors import InvalidInput
from cloud_hub.core.names import check_name
from cloud_hub.registry.registry import NewArtifact, Registry
from cloud_hub.registry.schemas import Version
from cloud_hub.registry.signature import (
    check_preprocessing,
    inferred_preprocessing,
    resolve_head,
    signature_of,
)


@dataclass
class Uploaded:
    """A registered upload and what the uploader should know about it."""

    version: Version
    notes: list[str] = field(default_factory=list)
    preprocessing_inferred: bool = False


def upload_model(
    registry: Registry,
    *,
    project: str,
    model: str,
    data: bytes,
    filename: str | None,
    labels: list[str] | None = None,
    preprocessing: dict[str, Any] | None = None,
    task: str | None = None,
    head: dict[str, Any] | None = None,
    parent_id: int | None = None,
) -> Uploaded:
    """Load the file, check its head and preprocessing against its signature, and register it.

    Without a preprocessing spec, one is inferred from an image-shaped input
    (`infer_preprocessing`). InvalidInput (422) names the file or the field at fault.
    """
    from converters import InvalidModelFile, inspect_model_file

    check_name("project", project)
    check_name("model", model)
    spec = check_preprocessing(preprocessing)
    try:
        info = inspect_model_file(data, filename)
    except InvalidModelFile as exc:
        raise InvalidInput(str(exc)) from None
    precision = "int8" if any(t.dtype in ("int8", "uint8") for t in info.inputs) else "fp32"
    if info.format == "onnx" and _has_qdq(data):
        precision = "int8"
    signature = signature_of(info)
    inferred = spec is None and (spec := inferred_preprocessing(signature)) is not None
    version = registry.register_version(
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
        preprocessing=spec,
        task=task,
        head=head,
    )
    return Uploaded(version, list(info.notes), inferred)


def register_upload(registry: Registry, **kwargs: Any) -> Version:
    """`upload_model`, returning only the version."""
    return upload_model(registry, **kwargs).version


#: `update_version`'s fields.
METADATA_FIELDS = ("task", "head", "labels", "preprocessing")


def update_version(registry: Registry, version_id: int, changes: dict[str, Any]) -> Version:
    """Change a version's task, head, labels or preprocessing (only the keys in `changes`;
    `preprocessing: None` removes the spec), checked against its signature as at upload:

    - a new head replaces the old one (its task becomes the version's);
    - a new task alone gives the default head of that task (the current head when it is
      already that task's);
    - new labels alone go into the current head (classification, detection, segmentation).
    """
    unknown = sorted(set(changes) - set(METADATA_FIELDS))
    if unknown:
        raise InvalidInput(f"{', '.join(unknown)}: not a version's metadata")
    version = registry.get_version_by_id(version_id)
    labels = changes.get("labels", version.labels)
    labels_changed = "labels" in changes and labels != version.labels
    task = changes.get("task")
    head = changes.get("head")
    if head is None and (task is None or task == version.task):
        head, task = version.head, version.task  # (a new task alone: its default head)
        if labels_changed and head is not None:
            head = {k: v for k, v in head.items() if k != "labels"}
    task, head, labels = resolve_head(
        task=task,
        head=head,
        labels=labels,
        signatures=[a.signature for a in version.artifacts],
    )
    preprocessing = version.preprocessing
    if "preprocessing" in changes:
        preprocessing = check_preprocessing(changes["preprocessing"])
    return registry.update_version_metadata(
        version_id, task=task, head=head, labels=labels, preprocessing=preprocessing
    )


def _has_qdq(data: bytes) -> bool:
    import onnx

    graph = onnx.load_from_string(data).graph
    return any(n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") for n in graph.node)
