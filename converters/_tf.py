"""Quiet, lazy import of TensorFlow (its C++ logging is noisy and its import takes seconds)."""

from __future__ import annotations

import os
from typing import Any


def import_tensorflow() -> Any:
    """Import and return the `tensorflow` module with its C++ logging turned down."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf
    except ImportError as exc:  # pragma: no cover - depends on the installation
        from converters.errors import ConversionError

        raise ConversionError(
            "tensorflow is not installed; install edgepilot[tflite] to train or convert "
            "Keras models"
        ) from exc
    tf.get_logger().setLevel("ERROR")
    return tf
