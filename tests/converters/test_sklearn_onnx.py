"""converters.sklearn_onnx: skl2onnx graphs run by onnxruntime agree with scikit-learn."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from converters import ConversionError, sklearn_to_onnx
from edge_agent.core.runtimes import load_runtime


def _split(X: np.ndarray, y: np.ndarray) -> list[Any]:
    return train_test_split(X.astype(np.float32), y, test_size=0.25, random_state=0, stratify=y)


@pytest.mark.parametrize(
    "estimator",
    [
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
        make_pipeline(StandardScaler(), MLPClassifier((32,), max_iter=2000, random_state=0)),
        RandomForestClassifier(n_estimators=20, random_state=0),
    ],
    ids=["logreg", "mlp", "random_forest"],
)
@pytest.mark.parametrize("dataset", ["iris", "digits"])
def test_onnx_agrees_with_sklearn(estimator: Any, dataset: str) -> None:
    data = load_iris() if dataset == "iris" else load_digits()
    X_train, X_test, y_train, _ = _split(data.data, data.target)
    estimator.fit(X_train, y_train)
    model = sklearn_to_onnx(estimator, n_features=X_train.shape[1])
    runtime = load_runtime(model, "onnx")
    assert runtime.inputs[0].name == "input"
    assert runtime.inputs[0].shape == [None, X_train.shape[1]]
    scores = runtime.predict(X_test)
    expected = estimator.predict_proba(X_test)
    assert scores.shape == expected.shape
    agreement = np.mean(scores.argmax(1) == expected.argmax(1))
    assert agreement >= 0.99
    assert np.abs(scores - expected).max() < 1e-4


def test_refuses_unfitted_and_non_classifiers() -> None:
    with pytest.raises(ConversionError, match="not fitted"):
        sklearn_to_onnx(LogisticRegression(), n_features=4)
    X, y = load_iris(return_X_y=True)
    with pytest.raises(ConversionError, match="not a probabilistic classifier"):
        sklearn_to_onnx(LinearRegression().fit(X, y), n_features=4)
    with pytest.raises(ConversionError, match="n_features"):
        sklearn_to_onnx(LogisticRegression(max_iter=1000).fit(X, y), n_features=0)
