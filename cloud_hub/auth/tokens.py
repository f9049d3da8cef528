"""API tokens: the one store module of the `api_tokens` table.

A token is `ep_` and 43 random URL-safe characters (256 bits). The hub keeps only its SHA-256
(a token is random, not a password a person chose: a slow hash would add nothing but latency on
every request), a name, a role, an optional expiry, when it was last used and whether it was
revoked. The secret is shown once, when it is created.

`ensure_local_admin` gives the hub machine its own admin token on first start, kept in a 0600
file in the data dir (`admin-token`), which the CLI and the demo on that machine read; it is made
again if the file is missing or no longer valid (revoked, or the database was replaced).
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, Field

from cloud_hub.auth.roles import Role
from cloud_hub.core.db import Database
from cloud_hub.core.errors import AlreadyExists, InvalidInput, NotFound
from cloud_hub.core.names import check_name
from edge_agent.core.fs import write_atomic

__all__ = [
    "LOCAL_ADMIN",
    "TOKEN_PREFIX",
    "ApiToken",
    "NewToken",
    "TokenCreate",
    "TokenStore",
    "ensure_local_admin",
    "hash_token",
]

TOKEN_PREFIX = "ep_"
LOCAL_ADMIN = "local-admin"
_SHOWN_PREFIX = 10  # "ep_" and 7 characters: enough to tell tokens apart in a list
_ISO = "%Y-%m-%dT%H:%M:%S.%fZ"

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_ISO)


def _parse(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.strptime(text, _ISO).replace(tzinfo=UTC)


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


class TokenCreate(BaseModel):
    """What `POST /api/v1/tokens` takes."""

    name: str = Field(min_length=1, max_length=64, description="for people: who or what uses it")
    role: Role
    expires_in_s: float | None = Field(
        default=None, gt=0, le=10 * 365 * 86400, description="lifetime; none: until revoked"
    )


class ApiToken(BaseModel):
    """A token as listed: never its secret."""

    id: int
    name: str
    role: Role
    prefix: str = Field(description="the token's first characters, to recognise it")
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    def valid_at(self, moment: datetime) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or moment < self.expires_at


class NewToken(ApiToken):
    """A token just created: the only time its secret is shown."""

    token: str = Field(description="the secret: send it as `Authorization: Bearer <token>`")


def _from_row(row: sqlite3.Row) -> ApiToken:
    return ApiToken(
        id=row["id"],
        name=row["name"],
        role=Role(row["role"]),
        prefix=row["prefix"],
        created_at=_parse_created(row["created_at"]),
        expires_at=_parse(row["expires_at"]),
        last_used_at=_parse(row["last_used_at"]),
        revoked_at=_parse(row["revoked_at"]),
    )


def _parse_created(text: str) -> datetime:
    # the column default has millisecond precision (strftime %f), ours microseconds
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class TokenStore:
    def __init__(self, db: Database, *, clock: Clock = _utcnow) -> None:
        self.db = db
        self.clock = clock

    def create(self, body: TokenCreate) -> NewToken:
        check_name("token", body.name)
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = self.clock()
        expires = None if body.expires_in_s is None else now + timedelta(seconds=body.expires_in_s)
        try:
            with self.db.transaction() as db:
                cur = db.conn.execute(
                    "INSERT INTO api_tokens (name, role, token_hash, prefix, expires_at, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        body.name,
                        body.role.value,
                        hash_token(secret),
                        secret[:_SHOWN_PREFIX],
                        None if expires is None else _iso(expires),
                        _iso(now),
                    ],
                )
                token_id = int(cur.lastrowid or 0)
        except sqlite3.IntegrityError:
            raise AlreadyExists("token", body.name) from None
        return NewToken(**self.get(token_id).model_dump(), token=secret)

    def get(self, token_id: int) -> ApiToken:
        row = self.db.conn.execute("SELECT * FROM api_tokens WHERE id = ?", [token_id]).fetchone()
        if row is None:
            raise NotFound("token", token_id)
        return _from_row(row)

    def list(self, *, include_revoked: bool = False) -> list[ApiToken]:
        sql = "SELECT * FROM api_tokens"
        if not include_revoked:
            sql += " WHERE revoked_at IS NULL"
        return [_from_row(r) for r in self.db.conn.execute(sql + " ORDER BY id")]

    def revoke(self, name: str) -> ApiToken:
        """Revoke the live token of that name (at once for this process; other hub processes
        stop accepting it within their cache's lifetime, see cloud_hub.api.auth)."""
        with self.db.transaction() as db:
            row = db.conn.execute(
                "SELECT id FROM api_tokens WHERE name = ? AND revoked_at IS NULL", [name]
            ).fetchone()
            if row is None:
                raise NotFound("token", name)
            db.conn.execute(
                "UPDATE api_tokens SET revoked_at = ? WHERE id = ?", [_iso(self.clock()), row[0]]
            )
        return self.get(int(row[0]))

    def verify(self, secret: str) -> ApiToken | None:
        """The live token with this secret, or None (unknown, revoked or expired)."""
        if not secret.startswith(TOKEN_PREFIX) or len(secret) > 256:
            return None
        row = self.db.conn.execute(
            "SELECT * FROM api_tokens WHERE token_hash = ?", [hash_token(secret)]
        ).fetchone()
        if row is None:
            return None
        token = _from_row(row)
        return token if token.valid_at(self.clock()) else None

    def touch(self, token_id: int) -> None:
        """Record a use (callers throttle this: it is a write)."""
        with self.db.transaction() as db:
            db.conn.execute(
                "UPDATE api_tokens SET last_used_at = ? WHERE id = ?",
                [_iso(self.clock()), token_id],
            )


def parse_duration(text: str) -> float:
    """`90s`, `30m`, `12h`, `30d` or `2w` in seconds; InvalidInput naming the problem."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    value, unit = text[:-1], text[-1:].lower()
    if unit not in units or not value.isdigit() or int(value) <= 0:
        raise InvalidInput(
            f"{text!r} is not a duration: a positive number and a unit, s m h d or w (e.g. 30d)"
        )
    return float(int(value) * units[unit])


def read_token_file(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        return None


def ensure_local_admin(store: TokenStore, path: Path) -> str:
    """The secret of the hub machine's admin token in `path` (0600), made if needed."""
    existing = read_token_file(path)
    if existing is not None and _is_admin(store, existing):
        return existing
    # One transaction (BEGIN IMMEDIATE): two processes starting at once make one token.
    with store.db.transaction():
        existing = read_token_file(path)
        if existing is not None and _is_admin(store, existing):
            return existing
        if any(live.name == LOCAL_ADMIN for live in store.list()):
            store.revoke(LOCAL_ADMIN)
        created = store.create(TokenCreate(name=LOCAL_ADMIN, role=Role.admin))
        write_atomic(path, created.token + "\n")
    return created.token


def _is_admin(store: TokenStore, secret: str) -> bool:
    token = store.verify(secret)
    return token is not None and token.role is Role.admin
