"""The hub's app as an ASGI app factory, for the fronts of bench/front.py that import the app
themselves (granian, uvicorn with several workers): what `edgepilot hub serve --no-scheduler`
builds, from the data dir in $FRONT_HUB_DATA. Each process that calls `factory` opens its own
Hub (its own SQLite connections) and its lifespan loads its own copy of every endpoint's models."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

DATA_ENV = "FRONT_HUB_DATA"


def factory() -> Any:
    """`hub serve`'s app and process settings (its option defaults, scheduler off)."""
    from cloud_hub.api.app import create_app
    from cloud_hub.core.settings import HubSettings
    from cloud_hub.hub import Hub

    settings = HubSettings(
        data_dir=Path(os.environ[DATA_ENV]),
        run_scheduler=False,
        serving_workers=2,
        prediction_log=True,
        monitor=True,
    )
    hub = Hub.open(settings)
    sys.setswitchinterval(settings.thread_switch_interval_ms / 1000)
    return create_app(hub, freeze_gc=settings.gc_freeze_after_start)
