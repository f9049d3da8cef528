"""Rolling windows over the prediction log: per model version, per endpoint and per device.

A window is the records of the last `window_s` seconds, at most the latest `last_n` of them
(the settings' `monitor_max_records` caps it), read from both halves of the log: the hub's
endpoint records (`prediction_logs`) and the inference logs devices forwarded
(`inference_logs`). What each view takes:

- version: every record the version produced (answers and shadow answers, hub and devices),
  plus the endpoint failures that carry no version (a refused input never reaches a model) of
  an endpoint whose answers in the window all came from this one version;
- endpoint: the endpoint's answers and failures (not its shadows');
- device: the device's active model's inferences (not its shadow's).

Per window: records and requests, error rate (requests whose outcome is not `ok` over all
requests), latency percentiles (one value per request: the latency a caller saw; failures
excluded), the share of each answer label, and, against the training baseline of the version
that answered most of the window (`baseline_version`): the output shift (total variation
distance between the window's answers and the model's answers on its training inputs) and input
drift (PSI per feature of the logged feature summaries; max, mean and the top features).

Output shift per task (the task most of the window's answers are of, `task`): classification,
the class distribution as above; detection, the detections per frame and the distribution of
their scores; embedding, the distribution of the vectors' norms (each binned at the deciles of
the baseline's answers, and the shift the largest total variation distance among them);
`answers` summarises them for the window. Other tasks (keypoints, segmentation, regression,
raw) have no output shift, and the window's notes say so. A record's answer is a head result
(`{"task": ..., ...}`) or, from endpoints' classifiers and older agents, class scores.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from cloud_hub.core.db import Database
from cloud_hub.monitoring import stats
from cloud_hub.monitoring.baseline import DECIMALS, Baseline, BaselineStore, answer_measures
from cloud_hub.predlog import device_logs, endpoint_logs
from cloud_hub.registry.registry import version_labels, version_ref
from edge_agent.core.features import decode as decode_features

By = Literal["version", "endpoint", "device"]
BY: tuple[By, ...] = ("version", "endpoint", "device")
TOP_FEATURES = 5


class FeatureDrift(BaseModel):
    feature: int = Field(description="index in the feature summary")
    psi: float


class Drift(BaseModel):
    samples: int = Field(description="records of the baseline's version with features")
    psi_max: float
    psi_mean: float
    top: list[FeatureDrift] = Field(description="the most drifting features, largest first")


class WindowStats(BaseModel):
    by: By
    key: str = Field(description="version id, endpoint name or device id")
    name: str = Field(description="version ref, endpoint name or device id")
    window_s: float
    last_n: int
    since: float
    until: float
    count: int = Field(description="records in the window")
    requests: int
    errors: int = Field(description="requests whose outcome is not ok")
    error_rate: float | None
    outcomes: dict[str, int] = Field(description="requests per outcome")
    latency_ms: dict[str, float] = Field(description="p50, p90, p99 over answered requests")
    output: dict[str, float] = Field(description="share of each answer label")
    versions: dict[str, int] = Field(description="records per model version")
    baseline_version: int | None = Field(
        default=None, description="the version whose baseline drift and shift are measured on"
    )
    output_shift: float | None = None
    drift: Drift | None = None
    task: str | None = Field(default=None, description="the task most answers are of")
    answers: dict[str, Any] = Field(
        default_factory=dict,
        description="detection: detections_per_frame, score (mean and percentiles) and labels; "
        "embedding: norm",
    )
    notes: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class Rec:
    ts: float
    request_id: str
    role: str
    model_version: int | None
    outcome: str
    label: str | None
    output: str | None
    latency_ms: float | None
    features: bytes | str | None  # edge_agent.core.features.encode (or JSON text)


def _recs(rows: list[tuple[Any, ...]]) -> list[Rec]:
    return [Rec(*row) for row in rows]


def top_label(output: Any, labels: Sequence[str]) -> str | None:
    """A device's logged answer → the label of the top class (as the log's reader does): a
    classification result's label, or the top of class scores; None for other tasks."""
    if isinstance(output, dict) and "task" in output:
        if output["task"] != "classification":
            return None
        if isinstance(output.get("label"), str):
            return str(output["label"])
    scores = output.get("scores") if isinstance(output, dict) else output
    if not isinstance(scores, list) or not scores:
        return None
    flat = scores[0] if isinstance(scores[0], list) else scores
    if not flat or not all(isinstance(v, int | float) for v in flat):
        return None
    top = max(range(len(flat)), key=flat.__getitem__)
    return labels[top] if top < len(labels) else str(top)


class WindowReader:
    """Computes windows from the database; one per evaluation (it caches baselines and labels)."""

    def __init__(self, db: Database, *, max_records: int = 5000) -> None:
        self.db = db
        self.max_records = max_records
        self._baselines: dict[int, Baseline | None] = {}
        self._labels: dict[int, list[str]] = {}
        self._refs: dict[int, str] = {}
        self._attribution: dict[tuple[float, float], dict[str, int]] = {}

    @property
    def conn(self) -> sqlite3.Connection:
        return self.db.conn

    # -- what there is ------------------------------------------------------------------------
    def keys(self, by: By, since: float, until: float) -> list[str]:
        """The versions, endpoints or devices with records in [since, until]."""
        if by == "version":
            versions = endpoint_logs.versions_between(self.conn, since, until)
            versions |= device_logs.versions_between(self.conn, since, until)
            return [str(v) for v in sorted(versions)]
        if by == "endpoint":
            return sorted(endpoint_logs.endpoints_between(self.conn, since, until))
        return sorted(device_logs.devices_between(self.conn, since, until))

    def windows(
        self,
        by: By,
        *,
        window_s: float,
        last_n: int | None = None,
        now: float | None = None,
    ) -> list[WindowStats]:
        until = time.time() if now is None else now
        since = until - window_s
        return [
            self.window(by, key, window_s=window_s, last_n=last_n, now=until)
            for key in self.keys(by, since, until)
        ]

    # -- one window ---------------------------------------------------------------------------
    def window(
        self,
        by: By,
        key: str | int,
        *,
        window_s: float,
        last_n: int | None = None,
        now: float | None = None,
    ) -> WindowStats:
        until = time.time() if now is None else now
        since = until - window_s
        n = min(last_n or self.max_records, self.max_records)
        key = str(key)
        recs = self._records(by, key, since, until, n)
        stats_ = self._summarise(recs)
        name = self._ref(int(key)) if by == "version" and key.isdigit() else key
        return WindowStats(
            by=by,
            key=key,
            name=name,
            window_s=window_s,
            last_n=n,
            since=since,
            until=until,
            **stats_,
        )

    def _records(self, by: By, key: str, since: float, until: float, n: int) -> list[Rec]:
        found: list[Rec] = []
        if by == "version":
            if not key.lstrip("-").isdigit():
                return []
            version = int(key)
            found += _recs(endpoint_logs.version_window(self.conn, version, since, until, n))
            found += _recs(device_logs.version_window(self.conn, version, since, until, n))
            endpoints = [e for e, v in self._attributed(since, until).items() if v == version]
            if endpoints:
                rows = endpoint_logs.failures_window(self.conn, endpoints, since, until, n)
                found += _recs(rows)
        elif by == "endpoint":
            found += _recs(endpoint_logs.endpoint_window(self.conn, key, since, until, n))
        else:
            found += _recs(device_logs.device_window(self.conn, key, since, until, n))
        found.sort(key=lambda r: r.ts, reverse=True)
        return found[:n]

    def _attributed(self, since: float, until: float) -> dict[str, int]:
        """Endpoints with version-less failures in the window → the one version that answers
        their requests (those answered by several versions, e.g. an A/B split, are left out)."""
        cached = self._attribution.get((since, until))
        if cached is not None:
            return cached
        failing = endpoint_logs.failing_without_version(self.conn, since, until)
        out: dict[str, int] = {}
        for endpoint in failing:
            versions = endpoint_logs.answering_versions(self.conn, endpoint, since, until)
            if not versions:  # nothing answered in the window: the endpoint's latest answer
                latest = endpoint_logs.latest_answering_version(self.conn, endpoint)
                versions = {latest} if latest is not None else set()
            if len(versions) == 1:
                out[endpoint] = versions.pop()
        self._attribution[(since, until)] = out
        return out

    def _summarise(self, recs: list[Rec]) -> dict[str, Any]:
        outcome_of: dict[tuple[str, str], str] = {}
        latency_of: dict[tuple[str, str], float] = {}
        for r in recs:
            req = (r.request_id, r.role)
            if r.outcome != "ok":
                outcome_of[req] = r.outcome
            else:
                outcome_of.setdefault(req, "ok")
                if r.latency_ms is not None and math.isfinite(r.latency_ms):
                    latency_of.setdefault(req, float(r.latency_ms))
        outcomes = Counter(outcome_of.values())
        requests = len(outcome_of)
        errors = requests - outcomes.get("ok", 0)
        ok = [r for r in recs if r.outcome == "ok"]
        labels = [self._label(r) for r in ok]
        per_version = Counter(r.model_version for r in recs if r.model_version is not None)
        out: dict[str, Any] = {
            "count": len(recs),
            "requests": requests,
            "errors": errors,
            "error_rate": round(errors / requests, 6) if requests else None,
            "outcomes": dict(outcomes),
            "latency_ms": stats.percentiles(
                [latency_of[k] for k in outcome_of if outcome_of[k] == "ok" and k in latency_of]
            ),
            "output": stats.shares([lb for lb in labels if lb is not None]),
            "versions": {str(v): c for v, c in per_version.most_common()},
            "notes": [],
        }
        answered = [(r, _result(r)) for r in ok]
        tasks = Counter(_task_of(r, res) for r, res in answered)
        task = tasks.most_common(1)[0][0] if tasks else None
        out["task"] = task
        results = [res for r, res in answered if res is not None and res.get("task") == task]
        if task in ("detection", "embedding"):
            out["answers"] = _summary(task, results)
        elif task is not None and task != "classification":
            out["notes"].append(f"no output shift for {task} answers: it is not measured")
        base = self._base_version(r.model_version for r in ok)
        if base is None:
            if ok:
                out["notes"].append("no training baseline for the versions in this window")
            return out
        baseline = self._baseline(base)
        assert baseline is not None
        out["baseline_version"] = base
        mine = [(r, lb) for r, lb in zip(ok, labels, strict=True) if r.model_version == base]
        answers = [lb for _, lb in mine if lb is not None]
        if task in ("detection", "embedding"):
            own = [
                res
                for r, res in answered
                if r.model_version == base and res is not None and res.get("task") == task
            ]
            out["output_shift"], note = _answer_shift(task, own, baseline)
            if note:
                out["notes"].append(note)
        elif answers and baseline.class_distribution:
            out["output_shift"] = stats.total_variation(
                stats.shares(answers), baseline.class_distribution
            )
        out["drift"], note = self._drift(baseline, [r.features for r, _ in mine])
        if note:
            out["notes"].append(note)
        return out

    def _drift(
        self, baseline: Baseline, logged: Iterable[bytes | str | None]
    ) -> tuple[Drift | None, str | None]:
        width = len(baseline.features)
        rows, other, bad = [], 0, 0
        for text in logged:
            if text is None:
                continue
            values = decode_features(text)
            if values is None:
                bad += 1
            elif len(values) != width:
                other += 1
            else:
                rows.append(values)
        notes = []
        if other:
            notes.append(f"{other} records with other than {width}-value features left out")
        if bad:
            notes.append(f"{bad} records with unreadable features left out")
        note = "; ".join(notes) or None
        if not rows:
            return None, note or "no input features logged for the baseline's version"
        matrix = np.round(np.stack(rows), DECIMALS)
        psis = np.array(
            [
                stats.psi(fb.expected, stats.proportions(fb.edges, matrix[:, i]))
                for i, fb in enumerate(baseline.features)
            ]
        )
        order = np.argsort(-psis, kind="stable")[:TOP_FEATURES]
        return (
            Drift(
                samples=len(rows),
                psi_max=round(float(psis.max()), 4),
                psi_mean=round(float(psis.mean()), 4),
                top=[FeatureDrift(feature=int(i), psi=round(float(psis[i]), 4)) for i in order],
            ),
            note,
        )

    # -- lookups ------------------------------------------------------------------------------
    def _base_version(self, versions: Iterable[int | None]) -> int | None:
        for version, _ in Counter(v for v in versions if v is not None).most_common():
            if self._baseline(version) is not None:
                return version
        return None

    def _baseline(self, version: int) -> Baseline | None:
        if version not in self._baselines:
            self._baselines[version] = BaselineStore(self.db).find(version)
        return self._baselines[version]

    def _label(self, r: Rec) -> str | None:
        if r.label is not None:
            return r.label
        if r.output is None:
            return None
        try:
            output = json.loads(r.output)
        except ValueError:  # a damaged record: no answer label, the window goes on
            return None
        return top_label(output, self._version_labels(r.model_version))

    def _version_labels(self, version: int | None) -> list[str]:
        if version is None:
            return []
        if version not in self._labels:
            self._labels[version] = version_labels(self.conn, version) or []
        return self._labels[version]

    def _ref(self, version: int) -> str:
        if version not in self._refs:
            self._refs[version] = version_ref(self.conn, version) or str(version)
        return self._refs[version]


def _result(r: Rec) -> dict[str, Any] | None:
    """A record's head result, when its answer is one (JSON with a task), else None."""
    if not isinstance(r.output, str) or not r.output.startswith("{"):
        return None
    try:
        doc = json.loads(r.output)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("task"), str) else None


def _task_of(r: Rec, result: dict[str, Any] | None) -> str:
    """The task of a record's answer: a head result says it; class scores are classification."""
    return str(result["task"]) if result is not None else "classification"


def _described(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"mean": round(float(np.mean(values)), 6), **stats.percentiles(list(values))}


def _summary(task: str, results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The window's answers of a detection or embedding head, described."""
    out: dict[str, Any] = {
        name: _described(values) for name, values in answer_measures(task, results).items()
    }
    if task == "detection":
        found = [
            str(d.get("label") if d.get("label") is not None else d.get("class"))
            for r in results
            for d in r.get("detections") or []
        ]
        out["labels"] = stats.shares(found)
    return out


def _answer_shift(
    task: str, results: Sequence[dict[str, Any]], baseline: Baseline
) -> tuple[float | None, str | None]:
    """The largest total variation distance between the window's and the baseline's binned
    answers (detections per frame, scores; norms), with a note when it cannot be measured."""
    if baseline.task != task or not baseline.answers:
        return None, f"the baseline has no {task} answers to measure the output shift against"
    measures = answer_measures(task, results)
    shifts = []
    for name, bins in baseline.answers.items():
        values = measures.get(name) or []
        if not values:
            continue
        col = np.round(np.asarray(values, dtype=np.float32), DECIMALS)
        actual = stats.proportions(bins.edges, col)
        shifts.append(0.5 * float(np.abs(np.asarray(actual) - np.asarray(bins.expected)).sum()))
    if not shifts:
        return None, f"no {task} answers of the baseline's version in this window"
    return round(max(shifts), 6), None
