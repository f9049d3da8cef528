"""A frame source read with OpenCV at a fixed rate: camera, video file, RTSP stream, image folder.

`uri` is a camera index ("0"), a video file, an RTSP/HTTP URL, or a folder of images (read in
name order, looping). A video file loops at its end; a camera or stream that fails is reopened
with a backoff. Each frame is prepared with the active model's preprocessing spec and handed to
`infer(x, name, geometry)` (the geometry maps model-input pixels back to the frame's, so boxes and
points are reported in the frame's pixels; a two-argument `infer(x, name)` is called without it);
errors are logged (at most every few seconds), never fatal.

Reading, decoding and preparing run on a reader thread one frame ahead of the inference (a queue
of one prepared frame), so on a device with a free core the decode of frame n+1 overlaps the
model on frame n; the inference thread paces the source at `fps`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.core.preprocess import Geometry, ImageError, prepare_image, require_image_spec

__all__ = ["FrameSource", "IMAGE_SUFFIXES"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".webp", ".tif", ".tiff")
_ERROR_LOG_INTERVAL_S = 5.0

_Prepared = tuple[np.ndarray, Geometry]


class FrameSource:
    def __init__(
        self,
        uri: str,
        fps: float,
        infer: Callable[..., object],
        preprocessing: Callable[[], dict[str, Any] | None],
        *,
        name: str | None = None,
    ) -> None:
        self.uri = uri
        self.interval = 1.0 / fps
        self.name = name or f"source:{uri}"
        self._infer = infer
        self._with_geometry = _takes_three(infer)
        self._preprocessing = preprocessing
        self._stop = threading.Event()
        self._last_error = float("-inf")
        self.frames = 0
        self._thread = threading.Thread(target=self._run, name="frame-source", daemon=True)
        self._ready: queue.Queue[_Prepared | None] = queue.Queue(maxsize=1)
        self._reader = threading.Thread(target=self._read, name="frame-reader", daemon=True)

    def start(self) -> None:
        self._reader.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in (self._thread, self._reader):
            if thread.is_alive():
                thread.join(5)

    def _read(self) -> None:
        """The reader thread: frames read and prepared, handed over one at a time."""
        try:
            for frame in self._frames():
                prepared = self._prepare(frame)
                while prepared is not None and not self._stop.is_set():
                    try:
                        self._ready.put(prepared, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        finally:
            with contextlib.suppress(queue.Full):
                self._ready.put_nowait(None)  # the frames ended (or the source stopped)

    def _prepare(self, frame: np.ndarray) -> _Prepared | None:
        try:
            spec = require_image_spec(self._preprocessing())
            x, geometry = prepare_image(frame, spec)
        except (ImageError, ValueError) as exc:
            self._warn(f"{self.name}: frame not inferred: {exc}")
            return None
        return x, geometry

    def _next(self) -> _Prepared | None:
        while not self._stop.is_set():
            try:
                return self._ready.get(timeout=0.1)
            except queue.Empty:
                if not self._reader.is_alive() and self._ready.empty():
                    return None
        return None

    def _run(self) -> None:
        next_at = time.monotonic()
        while (prepared := self._next()) is not None:
            if self._stop.is_set():
                return
            self._handle(*prepared)
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay < 0:
                next_at = time.monotonic()  # running late: do not try to catch up
            elif self._stop.wait(delay):
                return

    def _handle(self, x: np.ndarray, geometry: Geometry) -> None:
        try:
            if self._with_geometry:
                self._infer(x, self.name, geometry)
            else:
                self._infer(x, self.name)
            self.frames += 1
        except (ImageError, ValueError, RuntimeError) as exc:
            self._warn(f"{self.name}: frame not inferred: {exc}")
        except Exception as exc:  # NoActiveModel and engine errors: keep the source running
            self._warn(f"{self.name}: frame not inferred: {type(exc).__name__}: {exc}")

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_error >= _ERROR_LOG_INTERVAL_S:
            self._last_error = now
            log.warning(message)

    def _frames(self) -> Iterator[np.ndarray]:
        path = Path(self.uri)
        if path.is_dir():
            yield from self._folder(path)
        else:
            yield from self._capture()

    def _folder(self, folder: Path) -> Iterator[np.ndarray]:
        import cv2

        while not self._stop.is_set():
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                self._warn(f"{self.name}: no images in {folder}")
                if self._stop.wait(1.0):
                    return
            for file in files:
                image = cv2.imread(str(file), cv2.IMREAD_UNCHANGED)
                if image is None:
                    self._warn(f"{self.name}: cannot read {file}")
                    continue
                yield image
                if self._stop.is_set():
                    return

    def _capture(self) -> Iterator[np.ndarray]:
        import cv2

        target: int | str = int(self.uri) if self.uri.isdigit() else self.uri
        backoff = 0.5
        while not self._stop.is_set():
            capture = cv2.VideoCapture(target)
            if not capture.isOpened():
                self._warn(f"{self.name}: cannot open {self.uri}; retrying")
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.5
            try:
                while not self._stop.is_set():
                    ok, frame = capture.read()
                    if not ok:
                        break  # end of a file (loop) or a dropped stream (reopen)
                    yield frame
            finally:
                capture.release()


def _takes_three(infer: Callable[..., object]) -> bool:
    """Whether `infer` takes a third positional argument (the frame's geometry)."""
    try:
        params = list(inspect.signature(infer).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: call it as documented
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in params)
