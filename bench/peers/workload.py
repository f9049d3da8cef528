"""The work every peer server does per request, in plain numpy + OpenCV + onnxruntime (what the
peers' venvs hold): a one-thread session, the JPEG decode and preprocessing the hub's
`preprocess` step applies (`edge_agent/core/preprocess.py` with `mobilenet.PREPROCESSING`:
BGR decode, stretch to 224×224 with INTER_AREA, RGB, (x/255 - mean)/std, NCHW), JSON rows to
a tensor, and an answer of the hub's shape (label, score, all scores per row)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

MEAN = np.asarray([0.485, 0.456, 0.406], np.float32)
STD = np.asarray([0.229, 0.224, 0.225], np.float32)
SIZE = 224


class Model:
    """One onnxruntime session on one thread (as the hub's endpoints: ModelRef.threads = 1)."""

    def __init__(self, path: Path, labels: list[str]) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.labels = labels

    def run(self, x: np.ndarray) -> np.ndarray:
        scores: np.ndarray = self.session.run(None, {self.input: x})[0]
        return scores

    def answers(self, scores: np.ndarray) -> list[dict[str, Any]]:
        return [
            {"label": self.labels[int(s.argmax())], "score": float(s.max()), "scores": s.tolist()}
            for s in scores
        ]


def jpeg_tensor(data: bytes) -> np.ndarray:
    """A JPEG's bytes to [1, 3, 224, 224] float32, as the hub's preprocess step makes it."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("not an image")
    if image.shape[:2] != (SIZE, SIZE):
        image = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    x = image.reshape(1, SIZE, SIZE, 3).astype(np.float32)
    x *= np.float32(1.0 / 255.0) / STD
    x -= MEAN / STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def rows_tensor(inputs: Any) -> np.ndarray:
    """JSON rows (`{"inputs": [...]}`'s list) to float32."""
    return np.asarray(inputs, dtype=np.float32)


def model_from_args(model: str, labels: str) -> Model:
    return Model(Path(model), json.loads(Path(labels).read_text()))
