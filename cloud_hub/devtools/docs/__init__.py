"""Generators for the reference pages of the docs site (docs/reference/), drawn from the code:
the CLIs (Typer), the REST API (OpenAPI), the endpoint spec (its JSON schema) and the wire
contract. Never edit those pages by hand; `python -m cloud_hub.devtools.docs` rewrites them and a
test fails when a committed page differs from what the code generates."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cloud_hub.devtools.docs.cli import render_cli
from cloud_hub.devtools.docs.rest import render_rest
from cloud_hub.devtools.docs.spec import render_spec_json, render_spec_md
from cloud_hub.devtools.docs.where import render_where
from cloud_hub.devtools.wire_reference import render as render_wire

__all__ = ["PAGES", "write_all"]

# page (relative to docs/) -> its generator
PAGES: dict[str, Callable[[], str]] = {
    "reference/cli.md": render_cli,
    "reference/rest.md": render_rest,
    "reference/endpoint-spec.md": render_spec_md,
    "reference/endpoint-spec.schema.json": render_spec_json,
    "reference/where-things-live.md": render_where,
    "wire.md": render_wire,
}


def write_all(docs: Path) -> list[Path]:
    """Rewrite every generated page under `docs`; return the paths written."""
    written = []
    for rel, render in sorted(PAGES.items()):
        path = docs / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render())
        written.append(path)
    return written
