"""The live fleet: `GET /overview` (where a live view starts) and `GET /stream` (server-sent
events that keep it current). See cloud_hub/stream/events.py for what each event carries.

The stream needs a viewer token like every read route. Browsers read it with fetch() and an
Authorization header (EventSource cannot send one). Each connection starts with `hello`; then
every event after `Last-Event-ID` (header, or `last_event_id` in the query), or from now on.
A reader that falls behind the bus's ring gets `missed` and carries on from the oldest event
held: its connection never holds up ingest or other readers. At most `stream_max_clients`
streams are served at once (503 beyond).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent

from cloud_hub.api.auth import VIEWER
from cloud_hub.core.errors import InvalidInput, Refused
from cloud_hub.stream.bus import Position
from cloud_hub.stream.events import FleetOverview, Hello, Missed
from cloud_hub.stream.live import LiveStream

router = APIRouter(tags=["live"])

POLL_S = 0.1  # how often an idle stream looks for new events
READ_LIMIT = 500  # events sent per look


def _live(request: Request) -> LiveStream:
    live: LiveStream | None = getattr(request.app.state, "live", None)
    if live is None:
        raise Refused(503, "the live stream is not running on this hub")
    return live


@router.get("/overview", dependencies=[VIEWER])
def overview(request: Request) -> FleetOverview:
    """Every device with its status, what it runs and its newest numbers; live and recent
    deployments with their progress; open alerts; endpoints. Read the stream from its
    `last_event_id` to keep it current."""
    return _live(request).snapshot()


def _position(
    request: Request,
    last_event_id_header: Annotated[
        str | None,
        Header(alias="Last-Event-ID", max_length=64, description="resume after this event"),
    ] = None,
    last_event_id: Annotated[
        str | None,
        Query(max_length=64, description="resume after this event (where a header cannot be set)"),
    ] = None,
) -> Position:
    """Where this connection starts; checked before the response starts, so a bad id is a 400."""
    try:
        return _live(request).bus.position(last_event_id_header or last_event_id)
    except InvalidInput as exc:
        raise Refused(400, str(exc)) from exc


def _slot(request: Request) -> Iterator[None]:
    """One of the `stream_max_clients` places, held while the stream is open."""
    live = _live(request)
    clients: set[object] = request.app.state.stream_clients
    if len(clients) >= live.max_clients:
        raise Refused(503, f"the hub serves {live.max_clients} streams at once; try again later")
    token = object()
    clients.add(token)
    try:
        yield
    finally:
        clients.discard(token)


@router.get(
    "/stream",
    dependencies=[VIEWER, Depends(_slot)],
    response_class=EventSourceResponse,
    responses={400: {"description": "a malformed or impossible Last-Event-ID"}},
)
async def stream(
    request: Request, position: Annotated[Position, Depends(_position)]
) -> AsyncIterator[ServerSentEvent]:
    """Server-sent events: hello, device, telemetry, deployment, alert, endpoint, missed."""
    bus = _live(request).bus
    cursor = position.n
    hello = Hello(boot=bus.boot, server_time=time.time(), last_event_id=f"{bus.boot}-{cursor}")
    yield ServerSentEvent(raw_data=hello.model_dump_json(), event="hello", retry=2000)
    if position.lost is not None:
        yield _missed(position.lost, None)
    while not await request.is_disconnected():
        read = bus.read(cursor, limit=READ_LIMIT)
        if read.missed:
            yield _missed("slow", read.missed)
        for e in read.events:
            yield ServerSentEvent(raw_data=e.data, event=e.kind, id=e.event_id(bus.boot))
        cursor = read.cursor
        if len(read.events) < READ_LIMIT:
            await asyncio.sleep(POLL_S)


def _missed(reason: str, n: int | None) -> ServerSentEvent:
    missed = Missed(reason=reason, missed=n)  # type: ignore[arg-type]
    return ServerSentEvent(raw_data=missed.model_dump_json(), event="missed")
