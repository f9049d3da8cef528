"""Conversion and quantization of what is already in the registry, or of a model file.

- `quantize_version`: an ONNX fp32 artifact → a new version with fp32 + int8 and a report.
- `convert_model_file`: a Keras (.keras) or PyTorch (.pt2, torch.export) model file → ONNX (and
  TFLite for Keras), fp32 and optionally int8, each checked against the original model.
- A trained version is re-converted from its run's cached model with `rerun(..., "convert")`.

Every result is a new version whose parent is its source, with the conversion report on it; one
that falls below the agreement threshold is registered as failed, never as ready.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cloud_hub.core.errors import InvalidInput
from cloud_hub.registry.datasets import DatasetError, load_dataset
from cloud_hub.registry.registry import NewArtifact, Registry
from cloud_hub.registry.schemas import Version
from cloud_hub.registry.signature import signature_of
from edge_agent.core.preprocess import PreprocessingSpec

#: Rows of the training split the int8 quantizer calibrates on.
CALIBRATION_SAMPLES = 200

Candidates = list[tuple[str, str, bytes, str | None]]  # format, precision, bytes, int8 method


@dataclass
class EvalData:
    """Inputs ready for the model: a calibration sample and a labelled evaluation split."""

    calibration: np.ndarray
    X: np.ndarray
    y: np.ndarray


def eval_data_from_arrays(inputs: Path, labels: Path) -> EvalData:
    try:
        X = np.load(inputs).astype(np.float32)
        y = np.load(labels).astype(np.int64)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read calibration arrays: {exc}") from None
    if len(X) != len(y) or len(X) < 2:
        raise InvalidInput(
            f"{inputs.name} has {len(X)} samples and {labels.name} {len(y)}: they must match (≥ 2)"
        )
    return EvalData(calibration=X[:CALIBRATION_SAMPLES], X=X, y=y)


def eval_data_from_dataset(
    dataset: str,
    *,
    path: Path | None,
    label_column: str | None,
    spec: PreprocessingSpec | None,
    scale: float = 1.0,
    seed: int = 0,
) -> EvalData:
    """Load a dataset, prepare it with the version's preprocessing spec (or `scale`) and split it
    the way training does: calibration from one part, evaluation on the held-out rest."""
    from sklearn.model_selection import train_test_split

    try:
        data = load_dataset(
            dataset,
            path=path,
            label_column=label_column,
            image_size=spec.size if spec and spec.size else None,
            color=spec.color if spec and spec.color else "gray",
        )
    except DatasetError as exc:
        raise InvalidInput(str(exc)) from None
    X = spec.apply(data.X) if spec is not None else (data.X * np.float32(scale)).astype(np.float32)
    idx = np.arange(len(X))
    train_idx, test_idx = train_test_split(idx, test_size=0.2, random_state=seed, stratify=data.y)
    rng = np.random.default_rng(seed)
    calib = X[train_idx][rng.permutation(len(train_idx))[:CALIBRATION_SAMPLES]]
    return EvalData(calibration=calib, X=X[test_idx], y=data.y[test_idx])


def _fit_inputs(X: np.ndarray, signature: dict[str, Any]) -> np.ndarray:
    return _reshape_to(X, list(signature["inputs"][0]["shape"][1:]))


def _reshape_to(X: np.ndarray, want: list[int | None]) -> np.ndarray:
    """Reshape flat or image data to the model's per-sample input shape when the sizes agree."""
    if None in want or list(X.shape[1:]) == want:
        return X
    if int(np.prod(X.shape[1:])) == int(np.prod([d or 0 for d in want])):
        return X.reshape(len(X), *want)
    raise InvalidInput(
        f"the data has samples of shape {list(X.shape[1:])} but the model expects {want}"
    )


def _report_and_artifacts(
    candidates: Candidates,
    *,
    data: EvalData,
    reference_scores: np.ndarray,
    reference_accuracy: float,
    threshold: float,
) -> tuple[dict[str, Any], list[NewArtifact], str | None]:
    from converters import build_report, evaluate_artifact, inspect_model_file

    reports = [
        evaluate_artifact(
            blob,
            fmt,  # type: ignore[arg-type]
            precision=precision,
            X=data.X,
            y=data.y,
            reference_scores=reference_scores,
            threshold=threshold,
        )
        for fmt, precision, blob, _ in candidates
    ]
    report = build_report(
        reports, reference_accuracy=reference_accuracy, threshold=threshold
    ).model_dump(mode="json")
    artifacts = []
    for (fmt, precision, blob, method), rep in zip(candidates, reports, strict=True):
        metrics = rep.model_dump(mode="json")
        for key in ("format", "precision", "sha256"):
            metrics.pop(key)
        artifacts.append(
            NewArtifact(
                format=fmt,
                precision=precision,
                data=blob,
                status="ready" if rep.passed else "failed",
                method=method,
                signature=signature_of(inspect_model_file(blob)),
                metrics=metrics,
            )
        )
    failed = [f"{r.format}/{r.precision}: {r.reason}" for r in reports if not r.passed]
    return report, artifacts, "; ".join(failed) or None


@dataclass
class Quantized:
    report: dict[str, Any]
    artifacts: list[NewArtifact]
    reason: str | None  # why it failed the agreement check, or None


def _quantize_checked(
    fp32: bytes,
    signature: dict[str, Any],
    data: EvalData,
    *,
    name: str,
    method: Literal["auto", "static", "dynamic"],
    threshold: float,
) -> Quantized:
    """Quantize ONNX fp32 bytes and check fp32 and int8 on the data; nothing is stored."""
    from converters import QuantizationUnsupported, quantize_onnx
    from edge_agent.core.runtimes import NoScoreOutput, load_runtime

    runtime = load_runtime(fp32, "onnx")
    try:
        runtime.score_output()
    except NoScoreOutput as exc:
        raise InvalidInput(
            f"cannot quantize {name}: the check compares class scores, and {exc}"
        ) from None
    data = EvalData(
        _fit_inputs(data.calibration, signature), _fit_inputs(data.X, signature), data.y
    )
    try:
        quantized = quantize_onnx(fp32, data.calibration, method)
    except QuantizationUnsupported as exc:
        raise InvalidInput(f"cannot quantize {name}: {exc}") from None
    reference = runtime.predict(data.X)
    report, artifacts, reason = _report_and_artifacts(
        [("onnx", "fp32", fp32, None), ("onnx", "int8", quantized.data, quantized.method)],
        data=data,
        reference_scores=reference,
        reference_accuracy=float((reference.argmax(1) == data.y).mean()),
        threshold=threshold,
    )
    return Quantized(report, artifacts, reason)


def _register_quantized(registry: Registry, parent: Version, result: Quantized) -> Version:
    return registry.register_version(
        parent.project,
        parent.model,
        artifacts=result.artifacts,
        source="converted",
        status="failed" if result.reason else "ready",
        status_reason=result.reason,
        parent_id=parent.id,
        kind=parent.kind,
        metrics={"accuracy": result.report["reference"]["accuracy"]},
        report=result.report,
        preprocessing=parent.preprocessing,
        labels=parent.labels,
        task=parent.task,
        head=parent.head,  # checked again against the new artifacts' signatures
    )


def quantize_version(
    registry: Registry,
    version: Version,
    data: EvalData,
    *,
    method: Literal["auto", "static", "dynamic"] = "auto",
    threshold: float = 0.99,
) -> Version:
    """int8 ONNX from a version's ONNX fp32 artifact, checked against it, as a new version."""
    source = [a for a in version.artifacts if a.format == "onnx" and a.precision == "fp32"]
    if not source:
        have = ", ".join(f"{a.format}/{a.precision}" for a in version.artifacts)
        raise InvalidInput(f"version {version.ref} has no onnx/fp32 artifact to quantize ({have})")
    fp32 = registry.artifact_blob(source[0].sha256)
    result = _quantize_checked(
        fp32, source[0].signature, data, name=version.ref, method=method, threshold=threshold
    )
    return _register_quantized(registry, version, result)


def quantize_file(
    registry: Registry,
    path: Path,
    *,
    project: str,
    model: str,
    data: EvalData,
    method: Literal["auto", "static", "dynamic"] = "auto",
    threshold: float = 0.99,
) -> Version:
    """Register an .onnx file and its int8 twin (as its child version), or nothing if either
    step fails: the quantization is done and checked before anything is stored."""
    from cloud_hub.registry.uploads import register_upload
    from converters import InvalidModelFile, inspect_model_file

    blob = path.read_bytes()
    try:
        signature = signature_of(inspect_model_file(blob, path.name))
    except InvalidModelFile as exc:
        raise InvalidInput(str(exc)) from None
    result = _quantize_checked(
        blob, signature, data, name=path.name, method=method, threshold=threshold
    )
    with registry.db.transaction():
        uploaded = register_upload(
            registry, project=project, model=model, data=blob, filename=path.name
        )
        return _register_quantized(registry, uploaded, result)


def convert_model_file(
    registry: Registry,
    path: Path,
    *,
    project: str,
    model: str,
    data: EvalData,
    formats: list[str] | None = None,
    quantize: bool = True,
    threshold: float = 0.99,
    labels: list[str] | None = None,
    preprocessing: dict[str, Any] | None = None,
) -> Version:
    """Convert a Keras (.keras) or PyTorch (.pt2 from torch.export.save) model file."""
    from converters import ConversionError

    suffix = path.suffix.lower()
    try:
        if suffix == ".keras":
            candidates, reference = _from_keras(path, data, formats, quantize)
        elif suffix == ".pt2":
            candidates, reference = _from_torch(path, data, formats, quantize)
        else:
            raise InvalidInput(
                f"cannot convert {path.name}: expected a .keras (Keras) or .pt2 (torch.export) "
                "file; register .onnx/.tflite files with `models upload` and quantize them"
            )
    except ConversionError as exc:
        raise InvalidInput(f"cannot convert {path.name}: {exc}") from None
    report, artifacts, reason = _report_and_artifacts(
        candidates,
        data=data,
        reference_scores=reference,
        reference_accuracy=float((reference.argmax(1) == data.y).mean()),
        threshold=threshold,
    )
    return registry.register_version(
        project,
        model,
        artifacts=artifacts,
        source="converted",
        status="failed" if reason else "ready",
        status_reason=reason,
        kind=suffix.lstrip("."),
        metrics={"accuracy": report["reference"]["accuracy"]},
        report=report,
        preprocessing=preprocessing,
        labels=labels,
    )


def _from_keras(
    path: Path, data: EvalData, formats: list[str] | None, quantize: bool
) -> tuple[Candidates, np.ndarray]:
    import keras

    from converters import keras_to_onnx, keras_to_tflite, quantize_onnx

    try:
        model = keras.models.load_model(path)
    except Exception as exc:  # keras raises ValueError, OSError, zipfile errors...
        raise InvalidInput(f"{path.name} is not a loadable Keras model: {exc}") from None
    shape = list(model.input_shape[1:])
    data.X, data.calibration = _reshape_to(data.X, shape), _reshape_to(data.calibration, shape)
    reference = np.asarray(model.predict(data.X, verbose=0), dtype=np.float32)
    out: Candidates = []
    wanted = formats or ["onnx", "tflite"]
    if "onnx" in wanted:
        onnx_fp32 = keras_to_onnx(model)
        out.append(("onnx", "fp32", onnx_fp32, None))
        if quantize:
            q = quantize_onnx(onnx_fp32, data.calibration)
            out.append(("onnx", "int8", q.data, q.method))
    if "tflite" in wanted:
        out.append(("tflite", "fp32", keras_to_tflite(model), None))
        if quantize:
            out.append(("tflite", "int8", keras_to_tflite(model, data.calibration), "full-int8"))
    return out, reference


def _from_torch(
    path: Path, data: EvalData, formats: list[str] | None, quantize: bool
) -> tuple[Candidates, np.ndarray]:
    import torch

    from converters import quantize_onnx, torch_to_onnx

    if formats and formats != ["onnx"]:
        raise InvalidInput("a PyTorch model converts to onnx only (TFLite needs a Keras model)")
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # torch raises RuntimeError, zipfile errors...
        raise InvalidInput(f"{path.name} is not a torch.export program: {exc}") from None
    module = program.module()
    args = program.example_inputs[0] if program.example_inputs else ()
    if args:
        shape = list(args[0].shape[1:])
        data.X, data.calibration = _reshape_to(data.X, shape), _reshape_to(data.calibration, shape)
    try:
        with torch.no_grad():
            reference = module(torch.from_numpy(np.ascontiguousarray(data.X))).numpy()
    except Exception as exc:  # guards of torch.export raise AssertionError/RuntimeError
        raise InvalidInput(
            f"{path.name} does not run on a batch of {len(data.X)}: {str(exc).splitlines()[-1]} "
            "(export it with a dynamic batch: dynamic_shapes=({0: torch.export.Dim('batch')},))"
        ) from None
    onnx_fp32 = torch_to_onnx(module, data.X[:2])
    out: Candidates = [("onnx", "fp32", onnx_fp32, None)]
    if quantize:
        q = quantize_onnx(onnx_fp32, data.calibration)
        out.append(("onnx", "int8", q.data, q.method))
    return out, np.asarray(reference, dtype=np.float32)
