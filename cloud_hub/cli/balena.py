"""`edgepilot balena setup` and `edgepilot balena config`: a balena fleet whose devices enroll
themselves at this hub (the work is in cloud_hub.provisioning.balena)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from cloud_hub.cli import render
from cloud_hub.cli.base import JsonOpt, fail, state, user_errors

balena_app = typer.Typer(
    help="balena fleets whose devices enroll themselves at this hub on first start.",
    no_args_is_help=True,
)

API_KEY_ENV = "BALENA_API_KEY"

TokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--balena-token-file",
        help=f"A file holding the balena API key (default: ${API_KEY_ENV}).",
    ),
]
ApiOpt = Annotated[
    str,
    typer.Option("--balena-api", help="balena's API address (openBalena: your own)."),
]
TimeoutOpt = Annotated[
    float,
    typer.Option("--balena-timeout", min=0.1, help="Seconds to wait for each balena API call."),
]
BalenaFleetOpt = Annotated[
    str | None,
    typer.Option(
        "--balena-fleet",
        help="The balena fleet: its name, or ORG/NAME (its slug) (default: --fleet).",
    ),
]


def _api_key(token_file: Path | None) -> str:
    if token_file is not None:
        try:
            key = token_file.read_text().strip()
        except OSError as exc:
            raise fail(f"cannot read --balena-token-file {token_file}: {exc.strerror}") from None
        if not key:
            raise fail(f"--balena-token-file {token_file} is empty")
        return key
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise fail(
            f"no balena API key: give --balena-token-file FILE or set {API_KEY_ENV} "
            "(balena's dashboard, Preferences → Access tokens)"
        )
    return key


def _client(token_file: Path | None, api: str, timeout_s: float) -> Any:
    from cloud_hub.provisioning.balena import BalenaClient

    key = _api_key(token_file)
    with user_errors():
        return BalenaClient(key, api_url=api, timeout_s=timeout_s)


@balena_app.command("setup")
def balena_setup(
    ctx: typer.Context,
    fleet: Annotated[str, typer.Option(help="The EdgePilot fleet its devices join (made if new).")],
    hub_url: Annotated[
        str,
        typer.Option(help="The hub's address as devices reach it, e.g. http://hub.lan:8000."),
    ],
    balena_fleet: BalenaFleetOpt = None,
    device_type: Annotated[
        str, typer.Option(help="balena device type of a new balena fleet.")
    ] = "raspberrypi5",
    org: Annotated[
        str | None,
        typer.Option(help="balena organization of a new fleet (default: the key's only one)."),
    ] = None,
    expires: Annotated[
        str, typer.Option(help="The enrollment token's lifetime: 90m, 12h, 30d, 2w.")
    ] = "365d",
    max_uses: Annotated[
        int | None, typer.Option(min=1, help="Devices the token may enroll (default: unlimited).")
    ] = None,
    token_file: TokenFileOpt = None,
    balena_api: ApiOpt = "https://api.balena-cloud.com/",
    timeout_s: TimeoutOpt = 30.0,
    json_out: JsonOpt = False,
) -> None:
    """Find or create the balena fleet, make an enrollment token for FLEET and set the balena
    fleet's variables (hub, token, data dir) so its devices enroll themselves. Run it again to
    replace the token: the one it made before is revoked."""
    from cloud_hub.auth.tokens import parse_duration
    from cloud_hub.provisioning.balena import setup

    with user_errors():
        expires_s = parse_duration(expires)
    client = _client(token_file, balena_api, timeout_s)
    with user_errors():
        result = setup(
            client,
            state(ctx).hub.enrollment,
            fleet=fleet,
            balena_fleet=balena_fleet or fleet,
            device_type=device_type,
            org=org,
            hub_url=hub_url,
            expires_s=expires_s,
            max_uses=max_uses,
        )
    if json_out:
        render.print_json(result)
        return
    render.console.print(render.balena_setup_table(result))


@balena_app.command("config")
def balena_config(
    fleet: Annotated[str, typer.Option(help="The fleet (as given to `balena setup`).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write config.json.")],
    balena_fleet: BalenaFleetOpt = None,
    device_type: Annotated[
        str | None, typer.Option(help="balena device type (default: the fleet's).")
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="balenaOS version of the image (default: recommended).")
    ] = None,
    network: Annotated[
        Literal["ethernet", "wifi"] | None,
        typer.Option(help="ethernet or wifi (default: wifi with --wifi-ssid, else ethernet)."),
    ] = None,
    wifi_ssid: Annotated[str | None, typer.Option(help="The Wi-Fi network's name.")] = None,
    wifi_psk_file: Annotated[
        Path | None, typer.Option(help="A file holding the Wi-Fi passphrase.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite OUTPUT.")] = False,
    token_file: TokenFileOpt = None,
    balena_api: ApiOpt = "https://api.balena-cloud.com/",
    timeout_s: TimeoutOpt = 30.0,
) -> None:
    """Write the config.json for `balena os configure IMAGE --config config.json` (it holds a
    provisioning key: written 0600)."""
    from cloud_hub.provisioning.balena import ENV_TOKEN, BalenaError
    from edge_agent.core.fs import write_atomic

    if output.exists() and not force:
        raise fail(f"{output} exists: give --force to overwrite it")
    net = network or ("wifi" if wifi_ssid else "ethernet")
    options: dict[str, Any] = {"network": net}
    if net == "wifi":
        if not wifi_ssid or wifi_psk_file is None:
            raise fail("--network wifi needs --wifi-ssid and --wifi-psk-file")
        try:
            psk = wifi_psk_file.read_text().strip()
        except OSError as exc:
            raise fail(f"cannot read --wifi-psk-file {wifi_psk_file}: {exc.strerror}") from None
        if not (8 <= len(psk) <= 63 or re.fullmatch(r"[0-9A-Fa-f]{64}", psk)):
            raise fail(
                f"the passphrase in {wifi_psk_file} is not 8 to 63 characters (or 64 hex digits)"
            )
        options.update(wifiSsid=wifi_ssid, wifiKey=psk)
    elif wifi_ssid or wifi_psk_file:
        raise fail("--wifi-ssid and --wifi-psk-file need --network wifi")

    client = _client(token_file, balena_api, timeout_s)
    name = balena_fleet or fleet
    with user_errors():
        client.whoami()
        app = client.find_fleet(name)
        if app is None:
            raise BalenaError(f"balena fleet {name!r} not found: run `edgepilot balena setup`")
        app_id = int(app["id"])
        slug = device_type or client.fleet_device_type(app)
        options["deviceType"] = slug
        options["version"] = version or client.recommended_os(slug)
        config = client.os_config(app_id, options)
        if ENV_TOKEN not in client.env_vars(app_id):
            render.err_console.print(
                f"[yellow]warning:[/yellow] balena fleet {name} has no {ENV_TOKEN}: its devices "
                f"will not enroll until `edgepilot balena setup --fleet {fleet}` has run",
                highlight=False,
            )
    write_atomic(output, json.dumps(config, indent=2) + "\n", mode=0o600)
    render.err_console.print(
        f"wrote {output} (0600: it holds the fleet's provisioning key) for {slug}, balenaOS "
        f"{options['version']}, {net}: `balena os configure IMAGE --config {output}`",
        highlight=False,
    )
