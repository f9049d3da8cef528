"""Batch training on a schedule: every run recorded, retries with back-off, never two at once."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cloud_hub.core.cron import next_fire
from cloud_hub.core.errors import InvalidInput
from cloud_hub.hub import Hub
from cloud_hub.training.request import TrainRequest
from cloud_hub.training.scheduler import TrainingScheduler, create_schedule
from tests.waiting import wait_until

EVERY_SECOND = "* * * * * *"


def iris_request() -> TrainRequest:
    return TrainRequest(project="flowers", dataset="iris", model_type="logreg")


def test_cron_is_validated() -> None:
    with pytest.raises(InvalidInput, match="invalid cron expression 'every day'"):
        next_fire("every day", datetime.now(UTC))
    start = datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)
    assert next_fire("*/5 * * * *", start) == datetime(2026, 1, 1, 0, 5, tzinfo=UTC)


def test_a_due_schedule_trains_and_records_the_run(hub: Hub) -> None:
    sched = create_schedule(hub.registry, name="nightly", cron=EVERY_SECOND, request=iris_request())
    scheduler = TrainingScheduler(hub.registry, hub.pipeline())
    wait_until(lambda: bool(scheduler.tick()), timeout=5)
    wait_until(lambda: hub.registry.get_schedule(sched.id).last_status == "succeeded")
    runs = hub.registry.list_runs(schedule_id=sched.id)
    assert len(runs) == 1
    assert runs[0].status == "succeeded" and runs[0].attempt == 1
    assert hub.registry.get_version_by_id(runs[0].version_id or 0).ref == "flowers/iris-logreg:1"
    after = hub.registry.get_schedule(sched.id)
    assert not after.running
    assert after.next_run_at > runs[0].finished_at[:19]  # type: ignore[index]
    scheduler.stop()


def test_failed_runs_are_retried_with_backoff_and_all_recorded(hub: Hub, tmp_path: Path) -> None:
    csv = tmp_path / "late.csv"  # does not exist yet: every attempt fails at load_data
    request = TrainRequest(
        project="p", dataset="csv", model_type="logreg", path=str(csv), label_column="y"
    )
    sched = create_schedule(
        hub.registry,
        name="retrying",
        cron=EVERY_SECOND,
        request=request,
        max_retries=2,
        backoff_s=0.2,
    )
    scheduler = TrainingScheduler(hub.registry, hub.pipeline())
    wait_until(lambda: bool(scheduler.tick()), timeout=5)
    wait_until(lambda: hub.registry.get_schedule(sched.id).last_status is not None)
    runs = sorted(hub.registry.list_runs(schedule_id=sched.id), key=lambda r: r.id)
    assert [(r.attempt, r.status, r.failed_step) for r in runs] == [
        (1, "failed", "load_data"),
        (2, "failed", "load_data"),
        (3, "failed", "load_data"),
    ]
    assert "does not exist" in (runs[0].error or "")
    gaps = [
        datetime.fromisoformat(b.started_at or "") - datetime.fromisoformat(a.finished_at or "")
        for a, b in zip(runs, runs[1:], strict=False)
    ]
    assert gaps[0].total_seconds() >= 0.2 and gaps[1].total_seconds() >= 0.4  # doubling back-off
    assert hub.registry.get_schedule(sched.id).last_status == "failed"
    # the data arrives: the next tick succeeds
    csv.write_text("a,y\n" + "".join(f"{i},{i % 2}\n" for i in range(20)))
    wait_until(lambda: bool(scheduler.tick()), timeout=5)
    wait_until(lambda: hub.registry.get_schedule(sched.id).last_status == "succeeded")
    scheduler.stop()


def test_the_same_job_never_runs_twice_at_once(hub: Hub) -> None:
    """Two schedulers (as in two hub processes) keep ticking on one registry while a slow job
    (a CNN, several seconds) runs: neither starts it again, although the cron fires every second."""
    request = TrainRequest(
        project="digits",
        dataset="digits",
        model_type="cnn",
        params={"epochs": 20},
        formats=["onnx"],
        quantize=False,
    )
    sched = create_schedule(hub.registry, name="busy", cron=EVERY_SECOND, request=request)
    first = TrainingScheduler(hub.registry, hub.pipeline())
    second = TrainingScheduler(hub.registry, hub.pipeline())
    wait_until(lambda: bool(first.tick()), timeout=5)
    ticks_while_running = 0
    while hub.registry.get_schedule(sched.id).running:
        assert first.tick() == []
        assert second.tick() == []
        ticks_while_running += 1
        time.sleep(0.1)
    assert ticks_while_running >= 10  # the job outlived several cron ticks
    assert hub.registry.get_schedule(sched.id).last_status == "succeeded"
    assert len(hub.registry.list_runs(schedule_id=sched.id)) == 1
    first.stop()
    second.stop()


def test_background_loop_runs_schedules_until_stopped(hub: Hub) -> None:
    sched = create_schedule(hub.registry, name="loop", cron=EVERY_SECOND, request=iris_request())
    scheduler = TrainingScheduler(hub.registry, hub.pipeline(), poll_s=0.1)
    scheduler.start()
    wait_until(lambda: len(hub.registry.list_runs(schedule_id=sched.id)) >= 2, timeout=60)
    scheduler.stop()
    runs = sorted(hub.registry.list_runs(schedule_id=sched.id), key=lambda r: r.id)
    for a, b in zip(runs, runs[1:], strict=False):  # one after another, never overlapping
        assert (a.finished_at or "") <= (b.started_at or "")
    assert {r.status for r in runs} == {"succeeded"}
