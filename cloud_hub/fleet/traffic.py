"""The fleet's MQTT traffic, decoded for people (`edgepilot mqtt tail`).

A message is classified by its topic (the wire contract's `Topics`: a device topic's kind and
device, the alerts topic, or unknown) and its payload decoded with the wire module's message
class for that kind. What comes out is a `Decoded`: a JSON-able document and a short text:
log and telemetry batches as a header (records, sequence range, epoch) and a few fields per
record, model chunks as a one-line summary (never their bytes), the other kinds as JSON. A
payload that does not follow the contract is "invalid <Kind>: reason" and its size; a topic
outside the contract is shown raw (truncated, bytes escaped). Nothing here raises for a payload.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from edge_agent.core.wire import (
    TOPIC_SPECS,
    Chunk,
    LogBatch,
    LogRecord,
    Message,
    TelemetryBatch,
    TelemetryRecord,
    TopicKind,
    Topics,
    WireError,
)

__all__ = ["MESSAGE_CLASSES", "Decoded", "decode", "escape_bytes"]

MESSAGE_CLASSES: dict[TopicKind, type[Message]] = {
    spec.kind: spec.message for spec in TOPIC_SPECS if spec.message is not None
}
RAW_LIMIT = 200  # bytes of an unknown payload shown
REASON_LIMIT = 300  # characters of a validation error shown
RECORDS_SHOWN = 5  # records of a batch shown in the text


@dataclass(frozen=True)
class Decoded:
    """One message, decoded. `kind`: a wire topic kind, "alerts" or "unknown"; `device`: the
    device of a device topic; `ok`: the payload follows the contract (an unknown topic's is
    never checked: True); `document`: JSON-able; `text`: for a terminal (may be several lines)."""

    topic: str
    kind: str
    device: str | None
    ok: bool
    document: Any
    text: str
    size: int


def escape_bytes(payload: bytes, limit: int = RAW_LIMIT) -> str:
    """The first `limit` bytes as printable ASCII (`\\xNN`, `\\n` escapes), "…" when cut."""
    shown = repr(payload[:limit])[2:-1]
    return shown + ("…" if len(payload) > limit else "")


def _one_line(text: str, limit: int = REASON_LIMIT) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _json(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True)


def _seq_range(seqs: list[int]) -> str:
    if not seqs:
        return "no records"
    return f"seq {min(seqs)}..{max(seqs)}"


def _more(records: list[Any]) -> list[str]:
    hidden = len(records) - RECORDS_SHOWN
    return [f"  … {hidden} more"] if hidden > 0 else []


def _batch_header(name: str, batch: LogBatch | TelemetryBatch) -> str:
    n = len(batch.records)
    plural = "record" if n == 1 else "records"
    epoch = batch.epoch or "''"
    seqs = _seq_range([r.seq for r in batch.records])
    return f"{name} {n} {plural}, {seqs}, epoch {epoch}, floor {batch.floor}"


def _output_summary(output: list[float] | dict[str, Any]) -> str:
    if isinstance(output, dict):
        task = output.get("task")
        label = output.get("label", output.get("class"))
        parts = [str(task) if task is not None else "output"]
        if label is not None:
            parts.append(f"label={label}")
        if "score" in output:
            parts.append(f"score={output['score']}")
        return " ".join(parts)
    scores = ", ".join(f"{s:.3g}" for s in output[:4])
    return f"scores [{scores}{', …' if len(output) > 4 else ''}]"


def _log_line(r: LogRecord) -> str:
    version = "-" if r.model_version is None else str(r.model_version)
    extra = " shadow" if r.role == "shadow" else ""
    extra += " thresholded" if r.thresholded else ""
    return (
        f"  #{r.seq} {r.request_id} v{version} {r.latency_ms:.1f} ms {r.source}{extra}: "
        f"{_output_summary(r.output)}"
    )


def _num(value: float | None, unit: str) -> str | None:
    return None if value is None else f"{value:.1f}{unit}"


def _telemetry_line(r: TelemetryRecord) -> str:
    fields = [
        ("cpu", _num(r.cpu_percent, "%")),
        ("rss", _num(r.memory_rss_mb, " MB")),
        ("mem", _num(r.memory_percent, "%")),
        ("temp", _num(r.temperature_c, " °C")),
        ("backlog", None if r.outbox_pending is None else str(r.outbox_pending)),
        ("dropped", None if r.outbox_dropped is None else str(r.outbox_dropped)),
    ]
    parts = [f"{name} {value}" for name, value in fields if value is not None]
    if r.inferences:
        parts.append("inferences " + ",".join(f"v{k}={v}" for k, v in r.inferences.items()))
    if r.shadow is not None:
        parts.append(f"shadow v{r.shadow.shadow_version} {r.shadow.agreed}/{r.shadow.compared}")
    return f"  #{r.seq} " + (", ".join(parts) or "(no samples)")


def _message_text(kind: TopicKind, msg: BaseModel) -> str:
    if isinstance(msg, LogBatch):
        lines = [_batch_header("LogBatch", msg)]
        lines += [_log_line(r) for r in msg.records[:RECORDS_SHOWN]]
        return "\n".join(lines + _more(msg.records))
    if isinstance(msg, TelemetryBatch):
        lines = [_batch_header("TelemetryBatch", msg)]
        lines += [_telemetry_line(r) for r in msg.records[:RECORDS_SHOWN]]
        return "\n".join(lines + _more(msg.records))
    return f"{type(msg).__name__} {_json(msg.model_dump(mode='json'))}"


def _chunk(topic: str, device: str, payload: bytes) -> Decoded:
    try:
        chunk = Chunk.decode(payload)
    except WireError as exc:
        return _invalid(topic, "chunk", device, "Chunk", str(exc), len(payload))
    end = chunk.offset + len(chunk.data)
    doc = {
        "deployment_id": chunk.deployment_id,
        "sha256": chunk.sha256,
        "offset": chunk.offset,
        "total": chunk.total,
        "bytes": len(chunk.data),
    }
    text = (
        f"Chunk deployment {chunk.deployment_id} sha256 {chunk.sha256[:12]}… "
        f"{chunk.offset}..{end}/{chunk.total} ({len(chunk.data)} bytes)"
    )
    return Decoded(topic, "chunk", device, True, doc, text, len(payload))


def _invalid(
    topic: str, kind: str, device: str | None, name: str, reason: str, size: int
) -> Decoded:
    reason = _one_line(reason.removeprefix(f"invalid {name}: "))
    doc = {"invalid": name, "reason": reason, "size": size}
    return Decoded(
        topic, kind, device, False, doc, f"invalid {name}: {reason} ({size} bytes)", size
    )


def _raw(topic: str, kind: str, payload: bytes) -> Decoded:
    shown = escape_bytes(payload)
    doc = {"raw": shown, "size": len(payload), "truncated": len(payload) > RAW_LIMIT}
    return Decoded(
        topic, kind, None, True, doc, f"raw ({len(payload)} bytes): {shown}", len(payload)
    )


def _alert(topic: str, payload: bytes) -> Decoded:
    try:
        doc = json.loads(payload)
    except ValueError as exc:
        return _invalid(topic, "alerts", None, "alert", f"not JSON: {exc}", len(payload))
    return Decoded(topic, "alerts", None, True, doc, f"alert {_json(doc)}", len(payload))


def decode(topic: str, payload: bytes, *, topic_root: str) -> Decoded:
    """What a message on `topic` says (see the module's docstring); never raises."""
    if topic == Topics(topic_root).alerts():
        return _alert(topic, payload)
    try:
        device, kind = Topics(topic_root).parse(topic)
    except WireError:
        return _raw(topic, "unknown", payload)
    if kind == "chunk":
        return _chunk(topic, device, payload)
    cls = MESSAGE_CLASSES[kind]
    try:
        msg = cls.loads(payload)
    except WireError as exc:
        return _invalid(topic, kind, device, cls.__name__, str(exc), len(payload))
    text = _message_text(kind, msg)
    return Decoded(topic, kind, device, True, msg.model_dump(mode="json"), text, len(payload))
