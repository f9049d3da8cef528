"""docs/reference/rest.md from the hub's OpenAPI document: one section per path and method."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

__all__ = ["openapi", "render_rest"]


def openapi() -> dict[str, Any]:
    from cloud_hub.api.app import create_app
    from cloud_hub.core.settings import HubSettings
    from cloud_hub.hub import Hub

    with tempfile.TemporaryDirectory() as tmp:
        hub = Hub.open(HubSettings(data_dir=Path(tmp) / "hub", run_scheduler=False))
        try:
            return create_app(hub, scheduler=False, fleet=False).openapi()
        finally:
            hub.close()


def _cell(text: object) -> str:
    return " ".join(str(text or "").split()).replace("|", "\\|")


def render_rest() -> str:
    doc = openapi()
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
            if op.get("tags"):
                out.append("Tags: " + ", ".join(f"`{t}`" for t in op["tags"]) + "\n")
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
