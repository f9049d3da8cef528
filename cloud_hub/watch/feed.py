"""The live view's reader: a daemon thread that keeps a FleetState current from the hub.

It loads /overview, then reads the stream from the overview's last event id, merging every
event into the state under `lock` (the view reads the state under the same lock, on its own
timer: however busy the stream, the screen redraws at its own pace). When the hub cannot be
reached, or the stream ends, the state is marked unreachable (its data kept) and the thread
retries with a doubling back-off; it resumes with Last-Event-ID, and refetches /overview when
the hub says it missed events (or sends a device the state does not know).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import httpx

from cloud_hub.stream.client import HubRefused, HubStream, StreamEvent, fetch_overview
from cloud_hub.watch.state import FleetState

__all__ = ["Feed", "describe_error"]


class _Stream(Protocol):
    def events(self) -> Iterator[StreamEvent]: ...

    def close(self) -> None: ...


OverviewFn = Callable[[str, str], dict[str, Any]]
StreamFn = Callable[[str, str, str | None], _Stream]


def _default_stream(base_url: str, token: str, last_event_id: str | None) -> _Stream:
    return HubStream(base_url, token, last_event_id=last_event_id, timeout=30)


def describe_error(exc: BaseException) -> str:
    """A short reason for the header: what a user can act on."""
    if isinstance(exc, HubRefused):
        if exc.status in (401, 403):
            return f"the hub refused the token ({exc.status})"
        return f"the hub said {exc.status}: {exc.detail}"[:120]
    if isinstance(exc, httpx.HTTPStatusError):
        code = exc.response.status_code
        if code in (401, 403):
            return f"the hub refused the token ({code})"
        return f"HTTP {code}"
    if isinstance(exc, httpx.ConnectError):
        return "connection refused"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.HTTPError | OSError):
        return type(exc).__name__
    return f"{type(exc).__name__}: {exc}"[:80]


class Feed:
    def __init__(
        self,
        base_url: str,
        token: str,
        state: FleetState | None = None,
        *,
        fetch: OverviewFn = fetch_overview,
        stream: StreamFn = _default_stream,
        backoff: tuple[float, float] = (0.5, 10.0),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.state = state if state is not None else FleetState()
        self.lock = threading.Lock()
        self._fetch = fetch
        self._stream = stream
        self._backoff = backoff
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._current: _Stream | None = None

    def start(self) -> Feed:
        self._thread = threading.Thread(target=self.run, name="edgepilot-watch-feed", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the thread to end (it is a daemon: a read blocked on the network never holds up
        the program's exit)."""
        self._stop.set()
        current = self._current
        if current is not None:
            current.close()

    def _load(self) -> None:
        overview = self._fetch(self.base_url, self.token)
        with self.lock:
            self.state.load_overview(overview)
            self.state.mark_reachable()

    def run(self) -> None:
        delay = self._backoff[0]
        need_overview = not self.state.loaded
        while not self._stop.is_set():
            try:
                if need_overview:
                    self._load()
                    need_overview = False
                with self.lock:
                    resume = self.state.last_event_id
                self._current = self._stream(self.base_url, self.token, resume)
                for event in self._current.events():
                    if self._stop.is_set():
                        return
                    with self.lock:
                        self.state.mark_reachable()
                        action = self.state.apply(event.kind, event.data, event.id or None)
                    delay = self._backoff[0]
                    if action == "refetch":
                        self._load()
                error = "the stream ended"
            except (httpx.HTTPError, HubRefused, OSError, ValueError, KeyError) as exc:
                error = describe_error(exc)
            finally:
                self._current = None
            if self._stop.is_set():
                return
            now = time.time()
            with self.lock:
                self.state.mark_unreachable(now, error, retry_at=now + delay)
            self._stop.wait(delay)
            delay = min(delay * 2, self._backoff[1])
