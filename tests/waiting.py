"""The one way tests wait: poll a condition until it holds, with a deadline that names what was
awaited. Never a fixed sleep before an assertion."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["wait_for", "wait_until"]


def wait_until(
    condition: Callable[[], Any],
    timeout: float = 10.0,
    what: str = "condition",
    interval: float = 0.02,
) -> Any:
    """Call `condition()` until it returns something truthy, and return that; AssertionError
    naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_for(
    get: Callable[[], Any],
    done: Callable[[Any], bool],
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "it",
) -> Any:
    """`wait_until` for a value: call `get()` until `done(value)`, return the value; the error
    shows the last value seen."""
    last: list[Any] = [None]

    def ready() -> bool:
        last[0] = get()
        return bool(done(last[0]))

    try:
        wait_until(ready, timeout, what, interval)
    except AssertionError:
        raise AssertionError(f"{what} not done after {timeout}s: {last[0]}") from None
    return last[0]
