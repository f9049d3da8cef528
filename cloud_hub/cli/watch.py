"""`edgepilot watch`: the fleet live in the terminal, from the hub's REST API and event stream.

It needs only the hub's URL and a viewer token, so it runs on any machine that reaches the hub.
Before the screen opens it reads /overview once: a wrong URL, a refused token or a bad
--filter is a message and exit code 2, not an empty screen. Afterwards the hub may go away: the
view keeps the last data, marked stale, and reconnects by itself.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cloud_hub.cli.base import TokenOpt, fail, state

DEFAULT_HUB = "http://127.0.0.1:8000"  # `edgepilot hub serve`'s default address


def watch(
    ctx: typer.Context,
    hub: Annotated[
        str, typer.Option("--hub", envvar="EDGEPILOT_HUB_URL", help="The hub's base URL.")
    ] = DEFAULT_HUB,
    token: TokenOpt = None,
    filter_text: Annotated[
        str,
        typer.Option(
            "--filter",
            help="Show only these devices: status:offline, tag:cam, group:lab, model:NAME, "
            "id:PART or text in the id (terms combine; a,b is either).",
        ),
    ] = "",
    sort: Annotated[str, typer.Option(help="The column to sort by (s cycles it).")] = "id",
) -> None:
    """A full-screen live view of the fleet: devices (status, model, CPU, latency, outbox),
    deployments with per-device progress, and alerts. Enter opens a device (sparklines, its
    deployments, logs and alerts); / filters; s sorts; q quits."""
    import httpx

    from cloud_hub.watch.feed import Feed, describe_error
    from cloud_hub.watch.state import SORT_KEYS, FilterError, FleetState, parse_filter

    try:
        parse_filter(filter_text)
    except FilterError as exc:
        raise fail(f"--filter: {exc}") from None
    if sort not in SORT_KEYS:
        raise fail(f"--sort {sort!r}: one of {', '.join(SORT_KEYS)}")
    base = hub.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise fail(f"--hub {hub!r}: give the hub's URL, e.g. {DEFAULT_HUB}")
    secret = state(ctx).token(token)
    if not secret:
        raise fail("no token: give one with the viewer role (--token or EDGEPILOT_TOKEN)")

    from cloud_hub.stream.client import HubRefused, fetch_overview

    try:
        overview = fetch_overview(base, secret)
    except HubRefused as exc:
        code = exc.status
        if code in (401, 403):
            raise fail(
                f"the hub at {base} refused the token ({code}): give one with the viewer role "
                "or higher (--token or EDGEPILOT_TOKEN)"
            ) from None
        raise fail(f"the hub at {base} answered GET /api/v1/overview with {exc}") from None
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach the hub at {base}: {describe_error(exc)}") from None

    from cloud_hub.watch.app import WatchApp

    fleet = FleetState()
    fleet.load_overview(overview)
    WatchApp(Feed(base, secret, fleet), filter_text=filter_text, sort=sort).run()
