"""write_atomic: the whole new file or the old one, with the mode asked for."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edge_agent.core.fs import write_atomic


def test_a_file_is_replaced_whole_with_the_mode_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "token"
    write_atomic(path, "first")
    assert path.read_text() == "first"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_atomic(path, b"second", mode=0o644)
    assert path.read_bytes() == b"second"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["token"]  # no temporary left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_atomic(path, "old")

    with pytest.raises(TypeError):
        write_atomic(path, 42)  # type: ignore[arg-type]  # fails mid-write
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["state.json"]
