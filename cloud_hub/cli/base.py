"""What every `edgepilot` command shares: the per-invocation state (the hub, opened on first
use), `--json`, and turning a user's mistake into a message and exit code 2 (no traceback).

Its own module, so that the command modules import it directly (`cloud_hub.cli.main` imports
them to register their commands).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from cloud_hub.cli import render
from cloud_hub.core.errors import AlreadyExists, InvalidInput, NotFound, RegistryError
from cloud_hub.core.settings import HubSettings, resolve_data_dir
from cloud_hub.hub import Hub

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
TOKEN_ENV = "EDGEPILOT_TOKEN"
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar=TOKEN_ENV,
        show_envvar=True,
        help="API token for the hub (or a device's local API) (default: the hub machine's "
        "admin token in the data dir, when there is one)",
    ),
]


class State:
    def __init__(self, data_dir: Path | None) -> None:
        self.data_dir = data_dir
        self._hub: Hub | None = None

    def settings(self, **overrides: Any) -> HubSettings:
        return HubSettings(data_dir=resolve_data_dir(self.data_dir, os.environ), **overrides)

    def token(self, explicit: str | None) -> str | None:
        """The token an HTTP command sends: --token / EDGEPILOT_TOKEN, else the admin token
        this machine's hub keeps in its data dir (None when neither exists)."""
        if explicit:
            return explicit
        from cloud_hub.auth.tokens import read_token_file

        return read_token_file(self.settings().admin_token_path)

    @property
    def hub(self) -> Hub:
        if self._hub is None:
            self._hub = Hub.open(self.settings())
        return self._hub


def fail(message: str, code: int = 2) -> typer.Exit:
    render.err_console.print(f"[bold red]error:[/bold red] {message}", highlight=False)
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into a message and a non-zero exit code."""
    try:
        yield
    except (NotFound, AlreadyExists, InvalidInput, RegistryError) as exc:
        raise fail(str(exc)) from None
    except ValidationError as exc:
        msgs = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'input'}: "
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
        raise fail(msgs) from None


def state(ctx: typer.Context) -> State:
    """The invocation's State (made by the main callback)."""
    found = ctx.obj
    assert isinstance(found, State)
    return found
