"""BentoML serving the benchmark's model (run in build/peers/bentoml-venv by bench/peers.py with
`bentoml serve bentoml_service:Peer`): a @bentoml.service holding one onnxruntime session on one
thread, one worker, sync APIs (BentoML runs them on its one-thread pool: `threads` = 1).
`/predict` takes JSON `{"inputs": [...]}`; `/predict_image` a multipart file field `image`
(BentoML's way for files). Model, labels: $PEER_MODEL, $PEER_LABELS."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import bentoml
from workload import jpeg_tensor, model_from_args, rows_tensor


@bentoml.service(workers=1, threads=1)
class Peer:
    def __init__(self) -> None:
        self.model = model_from_args(os.environ["PEER_MODEL"], os.environ["PEER_LABELS"])

    @bentoml.api
    def predict(self, inputs: list[Any]) -> dict[str, Any]:
        return {"predictions": self.model.answers(self.model.run(rows_tensor(inputs)))}

    @bentoml.api
    def predict_image(self, image: Path) -> dict[str, Any]:
        x = jpeg_tensor(image.read_bytes())
        return {"predictions": self.model.answers(self.model.run(x))}
