"""What condition routing may know of a device: its hardware, tags, group and runtimes (read by
`device_lookup.DeviceLookup`). No database here: the image server imports this module."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceFacts:
    id: str
    hardware: str
    tags: frozenset[str]
    group: str | None
    runtimes: tuple[str, ...]
