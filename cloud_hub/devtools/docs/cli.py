"""docs/reference/cli.md from the Typer apps: `edgepilot` (cloud_hub.cli.main) and the agent's."""

from __future__ import annotations

import enum
import types
import typing
from pathlib import Path
from typing import Any

import typer

__all__ = ["render_cli"]


def _walk(cmd: Any, path: str, out: list[str]) -> None:
    help_text = (cmd.help or "").strip()
    if hasattr(cmd, "commands"):
        out.append(f"## `{path}`\n\n{help_text}\n" if help_text else f"## `{path}`\n")
        for name in sorted(cmd.commands):
            _walk(cmd.commands[name], f"{path} {name}", out)
        return
    out.append(f"### `{path}`\n")
    if help_text:
        out.append(help_text.replace("\b\n", "") + "\n")
    rows = []
    for p in cmd.params:
        if p.name in ("install_completion", "show_completion"):
            continue
        if getattr(p, "param_type_name", "") == "option":
            names = ", ".join(f"`{o}`" for o in p.opts + p.secondary_opts)
            kind = "option"
        else:
            names = f"`{(p.name or '').upper()}`"
            kind = "argument"
        default = "" if p.required or p.default in (None, ()) or callable(p.default) else p.default
        desc = " ".join(str(getattr(p, "help", "") or "").split()).replace("|", "\\|")
        rows.append(
            f"| {names} | {kind} | {_tname(p)} | {'yes' if p.required else ''} | "
            f"{'' if default == '' else f'`{default}`'} | {desc} |"
        )
    if rows:
        out.append("| name | kind | type | required | default | help |")
        out.append("|---|---|---|---|---|---|")
        out.extend(rows)
        out.append("")


_NAMES = {str: "text", int: "integer", float: "number", bool: "flag", Path: "path"}


def _type_of(annotation: Any) -> str:
    """How a parameter's annotation reads in the table: the choices of a Literal or an Enum,
    `integer`, `path`, ...; a list is repeatable."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Literal:
        return " / ".join(f"`{a}`" for a in args)
    if origin in (list, tuple) and args:
        return f"{_type_of(args[0])}, repeatable"
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _type_of(args[0])
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " / ".join(f"`{m.value}`" for m in annotation)
    return _NAMES.get(annotation, "")


def _tname(p: Any) -> str:
    descriptor = getattr(p, "type_descriptor", None)
    if descriptor is not None:
        return _type_of(descriptor.annotation)
    t = getattr(p, "type", None)  # click's parameter types (older Typer)
    return str(getattr(t, "name", "") or type(t).__name__.lower()) if t is not None else ""


def render_cli() -> str:
    from cloud_hub.cli.main import app as hub_app
    from edge_agent.cli import app as agent_app

    out = [
        "# Command line reference\n",
        "Generated from the Typer apps by `python -m cloud_hub.devtools.docs`: do not edit.\n",
    ]
    for name, app in (("edgepilot", hub_app), ("edgepilot-agent", agent_app)):
        _walk(typer.main.get_command(app), name, out)
    return "\n".join(out).rstrip() + "\n"
