"""`edgepilot demo`: the whole loop on this machine, with a live table (or JSON at the end)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live

from cloud_hub.cli import render
from cloud_hub.cli.base import State
from cloud_hub.cli.progress import run_with_progress
from cloud_hub.devtools.demo import DemoError, DemoFigures, DemoRunner, DemoSettings, figures_json
from cloud_hub.devtools.local_broker import BrokerChoice, BrokerError


def _train(hub_dir: Path, settings: DemoSettings, quiet: bool) -> Any:
    from cloud_hub.training.request import TrainRequest

    params: dict[str, Any] = {} if settings.epochs is None else {"epochs": settings.epochs}
    request = TrainRequest(project="digits", dataset="digits", model_type="cnn", params=params)
    state = State(hub_dir)
    run = run_with_progress(state, request, quiet)
    if run.status != "succeeded" or run.version_id is None:
        raise DemoError(f"training failed at step {run.failed_step}: {run.error}")
    version = state.hub.registry.get_version_by_id(run.version_id)
    state.hub.close()
    return version


def demo(
    duration: Annotated[
        float | None,
        typer.Option(help="Stop after this many seconds of serving (default: run until Ctrl-C)."),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the final figures as JSON.")
    ] = False,
    workdir: Annotated[
        Path, typer.Option(help="Where the demo keeps its hub, agents and logs (emptied first).")
    ] = Path("edgepilot-demo"),
    rate: Annotated[float, typer.Option(min=0.1, help="Images per second to each agent.")] = 20.0,
    epochs: Annotated[int | None, typer.Option(min=1, help="CNN training epochs.")] = None,
    broker: Annotated[
        BrokerChoice,
        typer.Option(help="auto (Mosquitto if installed, else embedded), mosquitto or embedded."),
    ] = "auto",
) -> None:
    """Run the whole loop: broker, hub, two agents, the digits CNN trained, quantized, deployed
    (TFLite int8 to one agent, ONNX to the other) and serving images; a live table shows devices,
    versions, inferences, latency and logs made on the devices vs stored at the hub."""
    settings = DemoSettings(
        workdir=workdir.resolve(),
        duration_s=duration,
        rate_per_device=rate,
        epochs=epochs,
        broker=broker,
    )
    # The live table starts with the first update after training, so it never fights the
    # training progress bars for the terminal.
    live = None if json_out else Live(console=render.console, refresh_per_second=4)

    def on_update(fig: DemoFigures) -> None:
        if live is not None:
            if not live.is_started:
                live.start()
            live.update(render.demo_table(fig))

    def say(text: str) -> None:  # soft wrap: a link stays one line a terminal can open
        render.err_console.print(text, highlight=False, soft_wrap=True)

    runner = DemoRunner(
        settings,
        train=lambda hub_dir, s: _train(hub_dir, s, quiet=json_out),
        on_update=on_update,
        say=say,
    )
    try:
        figures = runner.run()
    except (DemoError, BrokerError) as exc:
        render.err_console.print(f"[bold red]demo failed:[/bold red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    finally:
        if live is not None and live.is_started:
            live.stop()
    if json_out:
        sys.stdout.write(figures_json(figures) + "\n")
    else:
        render.console.print(
            "every log made on the devices is stored at the hub"
            if figures.all_logs_at_hub
            else "[red]some logs made on the devices have not reached the hub[/red]"
        )
        render.console.print(f"logs, hub and agents: {settings.workdir}")
    if not figures.all_logs_at_hub:
        raise typer.Exit(1)
