"""`edgepilot endpoints`: serving endpoints from the command line.

`apply`, `list`, `show` and `delete` work on the registry directly (a running hub picks changes
up within `serving_poll_s`); `apply` builds the endpoint first, so a bad spec is refused with the
step named and nothing stored. `predict` builds the endpoint in this process and runs it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from cloud_hub.cli import render
from cloud_hub.errors import InvalidInput

if TYPE_CHECKING:
    from cloud_hub.cli.main import State

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


# cloud_hub.cli.main imports this module: its helpers are imported when a command runs
def _state(ctx: typer.Context) -> State:
    from cloud_hub.cli.main import _state as main_state

    return main_state(ctx)


@contextmanager
def user_errors() -> Iterator[None]:
    from cloud_hub.cli.main import user_errors as errors

    with errors():
        yield


def fail(message: str, code: int = 2) -> typer.Exit:
    from cloud_hub.cli.main import fail as main_fail

    return main_fail(message, code)


endpoints_app = typer.Typer(help="Serving endpoints (graphs of steps).", no_args_is_help=True)


def _engine(ctx: typer.Context) -> Any:
    from cloud_hub.serving import ServingEngine

    hub = _state(ctx).hub
    return ServingEngine(hub.registry, hub.db, threads=hub.settings.serving_threads)


def _read_spec(file: Path) -> Any:
    from cloud_hub.serving import EndpointSpec

    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{file} is not valid JSON: {exc}") from None
    return EndpointSpec.model_validate(data)


@endpoints_app.command("apply")
def apply(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="An endpoint spec (JSON).", exists=True)],
    json_out: JsonOpt = False,
) -> None:
    """Create the endpoint, or update it if it exists (built and checked first)."""
    engine = _engine(ctx)
    try:
        with user_errors():
            info, created = engine.apply(_read_spec(file))
    finally:
        engine.close()
    if json_out:
        render.print_json(info)
        return
    render.console.print(f"{'created' if created else 'updated'} endpoint {info.name}")
    _show(info)


@endpoints_app.command("list")
def list_(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """List endpoints."""
    from cloud_hub.serving.store import EndpointStore

    stored = EndpointStore(_state(ctx).hub.db).list()
    if json_out:
        render.print_json(stored)
        return
    table = Table(title="Endpoints")
    for col in ("name", "steps", "models", "batching", "updated"):
        table.add_column(col)
    for item in stored:
        spec = item.spec
        table.add_row(
            item.name,
            " → ".join(f"{s.name}({s.kind})" for s in spec.steps),
            ", ".join(ref.ref for ref in spec.model_refs().values()),
            f"≤{spec.batching.max_batch_size}" if spec.batching.enabled else "off",
            item.updated_at[:19],
        )
    render.console.print(table)


@endpoints_app.command("show")
def show(ctx: typer.Context, name: str, json_out: JsonOpt = False) -> None:
    """Show an endpoint's spec: steps, what feeds them, models."""
    from cloud_hub.serving.store import EndpointStore

    with user_errors():
        stored = EndpointStore(_state(ctx).hub.db).get(name)
    if json_out:
        render.print_json(stored)
        return
    _show(stored)


def _show(item: Any) -> None:
    spec = item.spec
    table = Table(title=f"Endpoint {spec.name}")
    for col in ("step", "kind", "inputs", "params"):
        table.add_column(col)
    for step in spec.steps:
        table.add_row(
            step.name,
            step.kind,
            ", ".join(step.inputs) or "(request)",
            json.dumps(step.params, sort_keys=True),
        )
    render.console.print(table)
    for alias, ref in spec.model_refs().items():
        render.console.print(f"model {alias}: {ref.ref} {ref.format or ''} {ref.precision or ''}")


@endpoints_app.command("delete")
def delete(ctx: typer.Context, name: str) -> None:
    """Delete an endpoint."""
    from cloud_hub.serving.store import EndpointStore

    with user_errors():
        EndpointStore(_state(ctx).hub.db).delete(name)
    render.console.print(f"deleted endpoint {name}")


def _request(input_: str | None, image: Path | None, item_id: str | None) -> Any:
    from cloud_hub.serving import PredictRequest

    given = [v for v in (input_, image, item_id) if v is not None]
    if len(given) != 1:
        raise InvalidInput("give exactly one of --input JSON, --image FILE, --id ID")
    if image is not None:
        if not image.is_file():
            raise InvalidInput(f"--image {image}: no such file")
        return PredictRequest(image_b64=base64.b64encode(image.read_bytes()).decode())
    if item_id is not None:
        return PredictRequest(id=item_id)
    assert input_ is not None
    try:
        data = json.loads(input_)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--input is not valid JSON: {exc}") from None
    if isinstance(data, list):
        data = {"inputs": data}
    try:
        return PredictRequest.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(f"--input: {exc.errors()[0]['msg']}") from None


@endpoints_app.command("predict")
def predict(
    ctx: typer.Context,
    name: str,
    input_: Annotated[
        str | None, typer.Option("--input", help="JSON: rows [[...], ...] or a request object.")
    ] = None,
    image: Annotated[Path | None, typer.Option(help="An image file (PNG, JPEG, ...).")] = None,
    item_id: Annotated[str | None, typer.Option("--id", help="An id of the data source.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Run the endpoint here, on one request, and show labels and scores per row."""
    from cloud_hub.serving import StepFailed

    engine = _engine(ctx)
    try:
        with user_errors():
            request = _request(input_, image, item_id)
            engine.load(name)
            result = engine.predict(name, request)
    except StepFailed as exc:
        raise fail(str(exc), code=1) from None
    finally:
        engine.close()
    if json_out:
        render.print_json(result)
        return
    table = Table(title=f"{name}: {len(result.predictions)} rows")
    for col in ("row", "label", "score"):
        table.add_column(col)
    for i, p in enumerate(result.predictions):
        table.add_row(str(i), p.label, f"{p.score:.4f}")
    render.console.print(table)
    cache = result.cache
    parts = [f"steps: {' → '.join(result.steps)}"]
    if cache["hits"] or cache["misses"]:
        parts.append(f"cache hits {cache['hits']}, misses {cache['misses']}")
    if cache["data_hits"] or cache["data_misses"]:
        parts.append(f"data cache hits {cache['data_hits']}, misses {cache['data_misses']}")
    parts.append(f"{result.latency_ms:.1f} ms")
    render.console.print("; ".join(parts))
