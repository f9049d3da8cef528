"""`edgepilot hub worker`: job workers as a process of their own, on the hub's data directory.

They share the hub's SQLite queue with the hub's own worker threads and with other worker
processes (jobs are claimed atomically, so none runs twice); the process builds the endpoints
from the registry and follows changes to them. SIGTERM or Ctrl-C stops it after the jobs in hand.
"""

from __future__ import annotations

import signal
import threading
from typing import Annotated, Any

import typer

from cloud_hub.cli import render


def worker(
    ctx: typer.Context,
    endpoint: Annotated[
        str | None, typer.Option(help="Take only this endpoint's jobs (default: all).")
    ] = None,
    threads: Annotated[int, typer.Option(min=1, max=256, help="Worker threads.")] = 1,
    mqtt: Annotated[
        str | None,
        typer.Option(help="HOST:PORT of the MQTT broker: publish job completions there."),
    ] = None,
    poll: Annotated[float, typer.Option(min=0.01, help="Idle poll interval, seconds.")] = 0.2,
    lease: Annotated[
        float | None, typer.Option(min=0.1, help="Job lease, seconds (default: the hub's).")
    ] = None,
) -> None:
    """Run job workers (asynchronous predictions, slow steps, batches) in this process."""
    from cloud_hub.cli.base import state as _state
    from cloud_hub.cli.base import user_errors
    from cloud_hub.hub import Hub
    from cloud_hub.serving import ServingEngine
    from cloud_hub.serving.service import JobService, job_queue, prediction_log

    state = _state(ctx)
    overrides: dict[str, Any] = {"serving_job_poll_s": poll, "run_scheduler": False}
    if lease is not None:
        overrides["serving_job_lease_s"] = lease
    if mqtt is not None:
        from cloud_hub.cli.parsing import parse_address

        with user_errors():
            overrides["mqtt_host"], overrides["mqtt_port"] = parse_address(mqtt, "--mqtt")
    settings = state.settings(**overrides)
    hub = Hub.open(settings)
    engine = ServingEngine(
        hub.registry, hub.db, threads=max(4, threads * 2), log=prediction_log(hub.db, settings)
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        engine.start(poll_s=settings.serving_poll_s)
        service = JobService(
            job_queue(hub.db, settings),
            engine,
            settings,
            workers=threads,
            endpoint=endpoint,
            label="proc",
        ).start()
        names = ", ".join(w.name for w in service.pool.workers)
        render.err_console.print(f"worker ready: {names} (data: {settings.data_dir})")
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            service.stop()
            ran = sum(w.ran for w in service.pool.workers)
            render.err_console.print(f"worker stopped after {ran} jobs")
    finally:
        engine.close()
        hub.close()
