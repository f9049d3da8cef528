"""`edgepilot ui`: a link to the hub's web dashboard that signs its user in.

It asks the hub for a fresh viewer token with an expiry (`POST /api/v1/tokens`, which needs an
admin token: --token, EDGEPILOT_TOKEN, or this machine's hub's admin token) and prints
`HUB/ui/#token=...`. The page takes the token out of the address as it opens and keeps it for
that browser tab only; the token itself works until it expires or is revoked.
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any

import typer

from cloud_hub.cli import render
from cloud_hub.cli.base import JsonOpt, TokenOpt, fail, state, user_errors

DEFAULT_HUB = "http://127.0.0.1:8000"  # `edgepilot hub serve`'s default address


def _hub_base(hub: str) -> str:
    import httpx

    try:
        url = httpx.URL(hub)
    except httpx.InvalidURL as exc:
        raise fail(f"--hub {hub!r}: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise fail(f"--hub {hub!r}: give the hub's address, e.g. {DEFAULT_HUB}")
    return str(url.copy_with(path="/", query=None, fragment=None)).rstrip("/")


def _mint(base: str, admin: str, name: str, lifetime_s: float) -> dict[str, Any]:
    import httpx

    body = {"name": name, "role": "viewer", "expires_in_s": lifetime_s}
    try:
        resp = httpx.post(
            f"{base}/api/v1/tokens",
            json=body,
            headers={"Authorization": f"Bearer {admin}"},
            timeout=15,
        )
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach the hub at {base}: {exc or type(exc).__name__}") from None
    if resp.status_code in (401, 403):
        raise fail(
            f"the hub at {base} refused the token ({resp.status_code}): making a sign-in link "
            "needs an admin token (--token or EDGEPILOT_TOKEN; on the hub machine its "
            "DATA_DIR/admin-token is used by default)"
        )
    if resp.status_code != 201:
        raise fail(f"POST {base}/api/v1/tokens: {resp.status_code} {resp.text[:200]}")
    made: dict[str, Any] = resp.json()
    return made


def ui(
    ctx: typer.Context,
    hub: Annotated[
        str, typer.Option(envvar="EDGEPILOT_HUB_URL", help="The hub's base URL.")
    ] = DEFAULT_HUB,
    expires: Annotated[
        str, typer.Option(help="How long the link's viewer token lives, e.g. 12h, 30m, 7d.")
    ] = "12h",
    open_browser: Annotated[
        bool, typer.Option("--open", help="Also open the link in this machine's browser.")
    ] = False,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Print a link to the hub's web dashboard that signs you in: a new viewer token that
    expires (--expires), minted with an admin token."""
    from cloud_hub.auth.tokens import parse_duration

    with user_errors():
        lifetime = parse_duration(expires)
    base = _hub_base(hub)
    admin = state(ctx).token(token)
    if admin is None:
        raise fail(
            "making a sign-in link needs an admin token: give --token or EDGEPILOT_TOKEN (on "
            "the hub machine, its DATA_DIR/admin-token is used by default)"
        )
    name = f"ui-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"
    made = _mint(base, admin, name, lifetime)
    link = f"{base}/ui/#token={made['token']}"
    expires_at = str(made.get("expires_at") or "")[:19].replace("T", " ")
    if json_out:
        render.print_json({"url": link, "token_name": made["name"], "expires_at": expires_at})
    else:
        render.err_console.print(
            f"Dashboard link (signs you in once; viewer token [bold]{made['name']}[/bold], "
            f"expires {expires_at} UTC; `edgepilot tokens revoke {made['name']}` ends it "
            "sooner). Anyone with the link can view the fleet until then:",
            highlight=False,
        )
        render.console.print(link, highlight=False, soft_wrap=True)
    if open_browser:
        import webbrowser

        if not webbrowser.open(link):
            render.err_console.print("no browser found here: open the link above yourself")
