"""The agent process: the building blocks wired together, started and stopped in order.

Start: outbox, restore the last active model (it serves at once, broker or not), HTTP API (its
bound port written to `data_dir/http.port`), MQTT link (reconnects forever), deployer, forwarder,
telemetry, frame source. Stop: the reverse, publishing the offline status and closing the outbox.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from edge_agent.config import AgentSettings
from edge_agent.core.fs import write_atomic
from edge_agent.core.preprocess import Geometry
from edge_agent.core.wire import (
    DeviceStatus,
    FetchRequest,
    InferRequest,
    InferResult,
    Report,
    ServingParams,
    VariantReport,
)
from edge_agent.deployer import Deployer
from edge_agent.forwarder import Forwarder
from edge_agent.hardware import agent_version, available_runtimes, hardware_model
from edge_agent.http_api import HttpApi
from edge_agent.inference import InferenceService, NoActiveModel, ServingDisabled
from edge_agent.memory import LARGE_BODY_BYTES, configure_allocator, release_memory
from edge_agent.model_manager import ModelEvent, ModelManager
from edge_agent.model_store import ModelStore
from edge_agent.mqtt_link import MqttLink
from edge_agent.outbox import BatchWriter, Outbox
from edge_agent.shadow import ShadowRunner
from edge_agent.source import FrameSource
from edge_agent.telemetry import LatencyTracker, SystemSampler, telemetry_record

__all__ = ["Agent", "agent_version", "available_runtimes"]

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, settings: AgentSettings, *, mqtt_client: mqtt.Client | None = None) -> None:
        self.settings = settings
        self.device_id = settings.device_id
        configure_allocator(settings.runtime.malloc_arenas)
        data_dir = settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(
            data_dir / "outbox.sqlite3",
            max_records=settings.outbox.max_records,
            max_bytes=settings.outbox.max_bytes,
        )
        self.writer = BatchWriter(self.outbox)
        self.store = ModelStore(data_dir / "store", keep=settings.models.keep)
        self.tracker = LatencyTracker()
        self.sampler = SystemSampler()
        self.manager = ModelManager(
            self.store,
            threads=settings.runtime.threads,
            memory_arena=settings.runtime.onnx_memory_arena,
            on_event=self._on_model_event,
        )
        self.shadow = ShadowRunner(self.manager, self.writer)
        self.service = InferenceService(
            self.manager,
            self.writer,
            self.tracker,
            labels=self._labels,
            params=self._params,
            shadow=self.shadow,
        )
        self.runtimes: list[str] = list(available_runtimes())
        self.hardware = settings.telemetry.hardware or hardware_model()
        self.link = MqttLink(self.device_id, settings.mqtt, self._status_doc, client=mqtt_client)
        self.deployer = Deployer(
            settings,
            self.manager,
            self.store,
            publish_report=self._publish_report,
            send_fetch=self._send_fetch,
            publish_variants=self._publish_variants,
            on_active_change=self.link.publish_status,
            hardware=self.hardware,
        )
        self.forwarder = Forwarder(
            self.device_id,
            self.outbox,
            settings.forwarder,
            self._send_batch,
            self.link.connected.is_set,
        )
        self.link.on("desired", self.deployer.on_desired)
        self.link.on("chunk", self.deployer.on_chunk)
        self.link.on("ack", self.forwarder.on_ack)
        self.link.on("infer", self._on_infer_request)
        self.link.on_connect(self.deployer.on_connected)
        self.link.on_connect(self.forwarder.on_connected)
        self.http: HttpApi | None = None
        self.source: FrameSource | None = None
        self._stop = threading.Event()
        self._telemetry = threading.Thread(
            target=self._telemetry_loop, name="telemetry", daemon=True
        )
        self._infer_pool = ThreadPoolExecutor(2, thread_name_prefix="mqtt-infer")
        self.started_at = time.time()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        restored = self.manager.restore()
        log.info("device %s: active model version %s", self.device_id, restored)
        http = self.settings.http
        if http.enabled:
            self.http = HttpApi(
                self.service,
                host=http.host,
                port=http.port,
                max_body_bytes=http.max_body_bytes,
                preprocessing=self._preprocessing,
                status=self.status,
                health=self.health,
                on_inferred=self.forwarder.wake,
                token=http.token,
            )
            if http.token is None and not _is_loopback(http.host):
                log.warning(
                    "the local HTTP API listens on %s without a token: anyone who reaches it "
                    "may predict and read the device's status; set [http] token",
                    http.host,
                )
            self.http.start()
            port_file = self.settings.data_dir / "http.port"
            write_atomic(port_file, f"{self.http.port}\n", mode=0o644)
            log.info("HTTP API on http://%s:%d", http.host, self.http.port)
        self.shadow.start()
        self.deployer.start()
        self.forwarder.start()
        self.link.start()
        self._telemetry.start()
        source = self.settings.source
        if source.uri:
            self.source = FrameSource(
                source.uri,
                source.fps,
                self._infer_frame,
                self._preprocessing,
                name=source.name,
            )
            self.source.start()
        log.info("agent %s running (mqtt %s:%d)", self.device_id, *self._broker())

    def _broker(self) -> tuple[str, int]:
        return self.settings.mqtt.host, self.settings.mqtt.port

    def stop(self) -> None:
        log.info("agent %s stopping", self.device_id)
        self._stop.set()
        if self.source is not None:
            self.source.stop()
            self.service.flush(timeout=10)
        if self.http is not None:
            self.http.stop()
            (self.settings.data_dir / "http.port").unlink(missing_ok=True)
        self._infer_pool.shutdown(wait=True, cancel_futures=True)
        self.shadow.stop()
        self.deployer.stop()
        self.forwarder.stop()
        self.link.stop()
        self.writer.close()
        self.outbox.close()
        log.info("agent %s stopped", self.device_id)

    # -- status ---------------------------------------------------------------------------------
    def _status_doc(self, state: str) -> DeviceStatus:
        active = self.manager.active
        return DeviceStatus(
            device_id=self.device_id,
            state=state,  # type: ignore[arg-type]
            agent_version=agent_version(),
            runtimes=self.runtimes,
            hardware=self.hardware,
            active_version=active.version_id if active is not None else None,
        )

    def health(self) -> dict[str, Any]:
        active = self.manager.active
        return {
            "status": "ok",
            "device_id": self.device_id,
            "active_version": active.version_id if active is not None else None,
            "mqtt_connected": self.link.connected.is_set(),
        }

    def status(self) -> dict[str, Any]:
        active = self.manager.active
        shadow = self.manager.shadow
        stats = self.outbox.stats()
        return {
            "device_id": self.device_id,
            "agent_version": agent_version(),
            "runtimes": self.runtimes,
            "hardware": self.hardware,
            "active_version": active.version_id if active is not None else None,
            "active_ref": active.ref.ref if active is not None else None,
            "active_task": getattr(self.manager.head, "task", None),
            "loaded_versions": self.manager.loaded_versions(),
            "installed_versions": [m.version_id for m in self.store.installed()],
            "on_probation": self.manager.on_probation,
            "threads": self.manager.threads,
            "inference_count": self.service.count,
            "mqtt_connected": self.link.connected.is_set(),
            "outbox": {
                "pending": stats.pending,
                "dropped": stats.dropped_total,
                "next_seq": stats.next_seq,
                "acked_upto": stats.acked_upto,
            },
            "forwarder": self.forwarder.stats(),
            "params": self.deployer.params.model_dump(),
            "shadow_version": shadow.version_id if shadow is not None else None,
            "shadow": self.shadow.totals(),
            "deployment": self.deployer.snapshot(),
            "uptime_s": round(time.time() - self.started_at, 3),
        }

    def _labels(self) -> list[str]:
        active = self.manager.active
        return list(active.ref.labels) if active is not None else []

    def _params(self) -> ServingParams:
        return self.deployer.params

    def _preprocessing(self) -> dict[str, Any] | None:
        return self.manager.preprocessing()

    # -- MQTT plumbing --------------------------------------------------------------------------
    def _publish_report(self, report: Report) -> None:
        self.link.publish("report", report.dumps())

    def _publish_variants(self, report: VariantReport) -> None:
        """An `auto` deployment's measurements and choice, on the "variants" topic (QoS 1, as
        reports)."""
        self.link.publish("variants", report.dumps())

    def _send_fetch(self, request: FetchRequest) -> bool:
        if not self.link.connected.is_set():
            return False
        info = self.link.publish("fetch", request.dumps())
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def _send_batch(self, kind: str, payload: bytes) -> bool:
        info = self.link.publish("logs" if kind == "logs" else "telemetry", payload)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def _on_model_event(self, event: ModelEvent) -> None:
        self.deployer.on_model_event(event)

    def _on_infer_request(self, payload: bytes) -> None:
        # Off paho's thread (an inference waits for its durable log write), on a bounded pool.
        try:
            self._infer_pool.submit(self._answer_infer, payload)
        except RuntimeError:
            log.warning("ignoring an infer request: the agent is stopping")

    def _answer_infer(self, payload: bytes) -> None:
        large = len(payload) > LARGE_BODY_BYTES
        self._answer(payload)
        if large:
            del payload
            release_memory()  # the request's lists and tensors are gone: give the memory back

    def _answer(self, payload: bytes) -> None:
        try:
            request: InferRequest = InferRequest.loads(payload)
        except Exception as exc:
            log.warning("ignoring an infer request: %s", exc)
            return
        try:
            feeds = _feeds(request.inputs)
            request.inputs = []  # the parsed lists go before the model runs
            result = self.service.infer(
                feeds, source="mqtt", request_id=request.request_id, outputs=request.outputs
            )
            doc = result.to_json()
            answer = InferResult(
                request_id=request.request_id,
                ok=True,
                model_version=result.model_version,
                predictions=doc["predictions"],
                outputs=doc.get("outputs"),
                latency_ms=doc["latency_ms"],
            )
        except (NoActiveModel, ServingDisabled) as exc:
            answer = InferResult(request_id=request.request_id, ok=False, error=str(exc))
        except ValueError as exc:  # the runtime's InputError among them
            answer = InferResult(
                request_id=request.request_id, ok=False, error=f"invalid input: {exc}"
            )
        except Exception as exc:
            log.exception("an MQTT infer request failed")
            answer = InferResult(
                request_id=request.request_id, ok=False, error=f"model error: {exc}"
            )
        self.link.publish("result", answer.dumps())
        self.forwarder.wake()

    # -- local inputs ---------------------------------------------------------------------------
    def _infer_frame(self, x: np.ndarray, source: str, geometry: Geometry | None = None) -> object:
        # Nobody waits for a frame's answer: its log is committed with the next group commit
        # (at most `max_unflushed` logs behind) instead of one fsync per frame.
        result = self.service.infer(
            x, source=source, wait=False, geometry=None if geometry is None else [geometry]
        )
        self.forwarder.wake()
        return result

    def _telemetry_loop(self) -> None:
        interval = self.settings.telemetry.interval_s
        while not self._stop.wait(interval):
            try:
                self.manager.poll()
                record = telemetry_record(
                    self.sampler,
                    self.tracker,
                    self.outbox.stats(),
                    shadow=self.shadow.window(reset=True),
                )
                self.writer.append("telemetry", record)
                self.forwarder.wake()
            except Exception as exc:
                if self._stop.is_set():
                    return
                log.warning("telemetry sample failed: %s", exc)


def _feeds(inputs: Any) -> np.ndarray | dict[str, np.ndarray]:
    """An InferRequest's inputs as arrays (a batch, or batches by input name); ValueError for
    values that are not numbers."""
    if isinstance(inputs, dict):
        return {str(name): _numbers(value, f"input {name}") for name, value in inputs.items()}
    return _numbers(inputs, "inputs")


def _numbers(value: Any, what: str) -> np.ndarray:
    x = np.asarray(value)
    if x.dtype.kind not in "fiu":
        raise ValueError(f"{what} must be numbers (got {x.dtype.name} values)")
    return x


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
