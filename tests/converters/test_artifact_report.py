"""converters.report: accuracy, agreement and latency of artifacts, and failing bad ones."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from converters import (
    ArtifactReport,
    ConversionError,
    ConversionReport,
    build_report,
    evaluate_artifact,
    quantize_onnx,
    sklearn_to_onnx,
)

Data = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def test_good_artifact_passes(plain_mlp: tuple[Any, bytes], digits: Data) -> None:
    estimator, data = plain_mlp
    _, X_test, _, y_test = digits
    report = evaluate_artifact(
        data,
        "onnx",
        precision="fp32",
        X=X_test,
        y=y_test,
        reference_scores=estimator.predict_proba(X_test),
    )
    assert report.passed and report.reason is None
    assert report.format == "onnx" and report.precision == "fp32"
    assert report.size_bytes == len(data)
    assert report.sha256 == hashlib.sha256(data).hexdigest()
    assert report.accuracy == pytest.approx(estimator.score(X_test, y_test))
    assert report.accuracy > 0.95
    assert report.top1_agreement == 1.0
    assert report.max_abs_diff is not None and report.max_abs_diff < 1e-4
    assert 0 < report.latency_ms_p50_batch1 < 50
    assert 0 < report.latency_ms_p50_batch64 < 500
    assert ArtifactReport.model_validate_json(report.model_dump_json()) == report


def test_int8_artifact_is_measured(plain_mlp: tuple[Any, bytes], digits: Data) -> None:
    estimator, data = plain_mlp
    X_train, X_test, _, y_test = digits
    int8 = quantize_onnx(data, X_train[:200], method="dynamic").data
    report = evaluate_artifact(
        int8,
        "onnx",
        precision="int8",
        X=X_test,
        y=y_test,
        reference_scores=estimator.predict_proba(X_test),
        threshold=0.95,
    )
    assert report.passed
    assert 0 < report.max_abs_diff < 0.5  # type: ignore[operator]
    assert report.size_bytes < len(data)


def test_wrong_model_fails_with_reason(plain_mlp: tuple[Any, bytes], digits: Data) -> None:
    estimator, _ = plain_mlp
    X_train, X_test, y_train, y_test = digits
    # a deliberately weak stand-in: one shallow tree
    stump = RandomForestClassifier(n_estimators=1, max_depth=2, random_state=0)
    stump.fit(X_train, y_train)
    report = evaluate_artifact(
        sklearn_to_onnx(stump, n_features=64),
        "onnx",
        precision="fp32",
        X=X_test,
        y=y_test,
        reference_scores=estimator.predict_proba(X_test),
    )
    assert not report.passed
    assert report.top1_agreement < 0.6
    assert report.reason == f"top-1 agreement {report.top1_agreement:.3f} below threshold 0.990"


def test_mismatched_reference_fails(plain_mlp: tuple[Any, bytes], digits: Data) -> None:
    estimator, data = plain_mlp
    _, X_test, _, y_test = digits
    shifted = np.roll(estimator.predict_proba(X_test), 1, axis=1)  # another model's opinion
    report = evaluate_artifact(
        data, "onnx", precision="fp32", X=X_test, y=y_test, reference_scores=shifted
    )
    assert not report.passed
    assert report.accuracy > 0.95  # the artifact is fine; it disagrees with the reference
    assert report.reason is not None and "below threshold" in report.reason


def test_class_labels_map_score_columns(plain_mlp: tuple[Any, bytes], digits: Data) -> None:
    estimator, data = plain_mlp
    _, X_test, _, y_test = digits
    report = evaluate_artifact(
        data,
        "onnx",
        precision="fp32",
        X=X_test,
        y=y_test + 100,
        reference_scores=estimator.predict_proba(X_test),
        classes=list(range(100, 110)),
        runs_batch1=5,
        runs_batch64=5,
    )
    assert report.accuracy == pytest.approx(estimator.score(X_test, y_test))


def test_conversion_report(plain_mlp: tuple[Any, bytes], digits: Data) -> None:
    estimator, data = plain_mlp
    _, X_test, _, y_test = digits
    reference = estimator.predict_proba(X_test)
    good = evaluate_artifact(
        data, "onnx", precision="fp32", X=X_test, y=y_test, reference_scores=reference
    )
    bad = good.model_copy(update={"passed": False, "reason": "top-1 agreement 0.5 below"})
    report = build_report([good], reference_accuracy=0.97)
    assert report.passed
    failing = build_report([good, bad], reference_accuracy=0.97, threshold=0.99)
    assert not failing.passed
    assert not build_report([], reference_accuracy=0.97).passed
    dumped = failing.model_dump(mode="json")
    assert dumped["passed"] is False
    assert dumped["reference"] == {"accuracy": 0.97}
    assert dumped["threshold"] == 0.99
    assert ConversionReport.model_validate_json(failing.model_dump_json()) == failing


def test_inconsistent_inputs_are_refused(plain_mlp: tuple[Any, bytes], digits: Data) -> None:
    estimator, data = plain_mlp
    _, X_test, _, y_test = digits
    with pytest.raises(ConversionError, match="disagree in length"):
        evaluate_artifact(
            data,
            "onnx",
            precision="fp32",
            X=X_test,
            y=y_test[:-1],
            reference_scores=estimator.predict_proba(X_test),
        )
