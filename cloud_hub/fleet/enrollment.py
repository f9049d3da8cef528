"""Zero-touch enrollment: a device with a fleet token and no identity gets one.

`POST /api/v1/enroll` (no API token: the fleet token is the credential) takes the wire
contract's `EnrollRequest`, signed with the key pair the device made for itself. The hub checks,
in this order, and refuses with `EnrollmentRefused` naming the first failure:

1. the token: unknown, revoked, expired, or out of uses (401; the agent backs off and retries:
   an operator may make a new token or raise the limit);
2. the signature over the request with the public key it carries, and the request's clock
   (400: a device whose clock is off by more than `ENROLL_MAX_SKEW_S` retries after NTP);
3. the device: a hardware id whose device was revoked is refused (403).

Then, in one transaction, the device of that hardware id gets a new broker password (a
re-flashed card comes back as itself: same id, same logs; its old password stops working) or
is created in the token's fleet, with the fleet's group and tags and an id made from the fleet's
prefix and the hardware id; the broker's password and ACL files are rewritten; and after the
commit the broker is told to re-read them, so the device can connect at once. The answer
carries the broker password: shown once, only its hash is kept.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cloud_hub.core.db import Database
from cloud_hub.core.errors import Refused
from cloud_hub.fleet.devices import DeviceRevoked, DeviceStore, Enrollment, enrolled_with
from cloud_hub.fleet.enroll_store import (
    EnrollToken,
    EnrollTokenCreate,
    EnrollTokenStore,
    Fleet,
    FleetCreate,
    FleetStore,
    NewEnrollToken,
    iso,
)
from cloud_hub.fleet.schemas import Device, DeviceCreate
from edge_agent.core.wire import (
    ENROLL_MAX_SKEW_S,
    EnrollBroker,
    EnrollRequest,
    EnrollResponse,
    enroll_signing_message,
)

__all__ = [
    "EnrollTokenCreate",
    "EnrollmentRefused",
    "EnrollmentService",
    "FleetCreate",
    "device_id_for",
]

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


class EnrollmentRefused(Refused):
    """An enrollment the hub will not accept; `status` is the HTTP status to answer."""


def device_id_for(fleet: Fleet, hardware_id: str) -> str:
    """The id a new device of this hardware gets: stable, so that it reads the same on every
    screen after a re-flash, and says nothing of the serial itself."""
    return f"{fleet.device_prefix}-{hashlib.sha256(hardware_id.encode()).hexdigest()[:8]}"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class EnrollmentService:
    def __init__(self, db: Database, devices: DeviceStore, *, clock: Clock = _utcnow) -> None:
        self.db = db
        self.devices = devices
        self.clock = clock
        self.fleets = FleetStore(db)
        self.tokens = EnrollTokenStore(db, self.fleets, clock=clock)
        self.refused = 0  # enrollments refused since the process started

    # -- fleets and tokens (operators) ----------------------------------------------------------
    def create_fleet(self, body: FleetCreate) -> Fleet:
        return self.fleets.create(body)

    def get_fleet(self, name: str) -> Fleet:
        return self.fleets.get(name)

    def list_fleets(self) -> list[Fleet]:
        return self.fleets.all()

    def create_token(self, body: EnrollTokenCreate) -> NewEnrollToken:
        return self.tokens.create(body)

    def list_tokens(self, *, fleet: str | None = None) -> list[EnrollToken]:
        return self.tokens.all(fleet=fleet)

    def revoke_token(self, token_id: int) -> EnrollToken:
        return self.tokens.revoke(token_id)

    def revoke_device(self, device_id: str) -> Device:
        return self.devices.revoke(device_id, when=iso(self.clock()))

    # -- a device enrolling ---------------------------------------------------------------------
    def enroll(self, req: EnrollRequest) -> EnrollResponse:
        try:
            return self._enroll(req)
        except EnrollmentRefused as exc:
            self.refused += 1
            log.warning("enrollment refused (%s): %s", exc.status, exc)
            raise

    def _enroll(self, req: EnrollRequest) -> EnrollResponse:
        token = self._live_token(req.token)
        self._check_signature(req)
        fleet = self.fleets.by_id(self._fleet_id(token))
        with self.db.transaction():
            conn = self.db.conn
            row = enrolled_with(conn, req.hardware_id)
            new_use = row is None or row[1] != token.id
            if not self.tokens.record_use(conn, token.id, new_device=new_use):
                raise EnrollmentRefused(
                    401,
                    f"enrollment token {token.prefix}… has enrolled its {token.max_uses} devices",
                )
            device_id = row[0] if row is not None else device_id_for(fleet, req.hardware_id)
            try:
                password, reenrolled = self.devices.enroll(
                    conn,
                    Enrollment(
                        device=DeviceCreate(
                            id=device_id,
                            name=req.hostname or device_id,
                            hardware=req.hardware,
                            runtimes=list(req.runtimes),
                            tags=fleet.tags,
                            group=fleet.group,
                        ),
                        fleet_id=fleet.id,
                        token_id=token.id,
                        hardware_id=req.hardware_id,
                        public_key=req.public_key,
                        agent_version=req.agent_version,
                    ),
                )
            except DeviceRevoked as exc:
                raise EnrollmentRefused(403, str(exc)) from None
            self.devices.write_broker_files()
        self.devices.reload_broker()
        reg = self.devices.registration(device_id, password)
        log.info("device %s enrolled in fleet %s (again: %s)", device_id, fleet.name, reenrolled)
        return EnrollResponse(
            device_id=device_id,
            fleet=fleet.name,
            username=reg.username,
            password=password,
            broker=EnrollBroker(**reg.broker.model_dump()),
            hub_public_key=reg.hub_public_key,
            reenrolled=reenrolled,
        )

    def _live_token(self, secret: str) -> EnrollToken:
        token = self.tokens.find(secret)
        if token is None:
            raise EnrollmentRefused(401, "enrollment token not recognised")
        shown = f"enrollment token {token.prefix}…"
        if token.state == "revoked" and token.revoked_at is not None:
            raise EnrollmentRefused(401, f"{shown} was revoked at {iso(token.revoked_at)}")
        if token.state == "expired":
            raise EnrollmentRefused(401, f"{shown} expired at {iso(token.expires_at)}")
        return token  # exhausted is decided with the device (a re-enrollment is no new use)

    def _fleet_id(self, token: EnrollToken) -> int:
        return self.fleets.get(token.fleet).id

    def _check_signature(self, req: EnrollRequest) -> None:
        try:
            raw = base64.b64decode(req.public_key, validate=True)
            signature = base64.b64decode(req.signature, validate=True)
        except (binascii.Error, ValueError):
            raise EnrollmentRefused(400, "public_key and signature must be base64") from None
        if len(raw) != 32:
            raise EnrollmentRefused(400, "public_key is not an ed25519 key (32 bytes)")
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(signature, enroll_signing_message(req))
        except InvalidSignature:
            raise EnrollmentRefused(
                400, "the request's signature does not verify with its public_key"
            ) from None
        skew = req.ts - time.time()
        if abs(skew) > ENROLL_MAX_SKEW_S:
            raise EnrollmentRefused(
                400,
                f"the device's clock is {skew:+.0f} s off the hub's (at most "
                f"{ENROLL_MAX_SKEW_S:.0f}): it retries once its time is synchronised",
            )
