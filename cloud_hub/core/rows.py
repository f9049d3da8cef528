"""One row -> model mapper for the stores: sqlite3.Row or dict in, pydantic model out."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


def row_dict(
    row: sqlite3.Row | Mapping[str, Any], json_fields: Iterable[str] = ()
) -> dict[str, Any]:
    """The row as a dict, with each of `json_fields` decoded from JSON (NULL stays None)."""
    data = dict(row)
    for field in json_fields:
        text = data.get(field)
        if isinstance(text, str | bytes):
            data[field] = json.loads(text)
    return data


def model_from_row(
    model: type[M],
    row: sqlite3.Row | Mapping[str, Any],
    json_fields: Iterable[str] = (),
    **overrides: Any,
) -> M:
    """`model` from the row columns it declares, JSON decoded, then overrides."""
    data = row_dict(row, json_fields)
    data.update(overrides)
    fields = model.model_fields
    return model.model_validate({k: v for k, v in data.items() if k in fields})
