"""Reading the hub's live stream and overview from Python (`edgepilot watch`, tests, benchmarks).

`HubStream.events()` yields each server-sent event as it arrives and remembers the last id, so
calling it again after the hub went away resumes where it stopped (the hub replays what it still
holds, or says `missed`). It raises httpx's errors when the hub cannot be reached, and HubRefused
when the hub answers with an error (a bad token, a bad Last-Event-ID).
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = ["HubRefused", "HubStream", "StreamEvent", "fetch_overview"]


class HubRefused(RuntimeError):
    """The hub answered with an error status; the message is its `detail`."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"hub said {status}: {detail}")
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class StreamEvent:
    id: str | None
    kind: str
    data: dict[str, Any]


def _refused(response: httpx.Response) -> HubRefused:
    try:
        detail = str(response.json().get("detail"))
    except (ValueError, AttributeError):
        detail = response.reason_phrase
    return HubRefused(response.status_code, detail)


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def fetch_overview(base_url: str, token: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """`GET /api/v1/overview` as JSON."""
    response = httpx.get(
        f"{base_url.rstrip('/')}/api/v1/overview", headers=_headers(token), timeout=timeout
    )
    if response.status_code != 200:
        raise _refused(response)
    overview: dict[str, Any] = response.json()
    return overview


class HubStream:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        last_event_id: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = f"{base_url.rstrip('/')}/api/v1/stream"
        self.token = token
        self.last_event_id = last_event_id
        # read timeout above the hub's 15 s pings: a silent hub is a gone hub
        self.timeout = httpx.Timeout(timeout, connect=min(timeout, 5.0))
        self._client: httpx.Client | None = None

    def events(self) -> Generator[StreamEvent, None, None]:
        headers = _headers(self.token)
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        client = httpx.Client(timeout=self.timeout)
        self._client = client
        try:
            with client.stream("GET", self.url, headers=headers) as response:
                if response.status_code != 200:
                    response.read()
                    raise _refused(response)
                yield from self._parse(response.iter_lines())
        finally:
            self._client = None
            client.close()

    def close(self) -> None:
        """Stop a stream being read on another thread. Closing a socket does not wake a thread
        blocked reading it; shutting it down does, so the reader's iterator ends (with an httpx
        error) at once instead of at the next event or ping. httpx keeps its sockets inside
        httpcore's pool: reached by attribute, and where that fails, at the next ping."""
        client = self._client
        if client is None:
            return
        pool: Any = getattr(getattr(client, "_transport", None), "_pool", None)
        for conn in list(getattr(pool, "connections", ())):
            http11 = getattr(conn, "_connection", None)
            sock = getattr(getattr(http11, "_network_stream", None), "_sock", None)
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _parse(self, lines: Iterator[str]) -> Iterator[StreamEvent]:
        event_id: str | None = None
        kind = "message"
        data: list[str] = []
        for line in lines:
            if line == "":
                if data:
                    if event_id is not None:
                        self.last_event_id = event_id
                    yield StreamEvent(event_id, kind, json.loads("\n".join(data)))
                event_id, kind, data = None, "message", []
            elif line.startswith(":"):
                continue  # a ping
            else:
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "id":
                    event_id = value
                elif field == "event":
                    kind = value
                elif field == "data":
                    data.append(value)
