"""FastAPI dependencies: the hub's parts, injected into routes."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from cloud_hub.hub import Hub
from cloud_hub.registry.registry import Registry


def get_hub(request: Request) -> Hub:
    return cast(Hub, request.app.state.hub)


def get_registry(request: Request) -> Registry:
    return get_hub(request).registry


HubDep = Annotated[Hub, Depends(get_hub)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
