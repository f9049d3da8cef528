"""The agent's local HTTP API, on the standard library's ThreadingHTTPServer.

    POST /v1/predict   a batch of model-ready samples, as JSON:
                         {"inputs": [...]}                      nested numbers, rows first
                         {"inputs": {"name": [...], ...}}       a model with several inputs, by name
                       or one image: a raw image/png | image/jpeg body, or {"image_b64": "..."},
                       prepared with the active model's preprocessing spec (its boxes and points
                       come back in the posted image's pixels)
                       options: `?outputs=all` or `"outputs": true` adds every raw output tensor;
                       `?mask=png` or `"mask": true` adds a segmentation's mask as a base64 PNG
                       → 200 {"request_id", "model_version", "latency_ms", "predictions": [...],
                              "outputs"?: {name: {"shape", "dtype", "data", "quantization"?}}}
    GET  /v1/health    → 200 {"status": "ok", "active_version", "mqtt_connected"}
    GET  /v1/status    → 200 device id, versions, counts, outbox, params, last deployment
    GET  /metrics      → 200 Prometheus text: inferences and latency quantiles per version,
                       outbox pending/dropped, active/shadow versions, CPU, memory
                       (edge_agent.metrics)

One prediction per sample, the version's task head's answer (every one has `"task"`):
classification `class`, `label`, `score`, `scores`, `top_k`, `thresholded`; detection
`detections` [{box [x1, y1, x2, y2], score, class, label}]; keypoints `instances` [{points,
...}]; segmentation `shape`, `classes` [{class, label, pixels, fraction}] (and `mask_png`);
embedding `embedding`, `norm`; regression `values`; raw: nothing but the task (ask for the
outputs). `outputs` holds the runtime's tensors exactly (the whole batch, rows first; a float32's
JSON number reads back to the same float32; a quantized tensor stays integer, with its scale and
zero point). A model with a fixed batch size takes any number of rows (run in chunks).

With a `token` (the config's `[http] token`), every route but /v1/health (/metrics too) needs
`Authorization: Bearer <token>`: 401 without it or with another.

Errors are JSON `{"error": ..., "detail": ...}`: 400 malformed request, 401 no or wrong token,
404 unknown path, 405 wrong method, 411 no Content-Length, 413 body over the limit (read from
Content-Length, before the body), 415 unsupported content type, 422 input the model cannot take
(its message names the input and the shape it expects: a wrong shape, dtype, a missing or
unknown input name, inputs with different numbers of rows, non-numeric values, NaN, not an
image), 503 no active model (or the deployment's kill switch is on without a default answer), 500
a model error. Below the deployment's `min_score` a classification has `"thresholded": true`,
`"class": null` and the default label, and a detection loses the boxes scoring below it; with
the kill switch on each prediction has `"disabled": true`.

A large JSON body is turned into arrays and its parsed lists dropped before the model runs, and
after a request whose body was over `memory.LARGE_BODY_BYTES` the freed memory is given back to
the system (`memory.release_memory`), so the agent's RSS does not stay at a request's peak.
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
from urllib.parse import parse_qs

import numpy as np

from edge_agent.core.preprocess import (
    Geometry,
    ImageError,
    decode_image,
    prepare_image,
    require_image_spec,
)
from edge_agent.inference import InferenceService, NoActiveModel, ServingDisabled
from edge_agent.memory import LARGE_BODY_BYTES, release_memory
from edge_agent.metrics_totals import RunningTotals

__all__ = ["HttpApi"]

log = logging.getLogger(__name__)

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus text format
IMAGE_TYPES = ("image/png", "image/jpeg", "image/jpg", "application/octet-stream")


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str = "") -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail


def to_batch(inputs: Any, name: str | None = None) -> np.ndarray:
    """A JSON batch as an array; ApiError 422 for what cannot be a numeric tensor."""
    what = "'inputs'" if name is None else f"input {name!r}"
    if not isinstance(inputs, list) or not inputs:
        raise ApiError(422, "invalid input", f"{what} must be a non-empty list of samples")
    try:
        x = np.asarray(inputs)
    except ValueError as exc:
        raise ApiError(422, "invalid input", f"ragged or malformed {what}: {exc}") from None
    if x.dtype.kind not in "fiu":
        raise ApiError(422, "invalid input", f"{what} must be numbers (got {x.dtype.name} values)")
    return x


def to_feeds(inputs: Any) -> np.ndarray | dict[str, np.ndarray]:
    """JSON `inputs` (a batch, or batches by input name) as arrays; ApiError 422 otherwise."""
    if isinstance(inputs, dict):
        if not inputs:
            raise ApiError(422, "invalid input", "'inputs' names no input")
        return {str(name): to_batch(value, str(name)) for name, value in inputs.items()}
    return to_batch(inputs)


def _flag(query: dict[str, list[str]], doc: dict[str, Any], key: str, word: str) -> bool:
    """An option from the query string (`?key=word`) or the JSON body (`"key": true`)."""
    value = doc.get(key, False)
    if not isinstance(value, bool):
        raise ApiError(400, "invalid request", f"'{key}' must be true or false")
    for given in query.get(key, []):
        if given.lower() not in (word, "true", "1", "false", "0"):
            raise ApiError(400, "invalid request", f"?{key}= takes {word!r}, got {given!r}")
        value = value or given.lower() in (word, "true", "1")
    return value


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
        # every inference is also counted for /metrics; the telemetry reads the tracker as before
        self._totals = RunningTotals(service.tracker)
        service.tracker = self._totals
        self._metrics: Any = None  # edge_agent.metrics.AgentMetrics, made at the first scrape
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

    def metrics(self) -> bytes:
        """The Prometheus text of `GET /metrics`."""
        if self._metrics is None:
            from edge_agent.metrics import AgentMetrics  # prometheus-client: only when scraped

            self._metrics = AgentMetrics(self._totals, self._status)
        body: bytes = self._metrics.render()
        return body

    def authorized(self, header: str | None) -> bool:
        """Whether a request with this Authorization header may call a guarded route."""
        if self._token is None:
            return True
        return header is not None and hmac.compare_digest(header.encode(), self._token)

    # -- request handling -----------------------------------------------------------------------
    def predict(self, content_type: str, body: bytes, query: str = "") -> dict[str, Any]:
        params = parse_qs(query, keep_blank_values=True)
        geometry: list[Geometry | None] | None = None
        doc: dict[str, Any] = {}
        if content_type in IMAGE_TYPES:
            x, geo = self._image(body)
            feeds: np.ndarray | dict[str, np.ndarray] = x
            geometry = [geo]
        elif content_type in ("application/json", ""):
            try:
                parsed = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ApiError(400, "invalid JSON", str(exc)) from None
            if not isinstance(parsed, dict):
                raise ApiError(400, "invalid request", "the body must be a JSON object")
            doc = parsed
            if "inputs" in doc:
                feeds = to_feeds(doc.pop("inputs"))  # the parsed lists go now, not after the run
            elif "image_b64" in doc:
                encoded = doc.pop("image_b64")
                if not isinstance(encoded, str):
                    raise ApiError(422, "not an image", "'image_b64' must be a base64 string")
                try:
                    data = base64.b64decode(encoded, validate=True)
                except (binascii.Error, ValueError):
                    raise ApiError(422, "not an image", "'image_b64' is not base64") from None
                del encoded
                feeds, geo = self._image(data)
                geometry = [geo]
            else:
                raise ApiError(400, "invalid request", "expected 'inputs' or 'image_b64'")
        else:
            raise ApiError(
                415,
                "unsupported content type",
                f"{content_type!r}: send application/json, image/png or image/jpeg",
            )
        outputs = _flag(params, doc, "outputs", "all")
        mask = _flag(params, doc, "mask", "png")
        del doc
        try:
            result = self.service.infer(
                feeds, source="http", geometry=geometry, outputs=outputs, mask=mask
            )
        except NoActiveModel as exc:
            raise ApiError(503, "no active model", str(exc)) from None
        except ServingDisabled as exc:
            raise ApiError(503, "serving disabled", str(exc)) from None
        except ValueError as exc:
            raise ApiError(422, "invalid input", str(exc)) from None
        self._on_inferred()
        return result.to_json()

    def _image(self, data: bytes) -> tuple[np.ndarray, Geometry]:
        try:
            spec = require_image_spec(self._preprocessing())
            return prepare_image(decode_image(data, spec), spec)
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

            def _send_text(self, body: bytes, content_type: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
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
                elif path == "/metrics":
                    self._send_text(api.metrics(), METRICS_TYPE)
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
                query = self.path.split("?", 1)[1] if "?" in self.path else ""
                answer: dict[str, Any] | None = None
                try:
                    answer = api.predict(content_type.lower(), body, query)
                    body = b""
                    self._send(200, answer)
                except ApiError as exc:
                    self._error(exc)
                except Exception as exc:
                    log.exception("prediction failed")
                    self._error(ApiError(500, "prediction failed", str(exc)))
                finally:
                    answer, body = None, b""
                    if length > LARGE_BODY_BYTES:
                        release_memory()  # the body's and the answer's peak goes back

            def do_PUT(self) -> None:  # noqa: N802
                self._error(ApiError(405, "method not allowed", self.path), close=True)

            do_DELETE = do_PUT

        return Handler
