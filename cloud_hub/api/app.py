"""The hub's FastAPI application: REST API under /api/v1, OpenAPI docs at /docs."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from cloud_hub import __version__
from cloud_hub.api import (
    deployments,
    devices,
    endpoints,
    enrollment,
    hygiene,
    jobs,
    logs,
    metrics,
    projects,
    runs,
    schedules,
    stream,
    tokens,
    ui,
    versions,
)
from cloud_hub.api.auth import PUBLIC, Authenticator
from cloud_hub.hub import Hub
from cloud_hub.serving import ServingEngine
from cloud_hub.serving.service import JobService, job_queue, prediction_log
from cloud_hub.stream.live import LiveStream
from cloud_hub.training.scheduler import TrainingScheduler

if TYPE_CHECKING:
    from cloud_hub.monitoring.service import MonitorService

API_PREFIX = "/api/v1"


def create_app(
    hub: Hub, *, scheduler: bool | None = None, fleet: bool | None = None, freeze_gc: bool = False
) -> FastAPI:
    """The app; its lifespan runs the serving engine (endpoints), the training scheduler and,
    when the settings name a broker (`mqtt_host`), the fleet's MQTT service. `freeze_gc`: the
    process is the app's alone (`hub serve`): freeze what start-up made (see the setting
    `gc_freeze_after_start`)."""
    run_scheduler = hub.settings.run_scheduler if scheduler is None else scheduler
    run_fleet = hub.settings.mqtt_host is not None if fleet is None else fleet

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sched = None
        if run_scheduler:
            sched = TrainingScheduler(
                hub.registry, hub.pipeline(), poll_s=hub.settings.scheduler_poll_s
            )
            sched.start()
        app.state.scheduler = sched
        app.state.engine = _start_engine(hub)
        live = LiveStream(hub, endpoint_stats=lambda: _endpoint_stats(app.state.engine)).start()
        app.state.live = live
        service = None
        if run_fleet:
            from cloud_hub.fleet.mqtt_service import FleetService

            service = FleetService.from_hub(hub, observer=live.feed)
            service.start()
        app.state.fleet_service = service
        app.state.jobs = _start_jobs(hub, app.state.engine)
        app.state.monitor = _start_monitor(hub)
        if freeze_gc:
            gc.collect()
            gc.freeze()  # what start-up made lives as long as the app: never scan it again
        try:
            yield
        finally:
            if app.state.monitor is not None:
                app.state.monitor.stop()
            app.state.jobs.stop()
            if service is not None:
                service.stop()
            live.stop()
            app.state.engine.close()
            if sched is not None:
                sched.stop()

    app = FastAPI(
        title="EdgePilot hub",
        version=__version__,
        description="Registry, training, conversion and fleet API for EdgePilot. Every route "
        "but the health check needs a credential: an API token (`Authorization: Bearer ep_...`) "
        "with the role the route names (viewer < operator < admin), or, for what a device reads "
        "about itself, the device's broker credentials (HTTP Basic).",
        lifespan=lifespan,
    )
    app.state.hub = hub
    app.state.authenticator = Authenticator(hub)
    app.state.live = None  # the lifespan starts it
    app.state.stream_clients = set()

    @app.get("/api/v1/health", tags=["meta"], dependencies=[PUBLIC])
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    endpoints.add_error_handlers(app)
    app.include_router(metrics.router)  # GET /metrics, for Prometheus
    # endpoints first: routes are matched in order, and predict is the hot path
    for module in (
        endpoints,
        jobs,
        logs,
        projects,
        versions,
        runs,
        schedules,
        devices,
        deployments,
        enrollment,
        tokens,
        stream,
    ):
        app.include_router(module.router, prefix=API_PREFIX)
    from cloud_hub.api import alerts, monitoring  # prediction monitoring and its alerts

    for module in (monitoring, alerts):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(ui.router)  # the web dashboard: /ui/ (static, public), / redirects
    hygiene.install(app, hub.settings)  # error body, body limits, query and path checks: last
    return app


def _start_engine(hub: Hub) -> ServingEngine:
    log = prediction_log(hub.db, hub.settings)
    engine = ServingEngine(hub.registry, hub.db, threads=hub.settings.serving_threads, log=log)
    engine.start(poll_s=hub.settings.serving_poll_s)
    return engine


def _endpoint_stats(engine: ServingEngine) -> dict[str, dict[str, Any]]:
    """The serving engine's numbers per endpoint, for the live stream."""
    out: dict[str, dict[str, Any]] = {}
    for info in engine.list():
        try:
            out[info.name] = engine.stats(info.name)
        except Exception:  # deleted meanwhile
            continue
    return out


def _start_jobs(hub: Hub, engine: ServingEngine) -> JobService:
    """The job queue and the hub's own workers (`serving_workers`; MQTT completion when the
    settings name a broker)."""
    queue = job_queue(hub.db, hub.settings)
    return JobService(queue, engine, hub.settings, workers=hub.settings.serving_workers).start()


def _start_monitor(hub: Hub) -> MonitorService | None:
    """The alert monitor (`monitor`, every `monitor_interval_s`; alerts on MQTT when the
    settings name a broker)."""
    if not hub.settings.monitor:
        return None
    from cloud_hub.monitoring.service import MonitorService

    return MonitorService.from_settings(hub.db, hub.settings).start()
