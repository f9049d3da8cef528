"""Model load: a version's artifact fetched from the registry and loaded with the agent's
runtime interface (onnxruntime or LiteRT) when the endpoint is built, with the version's task
head checked against the model's outputs.

A version's head is its own (`Version.head`, the effective head JSON) when it has one; else, as
before heads existed, a classification head on the first rank-2 float output when there is one,
and `edge_agent.core.heads.default_head` otherwise (raw: the tensors are the answer). A raw head
given
for want of a signature (an artifact registered without one) on a model that has class scores
answers scores, as it always did: `head: none` gives its tensors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import ValidationError

from cloud_hub.core.errors import NotFound, RegistryError
from cloud_hub.registry.schemas import Artifact, Version
from cloud_hub.serving.engine.batch_policy import POLICIES, BatchingChoice, PolicyCache, PolicyKey
from cloud_hub.serving.engine.batching import MicroBatcher, default_concurrency
from cloud_hub.serving.engine.errors import SpecError
from cloud_hub.serving.engine.spec import BatchingSpec, ModelRef
from cloud_hub.serving.engine.variants import ArtifactChoice, choose_by_measurement
from edge_agent.core.heads import HeadError, check_head, default_head, parse_head
from edge_agent.core.heads.spec import ClassificationHead
from edge_agent.core.runtimes import ModelLoadError, Runtime, RuntimeUnavailable, load_runtime


class ModelSource(Protocol):
    """Where versions come from: the hub's Registry, or a bundle baked into an image
    (`cloud_hub/serving/image/server.py`), so the engine itself never needs the registry."""

    def resolve_version(self, ref: str) -> Version: ...

    def artifact_blob(self, sha256: str) -> bytes | Path: ...


def choose_artifact(version: Version, ref: ModelRef) -> Artifact:
    ready = [a for a in version.artifacts if a.status == "ready"]
    if ref.format is not None:
        ready = [a for a in ready if a.format == ref.format]
    if ref.precision is not None:
        ready = [a for a in ready if a.precision == ref.precision]
    if not ready:
        have = ", ".join(f"{a.format}/{a.precision} ({a.status})" for a in version.artifacts)
        want = f"{ref.format or 'any'}/{ref.precision or 'any'}"
        raise LookupError(f"version {version.ref} has no ready {want} artifact (it has: {have})")
    order = {("onnx", "fp32"): 0, ("onnx", "int8"): 1, ("tflite", "fp32"): 2}
    return min(ready, key=lambda a: order.get((a.format, a.precision), 9))


@dataclass
class LoadedModel:
    alias: str
    version: Version
    artifact: Artifact
    runtime: Runtime
    labels: tuple[str, ...]
    classes: int | None
    head: Any = None  # the version's head, checked against the outputs (edge_agent.core.heads)
    batcher: MicroBatcher | None = field(default=None, repr=False)
    batching: BatchingChoice | None = None  # what "auto" decided (None: the spec said)
    artifact_choice: ArtifactChoice | None = None  # artifact "auto": what was measured
    threads: int = 1

    @property
    def preprocessing(self) -> dict[str, Any] | None:
        return self.version.preprocessing

    @property
    def task(self) -> str:
        return str(self.head.task)

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.batcher is None:
            return self.runtime.predict(x)
        return self.batcher.submit(x)

    def run(self, feeds: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output by name for the rows `feeds` (micro-batched with other requests when
        the model has a batch dimension). InputError for feeds it cannot take."""
        if self.batcher is None or not self.runtime.batched:
            return self.runtime.run(feeds)
        out: dict[str, np.ndarray] = self.batcher.submit(feeds)
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "version": self.version.ref,
            "version_id": self.version.id,
            "format": self.artifact.format,
            "precision": self.artifact.precision,
            "sha256": self.artifact.sha256,
            "threads": self.threads,
            "input": {"shape": self.runtime.input.shape, "dtype": self.runtime.input.dtype},
        }

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()


def _score_classes(runtime: Runtime) -> int | None:
    for out in runtime.outputs:
        if len(out.shape) == 2 and out.dtype.startswith(("float", "int8", "uint8")):
            return out.shape[1]
    return None


def load_model(
    registry: ModelSource,
    alias: str,
    ref: ModelRef,
    *,
    batching: BatchingSpec,
    pending: Callable[[], int],
    step: str | None = None,
    policies: PolicyCache = POLICIES,
) -> LoadedModel:
    """Resolve, fetch and load one version; SpecError (naming `step`) when any of it fails.
    With `batching.enabled: "auto"`, whether to batch comes from `policies` (measured, or as
    measured for the same artifact before)."""
    where = f"model {alias!r} ({ref.ref})"
    try:
        version = registry.resolve_version(ref.ref)
    except NotFound as exc:
        raise SpecError(f"{where}: unknown model version: {exc}", step=step) from None
    except RegistryError as exc:
        raise SpecError(f"{where}: {exc}", step=step) from None
    if version.status != "ready":
        raise SpecError(f"{where}: version {version.ref} is {version.status}", step=step)
    threads = ref.threads
    measured: ArtifactChoice | None = None
    try:
        if ref.artifact == "auto":
            measured = choose_by_measurement(
                version.artifacts, registry.artifact_blob, budget_points=ref.accuracy_budget
            )
            artifact, threads = measured.artifact, measured.threads
        else:
            artifact = choose_artifact(version, ref)
        runtime = load_runtime(
            registry.artifact_blob(artifact.sha256), artifact.format, threads=threads
        )
    except (LookupError, RegistryError, ModelLoadError, RuntimeUnavailable) as exc:
        raise SpecError(f"{where}: {exc}", step=step) from None
    classes = _score_classes(runtime)
    labels = tuple(version.labels) or tuple(str(i) for i in range(classes or 0))
    try:
        head = version_head(version, runtime, artifact)
    except HeadError as exc:
        raise SpecError(f"{where}: version {version.ref}'s {exc}", step=step) from None
    if head.task == "classification" and head.labels:
        labels = tuple(head.labels)
    loaded = LoadedModel(alias, version, artifact, runtime, labels, classes, head)
    loaded.artifact_choice = measured
    loaded.threads = threads
    if batching.enabled == "auto":
        key = PolicyKey(artifact.sha256, threads, batching.max_batch_size)
        loaded.batching = choice = policies.choose(key, runtime)
        batching = batching.model_copy(
            update={"enabled": choice.enabled, "max_batch_size": choice.max_batch_size}
        )
    if batching.enabled:
        concurrency = batching.max_concurrent_batches or default_concurrency(threads)
        loaded.batcher = MicroBatcher(
            runtime.run, batching, pending=pending, name=alias, concurrency=concurrency
        )
    return loaded


def _has_scores(runtime: Runtime) -> bool:
    try:
        runtime.score_output()
    except ValueError:
        return False
    return True


def version_head(version: Version, runtime: Runtime, artifact: Artifact | None = None) -> Any:
    """The version's head, checked against the model's outputs (HeadError if it does not fit);
    see the module's docstring for a version without one."""
    doc = getattr(version, "head", None)
    blind = not getattr(artifact, "signature", None)  # the registry never saw its outputs
    if doc and not (doc.get("task") == "raw" and blind and _has_scores(runtime)):
        try:
            head = parse_head(dict(doc))
        except ValidationError as exc:
            first = exc.errors()[0]
            field_ = ".".join(str(p) for p in first["loc"]) or "task"
            raise HeadError(field_, first["msg"]) from None
        return check_head(head, runtime.outputs)
    try:
        score = runtime.score_output()
    except ValueError:
        score = None
    if score is not None:
        classes = runtime.spec(score).shape[1]
        labels = list(version.labels)
        if classes is not None and len(labels) != classes:
            labels = []  # labels that do not fit: classes are named by number, as before
        return check_head(ClassificationHead(output=score, labels=labels), runtime.outputs)
    return default_head(None, runtime.outputs, version.labels)
