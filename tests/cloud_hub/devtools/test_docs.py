"""The generated reference pages are what the code generates, and the site builds strictly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cloud_hub.devtools.docs import PAGES
from tests.conftest import REPO


def test_every_committed_generated_page_is_what_the_code_generates() -> None:
    for rel, render in sorted(PAGES.items()):
        page = (REPO / "docs" / rel).read_text()
        assert page == render(), f"docs/{rel} is stale: run `python -m cloud_hub.devtools.docs`"
        assert str(REPO) not in page


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    mkdocs = Path(sys.executable).with_name("mkdocs")
    done = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
