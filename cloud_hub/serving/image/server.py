"""Serve a model bundle baked into an image: the model-in-image pattern.

`edgepilot build-image` (`cloud_hub/serving/image/build.py`) writes a bundle: `manifest.json` (the
endpoint spec, with every model reference pinned, and each version's record), the chosen
artifacts, labels and preprocessing specs. This module serves it with the same engine the hub
uses (graph, steps, adaptive batching), over the standard library's threaded HTTP server, and
never touches the registry: versions and artifacts are read from the bundle alone. It imports
only the engine's modules (no database, no FastAPI), so the image needs numpy, pydantic,
onnxruntime (or LiteRT) and OpenCV, no more.

    python -m cloud_hub.serving.image.server --bundle bundle [--host 0.0.0.0] [--port 8080]

`HOST` and `PORT` in the environment give the defaults. Routes: `GET /health`, `GET /info`
(spec, models, signatures), `GET /stats`, and `POST /predict` (also at the hub's path,
`/api/v1/endpoints/{name}/predict`) with the hub's request and response bodies.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from cloud_hub.core.errors import InvalidInput, NotFound
from cloud_hub.registry.schemas import Version
from cloud_hub.serving.engine.endpoint import CompiledEndpoint
from cloud_hub.serving.engine.errors import BadInput, PayloadTooLarge, SpecError
from cloud_hub.serving.engine.graph import StepFailed
from cloud_hub.serving.engine.spec import EndpointSpec
from cloud_hub.serving.engine.values import PredictRequest, parse_body

log = logging.getLogger("edgepilot.image_server")

MANIFEST = "manifest.json"
BUNDLE_FORMAT = 1
DEFAULT_MAX_BODY = 16 * 1024 * 1024


class BundleSource:
    """The versions and artifacts of a bundle, with the two calls the engine makes of the
    registry (`resolve_version`, `artifact_blob`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        path = root / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no bundle manifest here")
        self.manifest: dict[str, Any] = json.loads(path.read_text())
        if self.manifest.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"{path}: bundle format {self.manifest.get('format')!r} is unknown")
        self.spec = EndpointSpec.model_validate(self.manifest["endpoint"])
        self._versions = {
            ref: Version.model_validate(item["version"])
            for ref, item in self.manifest["versions"].items()
        }
        self._files = {sha: root / rel for sha, rel in self.manifest.get("artifacts", {}).items()}

    def resolve_version(self, ref: str) -> Version:
        version = self._versions.get(ref)
        if version is None:
            raise NotFound("version", f"{ref} (not in this bundle)")
        return version

    def artifact_blob(self, sha256: str) -> Path:
        path = self._files.get(sha256)
        if path is None or not path.is_file():
            raise NotFound("artifact", sha256)
        return path


def load_bundle(root: Path | str, *, fanout_threads: int = 16) -> CompiledEndpoint:
    """The bundle's endpoint, built (models loaded from the bundle's files)."""
    source = BundleSource(Path(root))
    fanout = ThreadPoolExecutor(max_workers=fanout_threads, thread_name_prefix="fanout")
    return CompiledEndpoint(source.spec, source, fanout=fanout, base_dir=Path(root))


class BundleServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], endpoint: CompiledEndpoint) -> None:
        super().__init__(address, _Handler)
        self.endpoint = endpoint
        self.max_body = endpoint.spec.max_body_bytes or DEFAULT_MAX_BODY


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse their connections
    server: BundleServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, code: int, payload: Any) -> None:
        if isinstance(payload, BaseModel):
            body = payload.model_dump_json().encode()
        else:
            body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, code: int, exc: Exception, step: str | None = None) -> None:
        content: dict[str, Any] = {"detail": str(exc), "error": type(exc).__name__}
        if step is not None:
            content["step"] = step
        self._send(code, content)

    def do_GET(self) -> None:  # noqa: N802
        endpoint = self.server.endpoint
        path = self.path.split("?", 1)[0].rstrip("/")
        if path in ("/health", "/healthz"):
            self._send(200, {"status": "ok", "endpoint": endpoint.name})
        elif path == "/info":
            info = {"name": endpoint.name, "spec": endpoint.spec.model_dump(mode="json")}
            self._send(200, {**info, **endpoint.describe()})
        elif path == "/stats":
            stats = {"endpoint": endpoint.name, **endpoint.stats.snapshot()}
            stats["batching"] = {
                alias: m.batcher.stats.snapshot()
                for alias, m in endpoint.models.items()
                if m.batcher is not None
            }
            self._send(200, stats)
        else:
            self._error(404, NotFound("route", path))

    def do_POST(self) -> None:  # noqa: N802
        endpoint = self.server.endpoint
        path = self.path.split("?", 1)[0].rstrip("/")
        if path not in ("/predict", f"/api/v1/endpoints/{endpoint.name}/predict"):
            self._error(404, NotFound("route", path))
            return
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            self.close_connection = True
            self._error(411, BadInput("send a Content-Length header"))
            return
        if int(length) > self.server.max_body:
            self.close_connection = True  # the body is not read
            limit = self.server.max_body
            self._error(413, PayloadTooLarge(f"request body is larger than {limit} bytes"))
            return
        body = self.rfile.read(int(length))
        try:
            request = parse_body(body, self.headers.get("Content-Type", ""))
            result = self._run(request)
        except (BadInput, SpecError) as exc:
            self._error(422, exc, exc.step)
        except InvalidInput as exc:
            self._error(422, exc)
        except StepFailed as exc:
            self._error(500, exc, exc.step)
        except Exception as exc:  # the server keeps serving
            log.exception("predict failed")
            self._error(500, exc)
        else:
            self._send(200, result)

    def _run(self, request: PredictRequest) -> BaseModel:
        endpoint = self.server.endpoint
        endpoint.acquire()  # counts requests in flight: the batcher waits only while others are
        try:
            return endpoint.run(request)
        except InvalidInput:
            endpoint.stats.error("bad_input")
            raise
        except Exception:
            endpoint.stats.error("failed")
            raise
        finally:
            endpoint.release()


def serve(bundle: Path | str, host: str, port: int) -> None:
    endpoint = load_bundle(bundle)
    server = BundleServer((host, port), endpoint)
    models = ", ".join(f"{m.alias}={m.version.ref}" for m in endpoint.models.values())
    print(
        f"serving endpoint {endpoint.name} ({models}) on http://{host}:{server.server_port}",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        endpoint.retire()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="bundle", help="the bundle directory")
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "WARNING"))
    serve(args.bundle, args.host, args.port)


if __name__ == "__main__":
    main()
