"""A thread-safe LRU cache with a time to live and hit/miss counters."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class TTLCache(Generic[T]):
    def __init__(
        self,
        *,
        max_entries: int,
        ttl_s: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.clock = clock  # tests move it
        self._items: OrderedDict[str, tuple[float, T]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: str) -> T | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                stamp, value = found
                if self.ttl_s is None or self.clock() - stamp < self.ttl_s:
                    self._items.move_to_end(key)
                    self.hits += 1
                    return value
                del self._items[key]
            self.misses += 1
            return None

    def put(self, key: str, value: T) -> None:
        with self._lock:
            self._items[key] = (self.clock(), value)
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)
                self.evictions += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "entries": len(self._items),
                "max_entries": self.max_entries,
                "ttl_s": self.ttl_s,
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
            }
