"""Backpressure: what an endpoint holds at once, bounded.

Two caps per endpoint: the bytes of request bodies in flight (read, parsed, being answered) and
the rows admitted but not yet answered. A request that would take either past its cap is refused
(the hub answers 503 with `Retry-After`) instead of growing the queue and the process's memory.
A request is always admitted when nothing else is in flight, so a lone request bigger than a cap
is still served (the body limit bounds it).

Admission is a counter under a threading.Lock, held for a few instructions and never across an
await; what is admitted is given back exactly once, whichever way the request ends.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

from cloud_hub.core.errors import RegistryError

Cap = Literal["in_flight_bytes", "queued_rows"]


class EndpointBusy(RegistryError):
    """A request past one of the endpoint's caps (503 with Retry-After); `cap` names which."""

    def __init__(self, message: str, *, cap: Cap) -> None:
        super().__init__(message)
        self.cap = cap


def _busy(cap: Cap, limit: int, what: str) -> EndpointBusy:
    return EndpointBusy(
        f"the endpoint is full: its {cap} cap ({limit} {what}) is reached; retry later",
        cap=cap,
    )


@dataclass(frozen=True)
class Caps:
    """The caps in force for one endpoint (its spec's, else the hub's defaults)."""

    in_flight_bytes: int
    queued_rows: int


class Admission:
    """One endpoint's bytes and rows in flight, and how many requests each cap refused."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight_bytes = 0
        self.queued_rows = 0
        self.requests = 0  # admitted and not yet given back
        self.refused: Counter[Cap] = Counter()

    def admit_bytes(self, nbytes: int, caps: Caps) -> Ticket:
        """Take `nbytes` of body; EndpointBusy naming the cap if it is full."""
        with self._lock:
            if self.requests and self.in_flight_bytes + nbytes > caps.in_flight_bytes:
                self.refused["in_flight_bytes"] += 1
                full = True
            else:
                self.in_flight_bytes += nbytes
                self.requests += 1
                full = False
        if full:
            raise _busy("in_flight_bytes", caps.in_flight_bytes, "request body bytes in flight")
        return Ticket(self, nbytes)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "in_flight_bytes": self.in_flight_bytes,
                "queued_rows": self.queued_rows,
                "refused": {
                    "in_flight_bytes": self.refused["in_flight_bytes"],
                    "queued_rows": self.refused["queued_rows"],
                },
            }


class Ticket:
    """What one request holds: its body's bytes, then also its rows. `release` gives all of it
    back, once; `follow` hands that to a future (the request's run on the engine's threads), so
    what a cancelled caller leaves running is still counted until it ends."""

    def __init__(self, admission: Admission, nbytes: int) -> None:
        self._admission = admission
        self._bytes = nbytes
        self._rows = 0
        self._released = False
        self.followed = False

    def grow_bytes(self, nbytes: int, caps: Caps) -> None:
        """More body than was announced (a body without Content-Length, counted once read)."""
        a = self._admission
        with a._lock:
            if a.requests > 1 and a.in_flight_bytes + nbytes > caps.in_flight_bytes:
                a.refused["in_flight_bytes"] += 1
                full = True
            else:
                a.in_flight_bytes += nbytes
                self._bytes += nbytes
                full = False
        if full:
            raise _busy("in_flight_bytes", caps.in_flight_bytes, "request body bytes in flight")

    def admit_rows(self, rows: int, caps: Caps) -> None:
        """Take `rows` rows; EndpointBusy naming the cap if it is full."""
        a = self._admission
        with a._lock:
            if a.queued_rows and a.queued_rows + rows > caps.queued_rows:
                a.refused["queued_rows"] += 1
                full = True
            else:
                a.queued_rows += rows
                self._rows += rows
                full = False
        if full:
            raise _busy("queued_rows", caps.queued_rows, "rows admitted and not yet answered")

    def follow(self, future: Future[Any]) -> None:
        """Give everything back when `future` is done (not before, even if its caller is
        cancelled)."""
        self.followed = True
        future.add_done_callback(lambda _: self.release())

    def release(self) -> None:
        a = self._admission
        with a._lock:
            if self._released:
                return
            self._released = True
            a.in_flight_bytes -= self._bytes
            a.queued_rows -= self._rows
            a.requests -= 1
