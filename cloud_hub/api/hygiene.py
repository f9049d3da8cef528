"""Input hygiene for the hub's REST API: one error body, body limits, strict query strings,
text that can be stored, and file paths confined to the hub's data roots.

`install(app, settings)` is called once by `create_app`, after every router is included:

- **One error body** (`ErrorBody`: `detail`, `error`, and `step` / `errors` where they apply)
  for every error the API answers: registry and serving errors, `HTTPException`s (404 for an
  unknown route, 405, 401/403 of authentication), request validation (FastAPI's handler is
  replaced: its body echoed the whole input) and unexpected failures (500, no exception text).
  Messages are cut to a short excerpt: an error never carries more than `MAX_DETAIL` characters
  of anything a caller sent. The OpenAPI document names the error codes of every operation with
  this schema.
- **Body limits**, enforced while the body is read (a `Content-Length` over the limit is refused
  before a byte of it is read; a chunked body is counted): `max_json_body_bytes` for a route whose
  body FastAPI parses as JSON, `max_upload_bytes` (and a little for the form's other fields) for
  a form upload, which is streamed to a temporary file. A route that reads its body itself (the
  predict and job routes) keeps its own limit (`serving_max_body_bytes`, per endpoint). 413, with
  the error body; the route never runs, so nothing is stored.
- **Text that can be stored**: a JSON body's strings and keys, the path and the query string may
  not hold a lone surrogate (`"\\ud800"`: no UTF-8 for it) or a NUL: 422 naming the field.
- **The documented operations, checked before routing**: a query parameter the operation does
  not declare is refused with 422 naming it (`?device=` where the parameter is `device_id` used
  to be ignored: every log came back); an integer path or query parameter must fit SQLite's
  64 bits (422; past that the database raised); a method the path does not document is 405
  with `Allow` listing the ones it does (a concrete path wins over a template, as in OpenAPI:
  `GET /alerts/evaluate` is 405, not a bad alert id).
- **File paths**: in a JSON body, a string field named `path` names a file or folder on the hub
  (a dataset, a batch source, a data cache's source). It is resolved, symbolic links included,
  and must lie inside one of the settings' `data_roots` (a relative path starts at the first);
  the body then carries the resolved absolute path, so that workers and later runs read that very
  file. Outside the roots: 422 naming the path and the roots, nothing read. Only REST callers are
  confined: the CLI runs on the hub machine and reads the local paths its user names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.params import Form
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud_hub.core.errors import AlreadyExists, InvalidInput, NotFound, Refused, RegistryError
from cloud_hub.core.settings import HubSettings

MAX_DETAIL = 500  # characters of an error's `detail`
MAX_MSG = 200  # characters of one validation error's `msg`
MAX_LOC = 64  # characters of one part of its `loc`
MAX_ITEMS = 20  # validation errors listed
FORM_MARGIN = 1024 * 1024  # a form upload's fields beside the file
PATH_FIELD = "path"

_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")


# -- the error body ---------------------------------------------------------------------------
class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description="where: body/query/path, then the field's path")
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error the API answers (4xx and 5xx)."""

    detail: str = Field(description="what went wrong, for a person")
    error: str = Field(description="its kind: NotFound, AlreadyExists, ValidationError, ...")
    step: str | None = Field(default=None, description="serving errors: the endpoint step at fault")
    errors: list[ErrorItem] | None = Field(
        default=None, description="validation errors: one per field (the first 20)"
    )


def excerpt(text: str, limit: int = MAX_DETAIL) -> str:
    """`text`, cut to `limit` characters (an ellipsis saying it was), lone surrogates written
    as escapes (an error about one must still be JSON)."""
    cut = text if len(text) <= limit else text[: limit - 1] + "…"
    return cut.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(
    code: int,
    detail: str,
    error: str,
    *,
    step: str | None = None,
    errors: list[ErrorItem] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(detail=excerpt(detail), error=error, step=step, errors=errors)
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True), status_code=code, headers=headers
    )


def _status_name(code: int) -> str:
    try:
        return HTTPStatus(code).phrase.replace(" ", "").replace("-", "")
    except ValueError:
        return "HTTPError"


def _items(errors: Sequence[Any]) -> list[ErrorItem]:
    items = []
    for e in errors[:MAX_ITEMS]:
        loc = [p if isinstance(p, int) else excerpt(str(p), MAX_LOC) for p in e.get("loc", ())]
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        items.append(ErrorItem(loc=loc, msg=excerpt(msg, MAX_MSG), type=str(e.get("type", ""))))
    return items


def _summary(items: list[ErrorItem], total: int) -> str:
    text = "; ".join(f"{'.'.join(str(p) for p in i.loc) or 'request'}: {i.msg}" for i in items)
    return text + (f" (and {total - len(items)} more)" if total > len(items) else "")


def validation_response(errors: Sequence[Any]) -> JSONResponse:
    items = _items(errors)
    return error_response(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        _summary(items, len(errors)),
        "ValidationError",
        errors=items,
    )


class RequestRefused(HTTPException):
    """A request refused before its route runs: 405, 413 (too large) or 422 (`errors`: the
    fields at fault)."""

    def __init__(
        self,
        code: int,
        detail: str,
        errors: list[ErrorItem] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(code, detail, headers=headers)
        self.errors = errors
        names = {413: "PayloadTooLarge", 405: "MethodNotAllowed"}
        self.error = names.get(code, "ValidationError")


def _refused(loc: list[str | int], msg: str, kind: str) -> RequestRefused:
    items = _items([{"loc": loc, "msg": msg, "type": kind}])
    return RequestRefused(status.HTTP_422_UNPROCESSABLE_CONTENT, _summary(items, 1), items)


def _check_text(text: str, loc: list[str | int]) -> None:
    found = _BAD_TEXT.search(text)
    if found is None:
        return
    if found.group() == "\x00":
        raise _refused(loc, "a NUL character is not allowed", "string_nul")
    raise _refused(
        loc,
        f"a lone surrogate (\\u{ord(found.group()):04x}) is not text: it has no UTF-8",
        "string_surrogate",
    )


# -- data roots ---------------------------------------------------------------------------------
class PathRefused(InvalidInput):
    """A path outside the hub's data roots (422)."""


def confine(raw: str, roots: Sequence[Path]) -> Path:
    """`raw` resolved (symbolic links included) inside one of `roots`; a relative path starts at
    the first root. PathRefused naming the path and the roots otherwise."""
    shown = repr(excerpt(raw, MAX_MSG // 2))
    if not roots:
        raise PathRefused(f"path {shown}: this hub takes no file paths (no data roots)")
    named = ", ".join(str(r) for r in roots)
    try:
        given = Path(raw)
        resolved = (given if given.is_absolute() else roots[0] / given).resolve()
        inside = any(resolved.is_relative_to(root.resolve()) for root in roots)
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL
        inside = False
    if not inside:
        raise PathRefused(f"path {shown} is outside the hub's data roots ({named})")
    return resolved


def _scan_json(doc: Any, roots: Sequence[Path]) -> bool:
    """Refuse bad text anywhere in `doc`, confine and rewrite its `path` fields (in place);
    whether a path was rewritten. Iterative: a deeply nested body costs no recursion."""
    changed = False
    stack: list[tuple[list[str | int], Any]] = [(["body"], doc)]
    while stack:
        loc, node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                where = [*loc, key]
                _check_text(key, where)
                if key == PATH_FIELD and isinstance(value, str):
                    _check_text(value, where)
                    try:
                        fixed = str(confine(value, roots))
                    except PathRefused as exc:
                        raise _refused(where, str(exc), "path_outside_roots") from None
                    if fixed != value:
                        node[key] = fixed
                        changed = True
                else:
                    stack.append((where, value))
        elif isinstance(node, list):
            stack.extend(([*loc, i], v) for i, v in enumerate(node))
        elif isinstance(node, str):
            _check_text(node, loc)
    return changed


# -- the middleware -----------------------------------------------------------------------------
_PASS, _JSON, _FORM = "pass", "json", "form"


def _body_kind(scope: Scope) -> str:
    """How the matched route reads its body: FastAPI parses it (JSON or a form), or the route
    reads it itself (and limits it itself), or it is no route of the API."""
    route = scope.get("route")
    if route is None or not hasattr(route, "dependant"):
        return _PASS
    body = getattr(route, "body_field", None)
    if body is None:
        return _PASS
    return _FORM if isinstance(body.field_info, Form) else _JSON


def _is_json(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            media = value.decode("latin-1").split(";", 1)[0].strip().lower()
            return media == "application/json" or (
                media.startswith("application/") and media.endswith("+json")
            )
    return False


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(limit: int) -> RequestRefused:
    return RequestRefused(
        status.HTTP_413_CONTENT_TOO_LARGE, f"request body is larger than {limit} bytes"
    )


class _Body:
    """The request's `receive`, limited and checked once the router has picked the route."""

    def __init__(self, scope: Scope, receive: Receive, settings: HubSettings) -> None:
        self.scope = scope
        self.receive = receive
        self.settings = settings
        self.kind: str | None = None
        self.limit = 0
        self.seen = 0
        self.done = False

    async def __call__(self) -> Message:
        if self.kind is None:
            self.kind = _body_kind(self.scope)
            self.limit = (
                self.settings.max_upload_bytes + FORM_MARGIN
                if self.kind == _FORM
                else self.settings.max_json_body_bytes
            )
            length = _content_length(self.scope)
            if self.kind != _PASS and length is not None and length > self.limit:
                raise _too_large(self.limit)  # before a byte of it is read
        if self.kind == _PASS or self.done:
            return await self.receive()
        if self.kind == _FORM:
            message = await self.receive()
            self._count(message)
            return message
        return await self._json()

    def _count(self, message: Message) -> None:
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                raise _too_large(self.limit)

    async def _json(self) -> Message:
        """The whole body (it is small: the limit), checked, as one message."""
        body = bytearray()
        while True:
            message = await self.receive()
            if message["type"] != "http.request":
                return message  # the client went away
            self._count(message)
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.done = True
        data = bytes(body)
        if data and _is_json(self.scope):
            try:
                doc = json.loads(data)
            except (ValueError, RecursionError):
                doc = None  # FastAPI answers it (422 for bad JSON)
            if doc is not None and _scan_json(doc, self.settings.data_roots):
                data = json.dumps(doc).encode()
        return {"type": "http.request", "body": data, "more_body": False}


INT64 = (-(2**63), 2**63 - 1)  # what SQLite stores as an integer


@dataclass(frozen=True)
class _Operation:
    query: frozenset[str]  # the query parameters it declares
    integers: frozenset[tuple[str, str]]  # ("path" | "query", name) declared as integers


@dataclass
class _PathItem:
    regex: re.Pattern[str]
    literals: int  # segments without a parameter: the more, the more specific
    operations: dict[str, _Operation] = field(default_factory=dict)  # by method


def _is_integer(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "integer" or any(
        _is_integer(s) for s in schema.get("anyOf", ()) if isinstance(s, dict)
    )


class _Operations:
    """The OpenAPI document's paths and operations, to check a request against before it is
    routed. A concrete path wins over a templated one (`/alerts/evaluate` over
    `/alerts/{alert_id}`), as OpenAPI says."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._exact: dict[str, _PathItem] | None = None
        self._templated: dict[int, list[_PathItem]] = {}

    def _build(self) -> dict[str, _PathItem]:
        exact: dict[str, _PathItem] = {}
        for path, item in self.app.openapi().get("paths", {}).items():
            segments = path.strip("/").split("/")
            literals = sum(1 for seg in segments if "{" not in seg)
            entry = _PathItem(compile_path(path)[0], literals)
            for method, op in item.items():
                if not isinstance(op, dict) or "responses" not in op:
                    continue
                params = [p for p in op.get("parameters", ()) if isinstance(p, dict)]
                entry.operations[method.upper()] = _Operation(
                    query=frozenset(p["name"] for p in params if p.get("in") == "query"),
                    integers=frozenset(
                        (p["in"], p["name"])
                        for p in params
                        if p.get("in") in ("path", "query") and _is_integer(p.get("schema", {}))
                    ),
                )
            if literals == len(segments):
                exact[path] = entry
            else:
                self._templated.setdefault(len(segments), []).append(entry)
        return exact

    def find(self, path: str) -> _PathItem | None:
        """The documented path `path` is an instance of; None: not one of the API's."""
        if self._exact is None:
            self._exact = self._build()
        found = self._exact.get(path)
        if found is not None:
            return found
        best: _PathItem | None = None
        for item in self._templated.get(len(path.strip("/").split("/")), ()):
            if item.regex.match(path) and (best is None or item.literals > best.literals):
                best = item
        return best


def _out_of_range(text: str) -> bool:
    try:
        value = int(text)
    except ValueError:
        return False  # not an integer: FastAPI says so
    return not INT64[0] <= value <= INT64[1]


class HygieneMiddleware:
    def __init__(self, app: ASGIApp, *, settings: HubSettings, operations: _Operations) -> None:
        self.app = app
        self.settings = settings
        self.operations = operations

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            self._check_url(scope)
        except RequestRefused as exc:
            answer = error_response(
                exc.status_code, exc.detail, exc.error, errors=exc.errors, headers=exc.headers
            )
            await answer(scope, receive, send)
            return
        await self.app(scope, _Body(scope, receive, self.settings), send)

    def _check_url(self, scope: Scope) -> None:
        path: str = scope["path"]
        _check_text(path, ["path"])
        query: bytes = scope.get("query_string", b"")
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True) if query else []
        for name, value in pairs:
            _check_text(name, ["query", name])
            _check_text(value, ["query", name])
        path = path.removeprefix(scope.get("root_path", "")) or "/"
        item = self.operations.find(path)
        if item is None:
            return  # no route of the documented API: the router answers
        method = "GET" if scope["method"] == "HEAD" else scope["method"]
        op = item.operations.get(method)
        if op is None:
            allow = ", ".join(sorted(item.operations))
            raise RequestRefused(
                status.HTTP_405_METHOD_NOT_ALLOWED,
                f"{excerpt(scope['method'], MAX_LOC)} is not a method of this path (it has: "
                f"{allow})",
                headers={"Allow": allow},
            )
        self._check_query(op, pairs)
        match = item.regex.match(path)
        values = [("path", k, v) for k, v in (match.groupdict() if match else {}).items()]
        values += [("query", k, v) for k, v in pairs]
        for where, name, value in values:
            if (where, name) in op.integers and _out_of_range(value):
                raise _refused(
                    [where, name],
                    f"an integer from {INT64[0]} to {INT64[1]} (what the hub can store)",
                    "int_out_of_range",
                )

    @staticmethod
    def _check_query(op: _Operation, pairs: list[tuple[str, str]]) -> None:
        unknown = sorted({name for name, _ in pairs} - op.query)
        if unknown:
            takes = ", ".join(sorted(op.query)) or "none"
            msg = f"unknown query parameter (this operation takes: {takes})"
            items = _items(
                [{"loc": ["query", n], "msg": msg, "type": "extra_forbidden"} for n in unknown]
            )
            raise RequestRefused(
                status.HTTP_422_UNPROCESSABLE_CONTENT, _summary(items, len(unknown)), items
            )


# -- the OpenAPI document ----------------------------------------------------------------------
def _document_errors(schema: dict[str, Any]) -> None:
    """Every operation answers its errors with ErrorBody: 400, 404, 409, 422, 500 and 503; 413
    when it takes a body; 401 and 403 when it names a security requirement."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    body_schema = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(body_schema.pop("$defs", {}))
    components["ErrorBody"] = body_schema
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    for item in schema.get("paths", {}).values():
        for op in item.values():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            codes = [400, 404, 409, 422, 500, 503]
            if "requestBody" in op:
                codes.append(413)
            if op.get("security"):
                codes += [401, 403]
            for code in sorted(codes):
                op["responses"][str(code)] = {
                    "description": HTTPStatus(code).phrase,
                    "content": {"application/json": {"schema": ref}},
                }
    text = json.dumps(schema["paths"])
    for unused in ("HTTPValidationError", "ValidationError"):
        if f'/{unused}"' not in text:
            components.pop(unused, None)


# -- install ------------------------------------------------------------------------------------
Handler = Callable[[Request, Any], Awaitable[JSONResponse]]


def _registry_handler(code: int) -> Handler:
    async def handle(_: Request, exc: Exception) -> JSONResponse:
        return error_response(code, str(exc), type(exc).__name__)

    return handle


def install(app: FastAPI, settings: HubSettings) -> None:
    """The error body, its OpenAPI document, the body limits and the URL checks (see the module
    docstring). Once, after every router is included."""
    for cls, code in (
        (NotFound, status.HTTP_404_NOT_FOUND),
        (AlreadyExists, status.HTTP_409_CONFLICT),
        (InvalidInput, status.HTTP_422_UNPROCESSABLE_CONTENT),
        (RegistryError, status.HTTP_400_BAD_REQUEST),
    ):
        app.add_exception_handler(cls, _registry_handler(code))

    async def refused(_: Request, exc: Refused) -> JSONResponse:
        return error_response(exc.status, str(exc), type(exc).__name__)

    app.add_exception_handler(Refused, cast(Handler, refused))

    async def validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(exc.errors())

    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, RequestRefused):
            errors, error = exc.errors, exc.error
        else:
            errors, error = None, _status_name(exc.status_code)
        return error_response(
            exc.status_code, str(exc.detail), error, errors=errors, headers=exc.headers
        )

    async def overflow(_: Request, exc: OverflowError) -> JSONResponse:
        # a number past what SQLite stores, where no declared parameter said so (a body field)
        return error_response(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"a number of the request is too large to store (at most {INT64[1]})",
            "ValidationError",
        )

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        return error_response(500, "internal server error", "InternalServerError")

    app.add_exception_handler(RequestValidationError, cast(Handler, validation))
    app.add_exception_handler(StarletteHTTPException, cast(Handler, http_error))
    app.add_exception_handler(OverflowError, cast(Handler, overflow))
    app.add_exception_handler(Exception, unexpected)

    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = base_openapi()
            _document_errors(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(HygieneMiddleware, settings=settings, operations=_Operations(app))
