"""Request bodies the predict routes share: the body read under a size limit, and its OpenAPI
description (JSON, an image, or a tensor: .npy or raw bytes with a shape header)."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from cloud_hub.serving import PayloadTooLarge, PredictRequest


async def read_body(request: Request, limit: int) -> bytes:
    too_large = PayloadTooLarge(f"request body is larger than {limit} bytes")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_large  # refused before a byte of it is read
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PredictRequest.model_json_schema()},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "application/x-npy": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "a tensor of rows (rows first) in numpy's .npy format, as "
                    "np.save writes it: numeric dtypes only (never unpickled); checked as "
                    "JSON `inputs` rows are",
                }
            },
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "a tensor's raw bytes (C order, little-endian), with "
                    "headers X-Tensor-Shape (e.g. 1,3,224,224: rows first) and X-Tensor-Dtype "
                    "(float16/32/64, int8/16/32/64, uint8/16/32/64); the size must be the "
                    "product of the shape times the dtype's size",
                }
            },
        },
    }
}
