"""The training progress display: one bar per pipeline step, drawn while a run goes.

`edgepilot train` and `edgepilot demo` both run training through `run_with_progress`.
"""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from cloud_hub.cli import render
from cloud_hub.cli.base import State
from cloud_hub.cli.native_output import native_output_to

NATIVE_LOG = "native-output.log"  # under DATA_DIR/logs: what libraries print while training


def step_info(step: str, payload: dict[str, Any]) -> str:
    """What a finished step shows beside its bar."""
    if "accuracy" in payload and step == "evaluate":
        return f"accuracy {100 * payload['accuracy']:.1f}%"
    if step == "load_data":
        return f"{payload.get('samples')} samples, {payload.get('classes')} classes"
    if step in ("convert", "quantize"):
        return ", ".join(f"{a['format']}/{a['precision']}" for a in payload.get("artifacts", []))
    if step == "validate":
        return "passed" if payload.get("passed") else "[red]below threshold[/red]"
    if step == "register":
        return str(payload.get("version", ""))
    return ""


def run_with_progress(state: State, request: Any, quiet: bool) -> Any:
    """Run the training pipeline for `request`, a bar per step on stderr (none when quiet).
    What libraries print natively meanwhile goes to DATA_DIR/logs/native-output.log when stderr
    is a terminal."""
    from cloud_hub.training.pipeline import STEPS

    log = state.settings().data_dir / "logs" / NATIVE_LOG
    with native_output_to(log, render.err_console) as console:
        progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<12}"),
            BarColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console,
            disable=quiet,
        )
        tasks = {s: progress.add_task(s, total=1, info="", start=False) for s in STEPS}
        if request.model_type == "cnn":
            # TensorFlow's start-up takes seconds: import it (it is needed anyway) before the
            # bars are drawn, so the first bar's clock does not count it
            from converters._tf import import_tensorflow

            import_tensorflow()

        def on_event(step: str, status: str, payload: dict[str, Any]) -> None:
            task = tasks[step]
            if status == "started":
                progress.start_task(task)
            elif status in ("succeeded", "cached"):
                info = status if status == "cached" else step_info(step, payload)
                progress.update(task, completed=1, info=info)
            else:
                progress.update(task, info=f"[red]{payload.get('error', 'failed')}[/red]"[:80])

        with progress:
            return state.hub.pipeline(on_event).start(request)
