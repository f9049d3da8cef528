"""`edgepilot flash IMAGE`: a Raspberry Pi OS (or Jetson) image whose devices install the agent
and enroll themselves at the hub on first boot. No root, mount or loop device: the boot
partition is found from the MBR or GPT and written with mtools (cloud_hub.provisioning.flashing)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from cloud_hub.cli import render
from cloud_hub.cli.base import JsonOpt, fail, state, user_errors
from cloud_hub.core.errors import InvalidInput
from cloud_hub.fleet.enroll_store import ENROLL_TOKEN_PREFIX, NewEnrollToken

_SHOWN = len(ENROLL_TOKEN_PREFIX) + 7  # as `enroll-tokens list` shows a token


def _read_secret(path: Path, option: str) -> str:
    """A one-line secret from a file; the message never quotes the file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InvalidInput(f"{option} {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not text"
        raise InvalidInput(f"{option} {path}: cannot read it ({reason})") from None
    value = text.strip()
    if not value:
        raise InvalidInput(f"{option} {path}: the file is empty")
    if "\n" in value:
        raise InvalidInput(f"{option} {path}: expected one line")
    return value


def _read_ssh_key(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise InvalidInput(f"--ssh-key {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not text"
        raise InvalidInput(f"--ssh-key {path}: cannot read it ({reason})") from None


def _check_hub(url: str) -> str:
    from edge_agent.config import EnrollSettings

    try:
        return EnrollSettings(hub=url, token_file=Path("/etc/edgepilot/enroll-token")).hub
    except ValidationError as exc:
        raise InvalidInput(f"--hub {url!r}: {exc.errors()[0]['msg']}") from None


def flash(
    ctx: typer.Context,
    image: Annotated[
        Path, typer.Argument(help="The OS image: .img, or .img.xz / .img.gz (decompressed).")
    ],
    hub: Annotated[str, typer.Option(help="The hub's URL as the devices reach it.")],
    fleet: Annotated[
        str | None,
        typer.Option(help="The fleet the devices join: a new enrollment token is made for it."),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            help="Use this enrollment token (a file holding it) instead of making one; "
            "reruns then write the same bytes."
        ),
    ] = None,
    expires: Annotated[str, typer.Option(help="A new token's lifetime: 12h, 7d, 2w.")] = "7d",
    max_uses: Annotated[
        int | None, typer.Option(min=1, help="Devices a new token may enroll (default: any).")
    ] = None,
    hostname_prefix: Annotated[
        str, typer.Option(help="Devices are named PREFIX-<last 6 of the serial number>.")
    ] = "edgepilot",
    wifi_ssid: Annotated[str | None, typer.Option(help="The Wi-Fi network's name.")] = None,
    wifi_psk_file: Annotated[
        Path | None, typer.Option(help="A file holding the Wi-Fi passphrase.")
    ] = None,
    wifi_country: Annotated[
        str | None,
        typer.Option(
            help="The Wi-Fi country, e.g. GB (needed with --wifi-ssid: Raspberry Pi OS "
            "keeps Wi-Fi off until one is set)."
        ),
    ] = None,
    ssh_key: Annotated[
        Path | None, typer.Option(help="An OpenSSH public key (.pub) to log in with.")
    ] = None,
    first_boot: Annotated[
        Literal["auto", "firstrun", "cloud-init"],
        typer.Option(
            help="firstrun (Bookworm), cloud-init (Trixie) or auto: cloud-init when the boot "
            "partition holds user-data, meta-data or network-config."
        ),
    ] = "auto",
    agent_package: Annotated[
        str, typer.Option(help="What the device pip-installs (a pinned version, a wheel URL).")
    ] = "edgepilot[agent]",
    out: Annotated[
        Path | None,
        typer.Option(
            help="Write the flashed image here (default: IMAGE itself; a compressed IMAGE's "
            "name without .xz/.gz)."
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Write the agent, its enrollment token and first-boot files into an OS image's boot
    partition: each device flashed from it installs the agent and enrolls itself at the hub on
    first boot. The input image is never changed in place until the new one is complete; the
    secrets on the card are deleted by the first boot."""
    from cloud_hub.provisioning.flashing.firstboot import FlashConfig, WifiConfig
    from cloud_hub.provisioning.flashing.image import compression_of, default_output, flash_image

    if fleet is None and token_file is None:
        raise fail("give --fleet (a new enrollment token is made) or --token-file")
    if wifi_ssid is not None and wifi_psk_file is None:
        raise fail("--wifi-ssid needs --wifi-psk-file (a file holding the passphrase)")
    if wifi_psk_file is not None and wifi_ssid is None:
        raise fail("--wifi-psk-file needs --wifi-ssid")
    if wifi_ssid is not None and wifi_country is None:
        raise fail(
            "--wifi-ssid needs --wifi-country (e.g. GB): Raspberry Pi OS keeps Wi-Fi off until "
            "a country is set"
        )
    with user_errors():
        hub_url = _check_hub(hub)
        if not image.is_file():
            raise InvalidInput(f"{image}: no such image file")
        wifi = None
        if wifi_ssid is not None and wifi_psk_file is not None:
            psk = _read_secret(wifi_psk_file, "--wifi-psk-file")
            try:
                wifi = WifiConfig(ssid=wifi_ssid, psk=psk, country=(wifi_country or "").upper())
            except ValidationError as exc:
                field = str(exc.errors()[0]["loc"][0])
                option = {"ssid": "--wifi-ssid", "psk": f"--wifi-psk-file {wifi_psk_file}"}
                raise InvalidInput(
                    f"{option.get(field, '--wifi-country')}: "
                    + exc.errors()[0]["msg"].removeprefix("Value error, ")
                ) from None
        key = _read_ssh_key(ssh_key) if ssh_key is not None else None
        given_token = _read_secret(token_file, "--token-file") if token_file else None
        from cloud_hub.auth.tokens import parse_duration

        expires_s = parse_duration(expires)
        output = out if out is not None else default_output(image, compression_of(image))

    created: list[NewEnrollToken] = []

    def make_config() -> FlashConfig:
        token = given_token
        if token is None:
            from cloud_hub.fleet.enroll_store import EnrollTokenCreate

            assert fleet is not None
            new = state(ctx).hub.enrollment.create_token(
                EnrollTokenCreate(fleet=fleet, expires_s=expires_s, max_uses=max_uses)
            )
            created.append(new)
            token = new.token
        try:
            return FlashConfig(
                hub_url=hub_url,
                token=token,
                hostname_prefix=hostname_prefix,
                wifi=wifi,
                ssh_key=key,
                agent_package=agent_package,
            )
        except ValidationError as exc:
            error = exc.errors()[0]
            option = {
                "hostname_prefix": "--hostname-prefix",
                "ssh_key": f"--ssh-key {ssh_key}",
                "token": f"--token-file {token_file}",
            }.get(str(error["loc"][0]), str(error["loc"][0]))
            if error["type"] == "string_pattern_mismatch":
                msg = "lower-case letters, digits and '-' (at most 56), as a host name allows"
            else:
                msg = error["msg"].removeprefix("Value error, ")
            raise InvalidInput(f"{option}: {msg}") from None

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=render.err_console,
        disable=json_out,
    )
    try:
        with user_errors(), progress:
            action = "decompressing" if compression_of(image) else "copying"
            task = progress.add_task(escape(f"{action} {image.name}"), total=image.stat().st_size)
            result = flash_image(
                image,
                output,
                make_config,
                first_boot=first_boot,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
    except BaseException as exc:
        for new in created:  # a token for an image that was not written: revoke it
            state(ctx).hub.enrollment.revoke_token(new.id)
        if isinstance(exc, OSError):
            raise fail(f"writing {output}: {exc.strerror or exc}") from None
        raise
    _report(result, created[0] if created else None, given_token, fleet, json_out)


def _report(
    result: Any, new: NewEnrollToken | None, given: str | None, fleet: str | None, json_out: bool
) -> None:
    token: dict[str, Any]
    if new is not None:
        token = {
            "source": "created",
            **new.model_dump(
                mode="json", include={"id", "name", "fleet", "prefix", "expires_at", "max_uses"}
            ),
        }
    else:
        assert given is not None
        token = {"source": "file", "prefix": given[:_SHOWN], "fleet": fleet}
    part = result.partition
    doc = {
        "image": str(result.output),
        "decompressed": result.decompressed,
        "partition": {
            "number": part.number,
            "scheme": part.scheme,
            "type": part.kind,
            "offset": part.offset,
            "size": part.size,
        },
        "first_boot": result.first_boot,
        "hostnames": result.hostnames,
        "wifi_ssid": result.wifi_ssid,
        "written": result.written,
        "unchanged": result.unchanged,
        "token": token,
    }
    if json_out:
        render.print_json(doc)
        return
    render.console.print(render.flashed_table(result, new, token))
