"""PyTorch modules to ONNX with the dynamo exporter."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from converters.errors import ConversionError
from converters.keras_convert import SCORES_NAME, _quiet

#: The dynamo exporter's native opset (no version conversion pass needed).
TORCH_ONNX_OPSET = 18


def torch_to_onnx(module: Any, example_input: np.ndarray) -> bytes:
    """Export a torch.nn.Module to a self-contained ONNX graph with a dynamic batch dimension.

    `example_input` is a batch shaped like the module's input (for example NCHW images). The graph
    has one input named "input" and the module's (single) output named "probabilities".
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
    was_training = module.training
    module.eval()
    torch_logger = logging.getLogger("torch")
    level = torch_logger.level
    torch_logger.setLevel(logging.ERROR)
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                module,
                (tensor,),
                dynamo=True,
                external_data=False,
                input_names=["input"],
                output_names=[SCORES_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=TORCH_ONNX_OPSET,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types (UserError, RuntimeError...)
        raise ConversionError(f"torch.onnx.export failed: {exc}") from exc
    finally:
        module.train(was_training)
        torch_logger.setLevel(level)
    if program is None:
        raise ConversionError("torch.onnx.export returned no program")
    data: bytes = program.model_proto.SerializeToString()
    return data
