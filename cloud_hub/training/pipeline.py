"""The training pipeline: named steps, each recorded on the run, each output cached.

load_data → preprocess → train → evaluate → convert → quantize → validate → register

A step's summary goes on the run (what a user reads); its values (arrays, the trained model,
artifact bytes) are pickled into a content-addressed cache, so a failed run can be resumed at the
step that failed, or any run re-run from a chosen step, without redoing the steps before it.
"""

from __future__ import annotations

import logging
import pickle
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cloud_hub.core.errors import InvalidInput, NotFound
from cloud_hub.registry.artifacts import ArtifactStore
from cloud_hub.registry.conversion import CALIBRATION_SAMPLES
from cloud_hub.registry.datasets import Dataset, DatasetError, load_dataset
from cloud_hub.registry.registry import NewArtifact, Registry, utcnow
from cloud_hub.registry.schemas import Run
from cloud_hub.registry.signature import signature_of
from cloud_hub.training.preprocessing import fit_spec
from cloud_hub.training.request import TrainRequest
from edge_agent.core.preprocess import PreprocessingSpec

if TYPE_CHECKING:
    from cloud_hub.training.trainers import ExportedArtifact

log = logging.getLogger(__name__)

STEPS: tuple[str, ...] = (
    "load_data",
    "preprocess",
    "train",
    "evaluate",
    "convert",
    "quantize",
    "validate",
    "register",
)

# on_event(step, status, payload): status is "started", "succeeded", "failed" or "cached"
EventHandler = Callable[[str, str, dict[str, Any]], None]


@dataclass
class StepResult:
    summary: dict[str, Any]
    values: dict[str, Any] = field(default_factory=dict)


def _train_step(state: dict[str, Any], request: TrainRequest) -> StepResult:
    from cloud_hub.training.trainers import train_model

    trained = train_model(
        request.model_type, state["X_train"], state["y_train"], request.params, seed=request.seed
    )
    train_acc = float(
        (trained.predict_scores(state["X_train"]).argmax(1) == state["y_train"]).mean()
    )
    return StepResult(
        {"framework": trained.framework, "model_type": trained.kind, "train_accuracy": train_acc},
        {"trained": trained},
    )


def check_compatible(request: TrainRequest, dataset: Dataset) -> None:
    if request.model_type == "cnn" and dataset.kind != "image":
        raise DatasetError(
            f"model 'cnn' needs image data; dataset {dataset.name!r} is tabular "
            f"with {dataset.X.shape[1]} features"
        )


def _listing(artifacts: list[ExportedArtifact]) -> list[dict[str, Any]]:
    return [
        {"format": a.format, "precision": a.precision, "size": len(a.data), "method": a.method}
        for a in artifacts
    ]


class TrainingPipeline:
    def __init__(
        self,
        registry: Registry,
        cache: ArtifactStore,
        *,
        threads: int = 1,
        on_event: EventHandler | None = None,
    ) -> None:
        self.registry = registry
        self.cache = cache
        self.threads = threads
        self.on_event = on_event or (lambda step, status, payload: None)

    # -- entry points -----------------------------------------------------------------------
    def start(
        self,
        request: TrainRequest,
        *,
        schedule_id: int | None = None,
        attempt: int = 1,
        preflight: bool = True,
    ) -> Run:
        """Run a new pipeline. With `preflight`, bad data is refused before anything is stored."""
        run, preloaded = self.prepare(
            request, schedule_id=schedule_id, attempt=attempt, preflight=preflight
        )
        return self.execute(run.id, preloaded)

    def prepare(
        self,
        request: TrainRequest,
        *,
        schedule_id: int | None = None,
        attempt: int = 1,
        preflight: bool = True,
    ) -> tuple[Run, dict[str, Any] | None]:
        """Check the data and record a queued run; `execute` then runs it (maybe elsewhere)."""
        preloaded: dict[str, Any] | None = None
        if preflight:
            from cloud_hub.training.trainers import InvalidParams, validate_params

            try:
                validate_params(request.model_type, request.params)
                dataset = self._load(request)
                check_compatible(request, dataset)
            except (DatasetError, InvalidParams) as exc:
                raise InvalidInput(str(exc)) from exc
            preloaded = {"dataset": dataset}
        run = self.registry.create_run(
            project=request.project,
            experiment=request.resolved_experiment,
            request=request.model_dump(mode="json"),
            params=request.params,
            steps=list(STEPS),
            schedule_id=schedule_id,
            attempt=attempt,
        )
        return run, preloaded

    def execute(self, run_id: int, preloaded: dict[str, Any] | None = None) -> Run:
        request = TrainRequest(**self.registry.get_run(run_id).request)
        return self._execute(run_id, request, 0, {}, preloaded)

    def resume(self, run_ref: str | int) -> Run:
        """Continue a failed run in place, from the step that failed."""
        run = self.registry.get_run(run_ref)
        if run.status != "failed" or run.failed_step is None:
            raise InvalidInput(f"run {run.name} is {run.status}; only a failed run can be resumed")
        start = STEPS.index(run.failed_step)
        state = self._restore(run.id, STEPS[:start])
        self.registry.update_run(run.id, status="queued", failed_step=None, error=None)
        return self._execute(run.id, TrainRequest(**run.request), start, state, None)

    def rerun(
        self, run_ref: str | int, from_step: str, overrides: dict[str, Any] | None = None
    ) -> Run:
        """A new run that reuses `run_ref`'s cached outputs up to `from_step`, then runs the rest.
        `overrides` change the request for the steps that run again (e.g. formats, threshold)."""
        if from_step not in STEPS:
            raise InvalidInput(f"unknown step {from_step!r}: steps are {', '.join(STEPS)}")
        source = self.registry.get_run(run_ref)
        start = STEPS.index(from_step)
        done = {s.step: s for s in source.steps if s.status in ("succeeded", "cached")}
        missing = [s for s in STEPS[:start] if s not in done]
        if missing:
            raise InvalidInput(
                f"run {source.name} has no cached output for {', '.join(missing)}; "
                f"re-run from an earlier step"
            )
        state = self._restore(source.id, STEPS[:start])
        request = TrainRequest(**{**source.request, **(overrides or {})})
        if "trained" in state and request.formats:  # refuse impossible formats before a run
            from cloud_hub.training.trainers import supported_formats

            supported = supported_formats(state["trained"])
            unsupported = [f for f in request.formats if f not in supported]
            if unsupported:
                raise InvalidInput(
                    f"a {request.model_type} model cannot be converted to "
                    f"{', '.join(unsupported)} (supported: {', '.join(supported)})"
                )
        run = self.registry.create_run(
            project=request.project,
            experiment=request.resolved_experiment,
            request=request.model_dump(mode="json"),
            params=source.params,
            steps=list(STEPS),
            parent_run_id=source.id,
        )
        caches = self.registry.step_cache(source.id)
        for step in STEPS[:start]:
            self.registry.update_step(
                run.id,
                step,
                status="cached",
                outputs=done[step].outputs,
                cache_sha256=caches[step],
                duration_s=0.0,
            )
            self.on_event(step, "cached", done[step].outputs)
        return self._execute(run.id, request, start, state, None)

    # -- machinery --------------------------------------------------------------------------
    def _restore(self, run_id: int, steps: tuple[str, ...]) -> dict[str, Any]:
        caches = self.registry.step_cache(run_id)
        state: dict[str, Any] = {}
        for step in steps:
            digest = caches.get(step)
            if digest is None:
                raise InvalidInput(f"run {run_id} has no cached output for step {step!r}")
            try:
                state.update(pickle.loads(self.cache.get(digest)))
            except KeyError:
                raise InvalidInput(
                    f"cached output of step {step!r} (run {run_id}) is gone from the step cache"
                ) from None
        return state

    def _execute(
        self,
        run_id: int,
        request: TrainRequest,
        start: int,
        state: dict[str, Any],
        preloaded: dict[str, Any] | None,
    ) -> Run:
        self.registry.claim_run(run_id)
        self.registry.update_run(run_id, status="running", started_at=utcnow(), finished_at=None)
        state["run_id"] = run_id
        for step in STEPS[start:]:
            t0 = time.perf_counter()
            self.registry.update_step(
                run_id, step, status="running", started_at=utcnow(), error=None
            )
            self.on_event(step, "started", {})
            try:
                if step == "load_data" and preloaded is not None:
                    result = StepResult(preloaded["dataset"].summary(), preloaded)
                else:
                    result = self._run_step(step, state, request)
                state.update(result.values)
                digest = self.cache.put(pickle.dumps(result.values, protocol=5))
            except Exception as exc:  # a step's failure is recorded, never lost
                log.warning("run %s: step %s failed: %s", run_id, step, exc)
                message = f"{type(exc).__name__}: {exc}"
                self.registry.update_step(
                    run_id,
                    step,
                    status="failed",
                    error=message,
                    finished_at=utcnow(),
                    duration_s=time.perf_counter() - t0,
                    outputs={"traceback": traceback.format_exc(limit=5)},
                )
                self.registry.update_run(
                    run_id, status="failed", failed_step=step, error=message, finished_at=utcnow()
                )
                self.on_event(step, "failed", {"error": message})
                return self.registry.get_run(run_id)
            self.registry.update_step(
                run_id,
                step,
                status="succeeded",
                outputs=result.summary,
                cache_sha256=digest,
                finished_at=utcnow(),
                duration_s=time.perf_counter() - t0,
            )
            self.on_event(step, "succeeded", result.summary)
        report = state.get("report") or {}
        metrics = {"accuracy": state.get("accuracy")}
        if report.get("passed", True):
            self.registry.update_run(
                run_id,
                status="succeeded",
                metrics=metrics,
                version_id=state.get("version_id"),
                finished_at=utcnow(),
            )
        else:
            self.registry.update_run(
                run_id,
                status="failed",
                failed_step="validate",
                error=state.get("report_reason"),
                metrics=metrics,
                version_id=state.get("version_id"),
                finished_at=utcnow(),
            )
        return self.registry.get_run(run_id)

    def _load(self, request: TrainRequest) -> Dataset:
        return load_dataset(
            request.dataset,
            path=Path(request.path) if request.path else None,
            label_column=request.label_column,
            image_size=request.image_size,
            color=request.color,
        )

    def _run_step(self, step: str, state: dict[str, Any], request: TrainRequest) -> StepResult:
        if step == "load_data":
            dataset = self._load(request)
            return StepResult(dataset.summary(), {"dataset": dataset})
        if step == "preprocess":
            return self._preprocess(state, request)
        if step == "train":
            return _train_step(state, request)
        if step == "evaluate":
            scores = state["trained"].predict_scores(state["X_test"])
            accuracy = float((scores.argmax(1) == state["y_test"]).mean())
            return StepResult(
                {"accuracy": accuracy, "test_samples": len(state["y_test"])},
                {"reference_scores": scores, "accuracy": accuracy},
            )
        if step == "convert":
            return self._convert(state, request)
        if step == "quantize":
            return self._quantize(state, request)
        if step == "validate":
            return self._validate(state, request)
        if step == "register":
            return self._register(state, request)
        raise InvalidInput(f"unknown step {step!r}")

    def _preprocess(self, state: dict[str, Any], request: TrainRequest) -> StepResult:
        from sklearn.model_selection import train_test_split

        dataset: Dataset = state["dataset"]
        idx = np.arange(len(dataset.y))
        try:
            train_idx, test_idx = train_test_split(
                idx, test_size=request.test_size, random_state=request.seed, stratify=dataset.y
            )
        except ValueError as exc:
            raise DatasetError(f"cannot split dataset {dataset.name!r}: {exc}") from exc
        check_compatible(request, dataset)
        flatten = dataset.kind == "image" and request.model_type != "cnn"
        spec = fit_spec(
            kind=dataset.kind,
            X_train=dataset.X[train_idx],
            value_max=dataset.value_max,
            color=dataset.color,
            flatten=flatten,
            feature_names=dataset.feature_names,
        )
        X_train = spec.apply(dataset.X[train_idx])
        X_test = spec.apply(dataset.X[test_idx])
        rng = np.random.default_rng(request.seed)
        calib = X_train[rng.permutation(len(X_train))[:CALIBRATION_SAMPLES]]
        return StepResult(
            {
                "train_samples": len(train_idx),
                "test_samples": len(test_idx),
                "input_shape": list(X_train.shape[1:]),
                "preprocessing": spec.model_dump(mode="json"),
            },
            {
                "X_train": X_train,
                "y_train": dataset.y[train_idx],
                "X_test": X_test,
                "y_test": dataset.y[test_idx],
                "calibration": calib,
                "spec": spec,
                "labels": dataset.labels,
            },
        )

    def _convert(self, state: dict[str, Any], request: TrainRequest) -> StepResult:
        from cloud_hub.training.trainers import IncompatibleData, export_fp32

        try:
            out = export_fp32(state["trained"], request.formats)
        except IncompatibleData as exc:
            raise InvalidInput(str(exc)) from None
        return StepResult({"artifacts": _listing(out)}, {"fp32_artifacts": out})

    def _quantize(self, state: dict[str, Any], request: TrainRequest) -> StepResult:
        from cloud_hub.training.trainers import export_int8

        if not request.quantize:
            return StepResult({"skipped": ["quantization not requested"]}, {"int8_artifacts": []})
        result = export_int8(state["trained"], state["fp32_artifacts"], state["calibration"])
        skipped = [str(s) for s in result.skipped]
        return StepResult(
            {
                "artifacts": _listing(result.artifacts),
                "calibration_samples": len(state["calibration"]),
                "skipped": skipped,
            },
            {"int8_artifacts": result.artifacts, "quantize_skipped": skipped},
        )

    def _validate(self, state: dict[str, Any], request: TrainRequest) -> StepResult:
        from converters import build_report, evaluate_artifact, inspect_model_file

        artifacts: list[ExportedArtifact] = state["fp32_artifacts"] + state["int8_artifacts"]
        reports = []
        signatures = []
        for art in artifacts:
            reports.append(
                evaluate_artifact(
                    art.data,
                    art.format,
                    precision=art.precision,
                    X=state["X_test"],
                    y=state["y_test"],
                    reference_scores=state["reference_scores"],
                    threshold=request.threshold,
                    threads=self.threads,
                )
            )
            signatures.append(signature_of(inspect_model_file(art.data)))
        report = build_report(
            reports, reference_accuracy=state["accuracy"], threshold=request.threshold
        ).model_dump(mode="json")
        report["skipped"] = state.get("quantize_skipped", [])
        failed = [f"{r.format}/{r.precision}: {r.reason}" for r in reports if not r.passed]
        reason = "; ".join(failed) if failed else None
        return StepResult(
            report, {"report": report, "report_reason": reason, "signatures": signatures}
        )

    def _register(self, state: dict[str, Any], request: TrainRequest) -> StepResult:
        artifacts: list[ExportedArtifact] = state["fp32_artifacts"] + state["int8_artifacts"]
        report = state["report"]
        try:
            parent_id: int | None = self.registry.get_version(
                request.project, request.resolved_model_name, "latest"
            ).id
        except NotFound:
            parent_id = None
        new = []
        for art, rep, sig in zip(artifacts, report["artifacts"], state["signatures"], strict=True):
            metrics = {k: v for k, v in rep.items() if k not in ("format", "precision", "sha256")}
            new.append(
                NewArtifact(
                    format=art.format,
                    precision=art.precision,
                    data=art.data,
                    status="ready" if rep["passed"] else "failed",
                    method=art.method,
                    signature=sig,
                    metrics=metrics,
                )
            )
        spec: PreprocessingSpec = state["spec"]
        version = self.registry.register_version(
            request.project,
            request.resolved_model_name,
            artifacts=new,
            source="trained",
            status="ready" if report["passed"] else "failed",
            status_reason=state.get("report_reason"),
            parent_id=parent_id,
            run_id=state["run_id"],
            kind=request.model_type,
            metrics={"accuracy": state["accuracy"]},
            report=report,
            preprocessing=spec.model_dump(mode="json"),
            labels=state["labels"],
        )
        from cloud_hub.monitoring.baseline import save_training_baseline

        baseline = save_training_baseline(self.registry.db, version.id, state)
        return StepResult(
            {
                "version": version.ref,
                "version_id": version.id,
                "status": version.status,
                "baseline": baseline,
            },
            {"version_id": version.id},
        )
