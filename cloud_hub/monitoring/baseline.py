"""A version's training baseline: what its inputs and answers looked like at training time, the
reference that drift and output shift are measured against.

Inputs are described by the same feature summary the prediction log keeps of every input
(`edge_agent.core.features.summarize` of the model's input, i.e. after the version's preprocessing,
rounded like the log's): per feature, the decile bin edges and the training share of each bin.
Answers are described by the class distribution of the training labels and of the model's own
predictions on the training inputs (what a window's answers are compared with).

The training pipeline saves one when it registers a version; `POST /versions/{id}/baseline`
computes one for an uploaded version from a dataset.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, Field

from cloud_hub.core.db import Database
from cloud_hub.core.errors import NotFound
from cloud_hub.monitoring import stats
from edge_agent.core.features import summarize

if TYPE_CHECKING:
    from cloud_hub.registry.registry import Registry
    from cloud_hub.registry.schemas import Version

log = logging.getLogger(__name__)

DECIMALS = 4  # as edge_agent.core.features.summary_lists: baseline and log values compare exactly
PREDICT_SAMPLES = 2000  # training inputs run through the model for the answer distribution


class FeatureBins(BaseModel):
    edges: list[float] = Field(description="deduplicated deciles of the training values")
    expected: list[float] = Field(
        description="training share of each bin: below the minimum, the minimum, one per "
        "interval between edges, above the maximum"
    )


class Baseline(BaseModel):
    version_id: int
    source: str = Field(description="'training' (saved by the pipeline) or 'dataset:NAME'")
    samples: int
    features: list[FeatureBins]
    labels: list[str] = Field(default_factory=list)
    label_distribution: dict[str, float] = Field(
        default_factory=dict, description="share of each class among the training labels"
    )
    prediction_distribution: dict[str, float] | None = Field(
        default=None, description="share of each class among the model's training answers"
    )
    task: str = Field(default="classification", description="the head's task of the answers")
    answers: dict[str, FeatureBins] = Field(
        default_factory=dict,
        description="the model's answers on the training inputs, per measure of its task: "
        "detection: detections_per_frame and score; embedding: norm",
    )
    created_at: str | None = None

    @property
    def class_distribution(self) -> dict[str, float]:
        """What a window's answers are compared with: the model's own answers when known."""
        return self.prediction_distribution or self.label_distribution


def answer_measures(task: str, results: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """What monitoring measures of a task's answers, as values to bin: detection: detections
    per frame and every detection's score; embedding: the vector's norm; other tasks: none."""
    if task == "detection":
        per_frame, scores = [], []
        for r in results:
            found = r.get("detections") or []
            per_frame.append(float(len(found)))
            scores += [float(d.get("score", 0.0)) for d in found]
        return {"detections_per_frame": per_frame, "score": scores}
    if task == "embedding":
        return {
            "norm": [float(r["norm"]) for r in results if isinstance(r.get("norm"), int | float)]
        }
    return {}


def _bins(values: Sequence[float]) -> FeatureBins | None:
    if not values:
        return None
    col = np.round(np.asarray(values, dtype=np.float32), DECIMALS)
    edges = stats.quantile_edges(col)
    expected = stats.proportions(edges, col)
    return FeatureBins(edges=edges, expected=[round(float(p), 6) for p in expected])


def _distribution(indices: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    names = [labels[i] if 0 <= i < len(labels) else str(i) for i in indices.tolist()]
    return stats.shares(names)


def compute_baseline(
    version_id: int,
    X: np.ndarray,
    *,
    source: str,
    labels: Sequence[str],
    y: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    task: str = "classification",
    results: Sequence[dict[str, Any]] | None = None,
) -> Baseline:
    """The baseline of model inputs `X` (as the model sees them), their class indices `y` and
    the model's class scores `scores` on them (or a subset); for another task, the head's
    `results` on them (what its output shift is measured against)."""
    if len(X) == 0:
        raise ValueError("a baseline needs at least one training input")
    summary = np.round(summarize(X), DECIMALS).astype(np.float32)
    features = []
    for col in summary.T:
        edges = stats.quantile_edges(col)
        expected = stats.proportions(edges, col)
        features.append(FeatureBins(edges=edges, expected=[round(float(p), 6) for p in expected]))
    return Baseline(
        version_id=version_id,
        source=source,
        samples=len(X),
        features=features,
        labels=list(labels),
        label_distribution={} if y is None else _distribution(np.asarray(y), labels),
        prediction_distribution=(
            None if scores is None else _distribution(np.asarray(scores).argmax(axis=1), labels)
        ),
        task=task,
        answers={
            name: bins
            for name, values in answer_measures(task, results or []).items()
            if (bins := _bins(values)) is not None
        },
    )


class BaselineStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def save(self, baseline: Baseline) -> Baseline:
        """Store (or replace) the version's baseline."""
        data = baseline.model_dump_json(exclude={"created_at", "version_id"})
        with self.db.transaction():
            self.db.conn.execute(
                "INSERT OR REPLACE INTO baselines (version_id, source, samples, data) "
                "VALUES (?, ?, ?, ?)",
                [baseline.version_id, baseline.source, baseline.samples, data],
            )
        return self.get(baseline.version_id)

    def find(self, version_id: int) -> Baseline | None:
        row = self.db.conn.execute(
            "SELECT data, created_at FROM baselines WHERE version_id = ?", [version_id]
        ).fetchone()
        if row is None:
            return None
        data: dict[str, Any] = json.loads(row["data"])
        return Baseline(**data, version_id=version_id, created_at=row["created_at"])

    def stamps(self) -> tuple[tuple[int, str], ...]:
        """(version id, created_at) of every baseline, by version: changes when one does."""
        rows = self.db.conn.execute("SELECT version_id, created_at FROM baselines ORDER BY 1")
        return tuple((int(r[0]), str(r[1])) for r in rows)

    def get(self, version_id: int) -> Baseline:
        found = self.find(version_id)
        if found is None:
            raise NotFound("baseline of version", version_id)
        return found


def save_training_baseline(db: Database, version_id: int, state: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's hook, after `register`: the baseline of the training split as the model
    saw it. A summary for the step's outputs; a failure is logged and summarised, never raised
    (the version is registered by then, and monitoring without a baseline still works)."""
    try:
        X = state["X_train"]
        scores = None
        trained = state.get("trained")
        if trained is not None:
            rng = np.random.default_rng(0)
            pick = rng.permutation(len(X))[:PREDICT_SAMPLES]
            scores = trained.predict_scores(X[pick])
        baseline = compute_baseline(
            version_id,
            X,
            source="training",
            labels=state.get("labels") or [],
            y=state.get("y_train"),
            scores=scores,
        )
        BaselineStore(db).save(baseline)
    except Exception as exc:
        log.exception("version %s: could not save its training baseline", version_id)
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"samples": baseline.samples, "features": len(baseline.features)}


def dataset_baseline(
    registry: Registry,
    version_id: int,
    *,
    dataset: str,
    path: str | None = None,
    label_column: str | None = None,
) -> Baseline:
    """The baseline of an uploaded (or any) version from a dataset the hub can load, prepared
    with the version's preprocessing spec and answered by its fp32 artifact."""
    from pathlib import Path

    from cloud_hub.core.errors import InvalidInput
    from cloud_hub.registry.datasets import DatasetError, load_dataset
    from edge_agent.core.preprocess import PreprocessingSpec

    version = registry.get_version_by_id(version_id)
    try:
        spec = PreprocessingSpec(**version.preprocessing) if version.preprocessing else None
    except ValueError:
        spec = None  # a free-form spec of an uploaded model: the data is used as it is
    try:
        data = load_dataset(
            dataset,
            path=Path(path) if path else None,
            label_column=label_column,
            image_size=spec.size if spec and spec.size else None,
            color="gray" if spec is None or spec.color in (None, "gray") else "rgb",
        )
    except DatasetError as exc:
        raise InvalidInput(f"dataset: {exc}") from None
    X = spec.apply(data.X) if spec is not None else data.X.astype(np.float32)
    labels = version.labels or data.labels
    return compute_baseline(
        version_id,
        X,
        source=f"dataset:{dataset}",
        labels=labels,
        y=data.y,
        scores=_version_scores(registry, version, X),
    )


def _version_scores(registry: Registry, version: Version, X: np.ndarray) -> np.ndarray | None:
    """The version's class scores on (a sample of) X from a ready fp32 artifact; None when it
    cannot be run here (the label distribution is used instead)."""
    from edge_agent.core.runtimes import load_runtime

    ready = [a for a in version.artifacts if a.status == "ready"]
    ready.sort(key=lambda a: (a.precision != "fp32", a.format != "onnx"))
    if not ready:
        return None
    try:
        runtime = load_runtime(registry.artifact_blob(ready[0].sha256), ready[0].format)
        pick = np.random.default_rng(0).permutation(len(X))[:PREDICT_SAMPLES]
        sample = X[pick]
        want = runtime.input.shape[1:]
        if all(d is not None for d in want) and list(sample.shape[1:]) != want:
            sample = sample.reshape(len(sample), *[int(d or 0) for d in want])
        scores: np.ndarray = runtime.predict(sample)
        return scores
    except Exception as exc:
        log.warning("version %s: no answer distribution for its baseline: %s", version.id, exc)
        return None
