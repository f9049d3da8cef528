"""Tables of serving: endpoints, their steps and run-time parameters, predictions, A/B and
shadow reports."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.table import Table

from cloud_hub.cli.render.base import console, ident, ms_of, num, text
from cloud_hub.serving.engine.spec import BatchingSpec


def endpoints_table(stored: Sequence[Any]) -> Table:
    table = Table(
        ident("name"),
        text("steps"),
        text("models"),  # a list of refs: it wraps between them
        text("batching"),
        ident("updated"),
        title="Endpoints",
    )
    for item in stored:
        spec = item.spec
        table.add_row(
            item.name,
            " → ".join(f"{s.name}({s.kind})" for s in spec.steps),
            ", ".join(ref.ref for ref in spec.model_refs().values()),
            _batching(spec.batching),
            item.updated_at[:19],
        )
    return table


def endpoint_table(item: Any) -> Table:
    """An endpoint's steps: kind, what feeds each, params."""
    spec = item.spec
    table = Table(
        ident("step"), ident("kind"), text("inputs"), text("params"), title=f"Endpoint {spec.name}"
    )
    for step in spec.steps:
        table.add_row(
            step.name,
            step.kind,
            ", ".join(step.inputs) or "(request)",
            json.dumps(step.params, sort_keys=True),
        )
    return table


def show_endpoint(item: Any) -> None:
    console.print(endpoint_table(item))
    for alias, ref in item.spec.model_refs().items():
        console.print(f"model {alias}: {ref.ref} {ref.format or ''} {ref.precision or ''}")


def predictions_table(name: str, result: Any) -> Table:
    table = Table(
        num("row"), ident("label"), num("score"), title=f"{name}: {len(result.predictions)} rows"
    )
    for i, p in enumerate(result.predictions):
        table.add_row(str(i), p.label, f"{p.score:.4f}")
    return table


def params_table(name: str, params: Any) -> Table:
    """An endpoint's run-time parameters: kill switches and per-step values."""
    table = Table(
        text("what"),
        ident("step"),
        ident("param"),
        text("value"),
        title=f"Run-time parameters of {name}",
    )
    for alias in params.kill:
        table.add_row("kill switch", "", alias, "off")
    for step, values in params.steps.items():
        for field, value in values.items():
            table.add_row("step param", step, field, json.dumps(value))
    return table


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def ab_variants_table(got: Any) -> Table:
    table = Table(
        ident("variant"),
        num("n"),
        num("mean"),
        num("std"),
        num("errors"),
        title=f"A/B on {got.endpoint}: {got.metric}",
    )
    for v in got.variants:
        table.add_row(
            v.variant,
            str(v.n),
            _g(v.mean),
            _g(v.std),
            "-" if v.errors is None else str(v.errors),
        )
    return table


def ab_tests_table(got: Any) -> Table:
    table = Table(
        ident("a"),
        ident("b"),
        text("test"),
        num("statistic"),
        num("p-value"),
        text("significant"),
        title="Significance",
    )
    for c in got.comparisons:
        table.add_row(
            c.a,
            c.b,
            c.test,
            "-" if c.statistic is None else f"{c.statistic:.3f}",
            "-" if c.p_value is None else f"{c.p_value:.3g}",
            "yes" if c.significant else "no",
        )
    return table


def show_ab(got: Any) -> None:
    console.print(ab_variants_table(got))
    if got.comparisons:
        console.print(ab_tests_table(got))
    console.print(f"verdict: {got.verdict}")


def _p50_p99(d: dict[str, Any]) -> str:
    if d["p50"] is None:
        return "-"
    return f"{ms_of(d, 'p50', 2)} / {ms_of(d, 'p99', 2)}"


def endpoint_shadow_table(got: Any) -> Table:
    table = Table(
        ident("candidate"),
        num("requests"),
        num("rows"),
        num("agreement"),
        num("primary p50/p99 ms"),
        num("candidate p50/p99 ms"),
        num("errors"),
        title=f"Shadow on {got.endpoint}: {got.requests} answered requests",
    )
    for c in got.candidates:
        table.add_row(
            c.candidate,
            str(c.requests),
            str(c.rows_compared),
            "-" if c.agreement is None else f"{c.agreement:.1%}",
            _p50_p99(c.primary_latency_ms),
            _p50_p99(c.candidate_latency_ms),
            str(c.errors),
        )
    return table


def _batching(batching: BatchingSpec) -> str:
    if batching.enabled == "auto":
        return f"auto, ≤{batching.max_batch_size}"
    return f"≤{batching.max_batch_size}" if batching.enabled else "off"
