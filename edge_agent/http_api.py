"""The agent's local HTTP API, on the standard library's ThreadingHTTPServer.

    POST /v1/predict   {"inputs": [...]}  a batch of model-ready samples (nested numbers)
                       {"image_b64": "..."} or a raw image/png | image/jpeg body: one image,
                       prepared with the active model's preprocessing spec
                       → 200 {"request_id", "model_version", "latency_ms", "predictions": [...]}
    GET  /v1/health    → 200 {"status": "ok", "active_version", "mqtt_connected"}
    GET  /v1/status    → 200 device id, versions, counts, outbox, params, last deployment

With a `token` (the config's `[http] token`), every route but /v1/health needs
`Authorization: Bearer <token>`: 401 without it or with another.

Errors are JSON `{"error": ..., "detail": ...}`: 400 malformed request, 401 no or wrong token,
404 unknown path, 405 wrong
method, 411 no Content-Length, 413 body over the limit (read from Content-Length, before the body),
415 unsupported content type, 422 input the model cannot take (shape, dtype, non-numeric, NaN, not
an image), 503 no active model (or the deployment's kill switch is on without a default answer),
500 a model error. Below the deployment's `min_score` a prediction has `"thresholded": true`,
`"class": null` and the default label; with the kill switch on each has `"disabled": true`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from edge_agent.inference import InferenceService, NoActiveModel, ServingDisabled
from edge_agent.preprocess import ImageError, decode_image, prepare_frame, require_image_spec

__all__ = ["HttpApi"]

log = logging.getLogger(__name__)

IMAGE_TYPES = ("image/png", "image/jpeg", "image/jpg", "application/octet-stream")


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str = "") -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail


def to_batch(inputs: Any) -> np.ndarray:
    """A JSON batch as an array; ApiError 422 for what cannot be a numeric tensor."""
    if not isinstance(inputs, list) or not inputs:
        raise ApiError(422, "invalid input", "'inputs' must be a non-empty list of samples")
    try:
        x = np.asarray(inputs)
    except ValueError as exc:
        raise ApiError(422, "invalid input", f"ragged or malformed inputs: {exc}") from None
    if x.dtype.kind not in "fiu":
        raise ApiError(422, "invalid input", f"inputs must be numbers (got {x.dtype.name} values)")
    return x


class HttpApi:
    def __init__(
        self,
        service: InferenceService,
        *,
        host: str,
        port: int,
        max_body_bytes: int,
        preprocessing: Callable[[], dict[str, Any] | None],
        status: Callable[[], dict[str, Any]],
        health: Callable[[], dict[str, Any]],
        on_inferred: Callable[[], None] = lambda: None,
        token: str | None = None,
    ) -> None:
        self.service = service
        self._token = None if token is None else f"Bearer {token}".encode()
        self.max_body_bytes = max_body_bytes
        self._preprocessing = preprocessing
        self._status = status
        self._health = health
        self._on_inferred = on_inferred
        self.server = ThreadingHTTPServer((host, port), self._handler_class())
        self.server.daemon_threads = True
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="http-api", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def authorized(self, header: str | None) -> bool:
        """Whether a request with this Authorization header may call a guarded route."""
        if self._token is None:
            return True
        return header is not None and hmac.compare_digest(header.encode(), self._token)

    # -- request handling -----------------------------------------------------------------------
    def predict(self, content_type: str, body: bytes) -> dict[str, Any]:
        if content_type in IMAGE_TYPES:
            x = self._image(body)
        elif content_type in ("application/json", ""):
            try:
                doc = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ApiError(400, "invalid JSON", str(exc)) from None
            if not isinstance(doc, dict):
                raise ApiError(400, "invalid request", "the body must be a JSON object")
            if "inputs" in doc:
                x = to_batch(doc["inputs"])
            elif "image_b64" in doc:
                if not isinstance(doc["image_b64"], str):
                    raise ApiError(422, "not an image", "'image_b64' must be a base64 string")
                try:
                    data = base64.b64decode(doc["image_b64"], validate=True)
                except (binascii.Error, ValueError):
                    raise ApiError(422, "not an image", "'image_b64' is not base64") from None
                x = self._image(data)
            else:
                raise ApiError(400, "invalid request", "expected 'inputs' or 'image_b64'")
        else:
            raise ApiError(
                415,
                "unsupported content type",
                f"{content_type!r}: send application/json, image/png or image/jpeg",
            )
        try:
            result = self.service.infer(x, source="http")
        except NoActiveModel as exc:
            raise ApiError(503, "no active model", str(exc)) from None
        except ServingDisabled as exc:
            raise ApiError(503, "serving disabled", str(exc)) from None
        except ValueError as exc:
            raise ApiError(422, "invalid input", str(exc)) from None
        self._on_inferred()
        return result.to_json()

    def _image(self, data: bytes) -> np.ndarray:
        try:
            spec = require_image_spec(self._preprocessing())
            return prepare_frame(decode_image(data, spec), spec)
        except ImageError as exc:
            raise ApiError(422, "not an image", str(exc)) from None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "edgepilot-agent"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("%s " + format, self.address_string(), *args)

            def _send(self, status: int, doc: dict[str, Any], close: bool = False) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if close:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(body)

            def _error(self, exc: ApiError, close: bool = False) -> None:
                self._send(exc.status, {"error": exc.error, "detail": exc.detail}, close)

            def _refused(self, close: bool = False) -> bool:
                """Answer 401 when the route needs the token and the request lacks it."""
                if api.authorized(self.headers.get("Authorization")):
                    return False
                self._error(
                    ApiError(401, "unauthorized", "send Authorization: Bearer <token>"), close
                )
                return True

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                if path == "/v1/health":
                    self._send(200, api._health())
                elif self._refused():
                    return
                elif path == "/v1/status":
                    self._send(200, api._status())
                elif path == "/v1/predict":
                    self._error(ApiError(405, "method not allowed", "POST /v1/predict"))
                else:
                    self._error(ApiError(404, "not found", f"no route {path}"))

            def do_POST(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                length_text = self.headers.get("Content-Length")
                if path != "/v1/predict":
                    self._error(ApiError(404, "not found", f"no route {path}"), close=True)
                    return
                if self._refused(close=True):  # before the body is read
                    return
                if length_text is None:
                    self._error(ApiError(411, "length required", "send Content-Length"), True)
                    return
                try:
                    length = int(length_text)
                    if length < 0:
                        raise ValueError
                except ValueError:
                    self._error(ApiError(400, "bad Content-Length", length_text), close=True)
                    return
                if length > api.max_body_bytes:
                    self._error(
                        ApiError(
                            413,
                            "body too large",
                            f"{length} bytes; the limit is {api.max_body_bytes}",
                        ),
                        close=True,
                    )
                    return
                body = self.rfile.read(length)
                content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
                try:
                    self._send(200, api.predict(content_type.lower(), body))
                except ApiError as exc:
                    self._error(exc)
                except Exception as exc:
                    log.exception("prediction failed")
                    self._error(ApiError(500, "prediction failed", str(exc)))

            def do_PUT(self) -> None:  # noqa: N802
                self._error(ApiError(405, "method not allowed", self.path), close=True)

            do_DELETE = do_PUT

        return Handler
