"""Cron expressions, for scheduled training runs and scheduled batch jobs alike."""

from __future__ import annotations

from datetime import datetime

from croniter import croniter

from cloud_hub.core.errors import InvalidInput

__all__ = ["next_fire"]


def next_fire(cron: str, after: datetime) -> datetime:
    """Next time `cron` fires after `after`: 5 fields, or 6 with seconds as the last field."""
    if not croniter.is_valid(cron):
        raise InvalidInput(
            f"invalid cron expression {cron!r}: use 5 fields (min hour day month weekday) "
            "or 6 with seconds last"
        )
    nxt: datetime = croniter(cron, after).get_next(datetime)
    return nxt
