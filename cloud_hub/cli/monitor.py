"""`edgepilot monitor` and `edgepilot alerts`: monitoring windows, alerts and alert rules.

They read and write the hub's database directly, as the other registry commands do: `monitor`
computes the windows in this process; `alerts rules add|delete` take effect at the running
hub's next evaluation (every `monitor_interval_s`); `alerts evaluate` runs one pass here (the
alerts it opens or resolves are stored, and published on MQTT with `--mqtt HOST:PORT`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from cloud_hub.cli import render
from cloud_hub.cli.base import JsonOpt, fail, user_errors
from cloud_hub.cli.base import state as _state
from cloud_hub.monitoring.windows import By

if TYPE_CHECKING:
    pass


def monitor(
    ctx: typer.Context,
    by: Annotated[By, typer.Option("--by", help="version, endpoint or device")] = "version",
    window: Annotated[
        float, typer.Option("--window", min=1, help="the last this many seconds")
    ] = 300.0,
    last: Annotated[
        int | None, typer.Option("--last", min=1, help="... and at most the latest N records")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Rolling windows per model version, endpoint or device: latency percentiles, errors,
    answers, output shift and input drift (PSI) against the training baseline."""
    from cloud_hub.monitoring import WindowReader

    hub = _state(ctx).hub
    reader = WindowReader(hub.db, max_records=hub.settings.monitor_max_records)
    windows = reader.windows(by, window_s=window, last_n=last)
    if json_out:
        render.print_json(windows)
        return
    if not windows:
        render.console.print(f"no predictions in the last {window:g} s")
        return
    render.console.print(render.windows_table(windows, by, window))


alerts_app = typer.Typer(
    help="Alerts raised by the monitoring rules, and the rules.", invoke_without_command=True
)
rules_app = typer.Typer(help="Alert rules (while none is created, the defaults apply).")
alerts_app.add_typer(rules_app, name="rules")


@alerts_app.callback()
def alerts(
    ctx: typer.Context,
    open_only: Annotated[bool, typer.Option("--open", help="Only the open alerts.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 100,
    json_out: JsonOpt = False,
) -> None:
    """List alerts, newest first (`alerts rules ...`: the rules)."""
    if ctx.invoked_subcommand is not None:
        return
    from cloud_hub.monitoring import AlertStore

    found = AlertStore(_state(ctx).hub.db).list("open" if open_only else "all", limit=limit)
    if json_out:
        render.print_json(found)
        return
    if not found:
        render.console.print("no open alerts" if open_only else "no alerts")
        return
    render.console.print(render.alerts_table(found))


@alerts_app.command("evaluate")
def evaluate(
    ctx: typer.Context,
    mqtt: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT of the fleet's broker: publish what opened or resolved on "
            "{root}/alerts, as the hub's monitor does."
        ),
    ] = None,
    topic_root: Annotated[str, typer.Option(help="MQTT topic root.")] = "ep",
    json_out: JsonOpt = False,
) -> None:
    """Evaluate the rules now, in this process: the alerts that opened or resolved."""
    from cloud_hub.monitoring import Monitor

    state = _state(ctx)
    if mqtt is None:
        hub = state.hub
        events = Monitor(hub.db, max_records=hub.settings.monitor_max_records).evaluate()
    else:
        events = _evaluate_and_publish(state, mqtt, topic_root)
    if json_out:
        render.print_json(events)
        return
    for event in events:
        render.console.print(f"{event.event}: #{event.alert.id} {event.alert.message}")
    if not events:
        render.console.print("nothing opened or resolved")


def _evaluate_and_publish(state: Any, address: str, topic_root: str) -> list[Any]:
    from cloud_hub.cli.parsing import parse_address
    from cloud_hub.hub import Hub
    from cloud_hub.monitoring.evaluate_now import BrokerUnavailable, evaluate_and_publish

    with user_errors():
        host, port = parse_address(address, "--mqtt")
        settings = state.settings(mqtt_host=host, mqtt_port=port, topic_root=topic_root)
    hub = Hub.open(settings)
    try:
        return evaluate_and_publish(hub.db, settings)
    except BrokerUnavailable as exc:
        raise fail(str(exc)) from None
    finally:
        hub.close()


@rules_app.command("list")
def rules_list(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """The rules in force (the defaults while none is created)."""
    from cloud_hub.monitoring import RuleStore

    rules = RuleStore(_state(ctx).hub.db).active()
    if json_out:
        render.print_json(rules)
        return
    render.console.print(render.rules_table(rules))


@rules_app.command("add")
def rules_add(
    ctx: typer.Context,
    metric: Annotated[
        str,
        typer.Option(
            "--metric",
            help="latency_p99_ms, error_rate, psi_max, output_shift, offline_s or "
            "outbox_backlog_growth",
        ),
    ],
    threshold: Annotated[float, typer.Option("--threshold", help="alert above this")],
    scope: Annotated[str, typer.Option("--scope", help="all, version, endpoint or device")] = "all",
    target: Annotated[
        str | None,
        typer.Option("--target", help="a version id or ref, an endpoint name or a device id"),
    ] = None,
    window: Annotated[float, typer.Option("--window", help="window, seconds")] = 300.0,
    last: Annotated[int | None, typer.Option("--last", help="at most the latest N records")] = None,
    min_count: Annotated[int, typer.Option("--min-count", help="records needed to judge")] = 20,
    name: Annotated[str | None, typer.Option("--name")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a rule (the defaults stop applying once one exists)."""
    from cloud_hub.monitoring import AlertRuleIn, RuleStore

    fields: dict[str, Any] = {
        "name": name,
        "metric": metric,
        "threshold": threshold,
        "scope": scope,
        "target": target,
        "window_s": window,
        "last_n": last,
        "min_count": min_count,
    }
    with user_errors():
        rule = RuleStore(_state(ctx).hub.db).create(AlertRuleIn(**fields))
    if json_out:
        render.print_json(rule)
        return
    render.console.print(f"created alert rule {rule.key}")
    render.console.print(render.rules_table([rule]))


@rules_app.command("delete")
def rules_delete(
    ctx: typer.Context, rule_id: Annotated[int, typer.Argument(help="the rule's id")]
) -> None:
    """Delete a rule (its open alerts resolve at the next evaluation)."""
    from cloud_hub.monitoring import RuleStore

    with user_errors():
        RuleStore(_state(ctx).hub.db).delete(rule_id)
    render.console.print(f"deleted alert rule {rule_id}")
