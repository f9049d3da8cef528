"""Batch inference: an endpoint run over a stored table, a CSV file or a folder of images.

Results are written back to the hub database, table `batch_predictions`, keyed by (source,
endpoint, row id): the source is `csv:/abs/path`, `images:/abs/dir` or `table:NAME`. A batch
predicts only the rows that have no prediction there yet, so a rerun (or the next scheduled
run) does only the rows added since, and a batch whose worker died resumes where it stopped.
Each chunk's predictions and the job's progress (done/total) commit in one transaction, guarded
by the worker's lease. With a `cron`, finishing a batch queues the next run at the next tick.

A row refused as bad input (not numeric, an unreadable image) is recorded in the batch's result,
`failed_rows`: its error, the run that found it, and a digest of its content. Later runs over
the same source and endpoint do not try it again while its content is unchanged (retrying bad
input cannot help; they count it in `not_retried`); once the row is fixed its digest differs
and the next run predicts it. `retry_errors: true` tries every such row again regardless.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloud_hub.core.cron import next_fire
from cloud_hub.core.db import Database
from cloud_hub.core.errors import InvalidInput
from cloud_hub.serving.engine.errors import BadInput
from cloud_hub.serving.engine.values import PredictRequest
from cloud_hub.serving.jobs.datasource import IMAGE_SUFFIXES
from cloud_hub.serving.jobs.queue import Job, JobQueue, now_utc

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
REMEMBERED_ERRORS = 10_000  # failed rows a result keeps (more are simply tried again next run)


class BatchSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["csv", "images", "table"]
    path: str | None = Field(
        default=None,
        description="csv: the file; images: the folder. Over REST it must lie inside the hub's "
        "data roots (a relative path starts at the first); the CLI reads local paths",
    )
    table: str | None = Field(default=None, description="table: a table of the hub database")
    id_column: str = Field(default="id", description="csv/table: the column of row ids")
    columns: list[str] | None = Field(
        default=None, description="csv/table: feature columns, in order [default: all but id]"
    )

    @model_validator(mode="after")
    def _where(self) -> BatchSource:
        if self.kind == "table":
            if self.table is None or not IDENTIFIER.match(self.table):
                raise ValueError("a table source needs 'table': a table name")
            for col in [self.id_column, *(self.columns or [])]:
                if not IDENTIFIER.match(col):
                    raise ValueError(f"{col!r} is not a column name")
        elif self.path is None:
            raise ValueError(f"a {self.kind} source needs 'path'")
        return self


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: BatchSource
    chunk_size: int = Field(default=64, ge=1, le=4096, description="rows per predict call")
    cron: str | None = Field(
        default=None, description="run again on this schedule (5 fields, or 6 with seconds)"
    )
    retry_errors: bool = Field(
        default=False,
        description="try again the rows an earlier run refused as bad input, even unchanged",
    )


class BatchView(BaseModel):
    id: str
    endpoint: str
    state: str
    done: int
    total: int | None
    progress: float | None
    source: BatchSource
    cron: str | None
    next_batch: str | None
    attempts: int
    worker: str | None
    result: dict[str, Any] | None
    error: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    not_before: str

    @classmethod
    def of(cls, job: Job) -> BatchView:
        request = BatchRequest.model_validate(job.request)
        progress = None
        if job.total is not None:
            progress = round(job.done / job.total, 4) if job.total else 1.0
        return cls(
            id=job.id,
            endpoint=job.endpoint,
            state=job.state,
            done=job.done,
            total=job.total,
            progress=progress,
            source=request.source,
            cron=request.cron,
            next_batch=job.next_job,
            attempts=job.attempts,
            worker=job.worker,
            result=job.result,
            error=job.error,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            not_before=job.not_before,
        )


class StoredPrediction(BaseModel):
    row_id: str
    label: str = Field(description="the top class ('' for a head result without one)")
    score: float
    scores: list[float]
    result: dict[str, Any] | None = Field(
        default=None, description="a head's result (detections, points, ...): its own fields"
    )
    job_id: str
    created_at: str


def _stored(p: Any) -> tuple[str, float, str]:
    """(label, score, scores JSON) of an answer as the table keeps it: a head's result goes
    whole into the scores column (a JSON object), with no label and a score of 0."""
    if p.scores is not None:
        return p.label, p.score, json.dumps(p.scores)
    result = p.model_dump(mode="json", exclude={"model_version", "outputs"})
    return p.label or "", p.score or 0.0, json.dumps(result)


def _loaded(r: Any) -> StoredPrediction:
    scores = json.loads(r["scores"])
    result = scores if isinstance(scores, dict) else None
    return StoredPrediction(
        row_id=r["row_id"],
        label=r["label"],
        score=r["score"],
        scores=[] if result is not None else scores,
        result=result,
        job_id=r["job_id"],
        created_at=r["created_at"],
    )


# -- sources ------------------------------------------------------------------------------------
def source_key(source: BatchSource, path: Path | None) -> str:
    """How `batch_predictions` names a source: `table:NAME`, `csv:/abs/file`, `images:/abs/dir`."""
    if source.kind == "table":
        return f"table:{source.table}"
    return f"{source.kind}:{path}"


def resolve(source: BatchSource, base_dir: Path) -> Path | None:
    if source.path is None:
        return None
    p = Path(source.path).expanduser()
    return (p if p.is_absolute() else base_dir / p).resolve()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Rows:
    """A source opened for one batch: its row ids, and a chunk of them as a predict request."""

    def __init__(self, source: BatchSource, base_dir: Path, db: Database) -> None:
        self.source = source
        self.db = db
        self.path = resolve(source, base_dir) if source.kind != "table" else None
        self._rows: dict[str, list[str]] = {}
        if source.kind == "csv":
            self._read_csv()
        elif source.kind == "images":
            if not self.path or not self.path.is_dir():
                raise InvalidInput(f"image folder {self.path} does not exist")
        else:
            self._read_table()

    @property
    def key(self) -> str:
        return source_key(self.source, self.path)

    def _check_columns(self, header: list[str], where: str) -> list[str]:
        if self.source.id_column not in header:
            raise InvalidInput(f"{where} has no column {self.source.id_column!r}")
        columns = self.source.columns or [c for c in header if c != self.source.id_column]
        missing = [c for c in columns if c not in header]
        if missing or not columns:
            raise InvalidInput(f"{where} has no feature columns {missing or ''}".strip())
        return columns

    def _read_csv(self) -> None:
        assert self.path is not None
        if not self.path.is_file():
            raise InvalidInput(f"CSV file {self.path} does not exist")
        with self.path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            columns = self._check_columns(list(reader.fieldnames or []), f"CSV file {self.path}")
            for row in reader:
                self._rows[row[self.source.id_column]] = [row[c] for c in columns]

    def _read_table(self) -> None:
        table = self.source.table
        assert table is not None
        conn = self.db.conn
        found = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?", [table]
        ).fetchone()
        if found is None:
            raise InvalidInput(f"the hub database has no table {table!r}")
        header = [r[1] for r in conn.execute(f"PRAGMA table_info({_quote(table)})")]
        columns = self._check_columns(header, f"table {table!r}")
        select = ", ".join(_quote(c) for c in [self.source.id_column, *columns])
        for row in conn.execute(f"SELECT {select} FROM {_quote(table)}"):
            self._rows[str(row[0])] = [row[i] for i in range(1, len(columns) + 1)]

    def digest(self, row_id: str) -> str:
        """A digest of the row's content (the image file's bytes, or the row's values)."""
        if self.source.kind == "images":
            assert self.path is not None
            try:
                data = (self.path / row_id).read_bytes()
            except OSError:
                data = b""
        else:
            data = json.dumps(self._rows.get(row_id), default=str).encode()
        return hashlib.sha256(data).hexdigest()

    def ids(self) -> list[str]:
        if self.source.kind == "images":
            assert self.path is not None
            return sorted(
                f.name
                for f in self.path.iterdir()
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
            )
        return list(self._rows)

    def request(self, ids: list[str]) -> PredictRequest:
        if self.source.kind == "images":
            assert self.path is not None
            images = [base64.b64encode((self.path / i).read_bytes()).decode() for i in ids]
            return PredictRequest(images_b64=images)
        try:
            rows = [[float(v) for v in self._rows[i]] for i in ids]
        except (TypeError, ValueError):
            raise BadInput(f"a row of {ids[0]!r}..{ids[-1]!r} is not numeric") from None
        return PredictRequest(inputs=rows)


def check(request: BatchRequest, base_dir: Path, db: Database) -> Rows:
    """Open the source now (422 at submit time when it is missing or malformed)."""
    if request.cron is not None:
        next_fire(request.cron, now_utc())
    return Rows(request.source, base_dir, db)


# -- running a batch -----------------------------------------------------------------------------
Predict = Callable[[PredictRequest], Any]


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class BatchRunner:
    def __init__(self, queue: JobQueue, db: Database, base_dir: Path) -> None:
        self.queue = queue
        self.db = db
        self.base_dir = base_dir

    def predicted(self, key: str, endpoint: str) -> dict[str, str]:
        """The rows of a source that have a prediction: row id → the batch job that wrote it."""
        rows = self.db.conn.execute(
            "SELECT row_id, job_id FROM batch_predictions WHERE source = ? AND endpoint = ?",
            [key, endpoint],
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    def known_errors(self, key: str, endpoint: str, job_id: str) -> dict[str, dict[str, str]]:
        """The rows the latest finished run over this source and endpoint left in error
        (its `failed_rows`): row id → error, job_id, digest."""
        result = self.queue.last_batch_result(endpoint, key, other_than=job_id)
        if result is None:
            return {}
        failed = result.get("failed_rows") or {}
        return {k: v for k, v in failed.items() if isinstance(v, dict) and "digest" in v}

    def run(self, job: Job, worker: str, predict: Predict) -> dict[str, Any]:
        """Predict the rows without a prediction, chunk by chunk; the summary for the job.

        `predicted` counts the rows this job predicted, in this attempt or in an earlier one
        of the same job (a batch resumed after its worker died); `skipped` the rows other runs
        had predicted; `errors` the rows refused in this run (`row_errors`: the first 20);
        `not_retried` the rows refused by an earlier run and unchanged since; `failed_rows` all
        the rows left in error (row id → error, job_id, digest)."""
        request = BatchRequest.model_validate(job.request)
        rows = Rows(request.source, self.base_dir, self.db)
        ids = rows.ids()
        have = self.predicted(rows.key, job.endpoint)
        mine = sum(1 for i in ids if have.get(i) == job.id)  # from an earlier attempt of it
        had = sum(1 for i in ids if i in have)
        known = {} if request.retry_errors else self.known_errors(rows.key, job.endpoint, job.id)
        held: dict[str, dict[str, str]] = {}
        for i in ids:
            if i in known and i not in have and rows.digest(i) == known[i]["digest"]:
                held[i] = known[i]  # bad input before, the same content now: not again
        todo = [i for i in ids if i not in have and i not in held]
        done = len(ids) - len(todo)
        self.queue.heartbeat(job.id, worker, done=done, total=len(ids))
        errors: dict[str, str] = {}
        for chunk in _chunks(todo, request.chunk_size):
            answers = self._predict_chunk(rows, chunk, predict, errors)
            done += len(chunk)
            with self.db.transaction() as db:
                self.queue.extend(db, job.id, worker, done=done)
                db.conn.executemany(
                    "INSERT OR REPLACE INTO batch_predictions "
                    "(source, endpoint, row_id, job_id, label, score, scores) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (rows.key, job.endpoint, row_id, job.id, *_stored(p))
                        for row_id, p in answers
                    ],
                )
        failed = dict(held)
        for row_id, error in errors.items():
            failed[row_id] = {"error": error, "job_id": job.id, "digest": rows.digest(row_id)}
        return {
            "source": rows.key,
            "total": len(ids),
            "predicted": len(todo) - len(errors) + mine,
            "skipped": had - mine,
            "errors": len(errors),
            "row_errors": dict(list(errors.items())[:20]),
            "not_retried": len(held),
            "failed_rows": dict(sorted(failed.items())[:REMEMBERED_ERRORS]),
        }

    def _predict_chunk(
        self, rows: Rows, chunk: list[str], predict: Predict, errors: dict[str, str]
    ) -> list[tuple[str, Any]]:
        """Predictions for a chunk; when the chunk is refused as bad input, row by row, so one
        bad row (an unreadable image) costs only itself."""
        try:
            response = predict(rows.request(chunk))
            return list(zip(chunk, response.predictions, strict=True))
        except InvalidInput:
            pass
        answers = []
        for row_id in chunk:
            try:
                response = predict(rows.request([row_id]))
            except InvalidInput as exc:
                errors[row_id] = str(exc)
                continue
            answers.append((row_id, response.predictions[0]))
        return answers

    def results(self, job: Job, *, limit: int = 1000, offset: int = 0) -> list[StoredPrediction]:
        """The predictions of this batch's source and endpoint (from this run or earlier ones)."""
        source = BatchRequest.model_validate(job.request).source
        key = source_key(source, resolve(source, self.base_dir))
        found = self.db.conn.execute(
            "SELECT * FROM batch_predictions WHERE source = ? AND endpoint = ? "
            "ORDER BY row_id LIMIT ? OFFSET ?",
            [key, job.endpoint, limit, offset],
        ).fetchall()
        return [_loaded(r) for r in found]
