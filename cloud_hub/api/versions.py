"""Versions: list and get, upload an external model file, download artifacts."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, HTTPException, Response, UploadFile, status
from pydantic import BaseModel, ConfigDict, Field

from cloud_hub.api.auth import ARTIFACT, OPERATOR, VIEWER
from cloud_hub.api.deps import HubDep, RegistryDep
from cloud_hub.core.errors import InvalidInput
from cloud_hub.registry.schemas import Version
from cloud_hub.registry.uploads import register_upload, update_version
from edge_agent.core.heads.spec import HeadSpec, Task
from edge_agent.core.preprocess import PreprocessingSpec

router = APIRouter(tags=["versions"])

SUFFIX = {"onnx": ".onnx", "tflite": ".tflite"}


@router.get("/projects/{project}/models/{model}/versions", dependencies=[VIEWER])
def list_versions(project: str, model: str, registry: RegistryDep) -> list[Version]:
    return registry.list_versions(project, model)


@router.get("/projects/{project}/models/{model}/versions/{number}", dependencies=[VIEWER])
def get_version(project: str, model: str, number: str, registry: RegistryDep) -> Version:
    """A version by its number within the model, or `latest`."""
    if not (number.isdigit() or number == "latest"):
        raise InvalidInput(f"version must be a number or 'latest', got {number!r}")
    return registry.get_version(project, model, number)


@router.get("/versions/{version_id}", dependencies=[VIEWER])
def get_version_by_id(version_id: int, registry: RegistryDep) -> Version:
    return registry.get_version_by_id(version_id)


def _json_field(name: str, text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"form field {name!r} is not valid JSON: {exc}") from None


@router.post(
    "/projects/{project}/models/{model}/versions",
    status_code=status.HTTP_201_CREATED,
    dependencies=[OPERATOR],
)
async def upload_version(
    project: str,
    model: str,
    hub: HubDep,
    file: Annotated[UploadFile, File(description="an .onnx or .tflite model file")],
    labels: Annotated[str | None, Form(description="JSON list of class labels")] = None,
    preprocessing: Annotated[
        str | None,
        Form(
            description="JSON preprocessing spec (edge_agent.core.preprocess.PreprocessingSpec) "
            "[default: inferred from an image-shaped input, else none]"
        ),
    ] = None,
    task: Annotated[
        str | None,
        Form(
            description="classification, detection, keypoints, segmentation, embedding, "
            "regression or raw [default: the head's, else classification for a lone score "
            "output, else raw]"
        ),
    ] = None,
    head: Annotated[
        str | None,
        Form(
            description="JSON task head (the schema of PATCH /versions/{version_id}'s `head`) "
            "[default: the task's default head for the signature]"
        ),
    ] = None,
) -> Version:
    """Register an external model file as a new version. Every model its runtime loads is
    accepted (ONNX or TFLite, told apart by content); it is loaded, and its head and
    preprocessing checked against its signature, before anything is stored: a file that does
    not load, or a head that does not fit, is refused with 422 naming the reason (the field) and
    the registry is left as it was."""
    limit = hub.settings.max_upload_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, f"model file is larger than {limit} bytes"
        )
    label_list = _json_field("labels", labels)
    if label_list is not None and not (
        isinstance(label_list, list) and all(isinstance(x, str) for x in label_list)
    ):
        raise InvalidInput("form field 'labels' must be a JSON list of strings")
    spec = _json_field("preprocessing", preprocessing)
    if spec is not None and not isinstance(spec, dict):
        raise InvalidInput("form field 'preprocessing' must be a JSON object")
    head_doc = _json_field("head", head)
    if head_doc is not None and not isinstance(head_doc, dict):
        raise InvalidInput("form field 'head' must be a JSON object")
    return register_upload(
        hub.registry,
        project=project,
        model=model,
        data=data,
        filename=file.filename,
        labels=label_list,
        preprocessing=spec,
        task=task or None,
        head=head_doc,
    )


class VersionUpdate(BaseModel):
    """A version's metadata to change; a field left out (or null) is kept, except
    `preprocessing: null`, which removes the spec."""

    model_config = ConfigDict(extra="forbid")

    task: Task | None = Field(
        default=None,
        description="a new task: its default head for the signature, unless `head` is given",
    )
    head: HeadSpec | None = Field(default=None, description="the new task head")
    labels: list[Annotated[str, Field(max_length=200)]] | None = Field(
        default=None, max_length=100_000, description="class labels, in class order"
    )
    preprocessing: PreprocessingSpec | None = Field(
        default=None, description="the new preprocessing spec; null removes it"
    )


@router.patch("/versions/{version_id}", dependencies=[OPERATOR])
def update_version_metadata(version_id: int, body: VersionUpdate, registry: RegistryDep) -> Version:
    """Change a version's task, head, labels or preprocessing, checked against its signature
    as at upload (422 naming the field: `head.boxes: the model has no output ...`). Its
    artifacts never change."""
    changes: dict[str, Any] = {}
    for name in body.model_fields_set:
        value = getattr(body, name)
        if name == "preprocessing":
            changes[name] = None if value is None else value.model_dump(mode="json")
        elif value is not None:
            changes[name] = value.model_dump(mode="json") if name == "head" else value
    return update_version(registry, version_id, changes)


class QuantizeBody(BaseModel):
    dataset: str = Field(description="digits, iris, csv or images: calibration and check data")
    path: str | None = None
    label_column: str | None = None
    method: Literal["auto", "static", "dynamic"] = "auto"
    threshold: float = Field(default=0.99, ge=0, le=1)


@router.post(
    "/versions/{version_id}/quantize", status_code=status.HTTP_201_CREATED, dependencies=[OPERATOR]
)
def quantize(version_id: int, body: QuantizeBody, registry: RegistryDep) -> Version:
    """int8 ONNX from this version's ONNX fp32 artifact, calibrated and checked on the dataset
    (prepared with the version's preprocessing spec), registered as a new child version."""
    from pathlib import Path

    from cloud_hub.registry.conversion import eval_data_from_dataset, quantize_version
    from edge_agent.core.preprocess import PreprocessingSpec

    version = registry.get_version_by_id(version_id)
    spec = PreprocessingSpec(**version.preprocessing) if version.preprocessing else None
    data = eval_data_from_dataset(
        body.dataset,
        path=Path(body.path) if body.path else None,
        label_column=body.label_column,
        spec=spec,
    )
    return quantize_version(
        registry,
        version,
        data,
        method=body.method,
        threshold=body.threshold,
    )


def _artifact_response(data: bytes, sha256: str, fmt: str) -> Response:
    return Response(
        content=data,
        media_type="application/octet-stream",
        headers={
            "X-Content-SHA256": sha256,
            "Content-Disposition": f'attachment; filename="{sha256}{SUFFIX.get(fmt, "")}"',
        },
    )


@router.get("/artifacts/{sha256}", response_class=Response, dependencies=[ARTIFACT])
def download_artifact(sha256: str, registry: RegistryDep) -> Response:
    """The artifact's bytes; the `X-Content-SHA256` header carries its digest."""
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise InvalidInput(f"not a sha256 digest: {sha256!r}")
    data = registry.artifact_blob(sha256)
    return _artifact_response(data, sha256, "")


@router.get(
    "/versions/{version_id}/artifacts/{fmt}/{precision}",
    response_class=Response,
    dependencies=[VIEWER],
)
def download_version_artifact(
    version_id: int, fmt: str, precision: str, registry: RegistryDep
) -> Response:
    version = registry.get_version_by_id(version_id)
    for art in version.artifacts:
        if art.format == fmt and art.precision == precision:
            return _artifact_response(registry.artifact_blob(art.sha256), art.sha256, fmt)
    have = ", ".join(f"{a.format}/{a.precision}" for a in version.artifacts)
    raise HTTPException(
        status.HTTP_404_NOT_FOUND,
        f"version {version.ref} has no {fmt}/{precision} artifact (it has: {have})",
    )
