"""The names people give things (projects, models, endpoints, devices, tokens, fleets): one rule."""

from __future__ import annotations

import re

from cloud_hub.core.errors import InvalidInput

__all__ = ["NAME_PATTERN", "NAME_RE", "check_name"]

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9._-]{0,63}$"
NAME_RE = re.compile(NAME_PATTERN)


def check_name(kind: str, name: str) -> None:
    """InvalidInput (naming `kind`) unless `name` follows NAME_PATTERN."""
    if not NAME_RE.match(name):
        raise InvalidInput(
            f"{kind} name {name!r} is invalid: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter"
        )
