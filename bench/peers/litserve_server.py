"""LitServe serving the benchmark's model (run in build/peers/litserve-venv by bench/peers.py):
a LitAPI around one onnxruntime session on one thread, one inference worker, LitServe's own
batching (`max_batch_size`, `batch_timeout`) when `--batch N` is over 1. JSON bodies
`{"inputs": [...]}`; JPEGs as a multipart file field `content` (LitServe's way for files).

    python litserve_server.py --mode cnn|jpeg|raw --model M.onnx --labels L.json --port N
"""

from __future__ import annotations

import argparse
from typing import Any

import litserve as ls
import numpy as np
from workload import jpeg_tensor, model_from_args, rows_tensor


class PeerAPI(ls.LitAPI):
    def __init__(self, mode: str, model: str, labels: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mode, self.model_path, self.labels_path = mode, model, labels

    def setup(self, device: str) -> None:
        self.model = model_from_args(self.model_path, self.labels_path)

    def decode_request(self, request):  # type: ignore[no-untyped-def]  # unannotated: LitServe reads the annotation as the body's type
        if self.mode == "jpeg":
            return jpeg_tensor(request["content"].file.read())
        return rows_tensor(request["inputs"])

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(inputs)  # each request is a batch of one row already

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model.run(x)

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return [output[i : i + 1] for i in range(len(output))]

    def encode_response(self, output: np.ndarray) -> dict[str, Any]:
        return {"predictions": self.model.answers(output)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["cnn", "jpeg", "raw"], required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--batch", type=int, default=1, help="max_batch_size (1: no batching)")
    parser.add_argument("--batch-timeout", type=float, default=0.002)
    args = parser.parse_args()
    batching = {"max_batch_size": args.batch, "batch_timeout": args.batch_timeout}
    api = PeerAPI(args.mode, args.model, args.labels, **(batching if args.batch > 1 else {}))
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=60)
    # its logging as it comes (an access line per request, as the hub and BentoML write)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False)


if __name__ == "__main__":
    main()
