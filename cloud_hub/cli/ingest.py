"""`edgepilot hub ingest`: one more consumer of the fleet's logs (cloud_hub.fleet.ingest_consumer),
on the hub's data directory and its broker. Run the hub with `--shared-logs` so that it takes
its logs on the same shared subscription. SIGTERM or Ctrl-C stops it after storing and
acknowledging what it holds."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from cloud_hub.cli import render


def ingest(
    ctx: typer.Context,
    mqtt: Annotated[str, typer.Option(help="HOST:PORT of the fleet's MQTT broker.")],
    mqtt_tls: Annotated[
        bool, typer.Option(help="TLS to the broker, checked against the fleet CA.")
    ] = False,
    mqtt_ca_file: Annotated[
        Path | None, typer.Option(help="CA file the broker's certificate is checked against.")
    ] = None,
) -> None:
    """Store devices' logs beside the hub (run the hub with --shared-logs): each batch reaches
    one consumer, is stored once and acknowledged after its commit."""
    from cloud_hub.cli.base import fail, user_errors
    from cloud_hub.cli.base import state as _state
    from cloud_hub.cli.parsing import parse_address
    from cloud_hub.core.errors import Refused
    from cloud_hub.fleet.ingest_consumer import IngestConsumer
    from cloud_hub.fleet.mqtt_service import shared_logs_filter
    from cloud_hub.hub import Hub

    overrides: dict[str, Any] = {"run_scheduler": False, "fleet_shared_logs": True}
    with user_errors():
        overrides["mqtt_host"], overrides["mqtt_port"] = parse_address(mqtt, "--mqtt")
    if mqtt_tls or mqtt_ca_file is not None:
        if mqtt_ca_file is not None and not mqtt_ca_file.is_file():
            raise fail(f"no such file: {mqtt_ca_file}")
        overrides["mqtt_tls"] = True
        overrides["mqtt_ca_file"] = mqtt_ca_file
    settings = _state(ctx).settings(**overrides)
    hub = Hub.open(settings)
    sys.setswitchinterval(settings.thread_switch_interval_ms / 1000)
    try:
        consumer = IngestConsumer(hub)
    except Refused as exc:
        hub.close()
        raise fail(str(exc)) from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    consumer.start()
    render.err_console.print(
        f"ingest consumer {consumer.username}: logs of {shared_logs_filter(settings)} on "
        f"{settings.mqtt_host}:{settings.mqtt_port} (Ctrl-C stops)",
        highlight=False,
        soft_wrap=True,
    )
    try:
        if not consumer.service.wait_connected(30):
            render.err_console.print("[yellow]not connected to the broker yet; retrying[/yellow]")
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        consumer.stop()
        stats = consumer.service.stats()
        hub.close()
        render.err_console.print(
            f"stored {stats.get('records', 0)} records in {stats.get('acks', 0)} batches; "
            f"refused {stats.get('rejected', 0) + stats.get('malformed', 0)}",
            highlight=False,
        )
