"""One model download over MQTT: windowed fetches, chunks written in place, resumable.

The model is cut into fixed-size chunks (the agent picks the size, so a broker's message limit is
the agent's setting). At most `window` fetches are in flight; each chunk received is checked
(CRC by `wire.Chunk.decode`, then deployment, digest, total size, offset and length) and written
at its offset into `{sha256}.part`; after every `window` chunks (and the last one) the part file
is fsynced and the indices it holds are recorded in `{sha256}.json`, so a chunk costs no fsync of
its own. A restarted agent, or one that lost its broker, therefore asks only for what it does not
hold yet (what it received after the last record, at most a window's worth, is asked again).

A refused chunk is re-requested at once, at most `max_retries` times per chunk; then the transfer
fails with the last reason. A fetch that goes unanswered for `timeout_s` is sent again (that is
not a refusal: the hub may simply be away). Not thread-safe: the deployer's thread drives it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

from edge_agent.config import TransferSettings
from edge_agent.core.fs import write_atomic
from edge_agent.core.wire import Chunk, FetchRequest, ModelRef, WireError

__all__ = ["Transfer", "TransferFailed"]

log = logging.getLogger(__name__)


class TransferFailed(Exception):
    """The model could not be transferred; the message is the reason reported to the hub."""


class Transfer:
    def __init__(
        self,
        ref: ModelRef,
        deployment_id: int,
        directory: Path,
        settings: TransferSettings,
        send_fetch: Callable[[FetchRequest], bool],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ref = ref
        self.deployment_id = deployment_id
        self.sha256 = ref.sha256.lower()
        self.size = ref.size
        self.settings = settings
        self._send = send_fetch
        self._clock = clock
        directory.mkdir(parents=True, exist_ok=True)
        self.part = directory / f"{self.sha256}.part"
        self.meta = directory / f"{self.sha256}.json"
        self.chunk_size = settings.chunk_size
        self.done: set[int] = set()
        self._unsynced: set[int] = set()  # written, not yet fsynced nor recorded
        self._load_progress()
        self.chunks = math.ceil(self.size / self.chunk_size)
        self.outstanding: dict[int, float] = {}
        self.refusals: dict[int, int] = {}  # refused answers per chunk index
        self.stray = 0  # refused answers that name no chunk we asked for
        self.resumed_bytes = self.received_bytes
        if not self.part.exists():
            with self.part.open("wb") as fh:
                fh.truncate(self.size)

    # -- progress on disk -----------------------------------------------------------------------
    def _load_progress(self) -> None:
        try:
            saved = json.loads(self.meta.read_text())
            if (
                saved.get("sha256") == self.sha256
                and saved.get("size") == self.size
                and self.part.is_file()
                and self.part.stat().st_size == self.size
            ):
                self.chunk_size = int(saved["chunk_size"])
                self.done = {int(i) for i in saved["done"]}
                log.info(
                    "resuming the transfer of %s… at %d of %d bytes",
                    self.sha256[:12],
                    self.received_bytes,
                    self.size,
                )
                return
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable transfer progress %s: %s", self.meta, exc)
        self.part.unlink(missing_ok=True)
        self.done = set()

    def _save_progress(self) -> None:
        state = {
            "sha256": self.sha256,
            "size": self.size,
            "chunk_size": self.chunk_size,
            "deployment_id": self.deployment_id,
            "done": sorted(self.done),
        }
        write_atomic(self.meta, json.dumps(state))

    # -- state ----------------------------------------------------------------------------------
    def _span(self, index: int) -> tuple[int, int]:
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.size - offset)

    @property
    def received_bytes(self) -> int:
        held = list(self.done)  # a copy: the status endpoint reads this from another thread
        return sum(self._span(i)[1] for i in held)

    @property
    def good_offset(self) -> int:
        """Every byte below this offset is held."""
        index = 0
        while index in self.done:
            index += 1
        return min(index * self.chunk_size, self.size)

    @property
    def complete(self) -> bool:
        return len(self.done) == self.chunks

    # -- driving --------------------------------------------------------------------------------
    def pump(self) -> None:
        """Fill the window with fetches for chunks neither held nor in flight."""
        if self.complete:
            return
        for index in range(self.chunks):
            if len(self.outstanding) >= self.settings.window:
                return
            if index in self.done or index in self.outstanding:
                continue
            if not self._request(index):
                return

    def _request(self, index: int) -> bool:
        offset, length = self._span(index)
        request = FetchRequest(
            deployment_id=self.deployment_id, sha256=self.sha256, offset=offset, length=length
        )
        if not self._send(request):
            return False  # not connected: asked again on reconnect
        self.outstanding[index] = self._clock()
        return True

    def tick(self) -> None:
        """Re-send fetches unanswered for `timeout_s`, then fill the window."""
        now = self._clock()
        for index, sent in list(self.outstanding.items()):
            if now - sent >= self.settings.timeout_s:
                log.info("no answer for the chunk at offset %d; asking again", self._span(index)[0])
                del self.outstanding[index]
                self._request(index)
        self.pump()

    def reconnected(self) -> None:
        """A new MQTT session: whatever was in flight is lost; ask again from what is held."""
        self.outstanding.clear()
        self.pump()

    def on_chunk(self, payload: bytes) -> bool:
        """Take one chunk; True when it was written. Raises TransferFailed when a chunk has been
        refused more than `max_retries` times."""
        try:
            chunk = Chunk.decode(payload)
        except WireError as exc:
            self._refuse(_peek_offset(payload), str(exc))
            return False
        if chunk.deployment_id != self.deployment_id or chunk.sha256.lower() != self.sha256:
            if chunk.offset // self.chunk_size in self.outstanding:
                self._refuse(
                    chunk.offset,
                    f"chunk at offset {chunk.offset} is for deployment {chunk.deployment_id} / "
                    f"sha256 {chunk.sha256[:12]}…, not deployment {self.deployment_id} / "
                    f"{self.sha256[:12]}…",
                )
            else:
                log.debug("ignoring a chunk of another transfer")
            return False
        if chunk.total != self.size:
            self._refuse(
                chunk.offset,
                f"size mismatch: the hub serves {chunk.total} bytes, the desired state says "
                f"{self.size}",
            )
            return False
        index, misaligned = divmod(chunk.offset, self.chunk_size)
        if misaligned or chunk.offset >= self.size:
            self._refuse(
                chunk.offset, f"chunk offset {chunk.offset} is not one the agent asked for"
            )
            return False
        expected = self._span(index)[1]
        if len(chunk.data) != expected:
            self._refuse(
                chunk.offset,
                f"truncated: chunk at offset {chunk.offset} holds {len(chunk.data)} bytes, "
                f"expected {expected}",
            )
            return False
        if index in self.done:
            self.outstanding.pop(index, None)
            return False  # a duplicate answer
        with self.part.open("r+b") as fh:
            fh.seek(chunk.offset)
            fh.write(chunk.data)
        self.done.add(index)
        self._unsynced.add(index)
        self.outstanding.pop(index, None)
        if len(self._unsynced) >= self.settings.window or self.complete:
            self._sync()
        self.pump()
        return True

    def _sync(self) -> None:
        """Make the chunks written so far durable, then record them (never the other way)."""
        fd = os.open(self.part, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._unsynced.clear()
        self._save_progress()

    def _refuse(self, offset: int | None, reason: str) -> None:
        log.warning("refused a chunk: %s", reason)
        if offset is None or not 0 <= offset < self.size or offset // self.chunk_size in self.done:
            # Not the answer to any fetch we can name: count it, and let timeouts re-ask.
            self.stray += 1
            if self.stray > (self.settings.max_retries + 1) * self.settings.window:
                raise TransferFailed(f"{reason} ({self.stray} unusable chunks)")
            return
        index = offset // self.chunk_size
        count = self.refusals.get(index, 0) + 1
        self.refusals[index] = count
        if count > self.settings.max_retries:
            raise TransferFailed(f"{reason} (refused {count} times)")
        self.outstanding.pop(index, None)
        self._request(index)

    def read(self) -> bytes:
        return self.part.read_bytes()

    def discard(self) -> None:
        self.part.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)


def _peek_offset(payload: bytes) -> int | None:
    """The offset named in a chunk header, if it can be read at all."""
    try:
        (size,) = struct.unpack(">I", payload[4:8])
        return int(json.loads(payload[8 : 8 + size])["offset"])
    except (struct.error, ValueError, KeyError, TypeError):
        return None
