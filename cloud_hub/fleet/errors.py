"""Why the hub refuses a device's message."""

from __future__ import annotations


class Rejected(Exception):
    """A device message that follows the wire format but cannot be accepted; the message says
    why, and is recorded as the device's last rejection reason."""
