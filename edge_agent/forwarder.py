"""Drains the outbox to the hub: batches in sequence order, several in flight, deleted on ack.

Records are sent oldest first, as LogBatch / TelemetryBatch messages (QoS 1) carrying the
outbox's epoch and floor, up to `max_in_flight` batches ahead of the hub's last ack. The hub
acknowledges, for the epoch, the highest contiguous sequence it has stored; an ack deletes
everything up to it. When no ack has moved for `resend_after_s`, or after a reconnect, everything
unacknowledged is sent again from the ack point: the hub stores by (device, epoch, seq)
idempotently, so a resend is never a duplicate there.

An ack is believed only when it is for this outbox's epoch (or from a hub before epochs, which
sends none) and at most the last sequence issued: anything else (a hub that still remembers the
outbox this device had before its data directory was wiped, a stray or forged message) is
ignored, logged and counted (`bad_acks`), and forwarding carries on from the last good ack.

A batch never reaches more than `wire.SEQ_WINDOW` past the last good ack, with its floor or its
records: every hub accepts that much. When the outbox has dropped more than that under overflow
(a long outage), the forwarder tells the hub in steps: record-less batches whose floor moves at
most `SEQ_WINDOW` past the last good ack, one per ack, until the real floor is within reach.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from edge_agent.config import ForwarderSettings
from edge_agent.core.wire import (
    SEQ_WINDOW,
    Ack,
    LogBatch,
    LogRecord,
    TelemetryBatch,
    TelemetryRecord,
    WireError,
)
from edge_agent.outbox import Outbox, OutboxError, OutboxRecord

__all__ = ["Forwarder"]

log = logging.getLogger(__name__)

Send = Callable[[str, bytes], bool]  # (kind "logs" | "telemetry", payload) -> sent

# Bad acks are logged at once the first time, then at most this often (a hub answering every
# batch with one would otherwise fill the log).
BAD_ACK_WARNING_INTERVAL_S = 30.0


class Forwarder:
    def __init__(
        self,
        device_id: str,
        outbox: Outbox,
        settings: ForwarderSettings,
        send: Send,
        connected: Callable[[], bool],
        *,
        clock: Callable[[], float] = time.monotonic,
        poll_s: float = 0.2,
        window: int = SEQ_WINDOW,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        self.device_id = device_id
        self.outbox = outbox
        self.epoch = outbox.epoch
        self.settings = settings
        self.window = window
        self._send = send
        self._connected = connected
        self._clock = clock
        self._poll_s = poll_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._heard: list[Ack] = []  # acks received, checked by the forwarder's thread
        # the highest good ack, and the highest applied to the outbox: the outbox's own mark
        # after a restart, so the first batches reach no farther than before it
        self._acked = self._applied = outbox.stats().acked_upto
        self._sent_upto = self._acked  # everything up to here has been sent since the last reset
        self._in_flight: list[tuple[int, float]] = []  # (last seq of a batch, sent at)
        self._progress_at = clock()
        self._reset = False
        self.sent_batches = 0
        self.resends = 0
        self.floor_steps = 0
        self.bad_acks = 0
        self._bad_acks_unreported = 0
        self._last_bad_ack_warning = float("-inf")
        self._thread = threading.Thread(target=self._run, name="forwarder", daemon=True)

    # -- inputs ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def wake(self) -> None:
        """New records are waiting (or the link came up)."""
        self._wake.set()

    def on_ack(self, payload: bytes) -> None:
        """Called on the MQTT thread: parsed here, checked against the outbox by our thread."""
        try:
            ack: Ack = Ack.loads(payload)
        except WireError as exc:
            log.warning("ignoring an ack: %s", exc)
            return
        with self._lock:
            self._heard.append(ack)
        self._wake.set()

    def on_connected(self) -> None:
        """A new session: whatever was in flight may be lost; start again from the ack."""
        with self._lock:
            self._reset = True
        self._wake.set()

    # -- the thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._poll_s)
            self._wake.clear()
            try:
                self._step()
            except OutboxError as exc:
                if self._stop.is_set():
                    return
                log.warning("forwarder: %s", exc)
            except Exception:
                log.exception("forwarder step failed")

    def _take_acks(self) -> None:
        """Believe the acks heard since the last step that are for this epoch and at most what
        was issued; count and log the others."""
        with self._lock:
            heard, self._heard = self._heard, []
        if not heard:
            return
        issued = self.outbox.issued()  # only grows: checking now is as good as on arrival
        for ack in heard:
            if ack.epoch and ack.epoch != self.epoch:
                self._bad_ack(ack, f"it is for epoch {ack.epoch!r}, this outbox is {self.epoch!r}")
            elif ack.upto > issued:
                self._bad_ack(ack, f"only {issued} sequence numbers were issued")
            elif ack.upto > self._acked:
                self._acked = ack.upto
                self._progress_at = self._clock()

    def _bad_ack(self, ack: Ack, why: str) -> None:
        self.bad_acks += 1
        self._bad_acks_unreported += 1
        now = self._clock()
        if now - self._last_bad_ack_warning < BAD_ACK_WARNING_INTERVAL_S:
            return
        log.warning(
            "ignoring an ack up to %d: %s (%d such ack(s) since the last warning, %d in all)",
            ack.upto,
            why,
            self._bad_acks_unreported,
            self.bad_acks,
        )
        self._bad_acks_unreported = 0
        self._last_bad_ack_warning = now

    def _step(self) -> None:
        self._take_acks()
        with self._lock:
            reset, self._reset = self._reset, False
        acked = self._acked
        if acked > self._applied:
            self.outbox.ack(acked, self.epoch)
            self._applied = acked
        now = self._clock()
        self._in_flight = [(last, at) for last, at in self._in_flight if last > acked]
        stalled = bool(self._in_flight) and now - self._progress_at >= self.settings.resend_after_s
        if reset or stalled:
            if self._in_flight or self._sent_upto > acked:
                self.resends += 1
                log.info(
                    "resending unacknowledged records after %d (%s)",
                    acked,
                    "reconnect" if reset else "no ack",
                )
            self._in_flight = []
            self._sent_upto = acked
            self._progress_at = now
        if self._sent_upto < acked:
            self._sent_upto = acked
        if not self._connected():
            return
        while len(self._in_flight) < self.settings.max_in_flight and not self._stop.is_set():
            # The floor first: records only ever leave from the bottom, so it is at most the
            # first record read after it (a batch whose floor is above its records is refused).
            floor = self.outbox.floor()
            records = self.outbox.pending(self.settings.batch_size, after_seq=self._sent_upto)
            if not records:
                return
            if floor - 1 - acked > self.window:
                self._step_floor(acked)
                return
            reach = max(acked, floor - 1) + self.window
            records = _within_bytes(
                [r for r in records if r.seq <= reach], self.settings.max_batch_bytes
            )
            if not records:
                return  # the rest waits for acks
            if not self._publish(floor, records):
                return
            if not self._in_flight:
                self._progress_at = self._clock()
            self._sent_upto = records[-1].seq
            self._in_flight.append((self._sent_upto, self._clock()))
            self.sent_batches += 1

    def _step_floor(self, acked: int) -> None:
        """The outbox dropped more than the window past the last ack: move the hub's floor one
        window on, with a record-less batch, and wait for its ack before the next step."""
        floor = acked + 1 + self.window
        if self._sent_upto >= floor - 1:
            return  # this step is in flight
        batch = LogBatch(device_id=self.device_id, epoch=self.epoch, floor=floor, records=[])
        if not self._send("logs", batch.dumps()):
            return
        log.info("the outbox dropped records the hub never saw: floor moved to %d", floor)
        if not self._in_flight:
            self._progress_at = self._clock()
        self._sent_upto = floor - 1
        self._in_flight.append((self._sent_upto, self._clock()))
        self.floor_steps += 1

    def _publish(self, floor: int, records: list[OutboxRecord]) -> bool:
        logs: list[dict[str, Any]] = []
        telemetry: list[dict[str, Any]] = []
        for record in records:
            (logs if record.kind == "log" else telemetry).append(
                {**record.payload, "seq": record.seq}
            )
        if logs:
            batch = LogBatch(
                device_id=self.device_id,
                epoch=self.epoch,
                floor=floor,
                records=[LogRecord.model_validate(r) for r in logs],
            )
            if not self._send("logs", batch.dumps()):
                return False
        if telemetry:
            tbatch = TelemetryBatch(
                device_id=self.device_id,
                epoch=self.epoch,
                floor=floor,
                records=[TelemetryRecord.model_validate(r) for r in telemetry],
            )
            if not self._send("telemetry", tbatch.dumps()):
                return False
        return True

    def stats(self) -> dict[str, int | str]:
        return {
            "epoch": self.epoch,
            "acked_upto": self._acked,
            "sent_upto": self._sent_upto,
            "in_flight_batches": len(self._in_flight),
            "resends": self.resends,
            "bad_acks": self.bad_acks,
            "floor_steps": self.floor_steps,
        }


def _within_bytes(records: list[OutboxRecord], limit: int) -> list[OutboxRecord]:
    """The first records whose payloads add up to at most `limit` bytes (at least one): a
    batch the broker would refuse as too large would be sent again and again, forever."""
    total = 0
    for i, record in enumerate(records):
        total += record.size
        if total > limit and i > 0:
            return records[:i]
    return records
