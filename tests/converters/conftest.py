"""Shared converter fixtures: the digits split and the models trained on it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from converters import sklearn_to_onnx
from converters._tf import import_tensorflow

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture(scope="session")
def digits() -> Split:
    """scikit-learn's digits as 64 float32 features in [0, 1]: a stratified 75/25 split."""
    data = load_digits()
    X = (data.data / 16.0).astype(np.float32)
    X_train, X_test, y_train, y_test = train_test_split(
        X, data.target, test_size=0.25, random_state=0, stratify=data.target
    )
    return X_train, X_test, y_train, y_test


@pytest.fixture(scope="session")
def digits_images(digits: Split) -> Split:
    """The same split, each sample an 8x8x1 image."""
    X_train, X_test, y_train, y_test = digits
    return X_train.reshape(-1, 8, 8, 1), X_test.reshape(-1, 8, 8, 1), y_train, y_test


@pytest.fixture(scope="session")
def digits_cnn(digits_images: Split) -> Any:
    """A small Keras CNN trained on `digits_images` with seed 0."""
    import_tensorflow()
    import keras

    X_train, _, y_train, _ = digits_images
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1), name="input"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(X_train, y_train, epochs=10, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="session")
def plain_mlp(digits: Split) -> tuple[Any, bytes]:
    """An MLPClassifier on the raw [0, 1] features, and its ONNX graph."""
    X_train, _, y_train, _ = digits
    estimator = MLPClassifier((64,), max_iter=600, random_state=0).fit(X_train, y_train)
    return estimator, sklearn_to_onnx(estimator, n_features=64)


@pytest.fixture(scope="session")
def scaled_mlp(digits: Split) -> tuple[Any, bytes]:
    """StandardScaler then MLPClassifier, and its ONNX graph (a Scaler op ahead of the MLP)."""
    X_train, _, y_train, _ = digits
    estimator = make_pipeline(
        StandardScaler(), MLPClassifier((64,), max_iter=300, random_state=0)
    ).fit(X_train, y_train)
    return estimator, sklearn_to_onnx(estimator, n_features=64)
