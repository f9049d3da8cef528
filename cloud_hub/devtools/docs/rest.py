"""docs/reference/rest.md from the hub's OpenAPI document: one section per path and method."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

__all__ = ["openapi", "render_rest"]

#: what each role declaration means for the caller (see cloud_hub.api.auth)
ROLE_NOTES = {
    "public": "none (no token)",
    "viewer": "viewer token",
    "operator": "operator token",
    "admin": "admin token",
    "predict": "viewer token, or none for a `public` endpoint",
    "device_self": "viewer token, or the device itself (HTTP Basic)",
    "artifact": "operator token, or a device fetching its own desired artifact",
    "metrics": "viewer token, or none with `metrics_public`",
}


def openapi() -> dict[str, Any]:
    return _app_facts()[0]


def _api_routes(routes: Any, prefix: str) -> Any:
    """(full path, route) of every API route, through included routers (which this FastAPI
    keeps as they were included: the router and its include context, with the prefix)."""
    from fastapi.routing import APIRoute

    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, route
        elif hasattr(route, "original_router") and hasattr(route, "include_context"):
            inner = prefix + (route.include_context.prefix or "")
            yield from _api_routes(route.original_router.routes, inner)


def _app_facts() -> tuple[dict[str, Any], dict[tuple[str, str], tuple[str, str]]]:
    """The OpenAPI document, and (path, method) -> (the handler's dotted name, its role)."""
    from cloud_hub.api.app import create_app
    from cloud_hub.api.auth import ROLE_DEPENDENCIES
    from cloud_hub.core.settings import HubSettings
    from cloud_hub.hub import Hub

    roles = {fn: name for name, fn in ROLE_DEPENDENCIES.items()}
    with tempfile.TemporaryDirectory() as tmp:
        hub = Hub.open(HubSettings(data_dir=Path(tmp) / "hub", run_scheduler=False))
        try:
            app = create_app(hub, scheduler=False, fleet=False)
            routes: dict[tuple[str, str], tuple[str, str]] = {}
            for path, route in _api_routes(app.routes, ""):
                handler = f"{route.endpoint.__module__}.{route.endpoint.__name__}"
                declared = [
                    roles[d.dependency] for d in route.dependencies if d.dependency in roles
                ]
                for method in route.methods:
                    routes[(path, method.lower())] = (handler, ",".join(declared))
            return app.openapi(), routes
        finally:
            hub.close()


def _cell(text: object) -> str:
    return " ".join(str(text or "").split()).replace("|", "\\|")


def render_rest() -> str:
    doc, routes = _app_facts()
    out = [
        "# REST API reference\n",
        "Generated from the hub's OpenAPI document by `python -m cloud_hub.devtools.docs`: "
        "do not edit. The live document is served at `/openapi.json`.\n",
    ]
    for path in sorted(doc.get("paths", {})):
        for method, op in sorted(doc["paths"][path].items()):
            if not isinstance(op, dict):
                continue
            out.append(f"## `{method.upper()} {path}`\n")
            if op.get("summary"):
                out.append(f"**{_cell(op['summary'])}**\n")
            if op.get("description"):
                out.append(op["description"].strip() + "\n")
            handler, role = routes.get((path, method), ("", ""))
            if handler:
                out.append(f"Handler: `{handler}` · caller: {ROLE_NOTES.get(role, role)}\n")
            params = op.get("parameters", [])
            if params:
                out.append("| parameter | in | required | description |")
                out.append("|---|---|---|---|")
                for p in params:
                    out.append(
                        f"| `{p['name']}` | {p.get('in', '')} | "
                        f"{'yes' if p.get('required') else ''} | "
                        f"{_cell(p.get('description'))} |"
                    )
                out.append("")
            body = op.get("requestBody", {}).get("content", {})
            if body:
                out.append("Request body: " + ", ".join(f"`{c}`" for c in sorted(body)) + "\n")
            codes = sorted(op.get("responses", {}))
            if codes:
                out.append(
                    "Responses: "
                    + ", ".join(
                        f"`{c}` {_cell(op['responses'][c].get('description'))}" for c in codes
                    )
                    + "\n"
                )
    return "\n".join(out).rstrip() + "\n"
