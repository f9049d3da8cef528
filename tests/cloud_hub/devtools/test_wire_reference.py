"""docs/wire.md is the wire contract as the code has it: regenerated, it must not change, and the
contract's table of topics agrees with what the broker lets each side do."""

from __future__ import annotations

from cloud_hub.devtools.wire_reference import render
from cloud_hub.fleet.broker_auth import DEVICE_PUBLISHES, DEVICE_READS, VIEWER_READS
from edge_agent.core.wire import TOPIC_KINDS, TOPIC_SPECS
from tests.conftest import REPO


def test_the_committed_page_is_what_the_code_generates() -> None:
    page = (REPO / "docs" / "wire.md").read_text()
    assert page == render(), (
        "docs/wire.md is stale: run "
        "`.venv/bin/python -m cloud_hub.devtools.wire_reference > docs/wire.md`"
    )
    for kind in TOPIC_KINDS:
        assert f"`ep/dev/{{id}}/{kind}`" in page
    assert "### `TelemetryBatch`" in page and "#### `TelemetryRecord`" in page
    assert "### `EnrollRequest`" in page


def test_every_topic_once_and_its_direction_is_the_acls() -> None:
    assert [s.kind for s in TOPIC_SPECS] == list(TOPIC_KINDS)
    assert {s.kind for s in TOPIC_SPECS if s.sender == "agent"} == set(DEVICE_PUBLISHES)
    assert {s.kind for s in TOPIC_SPECS if s.receiver == "agent"} == set(DEVICE_READS)
    assert set(VIEWER_READS) <= {s.kind for s in TOPIC_SPECS if s.receiver == "hub"}
    assert {s.kind for s in TOPIC_SPECS if s.retained} == {"status", "desired"}


def test_each_topic_names_the_modules_that_publish_and_handle_it() -> None:
    """The where-things-live page says which module publishes and which handles each topic: the
    modules exist and do speak of that topic."""
    import importlib
    import inspect

    from edge_agent.core.wire import HUB_TOPICS

    for spec in TOPIC_SPECS:
        for name in (spec.published_by, spec.handled_by):
            if not name:
                assert "client" in (spec.sender, spec.receiver), spec.kind
                continue
            source = inspect.getsource(importlib.import_module(name))
            assert f'"{spec.kind}"' in source or f"on_{spec.kind}" in source, (spec.kind, name)
    for topic in HUB_TOPICS:
        source = inspect.getsource(importlib.import_module(topic.published_by))
        method = topic.pattern.split("/")[0].removesuffix("s")
        assert f"Topics(root).{method}" in source, topic.pattern
