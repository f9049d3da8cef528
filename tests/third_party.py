"""Models that public packages ship, as a new user would bring them.

- onnxruntime's own ONNX files (`onnxruntime/datasets/*.onnx`): from the installed package;
- MediaPipe's vision models (.tflite, Apache-2.0), unzipped from its wheel by
  `scripts/fetch_models` at set-up time into `.venv/models/mediapipe/`.

A missing file is an error that says how to get it, never a skip.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEDIAPIPE_DIR = ROOT / ".venv" / "models" / "mediapipe"

#: Every .tflite file MediaPipe 0.10.21's wheel ships, and whether LiteRT can load it.
MEDIAPIPE_MODELS: dict[str, bool] = {
    "face_detection_full_range_sparse.tflite": True,
    "face_detection_short_range.tflite": True,
    "face_landmark.tflite": True,
    "face_landmark_with_attention.tflite": False,  # needs a custom op LiteRT lacks
    "hand_landmark_full.tflite": True,
    "hand_landmark_lite.tflite": True,
    "hand_recrop.tflite": True,
    "iris_landmark.tflite": True,
    "palm_detection_full.tflite": True,
    "palm_detection_lite.tflite": True,
    "pose_detection.tflite": True,
    "pose_landmark_full.tflite": True,
    "selfie_segmentation.tflite": True,
    "selfie_segmentation_landscape.tflite": True,
}
ONNXRUNTIME_MODELS = ("logreg_iris.onnx", "mul_1.onnx", "sigmoid.onnx")


def onnxruntime_model(name: str) -> Path:
    import onnxruntime

    path = Path(onnxruntime.__file__).parent / "datasets" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: onnxruntime's wheel no longer ships {name}")
    return path


def mediapipe_model(name: str) -> Path:
    path = MEDIAPIPE_DIR / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: run scripts/bootstrap (it unzips MediaPipe's models from its "
            "wheel with scripts/fetch_models)"
        )
    return path


def all_models() -> dict[str, Path]:
    """Every third-party model by file name."""
    out = {name: onnxruntime_model(name) for name in ONNXRUNTIME_MODELS}
    out.update({name: mediapipe_model(name) for name in MEDIAPIPE_MODELS})
    return out
