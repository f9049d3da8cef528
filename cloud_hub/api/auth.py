"""Authentication and the role every route declares.

Every route of the API carries exactly one of the dependencies below in its decorator's
`dependencies=[...]` (tests/cloud_hub/api/test_auth.py walks the app and fails on a route without
one): it authenticates the caller and checks the role, so no route body holds auth code.

- `PUBLIC`: no credential (the health check).
- `VIEWER`, `OPERATOR`, `ADMIN`: an API token (`Authorization: Bearer ep_...`) whose role is
  at least that (see cloud_hub.auth.roles).
- `PREDICT`: a viewer token, or none when the endpoint named in the path is `public`.
- `DEVICE_SELF`: a viewer token, or the device named in the path with its own broker
  credentials (HTTP Basic: device id and password), for what a device reads about itself.
- `ARTIFACT`: an operator token, or a device fetching an artifact of its own desired state.
- `METRICS`: a viewer token, or none when the settings say `metrics_public`.

401 (with `WWW-Authenticate`) without a valid credential, 403 with one whose role is too small.
Verified tokens are cached for `token_cache_s` (a revocation through this process's API takes
effect at once; one made by another process, e.g. the CLI, within that time), and a token's
`last_used_at` is written at most once per cache period.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, cast

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import (
    HTTPAuthorizationCredentials,
    HTTPBasic,
    HTTPBasicCredentials,
    HTTPBearer,
)

from cloud_hub.auth.roles import Role
from cloud_hub.auth.tokens import ApiToken, TokenStore, hash_token
from cloud_hub.fleet.broker_auth import verify_password
from cloud_hub.fleet.devices import password_hash
from cloud_hub.hub import Hub

__all__ = [
    "ADMIN",
    "ARTIFACT",
    "DEVICE_SELF",
    "METRICS",
    "OPERATOR",
    "PREDICT",
    "PUBLIC",
    "ROLE_DEPENDENCIES",
    "VIEWER",
    "Authenticator",
    "Principal",
]

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="An API token: `edgepilot tokens create NAME --role viewer|operator|admin`, or "
    "the hub machine's admin token in `{data_dir}/admin-token`.",
)
basic = HTTPBasic(
    auto_error=False,
    scheme_name="device",
    description="A device's own broker credentials (device id, password), for what concerns it.",
)


@dataclass(frozen=True)
class Principal:
    """Who is calling."""

    kind: Literal["token", "device", "anonymous"]
    name: str
    role: Role | None = None
    device_id: str | None = None


ANONYMOUS = Principal("anonymous", "anonymous")


class Authenticator:
    """Verifies credentials for one app, with a short cache (see the module docstring)."""

    def __init__(self, hub: Hub, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.hub = hub
        self.tokens = TokenStore(hub.db)
        self.ttl = hub.settings.token_cache_s
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[ApiToken, float]] = {}
        self._devices: dict[tuple[str, str], float] = {}

    def cached_token(self, secret: str) -> ApiToken | None | Literal[False]:
        """The cached token (None: known bad); False: not cached, ask `load_token`."""
        key = hash_token(secret)
        with self._lock:
            hit = self._tokens.get(key)
        if hit is None or self._clock() - hit[1] >= self.ttl:
            return False
        token = hit[0]
        return token if token.valid_at(self.tokens.clock()) else None

    def load_token(self, secret: str) -> ApiToken | None:
        """Ask the database (a blocking call: run it off the event loop) and cache a good one."""
        token = self.tokens.verify(secret)
        if token is None:
            return None
        self.tokens.touch(token.id)
        with self._lock:
            self._tokens[hash_token(secret)] = (token, self._clock())
        return token

    def device(self, device_id: str, password: str) -> bool:
        """Whether these are a registered device's broker credentials (blocking)."""
        key = (device_id, hash_token(password))
        with self._lock:
            seen = self._devices.get(key)
        if seen is not None and self._clock() - seen < self.ttl:
            return True
        stored = password_hash(self.hub.db.conn, device_id)
        if stored is None or not verify_password(password, stored):
            return False
        with self._lock:
            self._devices[key] = self._clock()
        return True

    def forget(self) -> None:
        """Drop the cache (a token was revoked here)."""
        with self._lock:
            self._tokens.clear()
            self._devices.clear()


def get_authenticator(request: Request) -> Authenticator:
    """The app's authenticator (create_app makes it)."""
    return cast(Authenticator, request.app.state.authenticator)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": 'Bearer realm="hub"'}
    )


async def _token_principal(request: Request, secret: str) -> Principal:
    auth = get_authenticator(request)
    cached = auth.cached_token(secret)
    token = await run_in_threadpool(auth.load_token, secret) if cached is False else cached
    if token is None:
        raise _unauthorized("the token is not valid (unknown, expired or revoked)")
    return Principal("token", token.name, role=token.role)


BasicCred = Annotated[HTTPBasicCredentials | None, Security(basic)]
Bearer = HTTPAuthorizationCredentials | None


def _scoped(role: Role) -> Any:
    """The bearer scheme, naming the role in OpenAPI (3.1: `security: [{"token": ["operator"]}]`
    lists the role a route needs)."""
    return Security(bearer, scopes=[role.value])


_AS_VIEWER = _scoped(Role.viewer)
_AS_OPERATOR = _scoped(Role.operator)
_AS_ADMIN = _scoped(Role.admin)
_AS = {Role.viewer: _AS_VIEWER, Role.operator: _AS_OPERATOR, Role.admin: _AS_ADMIN}


async def _authenticate(request: Request, bearer_cred: Bearer) -> Principal | None:
    """The token's principal; None without an Authorization header of the Bearer scheme."""
    if bearer_cred is None:
        return None
    return await _token_principal(request, bearer_cred.credentials)


def _need(principal: Principal | None, role: Role) -> Principal:
    if principal is None:
        raise _unauthorized(f"this needs a token with the {role.value} role (or a higher one)")
    assert principal.role is not None
    if not principal.role.allows(role):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"token {principal.name!r} has the {principal.role.value} role; this needs "
            f"{role.value} (or a higher one)",
        )
    return principal


Check = Callable[..., Awaitable[Principal]]


def _role(role: Role) -> Check:
    async def check(request: Request, cred: Bearer = _AS[role]) -> Principal:
        return _need(await _authenticate(request, cred), role)

    check.__name__ = f"requires_{role.value}"
    return check


async def _public() -> Principal:
    return ANONYMOUS


async def _predict(request: Request, cred: Bearer = _AS_VIEWER) -> Principal:
    principal = await _authenticate(request, cred)
    if principal is None:
        engine = getattr(request.app.state, "engine", None)
        name = request.path_params.get("name", "")
        if engine is not None and engine.is_public(name):
            return ANONYMOUS
    return _need(principal, Role.viewer)


async def _device(request: Request, cred: HTTPBasicCredentials) -> Principal:
    auth = get_authenticator(request)
    if not await run_in_threadpool(auth.device, cred.username, cred.password):
        raise _unauthorized("unknown device or wrong device password")
    return Principal("device", cred.username, device_id=cred.username)


async def _device_self(request: Request, device: BasicCred, cred: Bearer = _AS_VIEWER) -> Principal:
    if cred is None and device is not None:
        principal = await _device(request, device)
        if principal.device_id != request.path_params.get("device_id"):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "a device may read only itself")
        return principal
    return _need(await _authenticate(request, cred), Role.viewer)


async def _artifact(request: Request, device: BasicCred, cred: Bearer = _AS_OPERATOR) -> Principal:
    if cred is None and device is not None:
        principal = await _device(request, device)
        sha256 = str(request.path_params.get("sha256", ""))
        hub = cast(Hub, request.app.state.hub)
        allowed = await run_in_threadpool(_fetchable, hub, principal.device_id or "")
        if not any(hmac.compare_digest(sha256, a) for a in allowed):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                "a device may download only the artifacts of its own desired state",
            )
        return principal
    return _need(await _authenticate(request, cred), Role.operator)


def _fetchable(hub: Hub, device_id: str) -> set[str]:
    from cloud_hub.fleet.rollout import Rollout

    return set(Rollout(hub.db).fetchable_sha256s(device_id))


async def _metrics(request: Request, cred: Bearer = _AS_VIEWER) -> Principal:
    hub = cast(Hub, request.app.state.hub)
    if hub.settings.metrics_public and cred is None:
        return ANONYMOUS
    return _need(await _authenticate(request, cred), Role.viewer)


_requires_viewer = _role(Role.viewer)
_requires_operator = _role(Role.operator)
_requires_admin = _role(Role.admin)

PUBLIC: Any = Depends(_public)
VIEWER: Any = Depends(_requires_viewer)
OPERATOR: Any = Depends(_requires_operator)
ADMIN: Any = Depends(_requires_admin)
PREDICT: Any = Depends(_predict)
DEVICE_SELF: Any = Depends(_device_self)
ARTIFACT: Any = Depends(_artifact)
METRICS: Any = Depends(_metrics)

# the function behind each declaration, for the test that every route declares one
ROLE_DEPENDENCIES: dict[str, Callable[..., Any]] = {
    "public": _public,
    "viewer": _requires_viewer,
    "operator": _requires_operator,
    "admin": _requires_admin,
    "predict": _predict,
    "device_self": _device_self,
    "artifact": _artifact,
    "metrics": _metrics,
}
