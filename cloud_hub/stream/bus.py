"""The live stream's event bus: one bounded ring of events that every stream client reads.

Publishers (the fleet service's threads, the sampler) append; nobody waits for a reader. Each
client keeps its own cursor and reads what is newer; the ring holds the newest `capacity`
events, so memory is bounded whatever the clients do. A client that reads too slowly (a browser
tab that stopped reading, a slow link) falls off the ring's end: its next read says how many
events it missed, and it starts again from the oldest event held. Ingest is never slowed by a
reader: appending is O(1) under a short lock.

Event ids are `BOOT-N`: BOOT is random per bus (per hub process), N counts from 1. A client
resuming with an id of another boot (the hub restarted) or older than the ring is told so.

Coalescing (`publish(..., key=...)`): at most one event per key per `coalesce_s` (telemetry: one
per device per second). An event that comes sooner waits, replacing any waiting one for the
same key, and goes out when its key's window ends (on the next publish or read), so the newest
values always arrive and never later than one window.
"""

from __future__ import annotations

import heapq
import itertools
import json
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cloud_hub.core.errors import InvalidInput
from cloud_hub.stream.events import EventKind

__all__ = ["Event", "EventBus", "Position", "Read"]

_ID = re.compile(r"^([0-9a-f]{8})-([0-9]{1,18})$")


@dataclass(frozen=True)
class Event:
    n: int
    kind: EventKind
    data: str  # one line of JSON

    def event_id(self, boot: str) -> str:
        return f"{boot}-{self.n}"


@dataclass(frozen=True)
class Position:
    """Where a client resumes: after event `n`; `lost` says why it cannot resume exactly."""

    n: int
    lost: str | None = None  # "restart" | "expired"


@dataclass(frozen=True)
class Read:
    events: list[Event]
    missed: int  # events that fell off the ring before this client read them
    cursor: int


class EventBus:
    def __init__(
        self,
        *,
        capacity: int = 20_000,
        coalesce_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        boot: str | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.boot = boot or secrets.token_hex(4)
        self.capacity = capacity
        self.coalesce_s = coalesce_s
        self._clock = clock
        self._ring: deque[Event] = deque(maxlen=capacity)
        self._n = 0
        self._lock = threading.Lock()
        self._last_sent: dict[tuple[str, str], float] = {}
        self._waiting: dict[tuple[str, str], tuple[EventKind, str]] = {}
        self._due: list[tuple[float, tuple[str, str]]] = []  # heap of (due, key)
        self._published = 0
        self._coalesced = 0

    # -- publishing ---------------------------------------------------------------------------
    def publish(self, kind: EventKind, data: Any, *, key: str | None = None) -> None:
        """Append an event (`data`: a pydantic model or JSON-able value). With `key`, at most
        one per (kind, key) per `coalesce_s`; the newest waiting one wins."""
        text = data.model_dump_json() if hasattr(data, "model_dump_json") else json.dumps(data)
        now = self._clock()
        with self._lock:
            self._flush_due(now)
            self._published += 1
            if key is None:
                self._append(kind, text)
                return
            slot = (kind, key)
            last = self._last_sent.get(slot)
            if slot not in self._waiting and (last is None or now - last >= self.coalesce_s):
                self._last_sent[slot] = now
                self._append(kind, text)
                return
            if slot not in self._waiting:
                heapq.heappush(self._due, ((last or now) + self.coalesce_s, slot))
            else:
                self._coalesced += 1
            self._waiting[slot] = (kind, text)

    def _append(self, kind: EventKind, text: str) -> None:
        self._n += 1
        self._ring.append(Event(self._n, kind, text))

    def _flush_due(self, now: float) -> None:
        while self._due and self._due[0][0] <= now:
            _, slot = heapq.heappop(self._due)
            waiting = self._waiting.pop(slot, None)
            if waiting is not None:
                self._last_sent[slot] = now
                self._append(*waiting)

    def forget(self, kind: EventKind, key: str) -> None:
        """Drop the coalescing state of a key that will not come back (a deleted device)."""
        with self._lock:
            self._last_sent.pop((kind, key), None)

    # -- reading ------------------------------------------------------------------------------
    @property
    def last_id(self) -> str:
        with self._lock:
            return f"{self.boot}-{self._n}"

    def position(self, last_event_id: str | None) -> Position:
        """Where a client that last saw `last_event_id` resumes (None: from now on).
        InvalidInput when the id is not one this hub could have sent."""
        with self._lock:
            latest = self._n
            oldest = self._ring[0].n if self._ring else latest + 1
        if last_event_id is None or last_event_id == "":
            return Position(latest)
        m = _ID.match(last_event_id.strip())
        if m is None:
            raise InvalidInput(
                "Last-Event-ID: expected BOOT-N (8 hex digits, a dash, a number), as the "
                "stream's `id:` lines say"
            )
        boot, n = m.group(1), int(m.group(2))
        if boot != self.boot:
            return Position(latest, lost="restart")
        if n > latest:
            raise InvalidInput(f"Last-Event-ID: event {n} has not happened yet (latest: {latest})")
        if n < oldest - 1:
            return Position(oldest - 1, lost="expired")
        return Position(n)

    def read(self, cursor: int, *, limit: int = 500) -> Read:
        """Events after `cursor` (at most `limit`), and how many were lost before them."""
        with self._lock:
            self._flush_due(self._clock())
            if not self._ring or cursor >= self._n:
                return Read([], 0, cursor)
            oldest = self._ring[0].n
            missed = 0
            if cursor < oldest - 1:
                missed = oldest - 1 - cursor
                cursor = oldest - 1
            start = cursor + 1 - oldest
            events = list(itertools.islice(self._ring, start, start + limit))
        return Read(events, missed, events[-1].n if events else cursor)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "published": self._published,
                "coalesced": self._coalesced,
                "events": self._n,
                "held": len(self._ring),
                "waiting": len(self._waiting),
            }
