"""The generated reference pages are what the code generates, and the site builds strictly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cloud_hub.devtools.docs import PAGES
from cloud_hub.devtools.docs.spec import render_spec_md
from cloud_hub.serving import STEP_KINDS, Step, StepParams, register_step
from cloud_hub.serving.engine.spec import endpoint_spec_schema
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


class _PluginParams(StepParams):
    colour: str


class _PluginStep(Step):
    """A kind a plugin (or another test) registers."""

    kind = "docs_test_plugin"
    Params = _PluginParams


def test_the_spec_page_lists_the_built_in_kinds_whatever_else_is_registered() -> None:
    before = render_spec_md()
    register_step(_PluginStep)
    try:
        assert render_spec_md() == before
        assert "docs_test_plugin" not in before
        assert "docs_test_plugin" in json.dumps(endpoint_spec_schema())
    finally:
        STEP_KINDS.pop(_PluginStep.kind)
