"""`edgepilot`: the operator's command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from cloud_hub.cli import render
from cloud_hub.cli.base import JsonOpt, State, fail, state, user_errors
from cloud_hub.cli.progress import run_with_progress
from cloud_hub.core.errors import InvalidInput, NotFound
from cloud_hub.hub import Hub
from cloud_hub.registry.schemas import ArtifactFormat, Precision
from edge_agent.core.heads.spec import Task

QuantizeMethod = Literal["auto", "static", "dynamic"]

app = typer.Typer(
    help="EdgePilot: train, convert and ship models to edge devices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Models and versions in the registry.", no_args_is_help=True)
runs_app = typer.Typer(help="Training runs.", no_args_is_help=True)
projects_app = typer.Typer(help="Projects.", no_args_is_help=True)
schedules_app = typer.Typer(help="Batch training schedules.", no_args_is_help=True)
hub_app = typer.Typer(help="Run the hub.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(runs_app, name="runs")
app.add_typer(projects_app, name="projects")
app.add_typer(schedules_app, name="schedules")
app.add_typer(hub_app, name="hub")


@app.callback()
def main_callback(
    ctx: typer.Context,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Where the hub keeps its database and artifacts "
            "[env: EDGEPILOT_DATA_DIR; default: the user's data directory]",
        ),
    ] = None,
) -> None:
    ctx.obj = State(data_dir)


_state = state  # the name the commands here use


def _parse_params(items: list[str]) -> dict[str, Any]:
    import json

    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--param {item!r}: expected KEY=VALUE")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def _parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    h, sep, w = text.lower().partition("x")
    if not (sep and h.isdigit() and w.isdigit()) or int(h) < 1 or int(w) < 1:
        raise InvalidInput(f"--image-size {text!r}: expected HxW, e.g. 32x32")
    return int(h), int(w)


@app.command()
def train(
    ctx: typer.Context,
    project: Annotated[str, typer.Option(help="Project to register the model in.")],
    dataset: Annotated[str, typer.Option(help="digits, iris, csv or images.")],
    model: Annotated[str, typer.Option(help="Model type: logreg, mlp, random_forest or cnn.")],
    name: Annotated[str | None, typer.Option(help="Model name (default: DATASET-MODEL).")] = None,
    path: Annotated[Path | None, typer.Option(help="CSV file or image folder.")] = None,
    label: Annotated[str | None, typer.Option(help="Label column of a CSV file.")] = None,
    image_size: Annotated[str | None, typer.Option(help="Resize images to HxW.")] = None,
    color: Annotated[
        Literal["gray", "rgb"], typer.Option(help="gray or rgb, for image folders.")
    ] = "gray",
    param: Annotated[list[str] | None, typer.Option(help="Trainer parameter KEY=VALUE.")] = None,
    test_size: Annotated[float, typer.Option(help="Held-out fraction.")] = 0.2,
    seed: int = 0,
    threshold: Annotated[
        float, typer.Option(help="Minimum top-1 agreement of conversions.")
    ] = 0.99,
    formats: Annotated[str | None, typer.Option(help="Comma-separated: onnx,tflite.")] = None,
    quantize: Annotated[bool, typer.Option(help="Also produce int8 artifacts.")] = True,
    schedule: Annotated[
        str | None, typer.Option(help="Cron: retrain on this schedule in the hub.")
    ] = None,
    schedule_name: Annotated[str | None, typer.Option(help="Name of the schedule.")] = None,
    retries: Annotated[int, typer.Option(help="Retries of a failed scheduled run.")] = 3,
    backoff: Annotated[float, typer.Option(help="First retry delay in seconds (doubles).")] = 30.0,
    json_out: JsonOpt = False,
) -> None:
    """Train a model, convert and quantize it, check the conversions and register a version."""
    from cloud_hub.training.request import TrainRequest

    state = _state(ctx)
    with user_errors():
        request = TrainRequest(
            project=project,
            dataset=dataset,
            model_type=model,
            model_name=name,
            path=str(path.resolve()) if path else None,
            label_column=label,
            image_size=_parse_size(image_size),
            color=color,
            params=_parse_params(param or []),
            test_size=test_size,
            seed=seed,
            threshold=threshold,
            formats=[f.strip() for f in formats.split(",")] if formats else None,  # type: ignore[misc]
            quantize=quantize,
        )
        if schedule is not None:
            from cloud_hub.training.scheduler import create_schedule

            sched = create_schedule(
                state.hub.registry,
                name=schedule_name or f"{request.project}.{request.resolved_model_name}",
                cron=schedule,
                request=request,
                max_retries=retries,
                backoff_s=backoff,
            )
            if json_out:
                render.print_json(sched)
            else:
                render.console.print(render.schedules_table([sched]))
                render.console.print("The hub runs it: start it with `edgepilot hub serve`.")
            return
        run = run_with_progress(state, request, json_out)
    _finish_run(state, run, json_out)


def _finish_run(state: State, run: Any, json_out: bool) -> None:
    version = state.hub.registry.get_version_by_id(run.version_id) if run.version_id else None
    if json_out:
        out: dict[str, Any] = {
            "run": {
                "id": run.id,
                "name": run.name,
                "status": run.status,
                "failed_step": run.failed_step,
                "error": run.error,
            },
            "version": None if version is None else version.model_dump(mode="json"),
        }
        render.print_json(out)
    else:
        render.console.print(render.steps_table(run))
        if version is not None:
            render.show_version(version)
    if run.status != "succeeded":
        raise fail(f"run {run.name} failed at step {run.failed_step}: {run.error}", code=1)


# -- models ---------------------------------------------------------------------------------
@models_app.command("list")
def models_list(
    ctx: typer.Context,
    project: Annotated[str | None, typer.Option(help="Only this project.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List models."""
    with user_errors():
        models = _state(ctx).hub.registry.list_models(project)
    if json_out:
        render.print_json(models)
    else:
        render.console.print(render.models_table(models))


@models_app.command("show")
def models_show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="PROJECT/MODEL (all versions) or PROJECT/MODEL:N.")],
    json_out: JsonOpt = False,
) -> None:
    """Show a model's versions, or one version with its artifacts and report."""
    registry = _state(ctx).hub.registry
    with user_errors():
        if ":" in ref or ref.isdigit():
            version = registry.resolve_version(ref)
            if json_out:
                render.print_json(version)
            else:
                render.show_version(version)
            return
        project, sep, model = ref.partition("/")
        if not sep:
            raise InvalidInput(f"model reference {ref!r}: expected PROJECT/MODEL[:VERSION]")
        versions = registry.list_versions(project, model)
    if json_out:
        render.print_json(versions)
    else:
        render.console.print(render.versions_table(versions))


def _split_ref(ref: str | None, project: str | None, model: str | None) -> tuple[str, str]:
    """PROJECT/MODEL from the positional reference or --project and --model (not both)."""
    if ref is not None:
        if project is not None or model is not None:
            raise InvalidInput("give PROJECT/MODEL or --project and --model, not both")
        proj, sep, name = ref.partition("/")
        if not sep or not proj or not name or "/" in name:
            raise InvalidInput(f"model reference {ref!r}: expected PROJECT/MODEL")
        return proj, name
    if project is None or model is None:
        raise InvalidInput("name the model: PROJECT/MODEL (or --project and --model)")
    return project, model


def _read_json_object(path: Path, option: str) -> dict[str, Any]:
    import json

    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise InvalidInput(f"{option} {path}: cannot read it ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{option} {path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"{option} {path}: must hold a JSON object")
    return doc


def _floats(text: str, option: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise InvalidInput(f"{option} {text!r}: expected numbers separated by commas") from None
    if not values or not all(v == v and abs(v) != float("inf") for v in values):
        raise InvalidInput(f"{option} {text!r}: expected finite numbers")
    return values


def _preprocessing_from_flags(
    file: Path | None, flags: dict[str, Any], *, base: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """A preprocessing spec from --preprocessing FILE and the flags (the flags win), on top of
    `base`; None when nothing was given. Checked as a PreprocessingSpec (exit 2 naming the
    field)."""
    from cloud_hub.registry.signature import check_preprocessing

    given = {k: v for k, v in flags.items() if v is not None}
    if file is None and not given:
        return None
    doc: dict[str, Any] = dict(base or {})
    if file is not None:
        doc = _read_json_object(file, "--preprocessing")
    if "size" in given:
        h, sep, w = str(given["size"]).lower().partition("x")
        if not (sep and h.isdigit() and w.isdigit()) or int(h) < 1 or int(w) < 1:
            raise InvalidInput(f"--size {given['size']!r}: expected HxW, e.g. 224x224")
        doc["size"] = [int(h), int(w)]
    for key in ("mean", "std"):
        if key in given:
            doc[key] = _floats(given[key], f"--{key}")
    for key in ("color", "layout", "dtype", "resize", "scale"):
        if key in given:
            doc[key] = given[key]
    if "input_kind" not in doc:
        doc["input_kind"] = "tabular" if doc.get("layout") == "NF" else "image"
    return check_preprocessing(doc)


ColorOpt = Annotated[
    Literal["gray", "rgb", "bgr"] | None,
    typer.Option("--color", help="Colour order the model takes.", rich_help_panel="Preprocessing"),
]
LayoutOpt = Annotated[
    Literal["NHWC", "NCHW", "NF"] | None,
    typer.Option(help="Tensor layout (NF: flattened features).", rich_help_panel="Preprocessing"),
]
DtypeOpt = Annotated[
    Literal["float32", "uint8", "int8"] | None,
    typer.Option("--dtype", help="Input tensor dtype.", rich_help_panel="Preprocessing"),
]
ResizeOpt = Annotated[
    Literal["stretch", "letterbox", "crop"] | None,
    typer.Option(help="How an image is fitted to --size.", rich_help_panel="Preprocessing"),
]
SizeOpt = Annotated[
    str | None,
    typer.Option(help="Model input size HxW, e.g. 224x224.", rich_help_panel="Preprocessing"),
]
PixelScaleOpt = Annotated[
    float | None,
    typer.Option(
        help="Pixel values are multiplied by this (e.g. 0.00392).", rich_help_panel="Preprocessing"
    ),
]
MeanOpt = Annotated[
    str | None,
    typer.Option(help="Per-channel mean after --scale, a,b,c.", rich_help_panel="Preprocessing"),
]
StdOpt = Annotated[
    str | None,
    typer.Option(help="Per-channel std after --scale, a,b,c.", rich_help_panel="Preprocessing"),
]
PreprocessingFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--preprocessing",
        help="A JSON preprocessing spec (the flags above override its fields).",
        exists=True,
        dir_okay=False,
        rich_help_panel="Preprocessing",
    ),
]
TaskOpt = Annotated[
    Task | None,
    typer.Option(help="The version's task (default: the head's; else from the signature)."),
]
HeadOpt = Annotated[
    Path | None,
    typer.Option(
        "--head",
        help="A JSON task head (see examples/heads/) (default: the task's default head).",
        exists=True,
        dir_okay=False,
    ),
]
LabelsOpt = Annotated[str | None, typer.Option(help="Comma-separated class labels.")]


def _labels(text: str | None) -> list[str] | None:
    if text is None:
        return None
    labels = [x.strip() for x in text.split(",")]
    if not all(labels):
        raise InvalidInput(f"--labels {text!r}: a label is empty")
    return labels


@models_app.command("upload")
def models_upload(
    ctx: typer.Context,
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE", help="An ONNX or TFLite model file.", exists=True, dir_okay=False
        ),
    ],
    ref: Annotated[
        str | None, typer.Argument(metavar="PROJECT/MODEL", help="The model to register it in.")
    ] = None,
    project: Annotated[str | None, typer.Option(help="Project (instead of PROJECT/MODEL).")] = None,
    model: Annotated[str | None, typer.Option(help="Model (instead of PROJECT/MODEL).")] = None,
    task: TaskOpt = None,
    head: HeadOpt = None,
    labels: LabelsOpt = None,
    size: SizeOpt = None,
    color: ColorOpt = None,
    layout: LayoutOpt = None,
    dtype: DtypeOpt = None,
    scale: PixelScaleOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    resize: ResizeOpt = None,
    preprocessing: PreprocessingFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Register a model file as a new version. Every model its runtime loads is accepted
    (ONNX or TFLite, by content); its head and preprocessing are checked against its
    signature. Without preprocessing options, an image-shaped input's spec is inferred."""
    from cloud_hub.registry.uploads import upload_model

    with user_errors():
        project, model = _split_ref(ref, project, model)
        spec = _preprocessing_from_flags(
            preprocessing,
            {
                "size": size,
                "color": color,
                "layout": layout,
                "dtype": dtype,
                "scale": scale,
                "mean": mean,
                "std": std,
                "resize": resize,
            },
        )
        result = upload_model(
            _state(ctx).hub.registry,
            project=project,
            model=model,
            data=file.read_bytes(),
            filename=file.name,
            labels=_labels(labels),
            preprocessing=spec,
            task=task,
            head=_read_json_object(head, "--head") if head is not None else None,
        )
    if json_out:
        render.print_json(result.version)
        return
    render.show_version(result.version)
    for note in result.notes:
        render.console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    if result.preprocessing_inferred:
        render.console.print(
            "note: preprocessing inferred from the input's shape (an image); change it with "
            f"`edgepilot models update {result.version.id}` and the preprocessing options",
            highlight=False,
        )


@models_app.command("update")
def models_update(
    ctx: typer.Context,
    version_ref: Annotated[
        str, typer.Argument(metavar="VERSION", help="A version id or PROJECT/MODEL:N.")
    ],
    task: TaskOpt = None,
    head: HeadOpt = None,
    labels: LabelsOpt = None,
    size: SizeOpt = None,
    color: ColorOpt = None,
    layout: LayoutOpt = None,
    dtype: DtypeOpt = None,
    scale: PixelScaleOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    resize: ResizeOpt = None,
    preprocessing: PreprocessingFileOpt = None,
    no_preprocessing: Annotated[
        bool,
        typer.Option(
            "--no-preprocessing",
            help="Remove the preprocessing spec (tensors only).",
            rich_help_panel="Preprocessing",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Change a version's task, head, labels or preprocessing (checked against its signature,
    as at upload). Preprocessing flags change those fields of the current spec."""
    from cloud_hub.registry.uploads import update_version

    registry = _state(ctx).hub.registry
    with user_errors():
        version = registry.resolve_version(version_ref)
        changes: dict[str, Any] = {}
        if task is not None:
            changes["task"] = task
        if head is not None:
            changes["head"] = _read_json_object(head, "--head")
        if labels is not None:
            changes["labels"] = _labels(labels)
        spec = _preprocessing_from_flags(
            preprocessing,
            {
                "size": size,
                "color": color,
                "layout": layout,
                "dtype": dtype,
                "scale": scale,
                "mean": mean,
                "std": std,
                "resize": resize,
            },
            base=version.preprocessing,
        )
        if no_preprocessing:
            if spec is not None:
                raise InvalidInput(
                    "--no-preprocessing: give it alone, without preprocessing options"
                )
            changes["preprocessing"] = None
        elif spec is not None:
            changes["preprocessing"] = spec
        if not changes:
            raise InvalidInput(
                "nothing to change: give --task, --head, --labels or preprocessing options"
            )
        updated = update_version(registry, version.id, changes)
    if json_out:
        render.print_json(updated)
    else:
        render.show_version(updated)


@models_app.command("download")
def models_download(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="PROJECT/MODEL[:N] or a version id.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.")],
    format: Annotated[ArtifactFormat, typer.Option("--format")] = "onnx",
    precision: Annotated[Precision, typer.Option()] = "fp32",
) -> None:
    """Write one artifact of a version to a file."""
    registry = _state(ctx).hub.registry
    with user_errors():
        version = registry.resolve_version(ref)
        match = [a for a in version.artifacts if a.format == format and a.precision == precision]
        if not match:
            have = ", ".join(f"{a.format}/{a.precision}" for a in version.artifacts)
            raise NotFound("artifact", f"{version.ref} {format}/{precision} (it has: {have})")
        output.write_bytes(registry.artifact_blob(match[0].sha256))
    render.console.print(f"wrote {output} ({match[0].size} bytes, sha256 {match[0].sha256})")


# -- runs -----------------------------------------------------------------------------------
@runs_app.command("list")
def runs_list(
    ctx: typer.Context,
    project: Annotated[str | None, typer.Option()] = None,
    status: Annotated[str | None, typer.Option()] = None,
    limit: int = 50,
    json_out: JsonOpt = False,
) -> None:
    """List training runs, newest first."""
    with user_errors():
        runs = _state(ctx).hub.registry.list_runs(project=project, status=status, limit=limit)
    if json_out:
        render.print_json(runs)
    else:
        render.console.print(render.runs_table(runs))


@runs_app.command("show")
def runs_show(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument(help="Run id or name.")],
    json_out: JsonOpt = False,
) -> None:
    """Show a run's steps, outputs, timings and error."""
    with user_errors():
        found = _state(ctx).hub.registry.get_run(run)
    if json_out:
        render.print_json(found)
    else:
        render.console.print(render.steps_table(found))
        if found.error:
            render.console.print(f"[red]error at {found.failed_step}:[/red] {found.error}")


@runs_app.command("resume")
def runs_resume(
    ctx: typer.Context, run: Annotated[str, typer.Argument()], json_out: JsonOpt = False
) -> None:
    """Continue a failed run from the step that failed."""
    state = _state(ctx)
    with user_errors():
        result = state.hub.pipeline().resume(run)
    _finish_run(state, result, json_out)


@runs_app.command("rerun")
def runs_rerun(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument()],
    from_step: Annotated[str, typer.Option("--from", help="First step to run again.")],
    json_out: JsonOpt = False,
) -> None:
    """Run again from a step, reusing the run's cached outputs before it."""
    state = _state(ctx)
    with user_errors():
        result = state.hub.pipeline().rerun(run, from_step)
    _finish_run(state, result, json_out)


# -- conversion and quantization -------------------------------------------------------------
def _eval_data(
    spec: dict[str, Any] | None,
    dataset: str | None,
    path: Path | None,
    label: str | None,
    calibration: Path | None,
    labels_npy: Path | None,
    scale: float,
) -> Any:
    from cloud_hub.registry.conversion import eval_data_from_arrays, eval_data_from_dataset
    from edge_agent.core.preprocess import PreprocessingSpec

    if calibration is not None:
        if labels_npy is None:
            raise InvalidInput("--calibration needs --labels-npy too: the report measures accuracy")
        return eval_data_from_arrays(calibration, labels_npy)
    if dataset is None:
        raise InvalidInput(
            "give data to calibrate and check with: --dataset (digits, iris, csv, images) "
            "or --calibration X.npy --labels-npy y.npy"
        )
    return eval_data_from_dataset(
        dataset,
        path=path,
        label_column=label,
        spec=PreprocessingSpec(**spec) if spec else None,
        scale=scale,
    )


def _model_file(
    source: str, suffixes: tuple[str, ...], project: str | None, model: str | None
) -> Path | None:
    """`source` as a model file (by its suffix), checked; None when it names a version."""
    file = Path(source)
    if file.suffix.lower() not in suffixes:
        return None
    if not file.is_file():
        raise InvalidInput(f"file {source!r} does not exist")
    if not project or not model:
        raise InvalidInput(f"a model file ({file.name}) needs --project and --model")
    return file


DatasetOpt = Annotated[str | None, typer.Option(help="Data to calibrate and check with.")]
PathOpt = Annotated[Path | None, typer.Option(help="CSV file or image folder of the dataset.")]
LabelOpt = Annotated[str | None, typer.Option(help="Label column of a CSV dataset.")]
CalibOpt = Annotated[Path | None, typer.Option(help="Model-ready inputs (.npy) instead.")]
LabelsNpyOpt = Annotated[Path | None, typer.Option(help="Labels (.npy) for --calibration.")]
ScaleOpt = Annotated[float, typer.Option(help="Multiply raw data by this (no preprocessing spec).")]


@app.command()
def quantize(
    ctx: typer.Context,
    source: Annotated[
        str, typer.Argument(help="PROJECT/MODEL[:N], a version id, or an .onnx file.")
    ],
    project: Annotated[str | None, typer.Option(help="Project for an .onnx file.")] = None,
    model: Annotated[str | None, typer.Option(help="Model name for an .onnx file.")] = None,
    dataset: DatasetOpt = None,
    path: PathOpt = None,
    label: LabelOpt = None,
    calibration: CalibOpt = None,
    labels_npy: LabelsNpyOpt = None,
    scale: ScaleOpt = 1.0,
    method: Annotated[QuantizeMethod, typer.Option(help="auto, static (QDQ) or dynamic.")] = "auto",
    threshold: Annotated[float, typer.Option(help="Minimum top-1 agreement with fp32.")] = 0.99,
    json_out: JsonOpt = False,
) -> None:
    """int8-quantize an ONNX model (static QDQ with calibration, or dynamic) into a new version."""
    from cloud_hub.registry.conversion import quantize_file, quantize_version

    registry = _state(ctx).hub.registry
    with user_errors():
        file = _model_file(source, (".onnx",), project, model)
        if file is not None:
            assert project and model
            data = _eval_data(None, dataset, path, label, calibration, labels_npy, scale)
            result = quantize_file(
                registry,
                file,
                project=project,
                model=model,
                data=data,
                method=method,
                threshold=threshold,
            )
        else:
            version = registry.resolve_version(source)
            data = _eval_data(
                version.preprocessing, dataset, path, label, calibration, labels_npy, scale
            )
            result = quantize_version(
                registry,
                version,
                data,
                method=method,
                threshold=threshold,
            )
    _show_result(result, json_out)


@app.command()
def convert(
    ctx: typer.Context,
    source: Annotated[
        str, typer.Argument(help="A trained version (PROJECT/MODEL[:N]), or a .keras / .pt2 file.")
    ],
    to: Annotated[str | None, typer.Option(help="Comma-separated formats: onnx,tflite.")] = None,
    quantize_: Annotated[bool, typer.Option("--quantize/--no-quantize", help="Add int8.")] = True,
    threshold: Annotated[float, typer.Option(help="Minimum top-1 agreement.")] = 0.99,
    project: Annotated[str | None, typer.Option(help="Project for a model file.")] = None,
    model: Annotated[str | None, typer.Option(help="Model name for a model file.")] = None,
    dataset: DatasetOpt = None,
    path: PathOpt = None,
    label: LabelOpt = None,
    calibration: CalibOpt = None,
    labels_npy: LabelsNpyOpt = None,
    scale: ScaleOpt = 1.0,
    json_out: JsonOpt = False,
) -> None:
    """Convert a model to ONNX / TFLite (and int8), checked against the original, as a new
    version. A trained version is converted again from its run's cached model."""
    from cloud_hub.registry.conversion import convert_model_file

    state = _state(ctx)
    registry = state.hub.registry
    formats = [f.strip() for f in to.split(",")] if to else None
    with user_errors():
        for fmt in formats or []:
            if fmt not in ("onnx", "tflite"):
                raise InvalidInput(f"--to {fmt!r}: formats are onnx and tflite")
        file = _model_file(
            source, (".keras", ".pt2", ".onnx", ".tflite", ".pt", ".h5"), project, model
        )
        if file is not None:
            assert project and model
            data = _eval_data(None, dataset, path, label, calibration, labels_npy, scale)
            result = convert_model_file(
                registry,
                file,
                project=project,
                model=model,
                data=data,
                formats=formats,
                quantize=quantize_,
                threshold=threshold,
            )
        else:
            version = registry.resolve_version(source)
            if version.run_id is None or version.source != "trained":
                raise InvalidInput(
                    f"version {version.ref} was {version.source}, not trained here: there is no "
                    "source model to convert from (quantize its ONNX artifact instead)"
                )
            run = state.hub.pipeline().rerun(
                version.run_id,
                "convert",
                {"formats": formats, "quantize": quantize_, "threshold": threshold},
            )
            if run.version_id is None:
                raise InvalidInput(
                    f"conversion run {run.name} failed at {run.failed_step}: {run.error}"
                )
            result = registry.get_version_by_id(run.version_id)
    _show_result(result, json_out)


def _show_result(version: Any, json_out: bool) -> None:
    if json_out:
        render.print_json(version)
    else:
        render.show_version(version)
    if version.status != "ready":
        raise fail(f"{version.ref} failed its conversion check: {version.status_reason}", code=1)


# -- projects and schedules -----------------------------------------------------------------
@projects_app.command("list")
def projects_list(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    projects = _state(ctx).hub.registry.list_projects()
    if json_out:
        render.print_json(projects)
        return
    render.console.print(render.projects_table(projects))


@projects_app.command("create")
def projects_create(
    ctx: typer.Context, name: str, description: str = "", json_out: JsonOpt = False
) -> None:
    with user_errors():
        project = _state(ctx).hub.registry.create_project(name, description)
    if json_out:
        render.print_json(project)
    else:
        render.console.print(f"created project {project.name} (id {project.id})")


@schedules_app.command("list")
def schedules_list(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    schedules = _state(ctx).hub.registry.list_schedules()
    if json_out:
        render.print_json(schedules)
    else:
        render.console.print(render.schedules_table(schedules))


@schedules_app.command("delete")
def schedules_delete(ctx: typer.Context, name: str) -> None:
    with user_errors():
        _state(ctx).hub.registry.delete_schedule(name)
    render.console.print(f"deleted schedule {name}")


# -- hub ------------------------------------------------------------------------------------
@hub_app.command("serve")
def hub_serve(
    ctx: typer.Context,
    host: str = "127.0.0.1",
    port: int = 8000,
    scheduler: Annotated[bool, typer.Option(help="Run scheduled training.")] = True,
    mqtt: Annotated[
        str | None,
        typer.Option(help="HOST:PORT of the MQTT broker: run the fleet service (devices)."),
    ] = None,
    workers: Annotated[
        int, typer.Option(min=0, max=256, help="Job worker threads (0: `hub worker` only).")
    ] = 2,
    prediction_log: Annotated[
        bool,
        typer.Option(
            help="Log every prediction (GET /api/v1/logs) and monitor it (drift, alerts); off "
            "saves about 50 µs of CPU a request."
        ),
    ] = True,
    mqtt_tls: Annotated[
        bool,
        typer.Option(
            help="TLS to the broker, checked against --mqtt-ca-file or the fleet CA of "
            "`hub broker-config --tls`; devices registered by this hub use TLS too."
        ),
    ] = False,
    mqtt_ca_file: Annotated[
        Path | None, typer.Option(help="CA file the broker's certificate is checked against.")
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(help="Serve HTTPS with this certificate (PEM; with its chain)."),
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="The certificate's private key.")] = None,
    data_root: Annotated[
        list[Path] | None,
        typer.Option(
            help="A folder REST callers may name files in (datasets, batch sources); "
            "repeatable (default: DATA_DIR/datasets)."
        ),
    ] = None,
    metrics_public: Annotated[
        bool, typer.Option(help="Serve GET /metrics without a token (a scraper on a LAN).")
    ] = False,
    device_broker: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT of the broker as devices reach it, handed to enrolling devices "
            "(default: --mqtt)."
        ),
    ] = None,
    broker_pid_file: Annotated[
        Path | None,
        typer.Option(
            help="The broker's pid file: after an enrollment or a revocation the hub sends it "
            "SIGHUP (Mosquitto re-reads its password and ACL files, keeping its clients)."
        ),
    ] = None,
    broker_reload_command: Annotated[
        str | None,
        typer.Option(
            help="Instead of --broker-pid-file: the command that reloads the broker, e.g. "
            "'systemctl reload mosquitto'."
        ),
    ] = None,
    shared_logs: Annotated[
        bool,
        typer.Option(
            help="Take devices' logs on a shared subscription, in turns with `hub ingest` "
            "processes (more cores for ingest)."
        ),
    ] = False,
) -> None:
    """Serve the REST API (docs at /docs), run scheduled training and, with --mqtt, the
    fleet's MQTT service (desired state, model transfer, logs and telemetry). With
    --tls-cert/--tls-key the API is served over HTTPS only. Every route but the health check
    needs a token (`edgepilot tokens`); this machine's admin token is DATA_DIR/admin-token."""
    import uvicorn

    from cloud_hub.api.app import create_app

    state = _state(ctx)
    broker: dict[str, Any] = {}
    if mqtt is not None:
        from cloud_hub.cli.parsing import parse_address

        with user_errors():
            broker["mqtt_host"], broker["mqtt_port"] = parse_address(mqtt, "--mqtt")
    if device_broker is not None:
        from cloud_hub.cli.parsing import parse_address

        with user_errors():
            broker["device_broker_host"], broker["device_broker_port"] = parse_address(
                device_broker, "--device-broker"
            )
    if broker_pid_file is not None and broker_reload_command is not None:
        raise fail("give --broker-pid-file or --broker-reload-command, not both")
    broker["broker_pid_file"] = broker_pid_file
    broker["broker_reload_command"] = broker_reload_command
    if mqtt_tls or mqtt_ca_file is not None:
        broker["mqtt_tls"] = True
        broker["mqtt_ca_file"] = mqtt_ca_file
    if (tls_cert is None) != (tls_key is None):
        raise fail("--tls-cert and --tls-key go together")
    for path in (tls_cert, tls_key, mqtt_ca_file):
        if path is not None and not path.is_file():
            raise fail(f"no such file: {path}")
    roots: dict[str, Any] = {}
    if data_root:
        for root in data_root:
            if not root.is_dir():
                raise fail(f"--data-root {root}: not a folder")
        roots["data_roots"] = [root.resolve() for root in data_root]
    settings = state.settings(
        host=host,
        port=port,
        run_scheduler=scheduler,
        serving_workers=workers,
        prediction_log=prediction_log,
        monitor=prediction_log,
        metrics_public=metrics_public,
        fleet_shared_logs=shared_logs,
        **roots,
        **broker,
    )
    hub = Hub.open(settings)
    sys.setswitchinterval(settings.thread_switch_interval_ms / 1000)
    scheme = "https" if tls_cert is not None else "http"
    render.err_console.print(
        f"EdgePilot hub on {scheme}://{host}:{port}  (data: {settings.data_dir}, docs: /docs)\n"
        f"admin token: {settings.admin_token_path} (0600; `edgepilot tokens` makes others)"
    )
    try:
        uvicorn.run(
            create_app(hub, freeze_gc=settings.gc_freeze_after_start),
            host=host,
            port=port,
            log_level="info",
            # open live streams never end by themselves: give them 5 s, then stop anyway
            timeout_graceful_shutdown=5,
            ssl_certfile=str(tls_cert) if tls_cert is not None else None,
            ssl_keyfile=str(tls_key) if tls_key is not None else None,
        )
    finally:
        hub.close()


def _register_demo() -> None:
    from cloud_hub.cli.demo import demo

    app.command("demo")(demo)


_register_demo()


def _register_fleet() -> None:
    from cloud_hub.cli import fleet

    app.add_typer(fleet.devices_app, name="devices")
    app.add_typer(fleet.deployments_app, name="deployments")
    app.command("deploy")(fleet.deploy)
    from cloud_hub.cli import enroll

    app.add_typer(enroll.fleets_app, name="fleets")
    app.add_typer(enroll.enroll_tokens_app, name="enroll-tokens")
    fleet.devices_app.command("revoke")(enroll.devices_revoke)
    hub_app.command("broker-config")(fleet.broker_config)


_register_fleet()


def _register_endpoints() -> None:
    from cloud_hub.cli.endpoints import endpoints_app

    app.add_typer(endpoints_app, name="endpoints")


_register_endpoints()


def _register_monitor() -> None:
    from cloud_hub.cli.monitor import alerts_app, monitor

    app.command("monitor")(monitor)
    app.add_typer(alerts_app, name="alerts")


_register_monitor()


def _register_worker() -> None:
    from cloud_hub.cli.worker import worker

    hub_app.command("worker")(worker)


_register_worker()


def _register_ingest() -> None:
    from cloud_hub.cli.ingest import ingest

    hub_app.command("ingest")(ingest)


_register_ingest()


def _register_build_image() -> None:
    from cloud_hub.cli.build_image import build_image

    app.command("build-image")(build_image)


_register_build_image()


def _register_loadtest() -> None:
    from cloud_hub.cli.loadtest import loadtest

    app.command("loadtest")(loadtest)


_register_loadtest()


def _register_tokens() -> None:
    from cloud_hub.cli.tokens import tokens_app

    app.add_typer(tokens_app, name="tokens")


_register_tokens()


def _register_balena() -> None:
    from cloud_hub.cli.balena import balena_app

    app.add_typer(balena_app, name="balena")


_register_balena()


def _register_flash() -> None:
    from cloud_hub.cli.flash import flash

    app.command("flash")(flash)


_register_flash()


def _register_mqtt() -> None:
    from cloud_hub.cli.mqtt_tail import mqtt_app

    app.add_typer(mqtt_app, name="mqtt")


_register_mqtt()


def _register_watch(app: typer.Typer) -> None:
    from cloud_hub.cli.watch import watch

    app.command("watch")(watch)


_register_watch(app)


def _register_ui(app: typer.Typer) -> None:
    from cloud_hub.cli.ui import ui

    app.command("ui")(ui)


_register_ui(app)


def main() -> None:
    # TensorFlow's C++ logging is on by default and floods the terminal during conversion.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from cloud_hub.cli.strict import refuse_repeated_options

    refuse_repeated_options(app)  # here: every command is registered by now
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
