"""The consoles, JSON output, the kinds of column, and the formatters every table uses."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Column

console = Console()
err_console = Console(stderr=True)


def print_json(value: BaseModel | Sequence[BaseModel] | dict[str, Any]) -> None:
    if isinstance(value, BaseModel):
        data: Any = value.model_dump(mode="json")
    elif isinstance(value, dict):
        data = value
    else:
        data = [v.model_dump(mode="json") for v in value]
    print(json.dumps(data, indent=2))


# -- columns ----------------------------------------------------------------------------------
def ident(header: str, **options: Any) -> Column:
    """A column of identifiers (ids, names, versions, artifacts, refs, states): never wrapped and
    never shrunk while another column can give way. Only when the identifiers alone are wider
    than the terminal is one cut, and then visibly, with an ellipsis (rich crops a no-wrap cell
    silently when told to fold it)."""
    return Column(header, no_wrap=True, overflow="ellipsis", **options)


def num(header: str, **options: Any) -> Column:
    """A column of figures, right-aligned (its header may wrap)."""
    return Column(header, justify="right", overflow="fold", **options)


def text(header: str, **options: Any) -> Column:
    """A column of free text: it wraps (folding a word too long for it, never cutting it with an
    ellipsis), and shrinks first when the table is too wide."""
    return Column(header, overflow="fold", **options)


# -- formatters --------------------------------------------------------------------------------
def pct(value: Any) -> str:
    """A fraction as a percentage with one decimal ('-' when absent)."""
    return "-" if value is None else f"{100 * float(value):.1f}%"


def ms(value: Any, digits: int = 3) -> str:
    """Milliseconds with `digits` decimals ('-' when absent)."""
    return "-" if value is None else f"{float(value):.{digits}f}"


def ms_of(values: Mapping[str, float], key: str, digits: int = 3) -> str:
    """`ms` of one entry of a dict of percentiles ('-' when the key is missing)."""
    return ms(values.get(key), digits)


def size(n: int) -> str:
    return f"{n / 1024:.0f}K" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f}M"


def when(value: object) -> str:
    """A timestamp to the second, with a space for the T ('-' when absent)."""
    return "-" if value is None else str(value)[:19].replace("T", " ")


STATE_STYLE = {
    "active": "green",
    "failed": "red",
    "rolled_back": "red",
    "halted": "red",
    "completed": "green",
    "waiting": "dim",
    "superseded": "dim",
}


def styled(value: str) -> str:
    """A state coloured by what it means (green: good, red: bad, dim: idle)."""
    style = STATE_STYLE.get(value)
    return f"[{style}]{value}[/{style}]" if style else value
