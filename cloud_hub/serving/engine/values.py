"""What flows between steps: a `Value` of N rows, and the request it starts from.

Every step maps the N rows it is given to N rows, in order, so rows stay aligned through the whole
graph: a router can send some rows one way and the rest another, and merge them back by index.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from cloud_hub.serving.engine.errors import BadInput

ValueKind = Literal["request", "tensor", "tensors", "scores", "results"]
ANSWER_KINDS: tuple[str, ...] = ("scores", "results", "tensors")  # what an endpoint may answer


@dataclass(frozen=True, eq=False)
class Value:
    """N rows of one of five kinds.

    - `request`: what the caller sent: numeric rows in `x` (or, for a model of several inputs,
      rows by input name in `feeds`), or one item per row in `raw` (image bytes, or data ids
      when `ids` is set).
    - `tensor`: model-ready inputs in `x`.
    - `tensors`: a model's raw outputs by name in `tensors`, rows first (a `head: none` model
      step; a head step reads them).
    - `scores`: class scores (N, C) in `x`, with the class names in `labels`; `top` may override
      the per-row winning class (a vote, say), else it is the argmax.
    - `results`: one head answer per row in `results` (the dicts `edge_agent.core.heads.decode`
      gives), of the head's `task`: detection, keypoints, segmentation, embedding, regression.

    A scores or results value may also carry the raw `tensors` it was decoded from (the
    response shows them when asked: `"outputs": true`; the log keeps their digest).
    """

    kind: ValueKind
    rows: int
    x: np.ndarray | None = None
    raw: tuple[Any, ...] | None = None
    ids: tuple[str, ...] | None = None
    labels: tuple[str, ...] | None = None
    top: np.ndarray | None = None
    # scores: the registry version id that gave each row (-1: none, an aggregate of several)
    version: np.ndarray | None = None
    feeds: Mapping[str, np.ndarray] | None = None
    tensors: Mapping[str, np.ndarray] | None = None
    results: tuple[dict[str, Any], ...] | None = None
    task: str | None = None
    # tensor: how each row's image became the model's input (a head maps points back with it)
    geometry: tuple[Any, ...] | None = None

    def take(self, index: Sequence[int] | np.ndarray) -> Value:
        idx = np.asarray(index, dtype=np.int64)
        return replace(
            self,
            rows=len(idx),
            x=None if self.x is None else self.x[idx],
            raw=None if self.raw is None else tuple(self.raw[i] for i in idx),
            ids=None if self.ids is None else tuple(self.ids[i] for i in idx),
            top=None if self.top is None else self.top[idx],
            version=None if self.version is None else self.version[idx],
            feeds=None if self.feeds is None else {k: v[idx] for k, v in self.feeds.items()},
            tensors=None if self.tensors is None else _take_tensors(self.tensors, idx, self.rows),
            results=None if self.results is None else tuple(self.results[i] for i in idx),
            geometry=None if self.geometry is None else tuple(self.geometry[i] for i in idx),
        )

    @functools.cached_property
    def rounded_scores(self) -> list[list[float]]:
        """The scores to 6 decimals as Python floats, rounded once with numpy: the response and
        the prediction log share them (scores only)."""
        assert self.x is not None
        rounded: list[list[float]] = np.round(self.x.astype(np.float64), 6).tolist()
        return rounded

    def winners(self) -> np.ndarray:
        """Index of the winning class per row (scores only)."""
        assert self.x is not None
        if self.top is not None:
            return self.top
        return np.asarray(self.x.argmax(axis=1), dtype=np.int64)

    def row_digests(self) -> list[str]:
        """A content digest per row: the same input gives the same digest."""
        if self.x is not None:
            x = np.ascontiguousarray(self.x)
            head = f"{x.dtype.str}{x.shape[1:]}".encode()
            return [hashlib.sha256(head + row.tobytes()).hexdigest() for row in x]
        if self.feeds is not None:
            out = []
            for i in range(self.rows):
                h = hashlib.sha256()
                for name in sorted(self.feeds):
                    arr = np.ascontiguousarray(self.feeds[name][i])
                    h.update(f"{name}:{arr.dtype.str}{arr.shape}".encode() + arr.tobytes())
                out.append(h.hexdigest())
            return out
        if self.raw is not None:
            return [hashlib.sha256(_bytes_of(item)).hexdigest() for item in self.raw]
        if self.ids is not None:
            return [hashlib.sha256(f"id:{i}".encode()).hexdigest() for i in self.ids]
        raise BadInput("the request carries nothing to digest")


def _bytes_of(item: Any) -> bytes:
    return item if isinstance(item, bytes) else repr(item).encode()


def _take_tensors(
    tensors: Mapping[str, np.ndarray], idx: np.ndarray, rows: int
) -> dict[str, np.ndarray]:
    """Rows `idx` of each tensor that has a row per row (one that does not is kept whole)."""
    return {k: v[idx] if v.ndim and len(v) == rows else v for k, v in tensors.items()}


def merge_scores(parts: list[tuple[np.ndarray, Value]], rows: int) -> Value:
    """Rows from several score values (each with the row indices it answers) as one value."""
    first = parts[0][1]
    assert first.x is not None
    out = np.zeros((rows, first.x.shape[1]), dtype=np.float32)
    top = np.zeros(rows, dtype=np.int64)
    version = np.full(rows, -1, dtype=np.int64)
    for index, value in parts:
        assert value.x is not None
        out[index] = value.x
        top[index] = value.winners()
        if value.version is not None:
            version[index] = value.version
    return Value(
        kind="scores",
        rows=rows,
        x=out,
        labels=first.labels,
        top=top,
        version=version,
        task=first.task,
        tensors=_merge_tensors(parts, rows),
    )


def _merge_tensors(
    parts: list[tuple[np.ndarray, Value]], rows: int
) -> dict[str, np.ndarray] | None:
    """The raw tensors of several values, row by row; None unless every part has the same
    names with the same row shapes (answers from different models)."""
    first = parts[0][1].tensors
    if first is None:
        return None
    out: dict[str, np.ndarray] = {}
    for name, arr in first.items():
        pieces = [(index, v.tensors.get(name) if v.tensors else None) for index, v in parts]
        if any(
            p is None or p.shape[1:] != arr.shape[1:] or p.dtype != arr.dtype or len(p) != len(i)
            for i, p in pieces
        ):
            return None
        merged = np.empty((rows, *arr.shape[1:]), dtype=arr.dtype)
        for index, piece in pieces:
            assert piece is not None
            merged[index] = piece
        out[name] = merged
    return out


def merge(parts: list[tuple[np.ndarray, Value]], rows: int) -> Value:
    """Rows from several values of one kind (scores, results or tensors), each with the row
    indices it answers, as one value of `rows` rows, in order."""
    first = parts[0][1]
    if first.kind == "scores":
        return merge_scores(parts, rows)
    version = np.full(rows, -1, dtype=np.int64)
    for index, value in parts:
        if value.version is not None:
            version[index] = value.version
    tensors = _merge_tensors(parts, rows)
    if first.kind == "tensors":
        if tensors is None:
            raise ValueError("cannot merge tensors of different shapes")
        return Value(kind="tensors", rows=rows, tensors=tensors, version=version, task=first.task)
    results: list[dict[str, Any]] = [{} for _ in range(rows)]
    for index, value in parts:
        assert value.results is not None
        for i, result in zip(index.tolist(), value.results, strict=True):
            results[i] = result
    return Value(
        kind="results",
        rows=rows,
        results=tuple(results),
        labels=first.labels,
        version=version,
        task=first.task,
        tensors=tensors,
    )


def concat(values: Sequence[Value]) -> Value:
    """Values of one kind one after the other (a cache's hits, row by row)."""
    total = sum(v.rows for v in values)
    parts, start = [], 0
    for v in values:
        parts.append((np.arange(start, start + v.rows, dtype=np.int64), v))
        start += v.rows
    return merge(parts, total)


class PredictRequest(BaseModel):
    """One predict call: exactly one of `inputs`, `image_b64` / `images_b64`, `id` / `ids`."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[Any] | dict[str, list[Any]] | None = Field(
        default=None,
        description="rows of numbers (a batch); for a model of several inputs, rows by input name",
    )
    image_b64: str | None = Field(default=None, description="one image (PNG, JPEG, ...)")
    images_b64: list[str] | None = None
    id: str | None = Field(default=None, description="an item of the endpoint's data source")
    ids: list[str] | None = None
    key: str | None = Field(
        default=None, max_length=256, description="a caller key (sticky routing: user, device)"
    )
    request_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="the caller's id for this request, in the response and the prediction log "
        "[default: a new one; over HTTP also the X-Request-ID header]",
    )
    attributes: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="request attributes that condition routing may look at (device_id, "
        "user, region, ...)",
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="the HTTP request's headers (lower-case names): filled in by the hub",
    )
    outputs: bool = Field(
        default=False,
        description="also answer every raw output tensor by name (shape, dtype, data) of the "
        "model that answered [over HTTP also ?outputs=all]",
    )
    top_k: int | None = Field(
        default=None,
        ge=1,
        description="also answer each row's N best classes with their scores, best first "
        "(class scores only; N at most the number of classes) [over HTTP also ?top_k=N]",
    )
    # a binary body (application/x-npy, octet-stream) as one array, or image bodies as bytes:
    # kept as they came, never through Python lists or base64
    _tensor: np.ndarray | None = PrivateAttr(default=None)
    _images: tuple[bytes, ...] | None = PrivateAttr(default=None)

    @classmethod
    def of_tensor(cls, x: np.ndarray) -> PredictRequest:
        """A request of numeric rows given as one array (rows first), as `inputs` would be."""
        request = cls.model_construct()
        request._tensor = x
        return request

    @classmethod
    def of_images(cls, images: Sequence[bytes]) -> PredictRequest:
        """A request of one row per image, the images' bytes as given."""
        if not images or not all(images):
            raise BadInput("the image body is empty")
        request = cls.model_construct()
        request._images = tuple(images)
        return request

    def row_count(self) -> int:
        """How many rows the request carries (before any parsing of them)."""
        if self._tensor is not None:
            return len(self._tensor)
        if self._images is not None:
            return len(self._images)
        if isinstance(self.inputs, dict):
            return max((len(v) for v in self.inputs.values()), default=0)
        for many in (self.inputs, self.images_b64, self.ids):
            if many is not None:
                return len(many)
        return 1

    def to_json(self) -> dict[str, Any]:
        """The request as a JSON document (a deferred job's): a binary body as `inputs` rows,
        image bytes as `images_b64`."""
        out = self.model_dump(mode="json", exclude_none=True)
        if self._tensor is not None:
            out["inputs"] = self._tensor.tolist()
        if self._images is not None:
            out["images_b64"] = [base64.b64encode(i).decode() for i in self._images]
        return out

    @model_validator(mode="after")
    def _exactly_one(self) -> PredictRequest:
        given = [
            n
            for n in ("inputs", "image_b64", "images_b64", "id", "ids")
            if getattr(self, n) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of inputs, image_b64, images_b64, id, ids"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    def to_value(self) -> Value:
        if self._tensor is not None:
            return Value(kind="request", rows=len(self._tensor), x=self._tensor)
        if self._images is not None:
            return Value(kind="request", rows=len(self._images), raw=self._images)
        if isinstance(self.inputs, dict):
            return parse_feeds(self.inputs)
        if self.inputs is not None:
            return Value(kind="request", rows=len(self.inputs), x=parse_rows(self.inputs))
        if self.image_b64 is not None or self.images_b64 is not None:
            images = [self.image_b64] if self.image_b64 is not None else self.images_b64 or []
            if not images:
                raise BadInput("images_b64 is empty")
            raw = tuple(_b64(text, i) for i, text in enumerate(images))
            return Value(kind="request", rows=len(raw), raw=raw)
        ids = [self.id] if self.id is not None else self.ids or []
        if not ids:
            raise BadInput("ids is empty")
        return Value(kind="request", rows=len(ids), ids=tuple(str(i) for i in ids))


def _b64(text: str, index: int) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"image {index} is not valid base64") from None
    if not data:
        raise BadInput(f"image {index} is empty")
    return data


def parse_rows(rows: list[Any], *, min_ndim: int = 2) -> np.ndarray:
    """A batch of numeric rows as float32: refuses an empty batch, ragged rows, non-numbers,
    NaN and infinity, each with a message saying which."""
    if not rows:
        raise BadInput("inputs is empty: send at least one row")
    try:
        x = np.asarray(rows, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        text = str(exc)
        if "inhomogeneous" in text or "sequence" in text:
            raise BadInput("inputs rows have different lengths (ragged)") from None
        raise BadInput(f"inputs must be numbers: {text.splitlines()[0][:120]}") from None
    if x.ndim < min_ndim:
        raise BadInput(f"inputs must be a list of rows (a batch), got shape {tuple(x.shape)}")
    finite = np.isfinite(x)
    if not finite.all():
        row = int(np.argwhere(~finite)[0][0])
        raise BadInput(f"inputs row {row} contains NaN or infinity")
    return x.astype(np.float32)


def parse_feeds(inputs: dict[str, list[Any]]) -> Value:
    """Rows by input name (a model of several inputs): each parsed as `parse_rows` does, and
    all with the same number of rows."""
    if not inputs:
        raise BadInput("inputs is an empty object: give rows for each input by name")
    feeds: dict[str, np.ndarray] = {}
    for name, rows in inputs.items():
        try:
            feeds[name] = parse_rows(rows, min_ndim=1)
        except BadInput as exc:
            raise BadInput(f"input {name}: {exc}") from None
    counts = {name: len(x) for name, x in feeds.items()}
    if len(set(counts.values())) > 1:
        said = ", ".join(f"{n}: {c}" for n, c in counts.items())
        raise BadInput(f"the inputs have different numbers of rows ({said})")
    return Value(kind="request", rows=next(iter(counts.values())), feeds=feeds)


def parse_body(
    body: bytes, content_type: str, headers: Mapping[str, str] | None = None
) -> PredictRequest:
    """A predict call's HTTP body: JSON (`inputs`, `image_b64`, ...), an image itself, or a
    tensor (`application/x-npy`; `application/octet-stream` with `X-Tensor-Shape` and
    `X-Tensor-Dtype` in `headers`). The JSON is parsed and validated in one pass (pydantic's
    parser, about three times faster than `json.loads` and a second validation); a tensor goes
    straight into numpy. Each mistake is a BadInput saying what is wrong."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media.startswith("image/"):
        return PredictRequest.of_images([body])
    if media == NPY:
        return PredictRequest.of_tensor(parse_npy(body))
    if media == OCTET_STREAM:
        return PredictRequest.of_tensor(parse_raw_tensor(body, headers or {}))
    try:
        return PredictRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        if first["type"] == "json_invalid":
            reason = first["msg"].removeprefix("Invalid JSON: ")
            raise BadInput(f"the body is not JSON: {reason}") from None
        if first["type"] == "model_type" and not first["loc"]:
            raise BadInput(
                'the body must be a JSON object: {"inputs": [...]}, {"image_b64": ...}'
            ) from None
        raise BadInput(
            "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: "
                + e["msg"].removeprefix("Value error, ")
                for e in errors
            )
        ) from None


NPY = "application/x-npy"
OCTET_STREAM = "application/octet-stream"
MAX_TENSOR_DIMS = 8
# what a binary body may hold: numbers, little-endian (as numpy writes them on every platform
# the hub runs on); bool, complex, strings and objects are refused
TENSOR_DTYPES = (
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
)


def parse_npy(body: bytes) -> np.ndarray:
    """An application/x-npy body (numpy's .npy format, any version) as float32 rows, as JSON
    `inputs` would give: the header is read without unpickling anything (object arrays are
    refused), the data taken from the body's bytes with one copy."""
    buf = io.BytesIO(body)
    try:
        major, _ = np.lib.format.read_magic(buf)
        read_header = (
            np.lib.format.read_array_header_1_0
            if major == 1
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(buf)
    except (ValueError, SyntaxError, TypeError, OverflowError, EOFError):
        raise BadInput(
            "the body is not a .npy array (application/x-npy: numpy's format, as np.save writes it)"
        ) from None
    x = _tensor_of(body, buf.tell(), tuple(shape), dtype, fortran=bool(fortran), what=".npy")
    return x


def parse_raw_tensor(body: bytes, headers: Mapping[str, str]) -> np.ndarray:
    """An application/octet-stream body: the tensor's bytes, C order, little-endian, with its
    shape (`X-Tensor-Shape: 1,3,224,224`) and dtype (`X-Tensor-Dtype: float32`) in headers."""
    shape_text = headers.get("x-tensor-shape")
    dtype_text = headers.get("x-tensor-dtype")
    if shape_text is None or dtype_text is None:
        raise BadInput(
            "an application/octet-stream body needs the headers X-Tensor-Shape (e.g. "
            "1,3,224,224) and X-Tensor-Dtype (e.g. float32)"
        )
    parts = [p.strip() for p in shape_text.split(",")]
    if not 1 <= len(parts) <= MAX_TENSOR_DIMS or not all(
        p.isdigit() and len(p) < 10 for p in parts
    ):
        raise BadInput(
            f"X-Tensor-Shape must be 1 to {MAX_TENSOR_DIMS} dimensions as comma-separated "
            "whole numbers, e.g. 1,3,224,224"
        )
    name = dtype_text.strip().lower()
    if name not in TENSOR_DTYPES:
        raise BadInput(f"X-Tensor-Dtype must be one of {', '.join(TENSOR_DTYPES)}")
    dtype = np.dtype(name).newbyteorder("<")
    return _tensor_of(body, 0, tuple(int(p) for p in parts), dtype, fortran=False, what="body")


def _tensor_of(
    body: bytes,
    offset: int,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    *,
    fortran: bool,
    what: str,
) -> np.ndarray:
    """The array of `shape` and `dtype` at `offset` in `body`, checked as JSON rows are (a
    batch of rows, finite numbers), as float32."""
    if dtype.hasobject or dtype.kind not in "iuf" or dtype.fields is not None:
        raise BadInput(
            f"the {what} array's dtype must be numeric (float or integer), not {dtype.name}"
        )
    if len(shape) < 2:
        raise BadInput(
            f"the {what} array must be a batch of rows (at least 2 dimensions, rows first), "
            f"got shape {shape}"
        )
    if shape[0] == 0:
        raise BadInput(f"the {what} array has no rows: send at least one")
    expected = math.prod(shape) * dtype.itemsize
    got = len(body) - offset
    if got != expected:
        raise BadInput(
            f"the {what} data is {got} bytes; shape {shape} of {dtype.name} is {expected} bytes"
        )
    flat = np.frombuffer(body, dtype=dtype, count=math.prod(shape), offset=offset)
    x = flat.reshape(shape, order="F" if fortran else "C").astype(np.float32, order="C")
    if dtype.kind == "f" and not np.isfinite(x).all():
        row = int(np.argwhere(~np.isfinite(x))[0][0])
        raise BadInput(f"the {what} array's row {row} contains NaN or infinity")
    return x
