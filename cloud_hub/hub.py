"""The hub's parts, built once per process from its settings and passed to whoever needs them."""

from __future__ import annotations

from dataclasses import dataclass

from cloud_hub.artifact_store import ArtifactStore
from cloud_hub.db import Database
from cloud_hub.registry import Registry
from cloud_hub.settings import HubSettings
from cloud_hub.training.pipeline import EventHandler, TrainingPipeline


@dataclass
class Hub:
    settings: HubSettings
    db: Database
    registry: Registry
    step_cache: ArtifactStore

    @classmethod
    def open(cls, settings: HubSettings) -> Hub:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.db_path)
        registry = Registry(db, ArtifactStore(settings.artifacts_dir))
        return cls(settings, db, registry, ArtifactStore(settings.cache_dir))

    def pipeline(self, on_event: EventHandler | None = None) -> TrainingPipeline:
        return TrainingPipeline(self.registry, self.step_cache, on_event=on_event)

    def close(self) -> None:
        self.db.close()
