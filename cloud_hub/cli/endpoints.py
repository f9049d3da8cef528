"""`edgepilot endpoints`: serving endpoints from the command line.

`apply`, `list`, `show` and `delete` work on the registry directly (a running hub picks changes
up within `serving_poll_s`); `apply` builds the endpoint first, so a bad spec is refused with the
step named and nothing stored. `predict` builds the endpoint in this process and runs it.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import ValidationError

from cloud_hub.cli import render
from cloud_hub.cli.base import JsonOpt, fail, user_errors
from cloud_hub.cli.base import state as _state
from cloud_hub.core.errors import InvalidInput
from cloud_hub.predlog.reports import Metric as AbMetric

endpoints_app = typer.Typer(help="Serving endpoints (graphs of steps).", no_args_is_help=True)


def _engine(ctx: typer.Context) -> Any:
    from cloud_hub.serving import ServingEngine
    from cloud_hub.serving.service import job_queue, prediction_log

    hub = _state(ctx).hub
    jobs = job_queue(hub.db, hub.settings)  # a deferred (slow) step is queued for hub workers
    log = prediction_log(hub.db, hub.settings)  # `endpoints predict` is logged like the API's
    return ServingEngine(
        hub.registry, hub.db, threads=hub.settings.serving_threads, jobs=jobs, log=log
    )


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
    render.show_endpoint(info)


@endpoints_app.command("list")
def list_(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """List endpoints."""
    from cloud_hub.serving.engine.store import EndpointStore

    stored = EndpointStore(_state(ctx).hub.db).list()
    if json_out:
        render.print_json(stored)
        return
    render.console.print(render.endpoints_table(stored))


@endpoints_app.command("show")
def show(ctx: typer.Context, name: str, json_out: JsonOpt = False) -> None:
    """Show an endpoint's spec: steps, what feeds them, models."""
    from cloud_hub.serving.engine.store import EndpointStore

    with user_errors():
        stored = EndpointStore(_state(ctx).hub.db).get(name)
    if json_out:
        render.print_json(stored)
        return
    render.show_endpoint(stored)


@endpoints_app.command("delete")
def delete(ctx: typer.Context, name: str) -> None:
    """Delete an endpoint."""
    from cloud_hub.serving.engine.store import EndpointStore

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
    render.console.print(render.predictions_table(name, result))
    cache = result.cache
    parts = [f"steps: {' → '.join(result.steps)}"]
    if cache["hits"] or cache["misses"]:
        parts.append(f"cache hits {cache['hits']}, misses {cache['misses']}")
    if cache["data_hits"] or cache["data_misses"]:
        parts.append(f"data cache hits {cache['data_hits']}, misses {cache['data_misses']}")
    parts.append(f"{result.latency_ms:.1f} ms")
    render.console.print("; ".join(parts))
    if result.job:
        render.console.print(f"the slower answer: job {result.job} (edgepilot endpoints job ID)")


@endpoints_app.command("batch")
def batch(
    ctx: typer.Context,
    name: str,
    csv_file: Annotated[
        Path | None, typer.Option("--csv", help="A CSV file with a header and an id column.")
    ] = None,
    images: Annotated[Path | None, typer.Option(help="A folder of images.")] = None,
    table: Annotated[str | None, typer.Option(help="A table of the hub database.")] = None,
    id_column: Annotated[str, typer.Option(help="CSV/table: the id column.")] = "id",
    columns: Annotated[
        str | None, typer.Option(help="CSV/table: feature columns, comma-separated.")
    ] = None,
    cron: Annotated[str | None, typer.Option(help="Run again on this cron schedule.")] = None,
    chunk_size: Annotated[int, typer.Option(min=1, max=4096, help="Rows per call.")] = 64,
    watch: Annotated[bool, typer.Option(help="Show progress until the batch ends.")] = False,
    here: Annotated[
        bool, typer.Option(help="Run it in this process instead of a hub worker (implies --watch).")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Queue a batch: predict the rows of a CSV, a folder of images or a table that have no
    prediction yet, results into the hub database (a hub worker runs it, or --here)."""
    from cloud_hub.serving.jobs.batch import BatchRequest, BatchView
    from cloud_hub.serving.jobs.queue import JobQueue
    from cloud_hub.serving.jobs.submit import RESULTS_TABLE, run_job_in_thread, submit_batch

    hub = _state(ctx).hub
    with user_errors():
        source = _batch_source(csv_file, images, table, id_column, columns)
        request = BatchRequest(source=source, cron=cron, chunk_size=chunk_size)
        job = submit_batch(hub.db, name, request, Path.cwd())
    queue = JobQueue(hub.db)
    runner = run_job_in_thread(_here_engine(ctx, queue), queue, job.id, name) if here else None
    if watch or here:
        job = _watch(queue, job.id, quiet=json_out, runner=runner)
    if runner is not None:
        runner.join()
        job = queue.get(job.id)
    view = BatchView.of(job)
    if json_out:
        render.print_json(view)
    else:
        done = f"{view.done}/{view.total}" if view.total is not None else "not started"
        render.console.print(f"batch {view.id} on {name}: {view.state}, {done} rows")
        if view.result:
            r = view.result
            render.console.print(
                f"predicted {r['predicted']}, already had {r['skipped']}, errors {r['errors']}; "
                f"results: table {RESULTS_TABLE}, source {r['source']}"
            )
        if view.error:
            render.console.print(f"error: {view.error}")
        if view.next_batch:
            render.console.print(f"next run: batch {view.next_batch}")
    if view.state == "failed":
        raise typer.Exit(1)


def _here_engine(ctx: typer.Context, queue: Any) -> Any:
    """An engine of this process for `batch --here` (its slow steps queue on `queue`)."""
    from cloud_hub.serving import ServingEngine
    from cloud_hub.serving.service import prediction_log

    hub = _state(ctx).hub
    log = prediction_log(hub.db, hub.settings)
    return ServingEngine(hub.registry, hub.db, threads=4, jobs=queue, log=log)


def _batch_source(
    csv_file: Path | None,
    images: Path | None,
    table: str | None,
    id_column: str,
    columns: str | None,
) -> Any:
    """The batch's source from --csv, --images or --table (exactly one)."""
    from cloud_hub.serving.jobs.batch import BatchSource

    given = [v for v in (csv_file, images, table) if v is not None]
    if len(given) != 1:
        raise InvalidInput("give exactly one of --csv FILE, --images DIR, --table NAME")
    kind: Literal["csv", "images", "table"] = (
        "csv" if csv_file is not None else "images" if images is not None else "table"
    )
    path = csv_file or images
    return BatchSource(
        kind=kind,
        path=None if path is None else str(path.resolve()),
        table=table,
        id_column=id_column,
        columns=None if columns is None else [c.strip() for c in columns.split(",")],
    )


def _watch(queue: Any, job_id: str, *, quiet: bool, runner: Any = None) -> Any:
    """Poll the job, with a progress bar, until it ends (or the thread running it does)."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=render.err_console, disable=quiet) as progress:
        task = progress.add_task(f"batch {job_id[:8]}", total=None)
        while True:
            job = queue.get(job_id)
            progress.update(task, completed=job.done, total=job.total, description=job.state)
            if job.final or (runner is not None and not runner.is_alive()):
                return job
            time.sleep(0.2)


@endpoints_app.command("job")
def job(
    ctx: typer.Context,
    job_id: str,
    wait: Annotated[bool, typer.Option(help="Wait until the job ends.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Show a job (an async prediction, a deferred slow step, or a batch)."""
    from cloud_hub.serving.jobs.batch import BatchView
    from cloud_hub.serving.jobs.queue import JobQueue

    queue = JobQueue(_state(ctx).hub.db)
    with user_errors():
        found = _watch(queue, job_id, quiet=json_out) if wait else queue.get(job_id)
    shown: Any = BatchView.of(found) if found.kind == "batch" else found
    if json_out:
        render.print_json(shown.model_dump(mode="json", exclude={"request"}))
        return
    render.console.print(
        f"job {found.id} ({found.kind} on {found.endpoint}"
        f"{', step ' + found.step if found.step else ''}): {found.state}, "
        f"attempt {found.attempts}/{found.max_attempts}, worker {found.worker or '-'}"
    )
    if found.kind == "predict" and found.result:
        for i, p in enumerate(found.result["predictions"]):
            render.console.print(f"  row {i}: {p['label']} ({p['score']:.4f})")
    elif found.kind == "batch":
        render.console.print(f"  {found.done}/{found.total} rows; {found.result or ''}")
    if found.error:
        render.console.print(f"  error: {found.error}")


def _parse_set(item: str) -> tuple[str, str, Any]:
    """`STEP.FIELD=VALUE` (VALUE as JSON where it parses, else text)."""
    target, eq, text = item.partition("=")
    step, dot, field = target.rpartition(".")
    if not eq or not dot or not step or not field:
        raise InvalidInput(f"--set {item!r}: write STEP.FIELD=VALUE, e.g. gate.min_score=0.8")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    return step, field, value


def _parse_unset(item: str) -> tuple[str, str]:
    """`STEP.FIELD`."""
    step, _, field = item.rpartition(".")
    return step, field


@endpoints_app.command("params")
def params(
    ctx: typer.Context,
    name: str,
    kill: Annotated[
        list[str] | None, typer.Option("--kill", help="Switch a model alias off (repeatable).")
    ] = None,
    unkill: Annotated[
        list[str] | None, typer.Option("--unkill", help="Switch a model alias on again.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="STEP.FIELD=VALUE: a run-time param (VALUE as JSON or text)."),
    ] = None,
    unset: Annotated[
        list[str] | None, typer.Option("--unset", help="STEP.FIELD: back to the spec's value.")
    ] = None,
    reset: Annotated[bool, typer.Option(help="Drop every run-time parameter first.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Show or change the endpoint's run-time parameters (kill switches, per-step values such as
    thresholds and A/B weights): checked against the endpoint, stored, and in force in a running
    hub within `serving_poll_s`, with no redeploy. With no option: show them."""
    from cloud_hub.serving.engine.param_changes import ParamChanges

    engine = _engine(ctx)
    try:
        with user_errors():
            changes = ParamChanges(
                kill=kill or [],
                unkill=unkill or [],
                set=[_parse_set(item) for item in set_ or []],
                unset=[_parse_unset(item) for item in unset or []],
                reset=reset,
            )
            current = engine.get_params(name)
            if changes.changing:
                engine.load(name)
                current = engine.set_params(name, changes.applied_to(current))
    finally:
        engine.close()
    if json_out:
        render.print_json(current)
        return
    if not current.kill and not current.steps:
        render.console.print(f"{name}: no run-time parameters (the spec's values are in force)")
    else:
        render.console.print(render.params_table(name, current))


@endpoints_app.command("report")
def report(
    ctx: typer.Context,
    name: str,
    ab: Annotated[bool, typer.Option("--ab", help="The A/B split's variants compared.")] = False,
    shadow: Annotated[
        bool, typer.Option("--shadow", help="Shadow candidates against the primary.")
    ] = False,
    metric: Annotated[AbMetric, typer.Option(help="--ab: score, latency or error_rate.")] = (
        "score"
    ),
    since: Annotated[
        float | None, typer.Option(help="Only records of the last SECONDS.", metavar="SECONDS")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """A/B or shadow report from the prediction log."""
    import time

    from cloud_hub.predlog import reports
    from cloud_hub.serving.engine.ab_variants import ab_variants
    from cloud_hub.serving.engine.store import EndpointStore

    hub = _state(ctx).hub
    with user_errors():
        if ab == shadow:
            raise InvalidInput("give one of --ab or --shadow")
        stored = EndpointStore(hub.db).get(name)
        start = None if since is None else time.time() - since
        if ab:
            order = ab_variants(stored.spec)
            got: Any = reports.ab_report(hub.db, name, metric, since=start, order=order)
        else:
            got = reports.shadow_report(hub.db, name, since=start)
    if json_out:
        render.print_json(got)
        return
    if ab:
        render.show_ab(got)
    else:
        render.console.print(render.endpoint_shadow_table(got))
