"""`edgepilot devices|deploy|deployments` and `edgepilot hub broker-config`.

A deployment's shadow and serving parameters: `edgepilot deploy V --shadow V2 --param
min_score=0.8`, then `edgepilot deployments shadow ID` (the report), `deployments promote ID`
and `deployments params ID --set disabled=true`.

Like the other commands these open the registry directly. A deployment made here is a set of
rows; the running hub's MQTT service (`edgepilot hub serve --mqtt HOST:PORT`) notices rows it
has not published within its poll interval and sends each device its desired state.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.live import Live

from cloud_hub.cli import render
from cloud_hub.cli.base import JsonOpt, State, fail, user_errors
from cloud_hub.cli.base import state as _state
from cloud_hub.cli.parsing import parse_address, parse_params
from cloud_hub.core.errors import InvalidInput
from cloud_hub.fleet.agent_config import agent_config
from cloud_hub.fleet.broker_auth import DEFAULT_MAX_PACKET_SIZE
from cloud_hub.fleet.device_broker import broker_for_device
from cloud_hub.fleet.metrics_store import MetricsStore
from cloud_hub.fleet.metrics_store import Step as MetricStep
from cloud_hub.fleet.schemas import (
    Deployment,
    DeploymentCreate,
    Device,
    DeviceCreate,
    ShadowCreate,
    Strategy,
)

devices_app = typer.Typer(help="Edge devices.", no_args_is_help=True)
deployments_app = typer.Typer(help="Deployments of versions to devices.", no_args_is_help=True)


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


# -- devices ----------------------------------------------------------------------------------
@devices_app.command("register")
def devices_register(
    ctx: typer.Context,
    device_id: Annotated[str, typer.Argument(metavar="ID", help="The device's id.")],
    name: Annotated[str | None, typer.Option(help="A name for people (default: the id).")] = None,
    hardware: Annotated[str, typer.Option(help="e.g. rpi5, jetson-orin-nano.")] = "",
    runtime: Annotated[
        list[str] | None,  # typer takes no list of choices: DeviceCreate checks each
        typer.Option(help="onnxruntime or litert; repeat, in order of preference."),
    ] = None,
    tag: Annotated[list[str] | None, typer.Option(help="A tag; repeatable.")] = None,
    group: Annotated[str | None, typer.Option(help="The device's group.")] = None,
    broker: Annotated[
        str | None, typer.Option(help="HOST:PORT of the broker, as the device reaches it.")
    ] = None,
    topic_root: Annotated[str | None, typer.Option(help="MQTT topic root (default: ep).")] = None,
    broker_tls: Annotated[
        bool | None,
        typer.Option(
            help="The device connects with TLS; its agent config gets the fleet CA "
            "(`edgepilot hub broker-config --tls` makes it)."
        ),
    ] = None,
    write_config: Annotated[
        Path | None, typer.Option(help="Write the agent's config file (TOML) here.")
    ] = None,
    agent_data_dir: Annotated[
        str, typer.Option(help="data_dir written into the agent config.")
    ] = "./agent-data",
    json_out: JsonOpt = False,
) -> None:
    """Register a device: prints its broker password (shown once) and the hub's public key."""
    state = _state(ctx)
    with user_errors():
        body = DeviceCreate(
            id=device_id,
            name=name,
            hardware=hardware,
            runtimes=runtime or ["onnxruntime"],  # type: ignore[arg-type]
            tags=tag or [],
            group=group,
        )
        fleet = state.hub.fleet
        info = broker_for_device(
            fleet.devices.broker,
            address=parse_address(broker, "--broker") if broker else None,
            topic_root=topic_root,
            tls=broker_tls,
        )
        reg = fleet.devices.register(body, broker=info)
    if write_config is not None:
        _write_secret(write_config, agent_config(reg, data_dir=agent_data_dir))
    if json_out:
        render.print_json(reg)
        return
    render.console.print(render.devices_table([reg.device]))
    render.console.print(
        f"broker: {reg.broker.host}:{reg.broker.port} (topic root {reg.broker.topic_root})"
    )
    render.console.print(f"username: {reg.username}\npassword: {reg.password}  (shown only once)")
    render.console.print(f"hub public key: {reg.hub_public_key}")
    if write_config is not None:
        render.console.print(f"wrote agent config {write_config}")
    from cloud_hub.cli.enroll import print_reload

    print_reload(fleet.devices.last_reload)


@devices_app.command("list")
def devices_list(
    ctx: typer.Context,
    tag: Annotated[str | None, typer.Option(help="Only devices with this tag.")] = None,
    group: Annotated[str | None, typer.Option(help="Only devices in this group.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List devices (read a page of the registry at a time, as GET /api/v1/devices serves
    them, so a fleet of thousands is never one query)."""
    devices: list[Device] = []
    with user_errors():
        store = _state(ctx).hub.fleet.devices
        after: str | None = None
        while True:
            page, after = store.page(tag=tag, group=group, after=after)
            devices += page
            if after is None:
                break
    if json_out:
        render.print_json(devices)
    else:
        render.console.print(render.devices_table(devices))


@devices_app.command("show")
def devices_show(
    ctx: typer.Context,
    device_id: Annotated[str, typer.Argument(metavar="ID")],
    logs: Annotated[int, typer.Option(help="Also show this many newest stored logs.")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Show a device (and its newest stored inference logs)."""
    with user_errors():
        store = _state(ctx).hub.fleet.devices
        device = store.get(device_id)
        records = store.logs(device_id, limit=logs) if logs > 0 else []
    if json_out:
        out: dict[str, Any] = device.model_dump(mode="json")
        if logs > 0:
            out["logs"] = [r.model_dump(mode="json") for r in records]
        render.print_json(out)
        return
    render.console.print(render.devices_table([device]))
    if device.last_reason:
        render.console.print(f"[yellow]last refused message:[/yellow] {device.last_reason}")
    if records:
        render.console.print(render.device_logs_table(device_id, records))


@devices_app.command("metrics")
def devices_metrics(
    ctx: typer.Context,
    device_id: Annotated[str, typer.Argument(metavar="ID")],
    metric: Annotated[str, typer.Option(help="cpu, memory, temperature, inferences, ...")] = "cpu",
    since: Annotated[str, typer.Option(help="ISO-8601 or an age such as 15m, 1h, 7d.")] = "1h",
    until: Annotated[str | None, typer.Option(help="ISO-8601 or an age; default now.")] = None,
    step: Annotated[
        Literal[MetricStep, "auto"], typer.Option(help="raw, 1m, 1h or auto.")
    ] = "auto",
    json_out: JsonOpt = False,
) -> None:
    """A device's telemetry history: a chart and a table of one metric."""
    with user_errors():
        hub = _state(ctx).hub
        hub.fleet.devices.get(device_id)
        series = MetricsStore(hub.db, hub.settings).query(
            device_id, metric, since=since, until=until, step=step, now=time.time()
        )
    if json_out:
        render.print_json(series)
        return
    points = series.points
    if not points:
        render.console.print(f"no {metric} data for {device_id} in that range (step {series.step})")
        return
    values = [p.value for p in points]
    render.console.print(
        f"[bold]{device_id}[/bold] {metric} (step {series.step}, {len(points)} points): "
        f"min {min(p.min for p in points):g}  max {max(p.max for p in points):g}  "
        f"last {values[-1]:g}"
    )
    render.console.print(render.sparkline(values), markup=False, highlight=False)
    render.console.print(render.metric_table(device_id, metric, points))


# -- deploy -------------------------------------------------------------------------------------
def deploy(
    ctx: typer.Context,
    version: Annotated[
        str,
        typer.Argument(
            help="PROJECT/MODEL[:N] or a version id; or `promote ID`: make deployment ID's "
            "shadow the active model (as `deployments promote ID`)."
        ),
    ],
    promote_id: Annotated[
        int | None,
        typer.Argument(metavar="[ID]", help="With `promote`: the deployment.", show_default=False),
    ] = None,
    device: Annotated[
        list[str] | None,
        typer.Option(help="Target a device; repeat for several (one rollout over all of them)."),
    ] = None,
    tag: Annotated[str | None, typer.Option(help="Target every device with this tag.")] = None,
    group: Annotated[str | None, typer.Option(help="Target every device of this group.")] = None,
    artifact: Annotated[
        str,
        typer.Option(
            help="'best' (per device runtime), FORMAT/PRECISION (e.g. onnx/int8), or 'auto': "
            "each device measures the artifacts it can run and runs the fastest."
        ),
    ] = "best",
    accuracy_budget: Annotated[
        float | None,
        typer.Option(
            help="With --artifact auto: accuracy points a candidate may lose against the "
            "best artifact (default 1)."
        ),
    ] = None,
    strategy: Annotated[Strategy, typer.Option(help="all_at_once or canary.")] = "all_at_once",
    canary_count: Annotated[int | None, typer.Option(help="Canary devices.")] = None,
    canary_percent: Annotated[float | None, typer.Option(help="Canary share (0-100].")] = None,
    failure_threshold: Annotated[
        float, typer.Option(help="Halt when this fraction of devices failed.")
    ] = 0.5,
    promote_after: Annotated[
        float | None,
        typer.Option(
            help="Seconds the canaries stay active before the rest follow "
            "(default: the probation window, 60 s)."
        ),
    ] = None,
    threads: Annotated[int, typer.Option(help="Inference threads on the device.")] = 1,
    shadow: Annotated[
        str | None,
        typer.Option(
            help="A candidate version run beside this one on the same inputs (answers logged, "
            "never returned); see `deployments shadow` and `deployments promote`."
        ),
    ] = None,
    shadow_artifact: Annotated[
        str, typer.Option(help="The shadow's artifact: 'best' or FORMAT/PRECISION.")
    ] = "best",
    param: Annotated[
        list[str] | None,
        typer.Option(
            help="A serving parameter KEY=VALUE (min_score, default_label, disabled, "
            "shadow_sample); repeatable."
        ),
    ] = None,
    watch: Annotated[bool, typer.Option(help="Follow the rollout until it finishes.")] = False,
    timeout: Annotated[float, typer.Option(help="Stop watching after this many seconds.")] = 600,
    json_out: JsonOpt = False,
) -> None:
    """Deploy a version to a device, a tag or a group (published by the running hub).
    `edgepilot deploy promote ID` makes deployment ID's shadow the active model."""
    if version == "promote":  # never a version: a ref has a slash, an id is a number
        if promote_id is None:
            raise fail("deploy promote ID: which deployment's shadow to promote?")
        deployments_promote(ctx, promote_id, json_out)
        return
    if promote_id is not None:
        raise fail(f"unexpected argument {promote_id} (deploy VERSION --device/--tag/--group)")
    state = _state(ctx)
    with user_errors():
        body = DeploymentCreate(
            version=version,
            artifact=artifact,
            accuracy_budget=accuracy_budget,
            device=device[0] if device and len(device) == 1 else None,
            devices=device if device and len(device) > 1 else None,
            tag=tag,
            group=group,
            strategy=strategy,
            canary_count=canary_count,
            canary_percent=canary_percent,
            failure_threshold=failure_threshold,
            promote_after_s=promote_after,
            threads=threads,
            params=parse_params(param or []),
            shadow=None
            if shadow is None
            else ShadowCreate(version=shadow, artifact=shadow_artifact),
        )
        dep = state.hub.fleet.deployments.create(body)
    if watch:
        dep = _watch(state, dep.id, timeout, quiet=json_out)
    if json_out:
        render.print_json(dep)
    elif not watch:
        render.console.print(render.deployment_table(dep))
        render.console.print("The running hub (`edgepilot hub serve --mqtt ...`) sends it.")
    if watch and dep.status == "halted":
        raise fail(f"deployment {dep.id} halted: {dep.reason}", code=1)
    if watch and not dep.finished:
        raise fail(f"deployment {dep.id} still {dep.status} after {timeout:.0f} s", code=1)


def _watch(state: State, deployment_id: int, timeout: float, *, quiet: bool) -> Deployment:
    store = state.hub.fleet.deployments
    deadline = time.monotonic() + timeout
    dep = store.get(deployment_id)
    if quiet:
        while not dep.finished and time.monotonic() < deadline:
            time.sleep(0.5)
            dep = store.get(deployment_id)
        return dep
    with Live(render.deployment_table(dep), console=render.console) as live:
        while not dep.finished and time.monotonic() < deadline:
            time.sleep(0.5)
            dep = store.get(deployment_id)
            live.update(render.deployment_table(dep))
    return dep


@deployments_app.command("list")
def deployments_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="Newest N.")] = 50,
    json_out: JsonOpt = False,
) -> None:
    """List deployments, newest first."""
    with user_errors():
        deps = _state(ctx).hub.fleet.deployments.list(limit=limit)
    if json_out:
        render.print_json(deps)
    else:
        render.console.print(render.deployments_table(deps))


@deployments_app.command("show")
def deployments_show(
    ctx: typer.Context,
    deployment_id: Annotated[int, typer.Argument(metavar="ID")],
    json_out: JsonOpt = False,
) -> None:
    """Show a deployment with each device's state; for `--artifact auto`, each device's
    measurements and choice."""
    with user_errors():
        dep = _state(ctx).hub.fleet.deployments.get(deployment_id)
    if json_out:
        render.print_json(dep)
    else:
        render.console.print(render.deployment_table(dep))
        for table in render.variant_tables(dep):
            render.console.print(table)


@deployments_app.command("shadow")
def deployments_shadow(
    ctx: typer.Context,
    deployment_id: Annotated[int, typer.Argument(metavar="ID")],
    json_out: JsonOpt = False,
) -> None:
    """The shadow report: agreement with the active model and both latencies, per device."""
    with user_errors():
        report = _state(ctx).hub.fleet.deployments.shadow_report(deployment_id)
    if json_out:
        render.print_json(report)
    else:
        render.console.print(render.shadow_table(report))


@deployments_app.command("promote")
def deployments_promote(
    ctx: typer.Context,
    deployment_id: Annotated[int, typer.Argument(metavar="ID")],
    json_out: JsonOpt = False,
) -> None:
    """Make the deployment's shadow the active model (the devices hold it: no transfer)."""
    with user_errors():
        dep = _state(ctx).hub.fleet.deployments.promote(deployment_id)
    if json_out:
        render.print_json(dep)
    else:
        render.console.print(render.deployment_table(dep))
        render.console.print(
            f"Deployment {deployment_id}'s shadow is promoted as deployment {dep.id}."
        )


@deployments_app.command("params")
def deployments_params(
    ctx: typer.Context,
    deployment_id: Annotated[int, typer.Argument(metavar="ID")],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="KEY=VALUE: min_score (0..1), default_label (text), disabled (true/false), "
            "shadow_sample (0..1); KEY=null unsets; repeatable.",
        ),
    ] = None,
    clear: Annotated[bool, typer.Option(help="Start from no parameters.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Change a deployment's serving parameters: its devices apply them without a transfer."""
    with user_errors():
        store = _state(ctx).hub.fleet.deployments
        current = store.get(deployment_id)
        params = parse_params(set_ or [], {} if clear else current.params)
        dep = store.set_params(deployment_id, params)
    if json_out:
        render.print_json(dep)
    else:
        render.console.print(render.deployment_table(dep))
        render.console.print("The running hub sends the new parameters to its devices.")


# -- broker config ------------------------------------------------------------------------------
def _parse_infer_client(text: str) -> tuple[str, tuple[str, ...] | None]:
    """NAME or NAME:DEVICE,DEVICE (the devices it may call; none given: all)."""
    name, sep, devices = text.partition(":")
    if not sep:
        return name, None
    listed = tuple(d for d in (p.strip() for p in devices.split(",")) if d)
    if not listed:
        raise InvalidInput(f"--infer-client {text!r}: expected NAME or NAME:DEVICE,DEVICE")
    return name, listed


def broker_config(
    ctx: typer.Context,
    listen: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT of a plain (no TLS) listener (default: 0.0.0.0:1883 without --tls, "
            "none with it)."
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write mosquitto.conf here.")
    ] = None,
    persistence: Annotated[bool, typer.Option(help="Keep retained state across restarts.")] = True,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls",
            help="Add a TLS listener: makes the fleet CA (ca.key, ca.crt) once and a server "
            "certificate for --tls-host (server.key, server.crt) in the auth files' directory.",
        ),
    ] = False,
    tls_listen: Annotated[
        str, typer.Option(help="HOST:PORT of the TLS listener (with --tls).")
    ] = "0.0.0.0:8883",
    tls_host: Annotated[
        list[str] | None,
        typer.Option(
            help="A name or IP address devices and the hub dial (the certificate's SANs); "
            "repeatable (default: the TLS host, this machine's name, localhost, 127.0.0.1)."
        ),
    ] = None,
    max_packet_size: Annotated[
        int,
        typer.Option(
            min=1024,
            help="The largest MQTT packet a client may send; the client is disconnected above "
            "it. The default holds a model chunk, a log batch of 250 records and an 8 MiB "
            "inference request.",
        ),
    ] = DEFAULT_MAX_PACKET_SIZE,
    viewer: Annotated[
        list[str] | None,
        typer.Option(
            help="Add a read-only account NAME (status, reports, logs, telemetry, alerts); "
            "repeatable. Its password goes to account-NAME.password (0600)."
        ),
    ] = None,
    infer_client: Annotated[
        list[str] | None,
        typer.Option(
            help="Add an account NAME or NAME:DEV,DEV that may publish inference requests to "
            "devices (all, or those listed) and read their results; repeatable."
        ),
    ] = None,
    remove_account: Annotated[
        list[str] | None, typer.Option(help="Remove an account added before; repeatable.")
    ] = None,
) -> None:
    """A mosquitto.conf using the fleet's password and ACL files (written into the data dir's
    mosquitto/ folder): direction-specific rights per device, the username as client id, a
    packet size limit, and with --tls a TLS listener. Run: mosquitto -c FILE.

    Accounts added here are kept (accounts.json) and written again with every device
    registration; `kill -HUP` the broker to reload passwords and ACL, restart it for a new
    config or certificate."""
    from cloud_hub.fleet.broker_auth import Account
    from cloud_hub.fleet.broker_setup import configure_broker

    hub = _state(ctx).hub
    with user_errors():
        plain = parse_address(listen, "--listen") if listen else None
        if plain is None and not tls:
            plain = ("0.0.0.0", 1883)
        secure = parse_address(tls_listen, "--tls-listen") if tls else None
        wanted = [Account(name, "viewer") for name in viewer or []]
        for text in infer_client or []:
            name, listed = _parse_infer_client(text)
            wanted.append(Account(name, "infer", listed))
        made = configure_broker(
            hub.fleet.devices,
            hub.settings,
            plain=plain,
            secure=secure,
            tls_hosts=tls_host or [],
            add=wanted,
            remove=remove_account or [],
            persistence=persistence,
            max_packet_size=max_packet_size,
        )
    for secret in made.account_secrets:
        render.err_console.print(f"account password in {secret}")
    if secure is not None:
        render.err_console.print(
            f"fleet CA {made.files.tls.ca_cert} (agents and the hub verify the broker with it)"
            + ("; new server certificate: restart the broker" if made.certificate_issued else "")
        )
    if output is None:
        print(made.conf, end="")
    else:
        output.write_text(made.conf)
        render.err_console.print(f"wrote {output} (auth files in {made.files.directory})")
