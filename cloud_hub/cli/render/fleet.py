"""Tables of the fleet: devices, their logs and metrics, deployments and shadows, enrollment."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.table import Table

from cloud_hub.cli.render.base import ident, ms, ms_of, num, pct, styled, text, when
from cloud_hub.fleet.enroll_store import EnrollToken
from cloud_hub.fleet.schemas import Deployment, Device, ShadowReport


def devices_table(devices: Sequence[Device]) -> Table:
    table = Table(
        ident("id"),
        text("hardware"),
        text("runtimes"),
        text("tags"),
        ident("group"),
        text("status"),
        ident("active"),
        num("logs"),
        ident("seen"),
        title="Devices",
    )
    for d in devices:
        table.add_row(
            d.id,
            d.hardware or "-",
            ", ".join(d.runtimes),
            ", ".join(d.tags) or "-",
            d.group or "-",
            styled(d.status),
            "-" if d.active_version_id is None else str(d.active_version_id),
            str(d.logs_stored),
            (d.last_seen or "-")[:19],
        )
    return table


def device_logs_table(device_id: str, records: Sequence[Any]) -> Table:
    table = Table(
        ident("seq"),
        ident("request"),
        ident("version"),
        text("output"),
        num("ms"),
        text("source"),
        title=f"Newest logs of {device_id}",
    )
    for r in records:
        table.add_row(
            str(r.seq),
            r.request_id,
            str(r.model_version),
            json.dumps(r.output)[:60],
            f"{r.latency_ms:.2f}",
            r.source,
        )
    return table


_BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 60) -> str:
    """Block characters ▁..█ scaled between the values' min and max (resampled to `width`)."""
    if not values:
        return ""
    if len(values) > width:  # the mean of each of `width` slices
        cuts = [round(i * len(values) / width) for i in range(width + 1)]
        values = [sum(values[a:b]) / (b - a) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]
    lo, hi = min(values), max(values)
    span = hi - lo
    top = len(_BLOCKS) - 1
    return "".join(_BLOCKS[round((v - lo) / span * top) if span else 0] for v in values)


def metric_table(device_id: str, metric: str, points: Sequence[Any]) -> Table:
    """The newest 50 points of a metric series."""
    table = Table(
        ident("time (UTC)"), num("value"), num("min"), num("max"), title=f"{metric} of {device_id}"
    )
    for p in points[-50:]:
        stamp = datetime.fromtimestamp(p.ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(stamp, f"{p.value:g}", f"{p.min:g}", f"{p.max:g}")
    return table


def deployments_table(deployments: Sequence[Deployment]) -> Table:
    table = Table(
        ident("id"),
        ident("version"),
        ident("target"),
        text("strategy"),
        text("status"),
        text("devices"),
        text("reason"),
        ident("created"),
        title="Deployments",
    )
    for dep in deployments:
        active = sum(d.state == "active" for d in dep.devices)
        table.add_row(
            str(dep.id),
            dep.version,
            f"{dep.target_kind} {dep.target}",
            dep.strategy,
            styled(dep.status),
            f"{active}/{len(dep.devices)} active",
            dep.reason or "-",
            dep.created_at[:19],
        )
    return table


def deployment_table(dep: Deployment) -> Table:
    extra = []
    if dep.shadow_version:
        extra.append(f"shadow {dep.shadow_version}")
    if dep.params:
        extra.append("params " + ", ".join(f"{k}={v}" for k, v in dep.params.items()))
    if dep.promoted_from is not None:
        extra.append(f"promoted from deployment {dep.promoted_from}")
    auto = dep.artifact == "auto"
    if auto:
        extra.append(
            f"artifact auto: each device runs the fastest it measured within "
            f"{dep.accuracy_budget or 0:g} accuracy points of the best"
        )
    columns = [
        ident("device"),
        text("phase"),
        ident("artifact"),
        text("state"),
        num("bytes"),
        text("reason"),
        ident("updated"),
    ]
    if dep.shadow_version:
        columns[4:4] = [ident("shadow"), text("shadow state")]
    if auto:
        columns[3:3] = [num("threads"), text("chosen")]
    table = Table(
        *columns,
        title=f"Deployment {dep.id}: {dep.version} to {dep.target_kind} {dep.target} "
        f"({dep.strategy}) — {dep.status}"
        + (f": {dep.reason}" if dep.reason else "")
        + "".join(f"\n{line}" for line in extra),
        title_justify="left",
    )
    for d in dep.devices:
        cells = [
            d.device_id,
            d.phase,
            d.artifact or "-",
            styled(d.state),
            str(d.received_bytes),
            d.reason or d.shadow_reason or "-",
            d.updated_at[:19],
        ]
        if dep.shadow_version:
            cells[4:4] = [d.shadow_artifact or "-", styled(d.shadow_state or "-")]
        if auto:
            cells[3:3] = [str(d.threads or dep.threads), d.choice or "measuring"]
        table.add_row(*cells)
    return table


def _bar(value: float | None, longest: float, width: int = 20) -> str:
    if value is None or longest <= 0:
        return ""
    return "█" * max(1, round(width * value / longest))


def variant_tables(dep: Deployment) -> list[Table]:
    """`--artifact auto`: per device, every candidate at every thread count as measured (on it,
    or on another device of its hardware type), fastest first, with a bar of its p50 and the
    chosen one marked."""
    tables = []
    for d in dep.devices:
        if not d.variants:
            continue
        longest = max((v.p50_ms or 0.0) for v in d.variants)
        source = d.variants[0].source
        table = Table(
            text(""),
            ident("artifact"),
            num("threads"),
            num("p50 ms"),
            num("p99 ms"),
            text("p50", min_width=20),
            num("load ms"),
            num("RSS MB"),
            num("runs"),
            text("error"),
            title=f"{d.device_id}: {'measured' if source == 'measured' else 'reused from'} "
            f"{d.variants[0].hardware or 'unknown hardware'}"
            + (f" — chose {d.artifact} with {d.threads} threads" if d.choice else ""),
            title_justify="left",
        )
        for v in d.variants:
            table.add_row(
                "[green]▶[/green]" if v.chosen else "",
                v.artifact,
                str(v.threads),
                ms(v.p50_ms),
                ms(v.p99_ms),
                _bar(v.p50_ms, longest),
                ms(v.load_ms, 1),
                "-" if v.rss_mb is None else f"{v.rss_mb:.1f}",
                str(v.runs),
                v.error or "",
            )
        tables.append(table)
    return tables


def shadow_table(report: ShadowReport) -> Table:
    agreement = pct(report.agreement)
    table = Table(
        ident("device"),
        text("shadow state"),
        num("compared"),
        num("agreement"),
        num("active p50 ms"),
        num("active p99 ms"),
        num("shadow p50 ms"),
        num("shadow p99 ms"),
        title=f"Shadow of deployment {report.deployment_id}: {report.shadow_version} beside "
        f"{report.version} — {report.compared} compared, agreement {agreement}",
        title_justify="left",
    )
    for d in report.devices:
        table.add_row(
            d.device_id,
            styled(d.shadow_state or "-"),
            str(d.compared),
            pct(d.agreement),
            ms_of(d.active_latency_ms, "p50"),
            ms_of(d.active_latency_ms, "p99"),
            ms_of(d.shadow_latency_ms, "p50"),
            ms_of(d.shadow_latency_ms, "p99"),
        )
    if len(report.devices) > 1:
        table.add_row(
            "[bold]all[/bold]",
            "",
            str(report.compared),
            agreement,
            ms_of(report.active_latency_ms, "p50"),
            ms_of(report.active_latency_ms, "p99"),
            ms_of(report.shadow_latency_ms, "p50"),
            ms_of(report.shadow_latency_ms, "p99"),
        )
    return table


def token_uses(token: EnrollToken) -> str:
    """How often an enrollment token was used, of how many times it may be."""
    return f"{token.uses}/{token.max_uses}" if token.max_uses is not None else f"{token.uses}/∞"


def enroll_tokens_table(tokens: Sequence[EnrollToken]) -> Table:
    table = Table(
        ident("id"),
        ident("name"),
        ident("fleet"),
        ident("prefix"),
        text("state"),
        text("uses"),
        ident("expires"),
        ident("last used"),
        title="Enrollment tokens",
    )
    colour = {"live": "green", "expired": "yellow", "exhausted": "yellow", "revoked": "red"}
    for t in tokens:
        table.add_row(
            str(t.id),
            t.name,
            t.fleet,
            t.prefix + "…",
            f"[{colour[t.state]}]{t.state}[/{colour[t.state]}]",
            token_uses(t),
            when(t.expires_at),
            when(t.last_used_at),
        )
    return table


def fleets_table(fleets: Sequence[Any]) -> Table:
    table = Table(
        ident("name"),
        num("devices"),
        ident("group"),
        text("tags"),
        ident("id prefix"),
        ident("created"),
        title="Fleets",
    )
    for f in fleets:
        table.add_row(
            f.name,
            str(f.devices),
            f.group or "-",
            ", ".join(f.tags) or "-",
            f.device_prefix,
            when(f.created_at),
        )
    return table
