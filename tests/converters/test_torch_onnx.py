"""converters.torch_onnx: a small PyTorch CNN exported with dynamo runs in onnxruntime."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits

from converters import ConversionError, torch_to_onnx
from edge_agent.core.runtimes import load_runtime


@pytest.fixture(scope="module")
def trained() -> tuple[Any, np.ndarray, np.ndarray]:
    import torch
    from torch import nn

    torch.manual_seed(0)
    digits = load_digits()
    images = (digits.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)  # NCHW
    labels = digits.target
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
        nn.Softmax(dim=1),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    X, y = torch.from_numpy(images[:1400]), torch.from_numpy(labels[:1400])
    for _ in range(3):
        for i in range(0, len(X), 64):
            optimizer.zero_grad()
            loss = nn.functional.nll_loss(torch.log(model(X[i : i + 64]) + 1e-9), y[i : i + 64])
            loss.backward()
            optimizer.step()
    return model, images[1400:], labels[1400:]


def test_torch_to_onnx_agrees_with_torch(trained: tuple[Any, np.ndarray, np.ndarray]) -> None:
    import torch

    model, X_test, y_test = trained
    model.train()  # the exporter must evaluate in eval mode, then restore the mode
    data = torch_to_onnx(model, X_test[:1])  # a batch of 1 still exports a dynamic batch
    assert model.training
    runtime = load_runtime(data, "onnx")
    assert runtime.inputs[0].name == "input"
    assert runtime.inputs[0].shape == [None, 1, 8, 8]
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(X_test)).numpy()
    scores = runtime.predict(X_test)
    assert scores.shape == (len(X_test), 10)
    assert np.mean(scores.argmax(1) == expected.argmax(1)) >= 0.99
    assert np.abs(scores - expected).max() < 1e-4
    assert np.mean(scores.argmax(1) == y_test) > 0.8  # a trained model, not noise
    assert runtime.predict(X_test[:1]).shape == (1, 10)


def test_torch_to_onnx_is_self_contained(trained: tuple[Any, np.ndarray, np.ndarray]) -> None:
    import onnx

    model, X_test, _ = trained
    proto = onnx.load_from_string(torch_to_onnx(model, X_test[:4]))
    assert all(not init.external_data for init in proto.graph.initializer)
    assert sum(np.prod(init.dims) for init in proto.graph.initializer) >= 8 * 9 + 128 * 10


def test_torch_to_onnx_refuses_bad_example(trained: tuple[Any, np.ndarray, np.ndarray]) -> None:
    model, _, _ = trained
    with pytest.raises(ConversionError, match="at least 2 dimensions"):
        torch_to_onnx(model, np.zeros(64, np.float32))
    with pytest.raises(ConversionError, match="torch.onnx.export failed"):
        torch_to_onnx(model, np.zeros((2, 64), np.float32))  # wrong shape for a Conv2d


def test_torch_export_programs_convert(trained: tuple[Any, np.ndarray, np.ndarray]) -> None:
    import torch

    model, X_test, _ = trained
    program = torch.export.export(
        model.eval(),
        (torch.from_numpy(X_test[:4]),),
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    with torch.no_grad():
        expected = model(torch.from_numpy(X_test)).numpy()
    # the program itself, and the module it unflattens to (which refuses .eval())
    for exported in (program, program.module()):
        runtime = load_runtime(torch_to_onnx(exported, X_test[:2]), "onnx")
        assert runtime.inputs[0].shape[0] is None
        scores = runtime.predict(X_test)
        assert np.mean(scores.argmax(1) == expected.argmax(1)) >= 0.99
        assert np.abs(scores - expected).max() < 1e-4
