"""The hub's settings: one typed object per process, built explicitly by the entry point."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import platformdirs
from pydantic import BaseModel, Field

DATA_DIR_ENV = "EDGEPILOT_DATA_DIR"


def default_data_dir() -> Path:
    """Where the hub keeps its database and artifacts when nothing else is said."""
    return Path(platformdirs.user_data_dir("edgepilot", appauthor=False))


def resolve_data_dir(explicit: Path | None, env: Mapping[str, str]) -> Path:
    """`--data-dir` wins, then `EDGEPILOT_DATA_DIR`, then the user's data directory."""
    if explicit is not None:
        return explicit.expanduser().resolve()
    if env.get(DATA_DIR_ENV):
        return Path(env[DATA_DIR_ENV]).expanduser().resolve()
    return default_data_dir()


class HubSettings(BaseModel):
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    scheduler_poll_s: float = Field(default=1.0, gt=0)
    run_scheduler: bool = True

    @property
    def db_path(self) -> Path:
        return self.data_dir / "registry.db"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def cache_dir(self) -> Path:
        """Cached pipeline step outputs (content-addressed, like artifacts)."""
        return self.data_dir / "step-cache"
