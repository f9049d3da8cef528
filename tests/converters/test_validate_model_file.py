"""converters.validate: uploaded bytes must be a model the real runtimes load."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from converters import InvalidModelFile, inspect_model_file, keras_to_tflite, sklearn_to_onnx
from converters._tf import import_tensorflow


@pytest.fixture(scope="module")
def onnx_model() -> bytes:
    X, y = load_iris(return_X_y=True)
    return sklearn_to_onnx(LogisticRegression(max_iter=1000).fit(X, y), n_features=4)


@pytest.fixture(scope="module")
def tflite_model() -> bytes:
    import_tensorflow()
    import keras

    model = keras.Sequential(
        [keras.Input((4,), name="input"), keras.layers.Dense(3, activation="softmax")]
    )
    return keras_to_tflite(model)


def test_valid_onnx(onnx_model: bytes) -> None:
    info = inspect_model_file(onnx_model, "iris.onnx")
    assert info.format == "onnx"
    assert [(t.name, t.shape, t.dtype) for t in info.inputs] == [("input", [None, 4], "float32")]
    assert [t.name for t in info.outputs] == ["label", "probabilities"]
    assert info.model_dump()["inputs"][0]["shape"] == [None, 4]  # JSON-friendly


def test_valid_tflite(tflite_model: bytes) -> None:
    info = inspect_model_file(tflite_model, "iris.tflite")
    assert info.format == "tflite"
    assert info.inputs[0].shape == [None, 4]
    assert info.outputs[0].shape == [None, 3]
    # no file name, or an extension that promises nothing: the content decides
    assert inspect_model_file(tflite_model).format == "tflite"
    assert inspect_model_file(tflite_model, "model.bin").format == "tflite"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda onnx, tfl: b"", "the file is empty"),
        (lambda onnx, tfl: b"PK\x03\x04 a zip file, not a model" * 10, "neither a TFLite"),
        (lambda onnx, tfl: np.random.default_rng(0).bytes(5000), "neither a TFLite"),
        (lambda onnx, tfl: onnx[: len(onnx) // 2], "neither a TFLite"),
        (lambda onnx, tfl: onnx[:-7], "neither a TFLite"),
        (lambda onnx, tfl: tfl[: len(tfl) // 2], "LiteRT cannot load"),
        (lambda onnx, tfl: tfl[:-16], "LiteRT cannot load"),
    ],
    ids=["empty", "zip", "random", "onnx-half", "onnx-tail", "tflite-half", "tflite-tail"],
)
def test_refuses_broken_files(
    make: Callable[[bytes, bytes], bytes], reason: str, onnx_model: bytes, tflite_model: bytes
) -> None:
    with pytest.raises(InvalidModelFile, match="^upload.bin ") as info:
        inspect_model_file(make(onnx_model, tflite_model), "upload.bin")
    assert reason in str(info.value)
    if "LiteRT" in reason:  # the format was recognised: the runtime's own reason is given
        assert str(info.value).startswith("upload.bin does not load: LiteRT cannot load")
    else:
        assert str(info.value).startswith("upload.bin is not an ONNX or TFLite model")


def test_content_decides_over_the_extension(onnx_model: bytes, tflite_model: bytes) -> None:
    info = inspect_model_file(onnx_model, "model.tflite")
    assert info.format == "onnx"
    assert info.notes == [
        "model.tflite: the .tflite extension says TFLite but the content is ONNX: loaded as ONNX"
    ]
    assert inspect_model_file(tflite_model, "model.ONNX").format == "tflite"
    assert inspect_model_file(tflite_model, "model.tflite").notes == []


def test_any_outputs_are_accepted() -> None:
    """A model that loads is accepted whatever its outputs: here a regressor, rank 3."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 896, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 896, 16])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    info = inspect_model_file(model.SerializeToString(), "rank3.onnx")
    assert [(t.name, t.shape) for t in info.outputs] == [("y", [None, 896, 16])]


def test_default_name_in_message() -> None:
    with pytest.raises(InvalidModelFile, match="^the uploaded file is not an ONNX or TFLite"):
        inspect_model_file(b"junk")
