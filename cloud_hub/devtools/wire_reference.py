"""docs/wire.md, generated from the wire contract (edge_agent/core/wire.py): every MQTT topic of the
fleet, who sends it, whether it is retained, and each payload's fields with their types and
descriptions, from the pydantic models themselves; then the hub's live stream (its events, from
cloud_hub/stream/events.py). Never edited by hand:

    .venv/bin/python -m cloud_hub.devtools.wire_reference > docs/wire.md

A test fails when the committed page and the code disagree.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from cloud_hub.stream.events import EVENT_PAYLOADS, FleetOverview
from edge_agent.core.wire import (
    DEFAULT_ROOT,
    ENROLL_PATH,
    TOPIC_SPECS,
    WIRE_VERSION,
    EnrollRequest,
    EnrollResponse,
)

__all__ = ["render"]

_HEADER = f"""# The wire contract

Generated from `edge_agent/core/wire.py` by
`python -m cloud_hub.devtools.wire_reference`: do not edit.

Topic root: `{DEFAULT_ROOT}` by default (the hub's `topic_root`). Every payload is a JSON document
with `"v": {WIRE_VERSION}`, except model chunks. A device may publish only its own agent → hub
topics and read only its own hub → device ones (the broker's ACL); a viewer account
(`edgepilot hub broker-config --viewer NAME`) reads `status`, `report`, `logs`, `telemetry` and
`{DEFAULT_ROOT}/alerts` and publishes nothing, so with it
`mosquitto_sub -v -t '{DEFAULT_ROOT}/dev/+/telemetry'` shows the fleet's telemetry as plain JSON.
`edgepilot mqtt tail` decodes all of it.
"""


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    if "const" in schema:
        return repr(schema["const"])
    if "enum" in schema:
        return " | ".join(repr(v) for v in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {_type(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema:
        extra = schema["additionalProperties"]
        return f"map of {_type(extra) if isinstance(extra, dict) else 'any'}"
    return str(kind)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _fields(schema: dict[str, Any]) -> list[str]:
    required = set(schema.get("required", []))
    rows = ["| field | type | required | description |", "|---|---|---|---|"]
    for name, prop in schema.get("properties", {}).items():
        rows.append(
            f"| `{name}` | {_cell(_type(prop))} | {'yes' if name in required else ''} | "
            f"{_cell(str(prop.get('description', '')))} |"
        )
    return rows


def _model(model: type[BaseModel], level: str, seen: set[str]) -> list[str]:
    schema = model.model_json_schema()
    out = [f"{level} `{model.__name__}`", ""]
    doc = (model.__doc__ or "").strip()
    if doc and not doc.startswith(("A base class", "Usage docs")):
        out += [" ".join(doc.split()), ""]
    out += [*_fields(schema), ""]
    for name, sub in schema.get("$defs", {}).items():
        if name in seen:
            continue
        seen.add(name)
        out += [f"{level}# `{name}` (inside {model.__name__})", "", *_fields(sub), ""]
    return out


def render() -> str:
    lines = [_HEADER, "## Topics", ""]
    lines += ["| topic | from → to | retained | payload | what |", "|---|---|---|---|---|"]
    for spec in TOPIC_SPECS:
        payload = spec.message.__name__ if spec.message is not None else "binary chunk"
        lines.append(
            f"| `{DEFAULT_ROOT}/dev/{{id}}/{spec.kind}` | {spec.sender} → {spec.receiver} | "
            f"{'yes' if spec.retained else 'no'} | {payload} | {_cell(spec.summary)} |"
        )
    lines += ["", "## Payloads", ""]
    seen: set[str] = set()
    for spec in TOPIC_SPECS:
        if spec.message is not None:
            lines += _model(spec.message, "###", seen)
    lines += [
        "## Enrollment (REST)",
        "",
        f"`POST {ENROLL_PATH}`: a device with a fleet token asks for its identity; the body is "
        "signed with the device's own ed25519 key.",
        "",
        *_model(EnrollRequest, "###", seen),
        *_model(EnrollResponse, "###", seen),
    ]
    lines += [
        "## The live stream (REST, server-sent events)",
        "",
        "`GET /api/v1/overview` (a viewer token) is where a live view starts; "
        "`GET /api/v1/stream` keeps it current. Each event has `id: BOOT-N` (resume with "
        "`Last-Event-ID`), `event: KIND` and one line of JSON `data`; `: ping` every 15 s.",
        "",
        "| event | data | sent when |",
        "|---|---|---|",
    ]
    for kind, (model, when) in EVENT_PAYLOADS.items():
        lines.append(f"| `{kind}` | {model.__name__} | {_cell(when)} |")
    lines += ["", *_model(FleetOverview, "###", seen)]
    shown = {"FleetOverview", *(m.__name__ for m in (EnrollRequest, EnrollResponse))}
    for model, _ in EVENT_PAYLOADS.values():
        if model.__name__ not in seen and model.__name__ not in shown:
            seen.add(model.__name__)
            lines += _model(model, "###", seen)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
