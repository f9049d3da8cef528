"""Tables of monitoring: rolling windows, alerts, alert rules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.table import Table

from cloud_hub.cli.render.base import ident, ms, num, text

if TYPE_CHECKING:
    from cloud_hub.monitoring import Alert, AlertRule, WindowStats


def windows_table(windows: Sequence[WindowStats], by: str, window_s: float) -> Table:
    table = Table(
        ident(by),
        num("records", no_wrap=True),
        num("requests", no_wrap=True),
        num("errors", no_wrap=True),
        num("p50 ms", no_wrap=True),
        num("p90 ms", no_wrap=True),
        num("p99 ms", no_wrap=True),
        num("psi max", no_wrap=True),
        num("psi mean", no_wrap=True),
        text("drifting features"),
        num("output shift", no_wrap=True),
        text("top answers", no_wrap=True),
        title=f"Monitoring by {by}, last {window_s:g} s",
    )
    for w in windows:
        drift = w.drift
        top = ", ".join(f"{k} {100 * v:.0f}%" for k, v in list(w.output.items())[:3])
        name = w.name if w.by != "version" else f"{w.name} (#{w.key})"
        table.add_row(
            name,
            str(w.count),
            str(w.requests),
            "-" if w.error_rate is None else f"{w.errors} ({100 * w.error_rate:.1f}%)",
            ms(w.latency_ms.get("p50")),
            ms(w.latency_ms.get("p90")),
            ms(w.latency_ms.get("p99")),
            "-" if drift is None else f"{drift.psi_max:.3f}",
            "-" if drift is None else f"{drift.psi_mean:.3f}",
            "-" if drift is None else ", ".join(f"#{f.feature} {f.psi:.2f}" for f in drift.top[:3]),
            ms(w.output_shift),
            top or "-",
        )
    return table


def alerts_table(alerts: Sequence[Alert]) -> Table:
    table = Table(
        ident("id"),
        text("state", no_wrap=True),
        ident("rule"),
        text("metric", no_wrap=True),
        ident("scope"),
        num("latest", no_wrap=True),
        num("threshold", no_wrap=True),
        ident("opened"),
        text("message"),
        title="Alerts",
    )
    for a in alerts:
        table.add_row(
            str(a.id),
            a.state if a.resolved_at is None else f"resolved {a.resolved_at[11:19]}",
            a.rule,
            a.metric,
            f"{a.scope} {a.target}",
            f"{a.last_value:.4g}",
            f"{a.threshold:g}",
            a.opened_at[:19],
            a.message,
        )
    return table


def rules_table(rules: Sequence[AlertRule]) -> Table:
    table = Table(
        ident("id"),
        ident("name"),
        ident("metric"),
        ident("threshold"),
        ident("scope"),
        ident("window"),
        ident("min records"),
        title="Alert rules",
    )
    for r in rules:
        window = f"{r.window_s:g} s" + ("" if r.last_n is None else f", last {r.last_n}")
        table.add_row(
            r.key,
            r.name or "-",
            r.metric,
            f"> {r.threshold:g}",
            r.scope if r.target is None else f"{r.scope} {r.target}",
            window,
            str(r.min_count),
        )
    return table
