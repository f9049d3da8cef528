"""Tables of the registry: projects, models, versions and their artifacts, runs, schedules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table

from cloud_hub.cli.render.base import console, ident, ms, pct, size, text
from cloud_hub.registry.schemas import Model, Project, Run, Schedule, Version


def projects_table(projects: Sequence[Project]) -> Table:
    table = Table(
        ident("id"), ident("name"), text("description"), ident("created"), title="Projects"
    )
    for p in projects:
        table.add_row(str(p.id), p.name, p.description, p.created_at[:19])
    return table


def models_table(models: Sequence[Model]) -> Table:
    table = Table(
        ident("id"),
        ident("project"),
        ident("model"),
        text("task"),
        text("versions"),
        ident("latest"),
        ident("created"),
        title="Models",
    )
    for m in models:
        table.add_row(
            str(m.id),
            m.project,
            m.name,
            m.task,
            str(m.version_count),
            "-" if m.latest_version is None else str(m.latest_version),
            m.created_at[:19],
        )
    return table


def versions_table(versions: Sequence[Version]) -> Table:
    table = Table(
        ident("id"),
        ident("version"),
        text("status"),
        text("source"),
        text("kind"),
        text("accuracy"),
        text("artifacts"),  # a list: it wraps between the artifacts, never inside one
        ident("created"),
        title="Versions",
    )
    for v in versions:
        arts = ", ".join(f"{a.format}/{a.precision}" for a in v.artifacts)
        table.add_row(
            str(v.id),
            v.ref,
            v.status,
            v.source,
            v.kind or "-",
            pct(v.metrics.get("accuracy")),
            arts,
            v.created_at[:19],
        )
    return table


def artifacts_table(version: Version) -> Table:
    table = Table(title=f"{version.ref} ({version.status})")
    for col in ("artifact", "status", "size", "accuracy", "agree", "ms@1", "ms@64", "sha256"):
        table.add_column(col, no_wrap=True, overflow="fold")
    for a in version.artifacts:
        m = a.metrics
        table.add_row(
            f"{a.format}/{a.precision}",
            a.status,
            size(a.size),
            pct(m.get("accuracy")),
            pct(m.get("top1_agreement")),
            ms(m.get("latency_ms_p50_batch1")),
            ms(m.get("latency_ms_p50_batch64")),
            a.sha256[:8],
        )
    return table


def _dims(shape: Sequence[Any]) -> str:
    return "[" + ", ".join("None" if d is None else str(d) for d in shape) + "]"


def head_summary(head: dict[str, Any] | None) -> str:
    """A head in one line: its task and the options that are set (labels counted)."""
    if head is None:
        return "-"
    parts = []
    for key, value in head.items():
        if key == "task" or value in (None, [], {}):
            continue
        if isinstance(value, list) and len(value) > 4:
            parts.append(f"{key}=[{len(value)}]")
        elif isinstance(value, dict):
            parts.append(f"{key}={{...}}")
        else:
            parts.append(f"{key}={value}")
    return f"{head.get('task')}" + (f" ({', '.join(parts)})" if parts else "")


def preprocessing_summary(spec: dict[str, Any] | None) -> str:
    """A preprocessing spec in one line (its non-default options)."""
    if not spec:
        return "- (tensors only)"
    if spec.get("input_kind") != "image":
        return f"{spec.get('input_kind')} ({spec.get('layout')})"
    parts = [f"image {spec['size'][0]}x{spec['size'][1]}" if spec.get("size") else "image"]
    for key in ("color", "layout", "dtype", "resize"):
        if spec.get(key):
            parts.append(f"{key}={spec[key]}")
    parts.append(f"scale={spec.get('scale', 1.0):.6g}")
    for key in ("mean", "std"):
        if spec.get(key) is not None:
            parts.append(f"{key}={','.join(f'{v:g}' for v in spec[key])}")
    return ", ".join(parts)


def contract_table(version: Version) -> Table:
    """What the version takes and gives: task, head, inputs and outputs, preprocessing."""
    table = Table(title=f"{version.ref}: task {version.task}", show_header=True)
    for col in ("", "name", "shape", "dtype"):
        table.add_column(col, no_wrap=True, overflow="fold")
    signature = version.artifacts[0].signature if version.artifacts else {}
    for side in ("inputs", "outputs"):
        for i, tensor in enumerate(signature.get(side) or []):
            dtype = str(tensor.get("dtype"))
            if tensor.get("quantization"):
                q = tensor["quantization"]
                dtype += f" (q {q['scale']:.4g}/{q['zero_point']})"
            table.add_row(
                side[:-1] if i == 0 else "",
                str(tensor.get("name")),
                _dims(tensor.get("shape") or []),
                dtype,
            )
    return table


def show_version(version: Version) -> None:
    console.print(artifacts_table(version))
    if version.status_reason:
        console.print(f"[red]failed:[/red] {version.status_reason}")
    if version.report and version.report.get("skipped"):
        for note in version.report["skipped"]:
            console.print(f"[yellow]note:[/yellow] {note}")
    console.print(contract_table(version))
    console.print(f"task: {version.task}", highlight=False)
    console.print(f"head: {head_summary(version.head)}", highlight=False, soft_wrap=True)
    console.print(
        f"preprocessing: {preprocessing_summary(version.preprocessing)}",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"labels: {', '.join(version.labels) or '-'}", highlight=False, soft_wrap=True)


def runs_table(runs: Sequence[Run]) -> Table:
    table = Table(
        ident("id"),
        ident("name"),
        text("status"),
        text("failed step"),
        text("accuracy"),
        ident("version"),
        text("attempt"),
        ident("started"),
        title="Runs",
    )
    for r in runs:
        table.add_row(
            str(r.id),
            r.name,
            r.status,
            r.failed_step or "-",
            pct(r.metrics.get("accuracy")),
            "-" if r.version_id is None else str(r.version_id),
            str(r.attempt),
            (r.started_at or "-")[:19],
        )
    return table


def _brief(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return " ".join(f"{v.get('format')}/{v.get('precision')}" for v in value)
    return str(value)


def steps_table(run: Run) -> Table:
    table = Table(
        ident("step"),
        text("status"),
        text("seconds"),
        text("outputs / error"),
        title=f"Run {run.name} ({run.status})",
    )
    for s in run.steps:
        detail = s.error or ", ".join(
            f"{k}={_brief(v)}"
            for k, v in s.outputs.items()
            if k not in ("labels", "preprocessing", "reference", "skipped", "traceback")
        )
        table.add_row(
            s.step, s.status, "-" if s.duration_s is None else f"{s.duration_s:.2f}", detail
        )
    return table


def schedules_table(schedules: Sequence[Schedule]) -> Table:
    table = Table(
        ident("id"),
        ident("name"),
        ident("cron"),
        ident("project"),
        ident("next run"),
        text("running"),
        text("last status"),
        title="Schedules",
    )
    for s in schedules:
        table.add_row(
            str(s.id),
            s.name,
            s.cron,
            str(s.request.get("project")),
            s.next_run_at[:19],
            "yes" if s.running else "no",
            s.last_status or "-",
        )
    return table
