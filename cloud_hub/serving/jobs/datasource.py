"""Where a data cache fetches inputs by id: a folder of images or a CSV table."""

from __future__ import annotations

import csv
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cloud_hub.serving.engine.errors import BadInput

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class SourceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["folder", "csv"]
    path: str = Field(
        description="folder or CSV file. Over REST it must lie inside the hub's data roots (a "
        "relative path starts at the first); from the CLI, relative to its working directory"
    )
    id_column: str = Field(default="id", description="CSV: the column holding the ids")
    columns: list[str] | None = Field(
        default=None, description="CSV: feature columns, in order [default: all but the id]"
    )


class DataSource(ABC):
    """Fetches one item by id: encoded image bytes or a numeric row."""

    @abstractmethod
    def fetch(self, item_id: str) -> bytes | np.ndarray: ...


class FolderSource(DataSource):
    """`id` is a file name in the folder, with or without its image suffix."""

    def __init__(self, path: Path) -> None:
        if not path.is_dir():
            raise ValueError(f"data folder {path} does not exist")
        self.path = path

    def fetch(self, item_id: str) -> bytes:
        if not item_id or "/" in item_id or "\\" in item_id or item_id.startswith("."):
            raise BadInput(f"id {item_id!r} is not a file name")
        candidates = [self.path / item_id, *(self.path / f"{item_id}{s}" for s in IMAGE_SUFFIXES)]
        for file in candidates:
            if file.is_file():
                return file.read_bytes()
        raise BadInput(f"id {item_id!r} is not in the data folder")


class CsvSource(DataSource):
    """Rows of a CSV file with a header, by the value of its id column (read once)."""

    def __init__(self, path: Path, id_column: str, columns: list[str] | None) -> None:
        if not path.is_file():
            raise ValueError(f"CSV file {path} does not exist")
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            if id_column not in header:
                raise ValueError(f"CSV file {path} has no column {id_column!r}")
            self.columns = columns or [c for c in header if c != id_column]
            missing = [c for c in self.columns if c not in header]
            if missing:
                raise ValueError(f"CSV file {path} has no columns {missing}")
            self._rows: dict[str, list[str]] = {
                row[id_column]: [row[c] for c in self.columns] for row in reader
            }

    def fetch(self, item_id: str) -> np.ndarray:
        row = self._rows.get(item_id)
        if row is None:
            raise BadInput(f"id {item_id!r} is not in the table")
        try:
            return np.asarray([float(v) for v in row], dtype=np.float32)
        except ValueError:
            raise BadInput(f"row {item_id!r} of the table is not numeric") from None


def open_source(spec: SourceSpec, path: Path) -> DataSource:
    if spec.kind == "folder":
        return FolderSource(path)
    return CsvSource(path, spec.id_column, spec.columns)
