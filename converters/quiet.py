"""Silencing what converters print while they run ("Saved artifact at ...") and their warnings."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator

__all__ = ["quiet"]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Swallow stdout, stderr and warnings while a converter runs.

    sys.stdout is process-wide: prints from other threads are swallowed too while this runs.
    """
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        yield
