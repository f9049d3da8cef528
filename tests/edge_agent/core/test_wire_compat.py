"""The wire between agents and hubs of other releases: what each side sends parses on the other."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import BaseModel, Field, ValidationError

from edge_agent.core.wire import (
    Ack,
    DesiredState,
    LogBatch,
    LogRecord,
    Report,
    TelemetryBatch,
    TelemetryRecord,
    WireError,
)

REF = {
    "version_id": 3,
    "ref": "demo/iris:3",
    "format": "onnx",
    "precision": "fp32",
    "sha256": "ab" * 32,
    "size": 10,
    "signature": "c2ln",
}


def test_a_desired_state_of_an_older_hub_parses() -> None:
    # Before typed serving parameters a hub sent any dict; no shadow field at all.
    doc = {"v": 1, "device_id": "pi", "deployment_id": 4, "model": REF, "params": {"fps": 5}}
    desired = DesiredState.loads(json.dumps(doc).encode())
    assert desired.model is not None and desired.shadow is None
    assert desired.params.model_dump() == {
        "min_score": None,
        "default_label": None,
        "disabled": False,
        "shadow_sample": 1.0,
    }


def test_unknown_params_are_left_out_and_known_ones_still_validated() -> None:
    doc = {
        "v": 1,
        "device_id": "pi",
        "model": REF,
        "params": {"min_score": 0.7, "max_rate": 3},  # a newer hub's key
    }
    assert DesiredState.loads(json.dumps(doc).encode()).params.min_score == 0.7
    doc["params"] = {"min_score": 1.5, "max_rate": 3}
    with pytest.raises(WireError, match="min_score"):
        DesiredState.loads(json.dumps(doc).encode())


def test_records_and_reports_of_an_older_agent_parse() -> None:
    log = LogRecord.model_validate(
        {
            "seq": 1,
            "request_id": "r",
            "model_version": 3,
            "input_digest": "d",
            "output": [0.1, 0.9],
            "latency_ms": 1.0,
            "ts": 1.0,
        }
    )
    assert (log.role, log.thresholded, log.features) == ("active", False, None)
    assert TelemetryRecord.model_validate({"seq": 2, "ts": 1.0}).shadow is None
    report = Report.loads(
        json.dumps(
            {"v": 1, "device_id": "pi", "deployment_id": 4, "version_id": 3, "state": "active"}
        ).encode()
    )
    assert report.role == "model"


def test_a_log_record_with_a_non_finite_latency_or_time_is_refused() -> None:
    """The hub stores both NOT NULL: a batch it could not store would be resent forever."""
    good = {
        "seq": 1,
        "request_id": "r",
        "model_version": 1,
        "input_digest": "ab",
        "output": [0.5, 0.5],
        "latency_ms": 1.0,
        "ts": 1.0,
    }
    assert LogRecord.model_validate(good).latency_ms == 1.0
    for field in ("latency_ms", "ts"):
        for bad in (math.nan, math.inf):
            with pytest.raises(ValidationError, match=field):
                LogRecord.model_validate({**good, field: bad})


# -- outbox epochs ------------------------------------------------------------------------------
class _AckBeforeEpochs(BaseModel):
    """Ack as the release before epochs declared it (an older agent parses acks with this)."""

    v: int = 1
    upto: int = Field(ge=0)


class _LogBatchBeforeEpochs(BaseModel):
    v: int = 1
    device_id: str
    floor: int = Field(ge=1)
    records: list[LogRecord]


LOG = {
    "seq": 3,
    "request_id": "r",
    "model_version": 1,
    "input_digest": "d",
    "output": [0.5],
    "latency_ms": 1.0,
    "ts": 1.0,
}


def test_batches_and_acks_of_releases_before_epochs_parse_in_the_legacy_epoch() -> None:
    old_logs = {"v": 1, "device_id": "pi", "floor": 3, "records": [LOG]}
    logs = LogBatch.loads(json.dumps(old_logs).encode())
    assert (logs.epoch, logs.floor, logs.records[0].seq) == ("", 3, 3)
    old_tele = {"v": 1, "device_id": "pi", "floor": 1, "records": [{"seq": 1, "ts": 1.0}]}
    assert TelemetryBatch.loads(json.dumps(old_tele).encode()).epoch == ""
    assert Ack.loads(b'{"v": 1, "upto": 7}') == Ack(upto=7, epoch="")


def test_what_this_release_sends_parses_in_the_release_before_epochs() -> None:
    new = LogBatch(device_id="pi", epoch="0123456789abcdef", floor=3, records=[LogRecord(**LOG)])
    old = _LogBatchBeforeEpochs.model_validate_json(new.dumps())
    assert (old.floor, old.records[0].request_id) == (3, "r")
    # a floor step (no records) is a valid batch there too: an older hub acks floor - 1
    step = LogBatch(device_id="pi", epoch="0123456789abcdef", floor=9, records=[])
    assert _LogBatchBeforeEpochs.model_validate_json(step.dumps()).records == []
    ack = Ack(upto=5, epoch="0123456789abcdef")
    assert _AckBeforeEpochs.model_validate_json(ack.dumps()).upto == 5


@pytest.mark.parametrize("epoch", ["a" * 65, "has space", "x/y", "+"])
def test_an_epoch_that_could_not_come_from_an_outbox_is_refused(epoch: str) -> None:
    with pytest.raises(WireError, match="epoch"):
        Ack.loads(json.dumps({"v": 1, "upto": 1, "epoch": epoch}).encode())
    doc = {"v": 1, "device_id": "pi", "epoch": epoch, "floor": 1, "records": []}
    with pytest.raises(WireError, match="epoch"):
        LogBatch.loads(json.dumps(doc).encode())


def test_a_variant_report_holds_every_candidate_at_every_thread_count_tried() -> None:
    """The agent tries each wanted thread count and 1 as well: the most candidates at the most
    thread counts, plus 1, fit in one report; one more timing is refused."""
    from edge_agent.core.variant_bench import thread_choices
    from edge_agent.core.wire import MAX_CANDIDATES, MAX_THREAD_CHOICES, VariantReport

    tried = thread_choices([2, 4, 8, 16], cores=16)
    assert len(tried) == MAX_THREAD_CHOICES + 1  # 1 comes on top of the wanted four
    timings = [
        {
            "sha256": f"{c:02x}" * 32,
            "format": "onnx",
            "precision": "fp32",
            "threads": t,
            "p50_ms": 1.0,
            "p99_ms": 2.0,
            "runs": 30,
        }
        for c in range(MAX_CANDIDATES)
        for t in tried
    ]
    doc = {"v": 1, "device_id": "pi", "deployment_id": 1, "version_id": 2, "timings": timings}
    assert len(VariantReport.model_validate(doc).timings) == MAX_CANDIDATES * len(tried)
    with pytest.raises(ValidationError):
        VariantReport.model_validate({**doc, "timings": [*timings, timings[0]]})
