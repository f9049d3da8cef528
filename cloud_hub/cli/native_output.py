"""What libraries write straight to file descriptors 1 and 2 (TensorFlow's C++ start-up lines,
the TFLite converter's and XNNPACK's prints) goes to a log file while the CLI draws live.

Such writes bypass Python's `sys.stderr`, so a live display cannot print them above itself: they
land between its lines and the display's next redraw leaves stale copies of its bars behind.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from rich.console import Console

NATIVE_FDS = (1, 2)


def _terminal_fd(console: Console) -> int | None:
    if not console.is_terminal:
        return None
    try:
        return console.file.fileno()
    except (AttributeError, OSError, ValueError):  # a stream without a descriptor
        return None


@contextmanager
def native_output_to(log_path: Path, console: Console) -> Iterator[Console]:
    """Inside the block, descriptors 1 and 2 write to `log_path` (appended); yields the console to
    draw on: one on the terminal `console` wrote to, or `console` itself when it writes to no
    terminal (then nothing is redirected)."""
    fd = _terminal_fd(console)
    if fd is None:
        yield console
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    terminal = os.fdopen(os.dup(fd), "w", encoding="utf-8", errors="replace")
    drawn = Console(
        file=terminal,
        force_terminal=True,
        width=console.width,
        color_system=cast(Any, console.color_system),
    )
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {n: os.dup(n) for n in NATIVE_FDS}
    try:
        for n in NATIVE_FDS:
            os.dup2(log_fd, n)
        yield drawn
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for n, copy in saved.items():
            os.dup2(copy, n)
            os.close(copy)
        os.close(log_fd)
        terminal.close()
