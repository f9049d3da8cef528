"""Registry errors. The REST API maps them to 404/409/422, the CLI to a message and exit code."""

from __future__ import annotations


class RegistryError(Exception):
    """Base class: something the caller asked for cannot be done."""


class NotFound(RegistryError):
    def __init__(self, kind: str, ref: object) -> None:
        super().__init__(f"{kind} {ref!r} not found")
        self.kind = kind
        self.ref = ref


class AlreadyExists(RegistryError):
    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} {name!r} already exists")
        self.kind = kind
        self.name = name


class InvalidInput(RegistryError):
    """The request is well-formed but its content is wrong (unknown dataset, bad file, ...)."""


class Refused(RegistryError):
    """A request refused with a given HTTP status (401, 403, 429, ...): the REST API answers
    that status, the CLI a message and exit code 2."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
