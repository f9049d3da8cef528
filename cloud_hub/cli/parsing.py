"""Option values the commands share that are parsed by hand: a broker address, serving
parameters as KEY=VALUE pairs."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from cloud_hub.core.errors import InvalidInput
from edge_agent.core.wire import ServingParams


def parse_address(text: str, option: str) -> tuple[str, int]:
    """HOST:PORT (the port 1..65535)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInput(f"{option} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:1883")
    return host, int(port)


def parse_params(pairs: list[str], base: dict[str, Any] | None = None) -> ServingParams:
    """KEY=VALUE pairs over `base` as ServingParams. A value is read as JSON when it parses
    (0.8, true, null: null unsets the key), else as text (`default_label=unknown`)."""
    merged: dict[str, Any] = dict(base or {})
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidInput(f"--set {pair!r}: expected KEY=VALUE, e.g. min_score=0.8")
        if key not in ServingParams.model_fields:
            raise InvalidInput(
                f"params.{key}: unknown parameter; known: {', '.join(ServingParams.model_fields)}"
            )
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    try:
        return ServingParams.model_validate(merged)
    except ValidationError as exc:
        raise InvalidInput(
            "; ".join(
                f"params.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
        ) from None
