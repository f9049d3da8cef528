"""The training pipeline end to end on real data, models, converters and runtimes."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from cloud_hub.core.errors import InvalidInput
from cloud_hub.hub import Hub
from cloud_hub.registry.datasets import load_dataset
from cloud_hub.training.pipeline import STEPS
from cloud_hub.training.request import TrainRequest
from edge_agent.core.preprocess import PreprocessingSpec
from edge_agent.core.runtimes import load_runtime


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, step: str, status: str, payload: dict[str, Any]) -> None:
        self.seen.append((step, status))

    def started(self) -> list[str]:
        return [step for step, status in self.seen if status == "started"]


def test_iris_logreg_registers_an_onnx_model_that_really_predicts(hub: Hub) -> None:
    events = Events()
    run = hub.pipeline(events).start(
        TrainRequest(project="flowers", dataset="iris", model_type="logreg")
    )
    assert run.status == "succeeded", run.error
    assert [s.step for s in run.steps] == list(STEPS)
    assert all(s.status == "succeeded" and s.duration_s is not None for s in run.steps)
    assert events.started() == list(STEPS)
    version = hub.registry.get_version_by_id(run.version_id or 0)
    assert version.ref == "flowers/iris-logreg:1"
    assert version.status == "ready"
    assert [(a.format, a.precision) for a in version.artifacts] == [("onnx", "fp32")]
    assert version.report is not None
    assert any("int8 skipped" in note for note in version.report["skipped"])
    assert version.labels == ["setosa", "versicolor", "virginica"]
    # the stored bytes load in onnxruntime and classify raw iris features
    blob = hub.registry.artifact_blob(version.artifacts[0].sha256)
    spec = PreprocessingSpec(**(version.preprocessing or {}))
    iris = load_dataset("iris")
    scores = load_runtime(blob, "onnx").predict(spec.apply(iris.X))
    assert (scores.argmax(1) == iris.y).mean() > 0.9
    assert version.artifacts[0].metrics["accuracy"] == pytest.approx(version.metrics["accuracy"])


def test_digits_mlp_gets_an_int8_onnx_within_a_point(hub: Hub) -> None:
    run = hub.pipeline().start(TrainRequest(project="digits", dataset="digits", model_type="mlp"))
    assert run.status == "succeeded", run.error
    version = hub.registry.get_version_by_id(run.version_id or 0)
    arts = {(a.format, a.precision): a for a in version.artifacts}
    assert set(arts) == {("onnx", "fp32"), ("onnx", "int8")}
    fp32, int8 = arts["onnx", "fp32"], arts["onnx", "int8"]
    assert int8.size < fp32.size
    assert int8.metrics["top1_agreement"] >= 0.99
    assert abs(int8.metrics["accuracy"] - fp32.metrics["accuracy"]) <= 0.01
    assert (version.preprocessing or {})["flatten"] is True
    assert {
        "top1_agreement",
        "max_abs_diff",
        "latency_ms_p50_batch1",
        "latency_ms_p50_batch64",
        "size_bytes",
        "passed",
    } <= set(int8.metrics)


def test_a_conversion_below_threshold_is_registered_as_failed(hub: Hub) -> None:
    run = hub.pipeline().start(
        TrainRequest(
            project="digits",
            dataset="digits",
            model_type="mlp",
            threshold=1.0,
            params={"max_iter": 30},
        )
    )
    version = hub.registry.get_version_by_id(run.version_id or 0)
    failed = [a for a in version.artifacts if a.status == "failed"]
    assert failed, "int8 should not agree 100% with fp32 on 360 digits"
    assert run.status == "failed"
    assert run.failed_step == "validate"
    assert version.status == "failed"
    assert "below threshold" in (version.status_reason or "")
    assert version.report is not None and version.report["passed"] is False


def test_failed_run_records_the_step_and_resumes_from_it(hub: Hub) -> None:
    store = hub.settings.artifacts_dir
    shutil.rmtree(store)
    store.write_text("not a directory")  # the register step cannot write its blobs
    run = hub.pipeline().start(TrainRequest(project="flowers", dataset="iris", model_type="mlp"))
    assert run.status == "failed"
    assert run.failed_step == "register"
    steps = {s.step: s for s in run.steps}
    assert steps["register"].status == "failed"
    assert "Error" in (steps["register"].error or "")
    assert steps["train"].status == "succeeded"
    assert hub.registry.list_models() == []

    store.unlink()
    store.mkdir()
    events = Events()
    resumed = hub.pipeline(events).resume(run.id)
    assert resumed.id == run.id
    assert resumed.status == "succeeded", resumed.error
    assert events.started() == ["register"]  # nothing upstream ran again
    after = {s.step: s for s in resumed.steps}
    assert after["train"].finished_at == steps["train"].finished_at
    assert hub.registry.get_version_by_id(resumed.version_id or 0).ref == "flowers/iris-mlp:1"
    with pytest.raises(InvalidInput, match="only a failed run can be resumed"):
        hub.pipeline().resume(run.id)


def test_rerun_from_a_step_reuses_the_trained_model(hub: Hub) -> None:
    first = hub.pipeline().start(TrainRequest(project="flowers", dataset="iris", model_type="mlp"))
    events = Events()
    second = hub.pipeline(events).rerun(first.name, "convert")
    assert second.status == "succeeded", second.error
    assert second.parent_run_id == first.id
    assert events.started() == ["convert", "quantize", "validate", "register"]
    statuses = {s.step: s.status for s in second.steps}
    assert [statuses[s] for s in ("load_data", "preprocess", "train", "evaluate")] == ["cached"] * 4
    v1 = hub.registry.get_version_by_id(first.version_id or 0)
    v2 = hub.registry.get_version_by_id(second.version_id or 0)
    assert v2.number == 2 and v2.parent_id == v1.id
    assert v2.metrics["accuracy"] == v1.metrics["accuracy"]
    with pytest.raises(InvalidInput, match="unknown step 'deploy'"):
        hub.pipeline().rerun(first.id, "deploy")


def _registry_is_empty(hub: Hub) -> bool:
    return hub.registry.list_projects() == [] and hub.registry.list_runs() == []


def test_bad_requests_are_refused_before_anything_is_stored(hub: Hub, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="unknown dataset 'mnist'"):
        TrainRequest(project="p", dataset="mnist", model_type="mlp")
    with pytest.raises(ValidationError, match="unknown model type 'svm'"):
        TrainRequest(project="p", dataset="iris", model_type="svm")
    csv = tmp_path / "d.csv"
    csv.write_text("a,b,y\n1,2,0\n3,4,1\n")
    with pytest.raises(InvalidInput, match="no label column 'label'"):
        hub.pipeline().start(
            TrainRequest(
                project="p", dataset="csv", model_type="mlp", path=str(csv), label_column="label"
            )
        )
    csv.write_text("a,b,y\n1,oops,0\n3,4,1\n")
    with pytest.raises(InvalidInput, match="not numeric"):
        hub.pipeline().start(
            TrainRequest(
                project="p", dataset="csv", model_type="mlp", path=str(csv), label_column="y"
            )
        )
    with pytest.raises(InvalidInput, match="unknown parameter\\(s\\) epochz for model 'cnn'"):
        hub.pipeline().start(
            TrainRequest(project="p", dataset="digits", model_type="cnn", params={"epochz": 3})
        )
    with pytest.raises(InvalidInput, match="model 'cnn' needs image data"):
        hub.pipeline().start(TrainRequest(project="p", dataset="iris", model_type="cnn"))
    assert _registry_is_empty(hub)


def test_csv_training(hub: Hub, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rows = ["x1,x2,x3,label"]
    for i in range(120):
        cls = i % 2
        x = rng.normal(cls * 3.0, 1.0, 3)
        rows.append(f"{x[0]:.4f},{x[1]:.4f},{x[2]:.4f},{'yes' if cls else 'no'}")
    csv = tmp_path / "train.csv"
    csv.write_text("\n".join(rows) + "\n")
    run = hub.pipeline().start(
        TrainRequest(
            project="tab",
            dataset="csv",
            model_type="random_forest",
            path=str(csv),
            label_column="label",
            model_name="yes-no",
        )
    )
    assert run.status == "succeeded", run.error
    version = hub.registry.get_version_by_id(run.version_id or 0)
    assert version.labels == ["no", "yes"]
    assert version.metrics["accuracy"] > 0.9
    assert version.preprocessing is not None
    assert version.preprocessing["feature_names"] == ["x1", "x2", "x3"]


def test_cnn_on_an_image_folder(hub: Hub, tmp_path: Path) -> None:
    """Images read with OpenCV, resized, a CNN trained and shipped as ONNX and TFLite."""
    import cv2

    rng = np.random.default_rng(0)
    for cls in ("horizontal", "vertical"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(30):
            img = rng.integers(0, 60, (20, 20), dtype=np.uint8)
            pos = rng.integers(3, 17)
            if cls == "horizontal":
                img[pos - 1 : pos + 2, :] = 255
            else:
                img[:, pos - 1 : pos + 2] = 255
            cv2.imwrite(str(tmp_path / "imgs" / cls / f"{i}.png"), img)
    run = hub.pipeline().start(
        TrainRequest(
            project="lines",
            dataset="images",
            path=str(tmp_path / "imgs"),
            model_type="cnn",
            image_size=(12, 12),
            params={"epochs": 15},
        )
    )
    assert run.status == "succeeded", run.error
    version = hub.registry.get_version_by_id(run.version_id or 0)
    assert version.labels == ["horizontal", "vertical"]
    assert version.preprocessing is not None
    assert version.preprocessing["size"] == [12, 12]
    assert version.preprocessing["scale"] == pytest.approx(1 / 255)
    assert version.metrics["accuracy"] >= 0.9
    assert {(a.format, a.precision) for a in version.artifacts} == {
        ("onnx", "fp32"),
        ("onnx", "int8"),
        ("tflite", "fp32"),
        ("tflite", "int8"),
    }
    tflite = next(a for a in version.artifacts if a.format == "tflite" and a.precision == "int8")
    assert tflite.signature["inputs"][0]["shape"][1:] == [12, 12, 1]
