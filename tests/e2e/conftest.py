"""Fixtures of the end-to-end tests: a hub with its fleet service and real agents."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.test_fleet_loop import Fleet


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[Callable[[tuple[str, int]], Fleet]]:
    fleets: list[Fleet] = []

    def make(address: tuple[str, int]) -> Fleet:
        fleet = Fleet(tmp_path, address)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.close()
