"""Tables of the remaining commands: API tokens, flashing, balena, the load test, the demo."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.markup import escape
from rich.table import Table

from cloud_hub.cli.render.base import console, ident, ms, num, text, when


def api_tokens_table(tokens: Sequence[Any]) -> Table:
    table = Table(
        ident("name"),
        text("role"),
        ident("prefix"),
        ident("created"),
        ident("expires"),
        ident("last used"),
        ident("revoked"),
        title="API tokens",
    )
    for t in tokens:
        table.add_row(
            t.name,
            t.role.value,
            t.prefix + "…",
            when(t.created_at),
            when(t.expires_at),
            when(t.last_used_at),
            when(t.revoked_at),
        )
    return table


def facts_table(title: str, rows: Sequence[tuple[str, str]]) -> Table:
    """A two-column table without a header: what, and its value (values may wrap)."""
    table = Table(text("what", no_wrap=True), text("value"), title=title, show_header=False)
    for what, value in rows:
        table.add_row(what, value)
    return table


def flashed_table(result: Any, new: Any, token: dict[str, Any]) -> Table:
    part = result.partition
    mech = {"firstrun": "firstrun.sh (Bookworm)", "cloud-init": "cloud-init (Trixie)"}
    rows = [
        ("boot partition", escape(f"{part.scheme.upper()} {part.describe()}")),
        ("first boot", mech[result.first_boot]),
        ("devices named", escape(result.hostnames)),
        (
            "network",
            escape(f"Wi-Fi {result.wifi_ssid}") if result.wifi_ssid else "as the image has it",
        ),
        ("files written", "\n".join(result.written) or "-"),
    ]
    if result.unchanged:
        rows.append(("already there", "\n".join(result.unchanged)))
    if new is not None:
        rows.append(
            (
                "enrollment token",
                f"{new.name} (id {new.id}, {new.prefix}…) for fleet {new.fleet}, expires "
                f"{when(new.expires_at)} UTC",
            )
        )
    else:
        rows.append(("enrollment token", f"{token['prefix']}… from the token file"))
    return facts_table(escape(f"Flashed {result.output}"), rows)


def balena_setup_table(result: Any) -> Table:
    made = " (created)" if result.balena_fleet_created else ""
    rows = [
        (
            "balena fleet",
            f"{result.balena_fleet_slug} (id {result.balena_fleet_id}, "
            f"{result.balena_device_type}){made}",
        ),
        ("EdgePilot fleet", result.fleet + (" (created)" if result.fleet_created else "")),
        (
            "enrollment token",
            f"{result.token_name} (id {result.token_id}), expires "
            f"{result.token_expires_at.isoformat(timespec='seconds')}",
        ),
        *result.variables.items(),
    ]
    if result.revoked_tokens:
        rows.append(("revoked tokens", ", ".join(str(t) for t in result.revoked_tokens)))
    return facts_table("balena fleet set up for enrollment", rows)


def show_load_test(result: Any) -> None:
    lat, lag = result.latency_ms, result.lag_ms

    def ms2(value: float | None) -> str:
        return ms(value, 2)

    rows = [
        ("requested rate", f"{result.requested_rate:g}/s for {result.duration_s:g} s"),
        ("achieved rate", f"{result.achieved_rate:.1f}/s"),
        ("throughput (answers)", f"{result.throughput:.1f}/s"),
        ("scheduled / sent", f"{result.scheduled} / {result.sent}"),
        ("success ratio (2xx / scheduled)", f"{100 * result.success_ratio:.2f}%"),
        ("latency p50 / p90 / p99 ms", f"{ms2(lat.p50)} / {ms2(lat.p90)} / {ms2(lat.p99)}"),
        ("latency max ms", ms2(lat.max)),
        ("schedule lag p50 / p99 / max ms", f"{ms2(lag.p50)} / {ms2(lag.p99)} / {ms2(lag.max)}"),
        (f"late (> {result.late_ms:g} ms)", str(result.late)),
        ("dropped (max connections)", str(result.dropped)),
        ("in flight at the end", str(result.in_flight_at_end)),
        (
            "connections opened / peak busy / max",
            f"{result.connections.opened} / {result.connections.peak_busy} / "
            f"{result.connections.max}",
        ),
        ("generator CPU", f"{result.generator_cpu_s:.2f} s ({100 * result.generator_cpu:.1f}%)"),
    ]
    table = Table(text(""), num("value"), title=f"Load test: {result.url}")
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    codes = Table(ident("status / error"), num("count"), title="Answers")
    for code, count in result.status_codes.items():
        codes.add_row(code, str(count))
    for kind, count in result.errors.items():
        codes.add_row(f"[red]{kind}[/red]", str(count))
    if result.dropped:
        codes.add_row("[red]dropped[/red]", str(result.dropped))
    console.print(codes)


def demo_table(fig: Any) -> Table:
    """The demo's live table: each device, its model and what it has served."""
    table = Table(
        ident("device"),
        ident("runtime"),
        ident("artifact"),
        ident("status"),
        ident("active version"),
        num("inferences", no_wrap=True),  # one-word headers: the multi-word ones wrap instead
        num("accuracy", no_wrap=True),
        num("p50 ms"),
        num("logs made"),
        num("logs at hub"),
        title=f"EdgePilot demo: {fig.phase}  ({fig.elapsed_s:.0f} s, broker: {fig.broker}, "
        f"model: {fig.deployed_version or '…'})",
        title_justify="left",
        show_edge=False,  # ten columns in 120: the two edges are room for five-digit counts
    )
    for d in fig.devices:
        acc = "" if d.accuracy is None else f"{100 * d.accuracy:.1f}%"
        at_hub = str(d.logs_at_hub)
        if d.logs_made and d.logs_at_hub == d.logs_made:
            at_hub = f"[green]{at_hub}[/green]"
        table.add_row(
            d.device_id,
            d.runtime,
            d.artifact,
            d.status,
            d.active_version or "-",
            str(d.inferences),
            acc,
            "" if d.p50_ms is None else f"{d.p50_ms:.2f}",
            str(d.logs_made),
            at_hub,
        )
    return table
