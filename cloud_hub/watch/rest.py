"""What the device and deployment screens ask the hub by REST (async, for Textual's loop).

Every function takes an `httpx.AsyncClient` made by `client()` (the hub's base URL and the
viewer token) and raises httpx errors when the hub is away or refuses.
"""

from __future__ import annotations

from typing import Any

import httpx

API = "/api/v1"
HISTORY = "1h"  # how far back a device screen's sparklines reach

__all__ = [
    "client",
    "deployment",
    "device_deployments",
    "device_history",
    "device_logs",
]


def client(base_url: str, token: str, timeout: float = 10.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout,
    )


async def _get(http: httpx.AsyncClient, path: str, **params: Any) -> Any:
    resp = await http.get(API + path, params=params)
    resp.raise_for_status()
    return resp.json()


async def device_history(http: httpx.AsyncClient, device_id: str) -> dict[str, list[float]]:
    """Each metric the device has history for: its values over the last hour, oldest first."""
    names = await _get(http, f"/devices/{device_id}/metrics/names")
    out: dict[str, list[float]] = {}
    for metric in names.get("metrics") or ():
        series = await _get(
            http, f"/devices/{device_id}/metrics", metric=metric, since=HISTORY, step="auto"
        )
        out[metric] = [float(p["value"]) for p in series.get("points") or ()]
    return out


async def device_logs(http: httpx.AsyncClient, device_id: str, limit: int = 20) -> list[Any]:
    """The device's newest inference logs, newest first."""
    found: list[Any] = await _get(http, f"/devices/{device_id}/logs", limit=limit)
    return found


async def device_deployments(http: httpx.AsyncClient, device_id: str) -> list[dict[str, Any]]:
    """The deployments that reached the device (newest first), each with the device's own
    state in it as `device_state` (and `device_reason`, and the artifact it was given as
    `device_artifact`)."""
    deployments = await _get(http, "/deployments", limit=100)
    out = []
    for dep in deployments:
        mine = [d for d in dep.get("devices") or () if d.get("device_id") == device_id]
        if mine:
            out.append(
                {
                    **dep,
                    "device_state": mine[0]["state"],
                    "device_reason": mine[0]["reason"],
                    "device_artifact": mine[0]["artifact"] or dep["artifact"],
                }
            )
    return out


async def deployment(http: httpx.AsyncClient, deployment_id: Any) -> dict[str, Any]:
    found: dict[str, Any] = await _get(http, f"/deployments/{deployment_id}")
    return found
