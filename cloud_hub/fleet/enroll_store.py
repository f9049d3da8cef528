"""Fleets and their enrollment tokens: the `fleets` and `enroll_tokens` tables.

A fleet is what a device joins on first boot: the group and tags it gets and the prefix of its
id. An enrollment token admits devices to one fleet. Only its sha256 is stored (the secret is
shown once, when made); it can expire, be limited to a number of devices and be revoked. A use
is a device the token brought in: a re-flashed device that enrolls again with the token that
enrolled it is not a new use (and is let in while the token is live, exhausted or not).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field

from cloud_hub.auth.tokens import hash_token
from cloud_hub.core.db import Database
from cloud_hub.core.errors import AlreadyExists, InvalidInput, NotFound
from cloud_hub.core.names import check_name
from cloud_hub.core.rows import model_from_row
from cloud_hub.fleet.devices import fleet_sizes
from cloud_hub.registry.schemas import NAME_PATTERN

__all__ = [
    "ENROLL_TOKEN_PREFIX",
    "EnrollToken",
    "EnrollTokenCreate",
    "EnrollTokenStore",
    "Fleet",
    "FleetCreate",
    "FleetStore",
    "NewEnrollToken",
    "TokenState",
]

ENROLL_TOKEN_PREFIX = "ept_"
DEFAULT_TOKEN_LIFETIME_S = 7 * 86400
MAX_TOKEN_LIFETIME_S = 10 * 365 * 86400
_SHOWN_PREFIX = 11  # "ept_" and 7 characters
_ISO = "%Y-%m-%dT%H:%M:%S.%fZ"

Clock = Callable[[], datetime]
TokenState = Literal["live", "expired", "revoked", "exhausted"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_ISO)


def _parse(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- fleets -------------------------------------------------------------------------------------
class FleetCreate(BaseModel):
    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    group: str | None = Field(default=None, description="the group its devices join")
    tags: list[str] = Field(default_factory=list, max_length=32, description="their tags")
    device_prefix: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z][A-Za-z0-9-]{0,31}$",
        description="device ids are PREFIX-xxxxxxxx (from the hardware id) [default: the name]",
    )


class Fleet(BaseModel):
    id: int
    name: str
    group: str | None
    tags: list[str]
    device_prefix: str
    devices: int = Field(default=0, description="devices in the fleet")
    created_at: str


def _fleet(row: sqlite3.Row, sizes: dict[int, int]) -> Fleet:
    return model_from_row(
        Fleet, row, ("tags",), group=row["group_name"], devices=sizes.get(row["id"], 0)
    )


_FLEET_SQL = "SELECT f.* FROM fleets f"


def _prefix_of(name: str) -> str:
    """A fleet name as a device id prefix: letters, digits and dashes, starting with a letter."""
    cleaned = "".join(c if c.isalnum() else "-" for c in name).strip("-")[:32]
    return cleaned if cleaned[:1].isalpha() else f"d-{cleaned}"[:32]


def fleet_names(conn: sqlite3.Connection, fleet_ids: Iterable[int | None]) -> dict[int, str]:
    """id -> name of each of the fleets that exists."""
    ids = sorted({int(i) for i in fleet_ids if i is not None})
    if not ids:
        return {}
    marks = ", ".join("?" for _ in ids)
    rows = conn.execute(f"SELECT id, name FROM fleets WHERE id IN ({marks})", ids)
    return {int(r[0]): str(r[1]) for r in rows}


class FleetStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, body: FleetCreate) -> Fleet:
        check_name("fleet", body.name)
        for tag in body.tags:
            check_name("tag", tag)
        if body.group is not None:
            check_name("group", body.group)
        try:
            with self.db.transaction() as db:
                db.conn.execute(
                    "INSERT INTO fleets (name, group_name, tags, device_prefix) "
                    "VALUES (?, ?, ?, ?)",
                    [
                        body.name,
                        body.group,
                        json.dumps(sorted(set(body.tags))),
                        body.device_prefix or _prefix_of(body.name),
                    ],
                )
        except sqlite3.IntegrityError:
            raise AlreadyExists("fleet", body.name) from None
        return self.get(body.name)

    def get(self, name: str) -> Fleet:
        conn = self.db.conn
        row = conn.execute(f"{_FLEET_SQL} WHERE f.name = ?", [name]).fetchone()
        if row is None:
            raise NotFound("fleet", name)
        return _fleet(row, fleet_sizes(conn, row["id"]))

    def by_id(self, fleet_id: int) -> Fleet:
        conn = self.db.conn
        row = conn.execute(f"{_FLEET_SQL} WHERE f.id = ?", [fleet_id]).fetchone()
        if row is None:
            raise NotFound("fleet", fleet_id)
        return _fleet(row, fleet_sizes(conn, fleet_id))

    def all(self) -> list[Fleet]:
        conn = self.db.conn
        sizes = fleet_sizes(conn)
        return [_fleet(r, sizes) for r in conn.execute(f"{_FLEET_SQL} ORDER BY f.name")]


# -- enrollment tokens --------------------------------------------------------------------------
class EnrollTokenCreate(BaseModel):
    fleet: str = Field(description="the fleet the token admits devices to")
    expires_s: float = Field(
        default=DEFAULT_TOKEN_LIFETIME_S,
        gt=0,
        le=MAX_TOKEN_LIFETIME_S,
        description="lifetime in seconds [default: 7 days]",
    )
    max_uses: int | None = Field(
        default=None, ge=1, le=1_000_000, description="devices it may enroll; none: unlimited"
    )
    name: str | None = Field(
        default=None, max_length=64, description="for people [default: FLEET-N]"
    )


class EnrollToken(BaseModel):
    """A token as listed: never its secret."""

    id: int
    name: str
    fleet: str
    prefix: str = Field(description="the token's first characters, to recognise it")
    created_at: datetime
    expires_at: datetime
    max_uses: int | None
    uses: int
    last_used_at: datetime | None
    revoked_at: datetime | None
    state: TokenState


class NewEnrollToken(EnrollToken):
    token: str = Field(description="the secret, shown only now: what a device enrolls with")


class EnrollTokenStore:
    def __init__(self, db: Database, fleets: FleetStore, *, clock: Clock = _utcnow) -> None:
        self.db = db
        self.fleets = fleets
        self.clock = clock

    def state(self, token: EnrollToken | sqlite3.Row) -> TokenState:
        row = token.model_dump() if isinstance(token, EnrollToken) else dict(token)
        if row["revoked_at"] is not None:
            return "revoked"
        expires = row["expires_at"]
        expires_at = _parse(expires) if isinstance(expires, str) else expires
        if expires_at is not None and self.clock() >= expires_at:
            return "expired"
        if row["max_uses"] is not None and row["uses"] >= row["max_uses"]:
            return "exhausted"
        return "live"

    def _token(self, row: sqlite3.Row) -> EnrollToken:
        expires_at = _parse(row["expires_at"])
        created_at = _parse(row["created_at"])
        assert expires_at is not None and created_at is not None
        return EnrollToken(
            id=row["id"],
            name=row["name"],
            fleet=row["fleet_name"],
            prefix=row["prefix"],
            created_at=created_at,
            expires_at=expires_at,
            max_uses=row["max_uses"],
            uses=row["uses"],
            last_used_at=_parse(row["last_used_at"]),
            revoked_at=_parse(row["revoked_at"]),
            state=self.state(row),
        )

    _SQL = (
        "SELECT t.*, f.name AS fleet_name FROM enroll_tokens t JOIN fleets f ON f.id = t.fleet_id"
    )

    def create(self, body: EnrollTokenCreate) -> NewEnrollToken:
        fleet = self.fleets.get(body.fleet)
        if body.name is not None:
            check_name("token", body.name)
        secret = ENROLL_TOKEN_PREFIX + secrets.token_urlsafe(24)
        now = self.clock()
        with self.db.transaction() as db:
            count = db.conn.execute(
                "SELECT COUNT(*) FROM enroll_tokens WHERE fleet_id = ?", [fleet.id]
            ).fetchone()[0]
            cur = db.conn.execute(
                "INSERT INTO enroll_tokens (name, fleet_id, token_hash, prefix, created_at, "
                "expires_at, max_uses) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    body.name or f"{fleet.name}-{count + 1}",
                    fleet.id,
                    hash_token(secret),
                    secret[:_SHOWN_PREFIX],
                    _iso(now),
                    _iso(now + timedelta(seconds=body.expires_s)),
                    body.max_uses,
                ],
            )
            token_id = int(cur.lastrowid or 0)
        return NewEnrollToken(**self.get(token_id).model_dump(), token=secret)

    def get(self, token_id: int) -> EnrollToken:
        row = self.db.conn.execute(f"{self._SQL} WHERE t.id = ?", [token_id]).fetchone()
        if row is None:
            raise NotFound("enrollment token", token_id)
        return self._token(row)

    def all(self, *, fleet: str | None = None) -> list[EnrollToken]:
        if fleet is None:
            rows = self.db.conn.execute(f"{self._SQL} ORDER BY t.id")
        else:
            self.fleets.get(fleet)
            rows = self.db.conn.execute(f"{self._SQL} WHERE f.name = ? ORDER BY t.id", [fleet])
        return [self._token(r) for r in rows]

    def revoke(self, token_id: int) -> EnrollToken:
        with self.db.transaction() as db:
            cur = db.conn.execute(
                "UPDATE enroll_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                [_iso(self.clock()), token_id],
            )
            if cur.rowcount == 0:
                token = self.get(token_id)  # NotFound, or already revoked
                raise InvalidInput(f"enrollment token {token.id} is revoked already")
        return self.get(token_id)

    def find(self, secret: str) -> EnrollToken | None:
        """The token with this secret in whatever state, or None (unknown)."""
        if not secret.startswith(ENROLL_TOKEN_PREFIX) or len(secret) > 256:
            return None
        row = self.db.conn.execute(
            f"{self._SQL} WHERE t.token_hash = ?", [hash_token(secret)]
        ).fetchone()
        return None if row is None else self._token(row)

    def record_use(self, conn: sqlite3.Connection, token_id: int, *, new_device: bool) -> bool:
        """Inside the caller's transaction: the last use, and one more use for a new device if
        the token has one left (False: it has none; checked and counted in one statement, so
        two devices racing for the last use cannot both have it)."""
        cur = conn.execute(
            "UPDATE enroll_tokens SET uses = uses + ?, last_used_at = ? WHERE id = ? "
            "AND (? = 0 OR max_uses IS NULL OR uses < max_uses)",
            [1 if new_device else 0, _iso(self.clock()), token_id, 1 if new_device else 0],
        )
        return cur.rowcount == 1


def iso(moment: datetime) -> str:
    """A moment as the tables write it (UTC, microseconds, `Z`)."""
    return _iso(moment)
