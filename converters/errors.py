"""Exceptions raised by the converters."""

from __future__ import annotations


class ConversionError(Exception):
    """A model could not be converted, quantized or evaluated."""


class QuantizationUnsupported(ConversionError):
    """The model has nothing an int8 quantizer can work on (for example a tree ensemble)."""


class InvalidModelFile(ConversionError):
    """Uploaded bytes are not a loadable ONNX or TFLite model."""
