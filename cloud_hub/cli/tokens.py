"""`edgepilot tokens create|list|revoke`: the hub's API tokens, on this machine's database."""

from __future__ import annotations

from typing import Annotated

import typer

from cloud_hub.auth.roles import Role
from cloud_hub.cli import render
from cloud_hub.cli.base import JsonOpt, state, user_errors

tokens_app = typer.Typer(
    help="API tokens: who may call the hub's REST API, with which role.", no_args_is_help=True
)


@tokens_app.command("create")
def tokens_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Who or what will use it, e.g. ci-deployer.")],
    role: Annotated[
        Role, typer.Option(help="viewer: read; operator: also deploy, train, serve; admin: all.")
    ] = Role.viewer,
    expires: Annotated[
        str | None, typer.Option(help="Lifetime, e.g. 90d, 12h, 2w (default: until revoked).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a token and print its secret: it is shown only this once (the hub keeps a hash)."""
    from cloud_hub.auth.tokens import TokenCreate, parse_duration

    with user_errors():
        lifetime = None if expires is None else parse_duration(expires)
        created = state(ctx).hub.tokens.create(
            TokenCreate(name=name, role=role, expires_in_s=lifetime)
        )
    if json_out:
        render.print_json(created)
        return
    render.err_console.print(
        f"token [bold]{created.name}[/bold] ({created.role.value}"
        + (f", expires {render.when(created.expires_at)} UTC" if created.expires_at else "")
        + "): keep it now, it is not shown again",
        highlight=False,
    )
    render.console.print(created.token, highlight=False, soft_wrap=True)


@tokens_app.command("list")
def tokens_list(
    ctx: typer.Context,
    revoked: Annotated[bool, typer.Option("--revoked", help="Include revoked tokens.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """The tokens (never their secrets): name, role, prefix, expiry and last use."""
    tokens = state(ctx).hub.tokens.list(include_revoked=revoked)
    if json_out:
        render.print_json(tokens)
        return
    render.console.print(render.api_tokens_table(tokens))


@tokens_app.command("revoke")
def tokens_revoke(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The token's name.")],
    json_out: JsonOpt = False,
) -> None:
    """Revoke a token: the hub refuses it from now on (a running hub within token_cache_s)."""
    with user_errors():
        revoked = state(ctx).hub.tokens.revoke(name)
    if json_out:
        render.print_json(revoked)
        return
    render.console.print(f"revoked token {revoked.name} ({revoked.role.value})")
