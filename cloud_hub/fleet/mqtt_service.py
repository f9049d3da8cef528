"""The hub's MQTT side: one paho client that publishes desired state, serves model chunks and
ingests status, reports, logs and telemetry.

- MQTT 3.1.1 by default (every broker speaks it, the demo's embedded amqtt included; MQTT 5
  with `mqtt_protocol="5"`), with a persistent session (clean session off; in MQTT 5 clean_start
  off and a session expiry): QoS 1 messages devices send while the hub is down wait at the
  broker and reach the hub when it comes back. A client passed in must speak the same version.
- Desired state is published from a poll loop (every `fleet_poll_s`): it publishes the
  deployment rows nobody has published yet, whoever wrote them (the REST API, or the CLI in
  another process), and re-evaluates live deployments (canary promotion after `promote_after_s`).
  After a connect without a session (first start, broker restarted without persistence) every
  device's current desired state is published again, so retained state is never lost for good.
  A deployment whose serving parameters changed (`params_rev`) is published again to its
  devices: the same model, new parameters, nothing to transfer.
- Everything a device sends is parsed with the wire contract on paho's network thread. Status,
  reports and fetches are handled there too (light); logs and telemetry are queued for the
  ingest worker (`ingest_worker`), which stores many messages of many devices per transaction
  (group commit: `fleet_commit_max_messages`, `fleet_commit_max_delay_ms`) and acknowledges each
  batch only after its transaction committed. Its queue is bounded (`fleet_ingest_queue`): when
  full, the network thread waits, and the broker holds the rest. A malformed message, one from
  an unknown device, or one the hub refuses is logged and counted (`stats()`), recorded as the
  device's last rejection reason where the device is known, and never stops the client.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from cloud_hub.core.db import Database
from cloud_hub.core.settings import HubSettings
from cloud_hub.fleet.broker_auth import HUB_USER, BrokerFiles, hub_ca_file, hub_password
from cloud_hub.fleet.desired import DesiredStates
from cloud_hub.fleet.devices import device_exists
from cloud_hub.fleet.errors import Rejected
from cloud_hub.fleet.ingest import Ingest
from cloud_hub.fleet.ingest_worker import IngestWorker, Pending
from cloud_hub.fleet.metrics_store import MetricsStore
from cloud_hub.fleet.observer import FleetObserver
from cloud_hub.fleet.presence import Presence
from cloud_hub.fleet.rollout import Assignment, Rollout
from cloud_hub.fleet.variant_choice import VariantChoices
from cloud_hub.registry.artifacts import ArtifactStore
from cloud_hub.registry.registry import Registry
from cloud_hub.registry.signing import HubSigner
from edge_agent.core.mqtt import tcp_no_delay, tls_context
from edge_agent.core.wire import (
    Ack,
    Chunk,
    DeviceStatus,
    FetchRequest,
    LogBatch,
    Report,
    TelemetryBatch,
    TopicKind,
    Topics,
    VariantReport,
    WireError,
)

if TYPE_CHECKING:
    from cloud_hub.hub import Hub

__all__ = ["FleetService", "Role", "build_client", "shared_logs_filter"]

SUBSCRIBED: tuple[TopicKind, ...] = ("status", "report", "variants", "logs", "telemetry", "fetch")
Role = Literal["hub", "ingest"]


def shared_logs_filter(settings: HubSettings) -> str:
    """`$share/GROUP/{root}/dev/+/logs`: the broker hands each message to one member."""
    return f"$share/{settings.fleet_share_group}/{Topics(settings.topic_root).all_devices('logs')}"


PUBLISH_TIMEOUT_S = 10.0


def build_client(
    settings: HubSettings, *, account: tuple[str, str] | None = None, persistent: bool = True
) -> mqtt.Client:
    """The hub's paho client (`mqtt_protocol`), with credentials: `account` (username,
    password), else the settings' own, else the hub user of the broker files that `edgepilot
    hub broker-config` writes; with `mqtt_tls`, TLS checked against `hub_ca_file`.

    The session is persistent (unless not `persistent`) whatever the broker calls it: a broker
    configured by `broker-config` replaces the client id asked for (`mqtt_client_id`) by the
    username and keys the session on that, which only the hub's own account can take."""
    client_id = settings.mqtt_client_id if account is None else account[0]
    if settings.mqtt_protocol == "5":
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    else:  # a persistent session: the broker queues QoS 1 messages while the hub is away
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=not persistent,
        )
    username: str = HUB_USER
    password: str | None = settings.mqtt_password
    if account is not None:
        username, password = account
    elif settings.mqtt_username is not None:
        username = settings.mqtt_username
    else:
        password = password or hub_password(BrokerFiles.in_data_dir(settings.data_dir))
    client.username_pw_set(username, password)
    if settings.mqtt_tls:
        client.tls_set_context(tls_context(hub_ca_file(settings)))
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    return client


class FleetService:
    """Construct with the hub's parts (or `from_hub`), then `start()` ... `stop()`."""

    def __init__(
        self,
        *,
        db: Database,
        registry: Registry,
        signer: HubSigner,
        settings: HubSettings,
        client: mqtt.Client | None = None,
        logger: logging.Logger | None = None,
        observer: FleetObserver | None = None,
        role: Role = "hub",
    ) -> None:
        self.settings = settings
        self.observer = observer
        self.role = role
        self.topics = Topics(settings.topic_root)
        self.log = logger or logging.getLogger("cloud_hub.fleet")
        self.store: ArtifactStore = registry.store
        self.rollout = Rollout(db)
        self.ingest = Ingest(
            db,
            max_batch_records=settings.fleet_max_batch_records,
            seq_window=settings.fleet_seq_window,
            on_conflict=self._seq_conflict,
        )
        self.ingest_worker = IngestWorker(
            self.ingest,
            stored=self._stored,
            refused=self._refused,
            max_messages=settings.fleet_commit_max_messages,
            max_delay_s=settings.fleet_commit_max_delay_ms / 1000,
            queue_size=settings.fleet_ingest_queue,
            logger=self.log,
        )
        self.presence = Presence(db)
        self.metrics = MetricsStore(db, settings)
        self.desired = DesiredStates(db, registry, signer)
        self.variants = VariantChoices(db)
        self._resettled: set[Assignment] = set()  # auto choices made: publish those again
        self._resettled_lock = threading.Lock()
        self.db = db
        self.client = client or build_client(settings)
        self.chunk_size = settings.chunk_size
        self._stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._connected = threading.Event()
        self._republish = threading.Event()
        self._stopping = threading.Event()
        self._poller: threading.Thread | None = None
        self._last_ack: mqtt.MQTTMessageInfo | None = None
        self._known_ids: set[str] = set()

    @classmethod
    def from_hub(
        cls,
        hub: Hub,
        *,
        client: mqtt.Client | None = None,
        observer: FleetObserver | None = None,
        role: Role = "hub",
    ) -> FleetService:
        return cls(
            db=hub.db,
            registry=hub.registry,
            signer=hub.fleet.signer,
            settings=hub.settings,
            client=client,
            observer=observer,
            role=role,
        )

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if self.settings.mqtt_host is None:
            raise ValueError("no broker configured: set mqtt_host in the hub's settings")
        c = self.client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_socket_open = tcp_no_delay  # chunks go out at once, not after a delayed ACK
        c.max_inflight_messages_set(1000)  # before connect (paho)
        c.max_queued_messages_set(0)  # unbounded: chunks for a window are queued at once
        host, port = self.settings.mqtt_host, self.settings.mqtt_port
        keepalive = self.settings.mqtt_keepalive_s
        if self.settings.mqtt_protocol == "5" and self.role == "ingest":
            c.connect_async(host, port, keepalive, clean_start=True)  # a consumer keeps nothing
        elif self.settings.mqtt_protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.settings.mqtt_session_expiry_s
            c.connect_async(host, port, keepalive, clean_start=False, properties=props)
        else:
            c.connect_async(host, port, keepalive)
        self.ingest_worker.start()
        c.loop_start()
        self._stopping.clear()
        if self.role == "hub":  # desired state, rollouts, pruning: the hub's alone
            self._poller = threading.Thread(target=self._poll_loop, name="fleet-poll", daemon=True)
            self._poller.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._poller is not None:
            self._poller.join(timeout=30)
            self._poller = None
        self.ingest_worker.stop()  # what is queued is stored and acked while still connected
        last_ack = self._last_ack
        if last_ack is not None and self._connected.is_set():
            with contextlib.suppress(RuntimeError, ValueError):  # paho: sent only if waited for
                last_ack.wait_for_publish(timeout=PUBLISH_TIMEOUT_S)
        self.client.disconnect()
        self.client.loop_stop()
        self._connected.clear()

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stats(self) -> dict[str, int]:
        """Counters: messages, stored records, acks, chunks, and what was refused and why; the
        ingest worker's queue depth (`ingest_queue`), `commits`, and `batches_per_commit_last`
        / `_max`."""
        with self._stats_lock:
            counters = dict(self._stats)
        return counters | self.ingest_worker.stats()

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[key] += n

    def subscriptions(self) -> list[str]:
        """The hub reads everything devices send; with `fleet_shared_logs` it takes logs on the
        shared subscription, in turns with the `edgepilot hub ingest` consumers (role
        "ingest"), which read nothing else."""
        shared = shared_logs_filter(self.settings)
        if self.role == "ingest":
            return [shared]
        if not self.settings.fleet_shared_logs:
            return [self.topics.all_devices(k) for k in SUBSCRIBED]
        return [self.topics.all_devices(k) for k in SUBSCRIBED if k != "logs"] + [shared]

    # -- connection -----------------------------------------------------------------------------
    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self.log.error("broker refused the hub's connection: %s", reason_code)
            return
        client.subscribe([(topic, 1) for topic in self.subscriptions()])
        if not flags.session_present:
            self._republish.set()
        self._connected.set()
        self.log.info(
            "connected to %s:%s (session present: %s)",
            self.settings.mqtt_host,
            self.settings.mqtt_port,
            flags.session_present,
        )

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected.clear()
        if not self._stopping.is_set():
            self.log.warning("lost the broker (%s); reconnecting", reason_code)

    # -- desired state ----------------------------------------------------------------------------
    def _poll_loop(self) -> None:
        next_prune = 0.0
        while not self._stopping.is_set():
            try:
                if time.monotonic() >= next_prune:  # expired telemetry history, chunked
                    next_prune = time.monotonic() + self.settings.metrics_prune_interval_s
                    self.metrics.prune(time.time())
                self.poll_once()
            except Exception:  # keep polling: the next round may succeed
                self.log.exception("fleet poll failed")
                self._count("errors")
            self._stopping.wait(self.settings.fleet_poll_s)

    def poll_once(self) -> None:
        """Promote/halt/complete live deployments, then publish what is not published yet."""
        for deployment_id in self.rollout.live_deployments():
            self.rollout.evaluate(deployment_id)
        if not self._connected.is_set():
            return
        if self._republish.is_set():
            self._republish.clear()
            for a in self.rollout.current_desired():
                if not self._publish_desired(a):
                    self._republish.set()
                    return
        with self._resettled_lock:
            resettled, self._resettled = self._resettled, set()
        for a in sorted(resettled, key=lambda a: (a.deployment_id, a.device_id)):
            if self.rollout.is_current(a) and not self._publish_desired(a):
                with self._resettled_lock:
                    self._resettled.add(a)
                return
        for a in self.rollout.unpublished():
            if self._stopping.is_set():
                continue
            self.variants.reuse(a.deployment_id, a.device_id)  # an auto choice known for its kind
            if not self.rollout.claim_desired(a):
                continue
            if not self._publish_desired(a):
                return  # not connected: try again on the next round
            self.rollout.mark_published(a)
        for a, rev in self.rollout.params_changed():
            if self._stopping.is_set():
                return
            if not self._publish_desired(a):
                return
            self.rollout.mark_params_published(a, rev)
            self._count("params_published")

    def _publish_desired(self, a: Assignment) -> bool:
        state = self.desired.build(a.deployment_id, a.device_id)
        info = self.client.publish(
            self.topics.device(a.device_id, "desired"), state.dumps(), qos=1, retain=True
        )
        try:
            info.wait_for_publish(timeout=PUBLISH_TIMEOUT_S)
        except (RuntimeError, ValueError):
            return False
        if info.is_published():
            self._count("desired_published")
            return True
        return False

    # -- what devices send ----------------------------------------------------------------------
    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._count("messages")
        device_id: str | None = None
        try:
            device_id, kind = self.topics.parse(msg.topic)
            if not self._known(device_id):
                self._count("unknown_device")
                self.log.warning("message on %s from unknown device %r", msg.topic, device_id)
                return
            if not msg.payload:  # a retained message being cleared
                return
            self._handle(device_id, kind, bytes(msg.payload))
        except (WireError, ValidationError) as exc:
            self._refuse("malformed", device_id, msg.topic, str(exc))
        except Rejected as exc:
            self._refuse("rejected", device_id, msg.topic, str(exc))
        except Exception as exc:  # never let one message kill the network thread
            self.log.exception("failed to handle a message on %s", msg.topic)
            self._refuse("errors", device_id, msg.topic, f"hub error: {exc}")

    def _known(self, device_id: str) -> bool:
        """Whether the device is registered. Devices are never deleted, so a device once found
        is remembered: at fleet scale this read, on every message, was the hub's largest single
        cost (14% of its CPU at 5,000 devices, bench/RESULTS.md). An unknown id is asked again
        each time: it may be registering right now, in this process or another."""
        if device_id in self._known_ids:
            return True
        if not device_exists(self.db.conn, device_id):
            return False
        self._known_ids.add(device_id)
        return True

    def _refuse(self, counter: str, device_id: str | None, topic: str, reason: str) -> None:
        self.log.warning("refused a message on %s: %s", topic, reason)
        if device_id is not None:
            try:
                if self._known(device_id):
                    self.presence.record_rejection(device_id, f"{topic}: {reason}")
            except Exception:
                self.log.exception("could not record the rejection")
        # Counted once recorded: whoever sees the count also finds the reason on the device.
        self._count(counter)

    def _handle(self, device_id: str, kind: str, payload: bytes) -> None:
        if kind == "status":
            status = DeviceStatus.loads(payload)
            self._same_device(device_id, status.device_id)
            self.presence.record_status(device_id, status)
            if self.observer is not None:
                self.observer.device_changed(device_id)
        elif kind == "report":
            report = Report.loads(payload)
            self._same_device(device_id, report.device_id)
            deployment_id = self.rollout.apply_report(device_id, report)
            if deployment_id is not None:
                self.rollout.evaluate(deployment_id)
            if self.observer is not None:
                self.observer.report_applied(device_id, deployment_id)
        elif kind == "variants":  # an auto deployment's measurements: the choice is settled
            variants = VariantReport.loads(payload)
            self._same_device(device_id, variants.device_id)
            if self.variants.apply_report(device_id, variants):
                with self._resettled_lock:  # published from the poll loop, not this thread
                    self._resettled.add(Assignment(variants.deployment_id, device_id))
            self._count("variant_reports")
            if self.observer is not None:
                self.observer.report_applied(device_id, variants.deployment_id)
        elif kind == "logs":  # stored, then acked (or refused), by the ingest worker
            logs = LogBatch.loads(payload)
            self._same_device(device_id, logs.device_id)
            self.ingest_worker.put(Pending(device_id, self.topics.device(device_id, "logs"), logs))
        elif kind == "telemetry":
            tele = TelemetryBatch.loads(payload)
            self._same_device(device_id, tele.device_id)
            topic = self.topics.device(device_id, "telemetry")
            self.ingest_worker.put(Pending(device_id, topic, tele))
        elif kind == "fetch":
            self._serve(device_id, FetchRequest.loads(payload))

    @staticmethod
    def _same_device(topic_id: str, payload_id: str) -> None:
        if topic_id != payload_id:
            raise Rejected(f"message names device {payload_id!r} on device {topic_id!r}'s topic")

    def _stored(self, item: Pending, upto: int) -> None:
        """The ingest worker's word that `item` is committed (its epoch's mark is `upto`)."""
        batch = item.batch
        self._ack(item.device_id, batch.epoch, upto, len(batch.records))
        if self.observer is not None and isinstance(batch, TelemetryBatch):
            try:  # after the commit: what it shows is stored
                self.observer.telemetry_stored(item.device_id, batch.records)
            except Exception:
                self.log.exception("the fleet observer failed on %s's telemetry", item.device_id)
                self._count("errors")

    def _refused(self, counter: str, item: Pending, reason: str) -> None:
        """The ingest worker's word that `item` was refused (`rejected`) or failed (`errors`):
        not stored, not acked."""
        self._refuse(counter, item.device_id, item.topic, reason)

    def _ack(self, device_id: str, epoch: str, upto: int, records: int) -> None:
        """Acknowledge after the batch is committed (the store call has returned): the epoch's
        contiguous mark, with the epoch, so an agent can tell it from another outbox's."""
        self._count("records", records)
        ack = Ack(upto=upto, epoch=epoch)
        self._last_ack = self.client.publish(
            self.topics.device(device_id, "ack"), ack.dumps(), qos=1
        )
        self._count("acks")

    def _seq_conflict(self, device_id: str, count: int) -> None:
        """Records whose (epoch, seq) was stored already with other content: the first kept."""
        self.log.warning(
            "device %s sent %d record(s) whose sequence number is stored with other content",
            device_id,
            count,
        )
        self._count("seq_conflicts", count)

    # -- model transfer ---------------------------------------------------------------------------
    def _serve(self, device_id: str, req: FetchRequest) -> None:
        """Answer one window [offset, offset+length) in chunks of at most `chunk_size` bytes.
        Stateless: a device resumes by asking again from its last good offset."""
        allowed = self.rollout.fetchable_sha256s(device_id)
        if req.sha256 not in allowed:
            raise Rejected(
                f"fetch of {req.sha256[:12]}, which is not this device's desired artifact "
                f"({', '.join(a[:12] for a in allowed) or 'none'})"
            )
        path = self.store.path_for(req.sha256)
        total = path.stat().st_size
        if req.offset >= total:
            raise Rejected(f"fetch from offset {req.offset} beyond the artifact's {total} bytes")
        end = min(total, req.offset + req.length)
        topic = self.topics.device(device_id, "chunk")
        with Path(path).open("rb") as fh:
            fh.seek(req.offset)
            offset = req.offset
            while offset < end:
                data = fh.read(min(self.chunk_size, end - offset))
                chunk = Chunk(req.deployment_id, req.sha256, offset, total, data)
                self.client.publish(topic, chunk.encode(), qos=1)
                self._count("chunks")
                offset += len(data)
