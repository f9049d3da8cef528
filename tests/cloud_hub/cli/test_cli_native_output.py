"""What a library writes to descriptors 1 and 2 while the CLI draws live goes to the log."""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console

from cloud_hub.cli.native_output import native_output_to


def test_native_writes_go_to_the_log_and_the_display_to_the_terminal(tmp_path: Path) -> None:
    terminal_path = tmp_path / "terminal"
    log = tmp_path / "logs" / "native-output.log"
    with terminal_path.open("w") as terminal:
        console = Console(file=terminal, force_terminal=True, width=80)
        with native_output_to(log, console) as drawn:
            os.write(2, b"oneDNN custom operations are on\n")
            os.write(1, b"fully_quantize: 0\n")
            drawn.print("load_data done")
        os.write(2, b"")  # descriptor 2 is back (writing to it works)
    assert log.read_text() == "oneDNN custom operations are on\nfully_quantize: 0\n"
    shown = terminal_path.read_text()
    assert "load_data done" in shown
    assert "oneDNN" not in shown


def test_no_terminal_means_nothing_is_redirected(tmp_path: Path) -> None:
    console = Console(file=(tmp_path / "out").open("w"), force_terminal=False)
    log = tmp_path / "native.log"
    with native_output_to(log, console) as drawn:
        assert drawn is console
    assert not log.exists()
