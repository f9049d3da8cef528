"""cloud_hub.training.trainers: built-in models on scikit-learn's bundled data sets."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits, load_iris
from sklearn.model_selection import train_test_split

from cloud_hub.training.trainers import (
    MODEL_KINDS,
    IncompatibleData,
    InvalidParams,
    TrainedModel,
    UnknownModelType,
    export_artifacts,
    train_model,
)
from edge_agent.core.runtimes import load_runtime

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _split(X: np.ndarray, y: np.ndarray) -> Split:
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, random_state=0, stratify=y
    )
    return X_train, X_test, y_train, y_test


@pytest.fixture(scope="module")
def digits_tabular() -> Split:
    data = load_digits()
    return _split((data.data / 16.0).astype(np.float32), data.target)


@pytest.fixture(scope="module")
def digits_images(digits_tabular: Split) -> Split:
    X_train, X_test, y_train, y_test = digits_tabular
    return X_train.reshape(-1, 8, 8, 1), X_test.reshape(-1, 8, 8, 1), y_train, y_test


@pytest.fixture(scope="module")
def iris() -> Split:
    X, y = load_iris(return_X_y=True)
    return _split(X.astype(np.float32), y)


@pytest.fixture(scope="module")
def cnn(digits_images: Split) -> TrainedModel:
    X_train, _, y_train, _ = digits_images
    return train_model("cnn", X_train, y_train, seed=0)


@pytest.fixture(scope="module")
def mlp(digits_tabular: Split) -> TrainedModel:
    X_train, _, y_train, _ = digits_tabular
    return train_model("mlp", X_train, y_train, seed=0)


def _accuracy(model: TrainedModel, X: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(model.predict(X) == y))


def test_cnn_on_digits(cnn: TrainedModel, digits_images: Split) -> None:
    _, X_test, _, y_test = digits_images
    assert cnn.framework == "keras"
    assert cnn.classes == list(range(10))
    assert cnn.input_shape == (8, 8, 1)
    scores = cnn.predict_scores(X_test)
    assert scores.shape == (len(X_test), 10) and scores.dtype == np.float32
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-4)
    assert _accuracy(cnn, X_test, y_test) >= 0.95


@pytest.mark.parametrize(
    ("kind", "minimum"), [("mlp", 0.95), ("logreg", 0.93), ("random_forest", 0.93)]
)
def test_sklearn_models_on_digits(kind: str, minimum: float, digits_tabular: Split) -> None:
    X_train, X_test, y_train, y_test = digits_tabular
    model = train_model(kind, X_train, y_train, seed=0)
    assert model.framework == "sklearn"
    assert model.input_shape == (64,)
    scores = model.predict_scores(X_test)
    assert scores.shape == (len(X_test), 10)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-4)
    assert _accuracy(model, X_test, y_test) >= minimum


@pytest.mark.parametrize("kind", ["logreg", "mlp", "random_forest"])
def test_sklearn_models_on_iris(kind: str, iris: Split) -> None:
    X_train, X_test, y_train, y_test = iris
    model = train_model(kind, X_train, y_train, seed=0)
    assert model.classes == [0, 1, 2]
    assert _accuracy(model, X_test, y_test) >= 0.9


def test_sklearn_flattens_images(digits_images: Split) -> None:
    X_train, X_test, y_train, y_test = digits_images
    model = train_model("logreg", X_train, y_train)
    assert model.input_shape == (64,)
    assert _accuracy(model, X_test, y_test) >= 0.93


def test_labels_need_not_start_at_zero(iris: Split) -> None:
    X_train, X_test, y_train, y_test = iris
    model = train_model("random_forest", X_train, y_train + 7, {"n_estimators": 10})
    assert model.classes == [7, 8, 9]
    assert _accuracy(model, X_test, y_test + 7) >= 0.9


def test_seed_makes_training_repeatable(digits_tabular: Split, digits_images: Split) -> None:
    X_train, X_test, y_train, _ = digits_tabular
    a = train_model("mlp", X_train, y_train, {"max_iter": 50}, seed=3).predict_scores(X_test)
    b = train_model("mlp", X_train, y_train, {"max_iter": 50}, seed=3).predict_scores(X_test)
    c = train_model("mlp", X_train, y_train, {"max_iter": 50}, seed=4).predict_scores(X_test)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    images, test_images = digits_images[0][:400], digits_images[1]
    first = train_model("cnn", images, y_train[:400], {"epochs": 2}, seed=1)
    second = train_model("cnn", images, y_train[:400], {"epochs": 2}, seed=1)
    np.testing.assert_allclose(
        first.predict_scores(test_images), second.predict_scores(test_images), atol=1e-6
    )


def test_unknown_kind_lists_known_kinds(iris: Split) -> None:
    with pytest.raises(UnknownModelType, match="logreg, mlp, random_forest, cnn") as info:
        train_model("xgboost", iris[0], iris[2])
    assert isinstance(info.value, ValueError)
    assert MODEL_KINDS == ("logreg", "mlp", "random_forest", "cnn")


def test_incompatible_data(iris: Split, digits_images: Split) -> None:
    X_train, _, y_train, _ = iris
    with pytest.raises(
        IncompatibleData,
        match=r"model 'cnn' needs image data \(N,H,W,C\); dataset has tabular features \(N,4\)",
    ):
        train_model("cnn", X_train, y_train)
    with pytest.raises(IncompatibleData, match="one label per sample"):
        train_model("mlp", X_train, y_train[:-1])
    with pytest.raises(IncompatibleData, match="at least 2 classes"):
        train_model("logreg", X_train, np.zeros(len(X_train), dtype=int))
    with pytest.raises(IncompatibleData, match="NaN"):
        train_model("logreg", np.full_like(X_train, np.nan), y_train)
    with pytest.raises(IncompatibleData, match="labels must be integers"):
        train_model("logreg", X_train, y_train + 0.5)
    with pytest.raises(IncompatibleData, match="at least 4x4"):
        train_model("cnn", np.zeros((10, 2, 2, 1), np.float32), np.arange(10) % 2)


def test_invalid_params(iris: Split) -> None:
    X_train, _, y_train, _ = iris
    with pytest.raises(InvalidParams, match="unknown parameter.*epochs.*for model 'mlp'"):
        train_model("mlp", X_train, y_train, {"epochs": 3})
    with pytest.raises(InvalidParams, match="cannot train 'random_forest'"):
        train_model("random_forest", X_train, y_train, {"n_estimators": -1})
    with pytest.raises(InvalidParams, match="epochs must be a positive integer"):
        train_model("cnn", np.zeros((8, 8, 8, 1), np.float32), np.arange(8) % 2, {"epochs": 0})


def test_export_mlp(mlp: TrainedModel, digits_tabular: Split) -> None:
    X_train, X_test, _, y_test = digits_tabular
    result = export_artifacts(mlp, X_train)
    assert result.skipped == []
    assert [(a.format, a.precision) for a in result.artifacts] == [
        ("onnx", "fp32"),
        ("onnx", "int8"),
    ]
    fp32, int8 = result.artifacts
    assert fp32.method is None and int8.method in ("static", "dynamic")
    reference = mlp.predict_scores(X_test)
    for artifact, agreement in ((fp32, 0.99), (int8, 0.98)):
        scores = load_runtime(artifact.data, artifact.format).predict(X_test)
        assert np.mean(scores.argmax(1) == reference.argmax(1)) >= agreement
    int8_scores = load_runtime(int8.data, "onnx").predict(X_test)
    assert np.mean(int8_scores.argmax(1) == y_test) >= _accuracy(mlp, X_test, y_test) - 0.01


@pytest.mark.parametrize("kind", ["logreg", "random_forest"])
def test_export_skips_int8_with_reason(kind: str, iris: Split) -> None:
    X_train, X_test, y_train, _ = iris
    model = train_model(kind, X_train, y_train, seed=0)
    result = export_artifacts(model, X_train)
    assert [(a.format, a.precision) for a in result.artifacts] == [("onnx", "fp32")]
    assert len(result.skipped) == 1
    assert str(result.skipped[0]).startswith("onnx int8 skipped: the graph has no Conv")
    scores = load_runtime(result.artifacts[0].data, "onnx").predict(X_test)
    np.testing.assert_allclose(scores, model.predict_scores(X_test), atol=1e-5)


def test_export_cnn(cnn: TrainedModel, digits_images: Split) -> None:
    X_train, X_test, _, y_test = digits_images
    result = export_artifacts(cnn, X_train)
    assert result.skipped == []
    kinds = [(a.format, a.precision, a.method) for a in result.artifacts]
    assert kinds == [
        ("onnx", "fp32", None),
        ("onnx", "int8", "static"),
        ("tflite", "fp32", None),
        ("tflite", "int8", "full-int8"),
    ]
    reference = cnn.predict_scores(X_test)
    accuracy = {}
    for artifact in result.artifacts:
        scores = load_runtime(artifact.data, artifact.format).predict(X_test)
        agreement = np.mean(scores.argmax(1) == reference.argmax(1))
        assert agreement >= (0.99 if artifact.precision == "fp32" else 0.98), artifact.format
        accuracy[artifact.format, artifact.precision] = np.mean(scores.argmax(1) == y_test)
    for fmt in ("onnx", "tflite"):
        assert accuracy[fmt, "int8"] >= accuracy[fmt, "fp32"] - 0.02
    sizes = {(a.format, a.precision): len(a.data) for a in result.artifacts}
    assert sizes["tflite", "int8"] < 0.4 * sizes["tflite", "fp32"]
    assert sizes["onnx", "int8"] < 0.5 * sizes["onnx", "fp32"]


def test_export_refuses_wrong_calibration_shape(cnn: TrainedModel) -> None:
    with pytest.raises(IncompatibleData, match=r"takes samples of shape \(8, 8, 1\)"):
        export_artifacts(cnn, np.zeros((10, 64), np.float32))
