"""The hub's parts, built once per process from its settings and passed to whoever needs them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cloud_hub.auth.tokens import TokenStore, ensure_local_admin
from cloud_hub.core.db import Database
from cloud_hub.core.settings import HubSettings
from cloud_hub.fleet.enrollment import EnrollmentService
from cloud_hub.fleet.fleet import Fleet
from cloud_hub.registry.artifacts import ArtifactStore
from cloud_hub.registry.registry import Registry
from cloud_hub.training.pipeline import EventHandler, TrainingPipeline


@dataclass
class Hub:
    settings: HubSettings
    db: Database
    registry: Registry
    step_cache: ArtifactStore
    _background: ThreadPoolExecutor | None = field(default=None, repr=False)
    _fleet: Fleet | None = field(default=None, repr=False)
    _fleet_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(cls, settings: HubSettings) -> Hub:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.db_path)
        registry = Registry(db, ArtifactStore(settings.artifacts_dir))
        registry.fail_orphaned_runs()  # a killed process's runs become resumable failures
        ensure_local_admin(TokenStore(db), settings.admin_token_path)
        return cls(settings, db, registry, ArtifactStore(settings.cache_dir))

    @property
    def tokens(self) -> TokenStore:
        return TokenStore(self.db)

    @property
    def admin_token(self) -> str:
        """The hub machine's admin token (made by `open` if it was missing)."""
        return ensure_local_admin(self.tokens, self.settings.admin_token_path)

    @property
    def fleet(self) -> Fleet:
        """Devices and deployments (opens the signing key on first use)."""
        if self._fleet is None:
            with self._fleet_lock:  # threads asking at once share one (one registration batcher)
                if self._fleet is None:
                    self._fleet = Fleet.open(self.settings, self.db, self.registry)
        return self._fleet

    @property
    def enrollment(self) -> EnrollmentService:
        """Fleets, enrollment tokens and devices enrolling themselves."""
        return self.fleet.enrollment

    def pipeline(self, on_event: EventHandler | None = None) -> TrainingPipeline:
        return TrainingPipeline(self.registry, self.step_cache, on_event=on_event)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run training work in the background: one job at a time, to spare small hosts."""
        if self._background is None:
            self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="train")
        return self._background.submit(fn, *args)

    def close(self) -> None:
        if self._background is not None:
            self._background.shutdown(wait=True, cancel_futures=True)
            self._background = None
        if self._fleet is not None:
            self._fleet.close()
            self._fleet = None
        self.db.close()
