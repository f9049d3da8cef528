"""docs/reference/endpoint-spec.md (a table per step kind) and endpoint-spec.schema.json, from
`cloud_hub.serving.engine.spec.endpoint_spec_schema()`."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["render_spec_json", "render_spec_md"]


def _schema() -> dict[str, Any]:
    from cloud_hub.serving.engine.spec import endpoint_spec_schema
    from cloud_hub.serving.steps import BUILTIN_KINDS

    return endpoint_spec_schema(BUILTIN_KINDS)


def render_spec_json() -> str:
    return json.dumps(_schema(), indent=2, sort_keys=True) + "\n"


def _type(s: dict[str, Any]) -> str:
    if "$ref" in s:
        return s["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in s:
        return " or ".join(_type(x) for x in s["anyOf"])
    if "enum" in s:
        return " / ".join(json.dumps(v) for v in s["enum"])
    if "const" in s:
        return json.dumps(s["const"])
    if s.get("type") == "array":
        return f"list of {_type(s.get('items', {}))}"
    return str(s.get("type", "any"))


def _table(name: str, model: dict[str, Any], level: str) -> list[str]:
    out = [f"{level} `{name}`\n"]
    if model.get("description"):
        out.append(" ".join(model["description"].split()) + "\n")
    props = model.get("properties", {})
    if props:
        req = set(model.get("required", []))
        out.append("| field | type | required | default | description |")
        out.append("|---|---|---|---|---|")
        for f in sorted(props):
            p = props[f]
            d = f"`{json.dumps(p['default'])}`" if "default" in p else ""
            desc = " ".join(str(p.get("description", "")).split()).replace("|", "\\|")
            t = _type(p).replace("|", "\\|")
            out.append(f"| `{f}` | {t} | {'yes' if f in req else ''} | {d} | {desc} |")
        out.append("")
    return out


def render_spec_md() -> str:
    schema = _schema()
    defs = schema.get("$defs", {})
    out = [
        "# Endpoint spec reference\n",
        "Generated from `cloud_hub.serving.engine.spec.endpoint_spec_schema()` by "
        "`python -m cloud_hub.devtools.docs`: do not edit. The raw JSON schema is "
        "[endpoint-spec.schema.json](endpoint-spec.schema.json); the hub serves it at "
        "`GET /api/v1/endpoints/schema`.\n",
    ]
    out += _table(schema.get("title", "EndpointSpec"), schema, "##")
    out.append("## Models\n")
    for name in sorted(defs):
        out += _table(name, defs[name], "###")
    return "\n".join(out).rstrip() + "\n"
