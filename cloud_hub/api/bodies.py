"""Request bodies the predict routes share: the body read under a size limit, and its OpenAPI
description (JSON or an image)."""

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
        },
    }
}
