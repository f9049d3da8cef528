"""`edgepilot-agent info|predict` as a real process on a real model file."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from converters import sklearn_to_onnx
from tests.conftest import BIN


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edgepilot-agent"), *args], capture_output=True, text=True, timeout=120
    )


def test_predict_and_info(tmp_path: Path) -> None:
    iris = load_iris()
    X = iris.data.astype(np.float32)
    clf = LogisticRegression(max_iter=500).fit(X, iris.target)
    model = tmp_path / "iris.onnx"
    model.write_bytes(sklearn_to_onnx(clf, 4))
    batch = tmp_path / "x.npy"
    np.save(batch, X[[0, 60, 120]])
    done = agent("predict", str(model), "--input", str(batch))
    assert done.returncode == 0, done.stderr
    classes = [json.loads(line)["class"] for line in done.stdout.splitlines()]
    assert classes == clf.predict(X[[0, 60, 120]]).tolist()
    info = json.loads(agent("info", str(model)).stdout)
    assert info["format"] == "onnx" and info["inputs"][0]["shape"] == [None, 4]

    np.save(batch, X[:2, :3])  # wrong width
    wrong = agent("predict", str(model), "--input", str(batch))
    assert wrong.returncode == 2 and "error:" in wrong.stderr
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"junk" * 10)
    refused = agent("info", str(junk))
    assert refused.returncode == 2 and "not an ONNX or TFLite model" in refused.stderr


def test_predict_prints_every_output_of_a_model_without_class_scores(tmp_path: Path) -> None:
    from edge_agent.core.runtimes import load_runtime
    from tests.third_party import mediapipe_model

    model = mediapipe_model("hand_landmark_full.tflite")  # 4 outputs: landmarks, scores, ...
    x = np.random.default_rng(0).random((1, 224, 224, 3), dtype=np.float32)
    batch = tmp_path / "x.npy"
    np.save(batch, x)
    done = agent("predict", str(model), "--input", str(batch))
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    printed = json.loads(line)["outputs"]
    direct = load_runtime(model, "tflite").run(x)
    assert set(printed) == set(direct) == {"Identity", "Identity_1", "Identity_2", "Identity_3"}
    for name, value in direct.items():
        assert np.array_equal(np.asarray(printed[name], np.float32), value[0]), name
