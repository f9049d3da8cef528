"""A fake of the part of balena's API (v7, pine OData) that `edgepilot balena` drives through the
real balena-sdk: a real HTTP server on 127.0.0.1 in a thread, recording every request.

It keeps fleets (`application`), their environment variables (unique per fleet and name, as the
real API: a second POST answers 409 "Unique key constraint violated", which is how the SDK's
upsert finds out it must PATCH), device types, organizations, a host app with OS releases, and
answers `/download-config`. An unknown API key gets 401, as balena does. `hang = True` makes it
accept requests and never answer (until `stop()`), for timeouts.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

_STR = r"'((?:[^']|'')*)'"


def _odata_str(match: re.Match[str]) -> str:
    return match.group(1).replace("''", "'")


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    authorization: str | None

    @property
    def filter(self) -> str:
        return self.query.get("$filter", "")


@dataclass
class FakeBalena:
    api_keys: set[str] = field(default_factory=lambda: {"balena-test-key"})
    orgs: list[dict[str, Any]] = field(
        default_factory=lambda: [{"id": 7, "handle": "acme", "name": "Acme"}]
    )
    device_types: dict[str, int] = field(
        default_factory=lambda: {"raspberrypi5": 101, "jetson-orin-nano-devkit-nvme": 102}
    )
    apps: dict[int, dict[str, Any]] = field(default_factory=dict)
    env_vars: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    hang: bool = False
    refuse_env_var: str | None = None  # its POST answers refuse_status, quoting its body
    refuse_status: int = 400
    _next_id: int = 1000

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                split = urlsplit(self.path)
                req = Request(
                    method=self.command,
                    path=unquote(split.path),
                    query=dict(parse_qsl(split.query, keep_blank_values=True)),
                    body=json.loads(raw) if raw else None,
                    authorization=self.headers.get("Authorization"),
                )
                with fake._lock:
                    fake.requests.append(req)
                if fake.hang:
                    fake._release.wait(60)
                    return
                with fake._lock:
                    status, payload = fake._route(req)
                out = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                ctype = "text/plain" if isinstance(payload, bytes) else "application/json"
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    # -- the fixture's side -------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/"

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def add_app(self, name: str, device_type: str = "raspberrypi5", org: str = "acme") -> int:
        org_row = next(o for o in self.orgs if o["handle"] == org)
        return self._create_app(name, self.device_types[device_type], org_row["id"])["id"]

    def app_vars(self, app_id: int) -> dict[str, str]:
        return {v["name"]: v["value"] for v in self.env_vars if v["application"] == app_id}

    def api_requests(self, method: str | None = None, path: str | None = None) -> list[Request]:
        """The requests recorded with this method and this exact path (None: any)."""
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and (path is None or r.path == path)
        ]

    # -- the API ------------------------------------------------------------------------------
    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _create_app(self, name: str, device_type_id: int, org_id: int) -> dict[str, Any]:
        handle = next(o["handle"] for o in self.orgs if o["id"] == org_id)
        app_id = self._id()
        app: dict[str, Any] = {
            "id": app_id,
            "app_name": name,
            "slug": f"{handle}/{name}".lower(),
            "uuid": f"{self._next_id:032x}",
            "is_host": False,
            "is_for__device_type": {"__id": device_type_id},
            "organization": {"__id": org_id},
        }
        self.apps[app_id] = app
        return app

    def _authorised(self, req: Request) -> bool:
        return req.authorization in {f"Bearer {k}" for k in self.api_keys}

    def _route(self, req: Request) -> tuple[int, Any]:
        if req.path == "/ping":
            return 200, b"OK"
        if not self._authorised(req):
            return 401, b"Unauthorized"
        if req.path == "/actor/v1/whoami":
            return 200, {"id": 1, "actorType": "user", "actorTypeId": 1, "username": "op"}
        if req.path == "/download-config" and req.method == "POST":
            return self._config(req.body)
        match = re.fullmatch(r"/v7/(\w+)(?:\((.*)\))?", req.path)
        if match is None:
            return 404, b"Not Found"
        resource, key = match.group(1), match.group(2)
        handler = getattr(self, f"_{req.method.lower()}_{resource}", None)
        if handler is None:
            return 405, b"Method Not Allowed"
        result: tuple[int, Any] = handler(req, key)
        return result

    # application
    def _app_out(self, app: dict[str, Any], req: Request) -> dict[str, Any]:
        out = dict(app)
        if "is_for__device_type" in req.query.get("$expand", ""):
            dt_id = app["is_for__device_type"]["__id"]
            slug = next(s for s, i in self.device_types.items() if i == dt_id)
            out["is_for__device_type"] = [{"id": dt_id, "slug": slug}]
        return out

    def _get_application(self, req: Request, key: str | None) -> tuple[int, Any]:
        if key is not None:
            app = self.apps.get(int(key))
            return 200, {"d": [] if app is None else [self._app_out(app, req)]}
        flt = req.filter
        if "is_host eq true" in flt:
            return 200, {"d": self._host_apps(flt)}
        apps = list(self.apps.values())
        if m := re.search(rf"slug eq {_STR}", flt):
            apps = [a for a in apps if a["slug"] == _odata_str(m)]
        if m := re.search(rf"app_name eq {_STR}", flt):
            apps = [a for a in apps if a["app_name"] == _odata_str(m)]
        return 200, {"d": [self._app_out(a, req) for a in apps]}

    def _post_application(self, req: Request, key: str | None) -> tuple[int, Any]:
        body = req.body or {}
        name = body.get("app_name", "")
        if any(
            a["app_name"] == name and a["organization"]["__id"] == body.get("organization")
            for a in self.apps.values()
        ):
            return 409, b"Unique key constraint violated"
        return 201, self._create_app(name, body["is_for__device_type"], body["organization"])

    def _host_apps(self, flt: str) -> list[dict[str, Any]]:
        slugs = re.findall(_STR, flt.split("slug in", 1)[-1])
        return [
            {
                "is_for__device_type": [{"slug": slug}],
                "application_tag": [],
                "owns__release": [
                    {
                        "id": 1,
                        "known_issue_list": None,
                        "raw_version": version,
                        "variant": "",
                        "phase": "current",
                        "release_tag": [],
                    }
                    for version in ("6.0.13", "5.3.10")
                ],
            }
            for slug in slugs
            if slug in self.device_types
        ]

    # device_type
    def _get_device_type(self, req: Request, key: str | None) -> tuple[int, Any]:
        m = re.search(rf"is_referenced_by__alias eq {_STR}", req.filter)
        slug = _odata_str(m) if m else None
        if slug not in self.device_types:
            return 200, {"d": []}
        return 200, {
            "d": [{"id": self.device_types[slug], "slug": slug, "is_default_for__application": []}]
        }

    # organization
    def _get_organization(self, req: Request, key: str | None) -> tuple[int, Any]:
        if key is None:
            return 200, {"d": self.orgs}
        m = re.fullmatch(rf"handle={_STR}", key)
        if m is not None:
            return 200, {"d": [o for o in self.orgs if o["handle"] == _odata_str(m)]}
        return 200, {"d": [o for o in self.orgs if str(o["id"]) == key]}

    # application_environment_variable
    def _matching_vars(self, flt: str) -> list[dict[str, Any]]:
        found = self.env_vars
        if m := re.search(r"application eq (\d+)", flt):
            found = [v for v in found if v["application"] == int(m.group(1))]
        if m := re.search(rf"name eq {_STR}", flt):
            found = [v for v in found if v["name"] == _odata_str(m)]
        return found

    def _get_application_environment_variable(
        self, req: Request, key: str | None
    ) -> tuple[int, Any]:
        return 200, {"d": sorted(self._matching_vars(req.filter), key=lambda v: v["name"])}

    def _post_application_environment_variable(
        self, req: Request, key: str | None
    ) -> tuple[int, Any]:
        body = req.body or {}
        if body.get("name") == self.refuse_env_var:
            return self.refuse_status, b"Invalid value: " + json.dumps(body).encode()
        if body.get("application") not in self.apps:
            return 400, b"No such application"
        if any(
            v["application"] == body["application"] and v["name"] == body["name"]
            for v in self.env_vars
        ):
            return 409, b'"Unique key constraint violated"'
        row = {"id": self._id(), **body}
        self.env_vars.append(row)
        return 201, row

    def _patch_application_environment_variable(
        self, req: Request, key: str | None
    ) -> tuple[int, Any]:
        for var in self._matching_vars(req.filter):
            var.update(req.body or {})
        return 200, b"OK"

    # config.json
    def _config(self, body: dict[str, Any]) -> tuple[int, Any]:
        app = self.apps.get(body.get("appId", -1))
        if app is None:
            return 404, b"No such application"
        config: dict[str, Any] = {
            "applicationId": app["id"],
            "deviceType": body.get("deviceType") or "raspberrypi5",
            "apiEndpoint": "https://api.balena-cloud.com",
            "apiKey": "provisioning-key-secret",
            "userId": 1,
            "appUpdatePollInterval": 900000,
            "version": body.get("version"),
        }
        if body.get("network") == "wifi":
            config["wifiSsid"] = body.get("wifiSsid")
            config["wifiKey"] = body.get("wifiKey")
        return 200, config
