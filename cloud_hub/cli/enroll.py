"""`edgepilot fleets …`, `edgepilot enroll-tokens …` and `edgepilot devices revoke`: zero-touch
enrollment, on this machine's hub database."""

from __future__ import annotations

from typing import Annotated

import typer

from cloud_hub.cli import render
from cloud_hub.cli.base import JsonOpt, fail, state, user_errors
from cloud_hub.fleet.broker_reload import ReloadOutcome

fleets_app = typer.Typer(
    help="Fleets: what devices join when they enroll themselves on first boot.",
    no_args_is_help=True,
)
enroll_tokens_app = typer.Typer(
    help="Fleet enrollment tokens: what a flashed image or a balena fleet enrolls with.",
    no_args_is_help=True,
)


def print_reload(outcome: ReloadOutcome | None) -> None:
    """What became of the broker reload a change of accounts asked for."""
    if outcome is None:
        return
    if outcome.done:
        render.err_console.print(f"broker reloaded ({outcome.how})", highlight=False)
    else:
        render.err_console.print(
            f"[yellow]broker not reloaded:[/yellow] {outcome.how}", highlight=False
        )


@fleets_app.command("create")
def fleets_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The fleet's name, e.g. shop-floor.")],
    group: Annotated[str | None, typer.Option(help="The group its devices join.")] = None,
    tag: Annotated[
        list[str] | None, typer.Option(help="A tag its devices get; repeatable.")
    ] = None,
    device_prefix: Annotated[
        str | None, typer.Option(help="Device ids are PREFIX-xxxxxxxx (default: the name).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a fleet."""
    from cloud_hub.fleet.enroll_store import FleetCreate

    with user_errors():
        fleet = state(ctx).hub.enrollment.create_fleet(
            FleetCreate(name=name, group=group, tags=tag or [], device_prefix=device_prefix)
        )
    if json_out:
        render.print_json(fleet)
        return
    render.console.print(
        f"fleet [bold]{fleet.name}[/bold]: devices get ids {fleet.device_prefix}-…, group "
        f"{fleet.group or '-'}, tags {', '.join(fleet.tags) or '-'}",
        highlight=False,
    )


@fleets_app.command("list")
def fleets_list(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """The fleets and how many devices each holds."""
    fleets = state(ctx).hub.enrollment.list_fleets()
    if json_out:
        render.print_json(fleets)
        return
    render.console.print(render.fleets_table(fleets))


@enroll_tokens_app.command("create")
def enroll_tokens_create(
    ctx: typer.Context,
    fleet: Annotated[str, typer.Option(help="The fleet it admits devices to.")],
    expires: Annotated[str, typer.Option(help="Lifetime: 90m, 12h, 7d, 2w.")] = "7d",
    max_uses: Annotated[
        int | None, typer.Option(min=1, help="Devices it may enroll (default: unlimited).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="A name (default: FLEET-N).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create an enrollment token and print its secret: shown only this once."""
    from cloud_hub.auth.tokens import parse_duration
    from cloud_hub.fleet.enroll_store import EnrollTokenCreate

    with user_errors():
        created = state(ctx).hub.enrollment.create_token(
            EnrollTokenCreate(
                fleet=fleet, expires_s=parse_duration(expires), max_uses=max_uses, name=name
            )
        )
    if json_out:
        render.print_json(created)
        return
    render.err_console.print(
        f"enrollment token [bold]{created.name}[/bold] (id {created.id}) for fleet "
        f"{created.fleet}, {render.token_uses(created)} uses, "
        f"expires {render.when(created.expires_at)} UTC: "
        "keep it now, it is not shown again",
        highlight=False,
    )
    render.console.print(created.token, highlight=False, soft_wrap=True)


@enroll_tokens_app.command("list")
def enroll_tokens_list(
    ctx: typer.Context,
    fleet: Annotated[str | None, typer.Option(help="Only this fleet's.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """The tokens (never their secrets): state, uses and expiry."""
    with user_errors():
        tokens = state(ctx).hub.enrollment.list_tokens(fleet=fleet)
    if json_out:
        render.print_json(tokens)
        return
    render.console.print(render.enroll_tokens_table(tokens))


@enroll_tokens_app.command("revoke")
def enroll_tokens_revoke(
    ctx: typer.Context,
    token_id: Annotated[int, typer.Argument(metavar="ID", help="The token's id (see list).")],
    json_out: JsonOpt = False,
) -> None:
    """Revoke a token: no new device enrolls with it; those it enrolled keep their identity."""
    with user_errors():
        revoked = state(ctx).hub.enrollment.revoke_token(token_id)
    if json_out:
        render.print_json(revoked)
        return
    render.console.print(f"revoked enrollment token {revoked.id} ({revoked.name})")


def devices_revoke(
    ctx: typer.Context,
    device_id: Annotated[str, typer.Argument(metavar="ID")],
    json_out: JsonOpt = False,
) -> None:
    """Revoke a device: its broker account goes (the broker drops it once reloaded) and it
    cannot enroll again. Its stored logs and telemetry are kept."""
    hub = state(ctx).hub
    with user_errors():
        device = hub.enrollment.revoke_device(device_id)
    outcome = hub.fleet.devices.last_reload
    if json_out:
        render.print_json(device)
    else:
        render.console.print(f"revoked device {device.id} at {render.when(device.revoked_at)} UTC")
    print_reload(outcome)
    if outcome is not None and not outcome.done:
        raise fail("the device keeps its connection until the broker re-reads its files", 1)
