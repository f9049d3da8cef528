"""PyTorch modules to ONNX with the dynamo exporter."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import numpy as np

from converters.errors import ConversionError
from converters.keras_convert import SCORES_NAME
from converters.quiet import quiet

#: The dynamo exporter's native opset (no version conversion pass needed).
TORCH_ONNX_OPSET = 18


def _set_mode(module: Any, *, training: bool) -> None:
    """module.train(training), where the module supports it.

    ExportedProgram has no train/eval, and the module that ExportedProgram.module() returns
    raises NotImplementedError: both are traced in eval mode already.
    """
    train = getattr(module, "train", None)
    if train is None:
        return
    with contextlib.suppress(NotImplementedError):
        train(training)


def torch_to_onnx(module: Any, example_input: np.ndarray) -> bytes:
    """Export a torch.nn.Module to a self-contained ONNX graph with a dynamic batch dimension.

    `module` may also be a torch.export.ExportedProgram (or its .module()); a program keeps the
    dynamic shapes it was exported with. `example_input` is a batch shaped like the module's
    input (for example NCHW images). The graph has one input named "input" and the module's
    (single) output named "probabilities".
    """
    import torch

    example = np.asarray(example_input, dtype=np.float32)
    if example.ndim < 2:
        raise ConversionError(
            f"example_input must be a batch (N, ...) of at least 2 dimensions, got {example.shape}"
        )
    if example.shape[0] < 2:  # torch.export specialises a batch of 1, which is not dynamic
        example = np.concatenate([example[:1], example[:1]], axis=0)
    tensor = torch.from_numpy(np.ascontiguousarray(example))
    exported = isinstance(module, torch.export.ExportedProgram)
    was_training = bool(getattr(module, "training", False))
    _set_mode(module, training=False)
    torch_logger = logging.getLogger("torch")
    level = torch_logger.level
    torch_logger.setLevel(logging.ERROR)
    try:
        with quiet(), torch.no_grad():
            program = torch.onnx.export(
                module,
                (tensor,),
                dynamo=True,
                external_data=False,
                input_names=["input"],
                output_names=[SCORES_NAME],
                # an ExportedProgram carries its own (dynamic) shapes
                dynamic_shapes=None if exported else ({0: torch.export.Dim("batch")},),
                opset_version=TORCH_ONNX_OPSET,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types (UserError, RuntimeError...)
        raise ConversionError(f"torch.onnx.export failed: {exc}") from exc
    finally:
        _set_mode(module, training=was_training)
        torch_logger.setLevel(level)
    if program is None:
        raise ConversionError("torch.onnx.export returned no program")
    data: bytes = program.model_proto.SerializeToString()
    return data
