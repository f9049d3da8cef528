"""Give freed memory back to the operating system, so the agent's RSS follows what it holds.

CPython returns its small-object arenas when they empty, but glibc's malloc keeps the pages of
freed large blocks (a parsed JSON body's lists, a dropped model's weights, tensors of a request)
in its heaps, one heap per thread that allocated: the agent serves requests on many threads, so
without help RSS only ever grows to its peak. `release_memory()` runs the garbage collector (a
runtime may sit in a reference cycle) and then glibc's `malloc_trim(0)`, which returns the free
pages of every heap. The agent calls it after it drops a runtime (probation passed, rollback, a
shadow dropped or replaced) and after a request whose body was large (`LARGE_BODY_BYTES`).
`configure_allocator(arenas)` caps how many heaps glibc makes (`M_ARENA_MAX`), so memory freed
by one request thread is reused by the next instead of sitting in a heap of its own, and fixes
the size from which a block gets its own mapping (`M_MMAP_THRESHOLD`, `MMAP_THRESHOLD`): glibc
otherwise raises that threshold each time such a block is freed, until a decoded frame or a
request's tensor (megabytes) lands in a heap and stays there; a mapped block goes back to the
system the moment it is freed.

Both are no-ops where glibc is not the allocator (macOS, musl): nothing fails there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys
import threading
from typing import Any

__all__ = ["LARGE_BODY_BYTES", "MMAP_THRESHOLD", "configure_allocator", "release_memory"]

log = logging.getLogger(__name__)

#: A request body above this size is followed by `release_memory()`.
LARGE_BODY_BYTES = 1 << 20

#: Blocks of this size or more are mapped on their own (and unmapped when freed).
MMAP_THRESHOLD = 256 * 1024

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers
_M_ARENA_MAX = -8
_libc: Any = None
_looked_up = False
_lock = threading.Lock()


def _glibc() -> Any:
    """glibc through ctypes (cached), or None when the C library is not glibc."""
    global _libc, _looked_up
    with _lock:
        if not _looked_up:
            _looked_up = True
            if sys.platform.startswith("linux"):
                try:
                    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                    if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt"):
                        libc.malloc_trim.argtypes = [ctypes.c_size_t]
                        libc.malloc_trim.restype = ctypes.c_int
                        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                        libc.mallopt.restype = ctypes.c_int
                        _libc = libc
                except OSError:
                    _libc = None
        return _libc


def release_memory() -> bool:
    """Collect garbage, then return the allocator's free pages to the system. Returns whether
    the allocator could be asked (False where it is not glibc: only the collection ran)."""
    gc.collect()
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def configure_allocator(arenas: int) -> bool:
    """Cap glibc's malloc heaps at `arenas` (0: leave glibc's default) and fix the mapping
    threshold at `MMAP_THRESHOLD`; call it early, before threads allocate. Returns whether glibc
    took the settings (False where the allocator is not glibc)."""
    if arenas < 0:
        raise ValueError(f"arenas must be 0 or more, not {arenas}")
    libc = _glibc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    if arenas:
        ok = bool(libc.mallopt(_M_ARENA_MAX, arenas)) and ok
    if not ok:
        log.debug("glibc refused a mallopt setting (arenas %d)", arenas)
    return ok
