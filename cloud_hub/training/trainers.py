"""Built-in trainers: scikit-learn classifiers for tabular data and a small Keras CNN for images.

Tabular inputs are (N, F) float32; images are NHWC (N, H, W, C) float32 scaled to [0, 1]. The
scikit-learn models flatten images; the CNN refuses tabular data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from converters.errors import QuantizationUnsupported
from converters.keras_convert import keras_to_onnx, keras_to_tflite
from converters.quantize import quantize_onnx
from converters.sklearn_onnx import sklearn_to_onnx
from edge_agent.core.runtimes import ModelFormat

MODEL_KINDS = ("logreg", "mlp", "random_forest", "cnn")
SKLEARN_KINDS = frozenset({"logreg", "mlp", "random_forest"})

#: Hyper-parameters each kind accepts, with their defaults.
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "logreg": {"C": 1.0, "max_iter": 1000},
    "mlp": {
        "hidden_layer_sizes": (64,),
        "alpha": 1e-4,
        "learning_rate_init": 1e-3,
        "max_iter": 300,
    },
    "random_forest": {"n_estimators": 100, "max_depth": None, "min_samples_leaf": 1},
    "cnn": {"epochs": 15, "batch_size": 32, "learning_rate": 1e-3},
}
#: Samples used at most to calibrate int8 quantization.
MAX_CALIBRATION = 300


class UnknownModelType(ValueError):
    """The requested model kind is not one of MODEL_KINDS."""


class IncompatibleData(ValueError):
    """The data set does not suit the requested model (shape, labels, sizes)."""


class InvalidParams(ValueError):
    """A hyper-parameter is unknown for the model kind or has a bad value."""


@dataclass
class TrainedModel:
    """A fitted model, its class labels (score column order) and per-sample input shape."""

    kind: str
    framework: Literal["sklearn", "keras"]
    estimator: Any
    classes: list[int]
    input_shape: tuple[int, ...]

    def prepare(self, X: np.ndarray) -> np.ndarray:
        """X shaped and typed as the model (and its exported artifacts) takes it."""
        X = np.asarray(X, dtype=np.float32)
        if self.framework == "sklearn":
            X = X.reshape(len(X), -1) if X.ndim > 2 else X
        elif X.ndim == 3:
            X = X[..., None]
        if tuple(X.shape[1:]) != self.input_shape:
            raise IncompatibleData(
                f"model '{self.kind}' takes samples of shape {self.input_shape}, "
                f"got {tuple(X.shape[1:])}"
            )
        return X

    def predict_scores(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (N, len(classes)), float32."""
        X = self.prepare(X)
        if self.framework == "sklearn":
            with _single_thread_blas():
                scores = self.estimator.predict_proba(X)
        else:
            scores = self.estimator.predict(X, batch_size=256, verbose=0)
        return np.asarray(scores, dtype=np.float32)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted class labels."""
        return np.asarray(self.classes)[self.predict_scores(X).argmax(axis=1)]


@dataclass(frozen=True)
class ExportedArtifact:
    """One deployable model file."""

    format: ModelFormat
    precision: Literal["fp32", "int8"]
    data: bytes
    #: How int8 was made: "static" / "dynamic" (onnxruntime) or "full-int8" (TFLite); None for fp32.
    method: str | None = None


@dataclass(frozen=True)
class SkippedArtifact:
    """An artifact that was not produced, and why."""

    format: ModelFormat
    precision: Literal["fp32", "int8"]
    reason: str

    def __str__(self) -> str:
        return f"{self.format} {self.precision} skipped: {self.reason}"


@dataclass
class ExportResult:
    """The artifacts exported for a trained model, and those skipped."""

    artifacts: list[ExportedArtifact]
    skipped: list[SkippedArtifact] = field(default_factory=list)


def _single_thread_blas() -> Any:
    """Limit BLAS to one thread: the built-in models are small, and a spinning multi-threaded
    OpenBLAS is slower for them (and up to 50x slower on a busy or shared CPU)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _describe(X: np.ndarray) -> str:
    if X.ndim == 2:
        return f"tabular features (N,{X.shape[1]})"
    return f"data of shape (N,{','.join(map(str, X.shape[1:]))})"


def _check_data(kind: str, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if X.ndim < 2 or X.ndim > 4:
        raise IncompatibleData(
            f"X must be (N,F) features or (N,H,W[,C]) images, got shape {X.shape}"
        )
    if y.ndim != 1 or len(y) != len(X):
        raise IncompatibleData(f"y must be one label per sample: X has {len(X)}, y shape {y.shape}")
    if len(X) < 2:
        raise IncompatibleData(f"need at least 2 samples to train, got {len(X)}")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise IncompatibleData(f"labels must be integers, got dtype {y.dtype}")
    if len(np.unique(y)) < 2:
        raise IncompatibleData("need at least 2 classes to train a classifier, got 1")
    X = np.asarray(X, dtype=np.float32)
    if not np.all(np.isfinite(X)):
        raise IncompatibleData("X contains NaN or infinite values")
    if kind == "cnn":
        if X.ndim == 2:
            raise IncompatibleData(
                f"model 'cnn' needs image data (N,H,W,C); dataset has {_describe(X)}"
            )
        if X.ndim == 3:
            X = X[..., None]
        if X.shape[1] < 4 or X.shape[2] < 4:
            raise IncompatibleData(
                f"model 'cnn' needs images of at least 4x4 pixels, got {X.shape[1]}x{X.shape[2]}"
            )
    elif X.ndim > 2:
        X = X.reshape(len(X), -1)
    return X, y


def validate_params(kind: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """`params` merged over the defaults of `kind`; InvalidParams names an unknown one."""
    defaults = DEFAULT_PARAMS[kind]
    given = dict(params or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise InvalidParams(
            f"unknown parameter(s) {', '.join(unknown)} for model '{kind}'; "
            f"known: {', '.join(sorted(defaults))}"
        )
    return {**defaults, **given}


def _build_sklearn(kind: str, params: dict[str, Any], seed: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(random_state=seed, **params))
    if kind == "mlp":
        params = {**params, "hidden_layer_sizes": tuple(params["hidden_layer_sizes"])}
        return make_pipeline(StandardScaler(), MLPClassifier(random_state=seed, **params))
    return RandomForestClassifier(random_state=seed, n_jobs=1, **params)


def _train_sklearn(
    kind: str, X: np.ndarray, y: np.ndarray, params: dict[str, Any], seed: int
) -> TrainedModel:
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    estimator = _build_sklearn(kind, params, seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            with _single_thread_blas():
                estimator.fit(X, y)
    except (TypeError, ValueError) as exc:
        raise InvalidParams(f"cannot train '{kind}' with {params}: {exc}") from exc
    classes = [int(c) for c in estimator.classes_]
    return TrainedModel(kind, "sklearn", estimator, classes, tuple(X.shape[1:]))


def _build_cnn(input_shape: tuple[int, ...], n_classes: int, learning_rate: float) -> Any:
    import keras

    height, width = input_shape[0], input_shape[1]
    layers: list[Any] = [
        keras.Input(shape=input_shape, name="input"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
    ]
    if min(height, width) >= 16:  # keep the dense layer small for larger images
        layers.append(keras.layers.MaxPooling2D())
    layers += [
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(n_classes, activation="softmax"),
    ]
    model = keras.Sequential(layers, name="edgepilot_cnn")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _train_cnn(X: np.ndarray, y: np.ndarray, params: dict[str, Any], seed: int) -> TrainedModel:
    from converters._tf import import_tensorflow

    import_tensorflow()
    import keras

    epochs, batch_size, learning_rate = (
        params["epochs"],
        params["batch_size"],
        params["learning_rate"],
    )
    if not (isinstance(epochs, int) and epochs >= 1):
        raise InvalidParams(f"epochs must be a positive integer, got {epochs!r}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise InvalidParams(f"batch_size must be a positive integer, got {batch_size!r}")
    if not (isinstance(learning_rate, int | float) and learning_rate > 0):
        raise InvalidParams(f"learning_rate must be a positive number, got {learning_rate!r}")
    classes = np.unique(y)
    targets = np.searchsorted(classes, y)
    keras.utils.set_random_seed(seed)
    model = _build_cnn(tuple(X.shape[1:]), len(classes), float(learning_rate))
    model.fit(X, targets, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)
    return TrainedModel(
        "cnn", "keras", model, [int(c) for c in classes], tuple(int(d) for d in X.shape[1:])
    )


def train_model(
    kind: str,
    X: np.ndarray,
    y: np.ndarray,
    params: dict[str, Any] | None = None,
    *,
    seed: int = 0,
) -> TrainedModel:
    """Train a built-in model of `kind` (one of MODEL_KINDS) on X, y.

    Raises UnknownModelType, IncompatibleData (data that does not suit the kind) or
    InvalidParams (an unknown or bad hyper-parameter; see DEFAULT_PARAMS).
    """
    if kind not in MODEL_KINDS:
        raise UnknownModelType(f"unknown model type {kind!r}; known: {', '.join(MODEL_KINDS)}")
    merged = validate_params(kind, params)
    X, y = _check_data(kind, np.asarray(X), np.asarray(y))
    if kind in SKLEARN_KINDS:
        return _train_sklearn(kind, X, y, merged, seed)
    return _train_cnn(X, y, merged, seed)


def supported_formats(trained: TrainedModel) -> list[ModelFormat]:
    """Formats a trained model converts to: ONNX always, TFLite for Keras models."""
    return ["onnx", "tflite"] if trained.framework == "keras" else ["onnx"]


def export_fp32(
    trained: TrainedModel, formats: Sequence[ModelFormat] | None = None
) -> list[ExportedArtifact]:
    """Convert a trained model to fp32 artifacts in `formats` (default: all it supports)."""
    supported = supported_formats(trained)
    wanted = list(formats) if formats is not None else supported
    unsupported = [f for f in wanted if f not in supported]
    if unsupported:
        raise IncompatibleData(
            f"a {trained.kind} model cannot be converted to {', '.join(unsupported)} "
            f"(supported: {', '.join(supported)})"
        )
    artifacts: list[ExportedArtifact] = []
    for fmt in wanted:
        if fmt == "tflite":
            artifacts.append(ExportedArtifact("tflite", "fp32", keras_to_tflite(trained.estimator)))
        elif trained.framework == "sklearn":
            data = sklearn_to_onnx(trained.estimator, n_features=trained.input_shape[0])
            artifacts.append(ExportedArtifact("onnx", "fp32", data))
        else:
            artifacts.append(ExportedArtifact("onnx", "fp32", keras_to_onnx(trained.estimator)))
    return artifacts


def export_int8(
    trained: TrainedModel, fp32: Sequence[ExportedArtifact], calibration: np.ndarray
) -> ExportResult:
    """int8 twins of `fp32` artifacts, calibrated on a few hundred training samples.

    ONNX: static QDQ for the CNN, "auto" for scikit-learn graphs; graphs with nothing to quantize
    (logistic regression, random forest) are recorded in `skipped`. TFLite: full int8.
    """
    samples = trained.prepare(calibration)[:MAX_CALIBRATION]
    if len(samples) == 0:
        raise IncompatibleData("calibration data is empty")
    method: Literal["auto", "static"] = "auto" if trained.framework == "sklearn" else "static"
    artifacts: list[ExportedArtifact] = []
    skipped: list[SkippedArtifact] = []
    for art in fp32:
        if art.format == "onnx":
            try:
                quantized = quantize_onnx(art.data, samples, method=method)
            except QuantizationUnsupported as exc:
                skipped.append(SkippedArtifact("onnx", "int8", str(exc)))
                continue
            artifacts.append(ExportedArtifact("onnx", "int8", quantized.data, quantized.method))
        else:
            int8 = keras_to_tflite(trained.estimator, representative=samples)
            artifacts.append(ExportedArtifact("tflite", "int8", int8, "full-int8"))
    return ExportResult(artifacts=artifacts, skipped=skipped)


def export_artifacts(trained: TrainedModel, calibration: np.ndarray) -> ExportResult:
    """Every artifact a trained model gets: fp32 in each supported format, and their int8 twins.

    scikit-learn: ONNX fp32, plus ONNX int8 unless the graph has nothing to quantize. CNN: ONNX
    fp32, ONNX int8 (static QDQ), TFLite fp32 and TFLite full int8.
    """
    fp32 = export_fp32(trained)
    int8 = export_int8(trained, fp32, calibration)
    ordered = [a for f in fp32 for a in [f, *(i for i in int8.artifacts if i.format == f.format)]]
    return ExportResult(artifacts=ordered, skipped=int8.skipped)
