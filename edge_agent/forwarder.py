"""Drains the outbox to the hub: batches in sequence order, several in flight, deleted on ack.

Records are sent oldest first, as LogBatch / TelemetryBatch messages (QoS 1) carrying the
outbox's floor, up to `max_in_flight` batches ahead of the hub's last ack. The hub acknowledges the
highest contiguous sequence it has stored; an ack deletes everything up to it. When no ack has
moved for `resend_after_s`, or after a reconnect, everything unacknowledged is sent again from the
ack point: the hub stores by (device, seq) idempotently, so a resend is never a duplicate there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from edge_agent.config import ForwarderSettings
from edge_agent.outbox import Outbox, OutboxError
from edge_agent.wire import Ack, LogBatch, LogRecord, TelemetryBatch, TelemetryRecord, WireError

__all__ = ["Forwarder"]

log = logging.getLogger(__name__)

Send = Callable[[str, bytes], bool]  # (kind "logs" | "telemetry", payload) -> sent


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
    ) -> None:
        self.device_id = device_id
        self.outbox = outbox
        self.settings = settings
        self._send = send
        self._connected = connected
        self._clock = clock
        self._poll_s = poll_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._acked = 0  # the highest ack heard from the hub
        self._applied = 0  # the highest ack applied to the outbox
        self._sent_upto = 0  # everything up to here has been sent since the last reset
        self._in_flight: list[tuple[int, float]] = []  # (last seq of a batch, sent at)
        self._progress_at = clock()
        self._reset = False
        self.sent_batches = 0
        self.resends = 0
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
        try:
            ack: Ack = Ack.loads(payload)
        except WireError as exc:
            log.warning("ignoring an ack: %s", exc)
            return
        with self._lock:
            if ack.upto > self._acked:
                self._acked = ack.upto
                self._progress_at = self._clock()
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

    def _step(self) -> None:
        with self._lock:
            acked = self._acked
            reset, self._reset = self._reset, False
        if acked > self._applied:
            self.outbox.ack(acked)
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
            records = self.outbox.pending(self.settings.batch_size, after_seq=self._sent_upto)
            if not records:
                return
            floor = self.outbox.floor()
            logs: list[dict[str, Any]] = []
            telemetry: list[dict[str, Any]] = []
            for record in records:
                (logs if record.kind == "log" else telemetry).append(
                    {**record.payload, "seq": record.seq}
                )
            if not self._publish(floor, logs, telemetry):
                return
            if not self._in_flight:
                self._progress_at = self._clock()
            self._sent_upto = records[-1].seq
            self._in_flight.append((self._sent_upto, self._clock()))
            self.sent_batches += 1

    def _publish(
        self, floor: int, logs: list[dict[str, Any]], telemetry: list[dict[str, Any]]
    ) -> bool:
        if logs:
            batch = LogBatch(
                device_id=self.device_id,
                floor=floor,
                records=[LogRecord.model_validate(r) for r in logs],
            )
            if not self._send("logs", batch.dumps()):
                return False
        if telemetry:
            tbatch = TelemetryBatch(
                device_id=self.device_id,
                floor=floor,
                records=[TelemetryRecord.model_validate(r) for r in telemetry],
            )
            if not self._send("telemetry", tbatch.dumps()):
                return False
        return True

    def stats(self) -> dict[str, int]:
        with self._lock:
            acked = self._acked
        return {
            "acked_upto": acked,
            "sent_upto": self._sent_upto,
            "in_flight_batches": len(self._in_flight),
            "resends": self.resends,
        }
