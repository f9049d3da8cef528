"""balena fleets whose devices enroll themselves at the hub, through balena-sdk.

`setup()` finds or creates the balena fleet (an `application` in balena's API), an EdgePilot fleet
and an enrollment token, and sets the balena fleet's environment variables the agent reads
(`EDGEPILOT_AGENT_ENROLL_HUB`, `EDGEPILOT_AGENT_ENROLL_TOKEN`, `EDGEPILOT_AGENT_DATA_DIR`), so that
every device of that balena fleet enrolls itself on first start. Running it again reuses the
fleet, updates the variables in place and revokes the EdgePilot tokens made for that balena fleet
before: balena hands fleet variables to every device when it starts and when they change, so
no device, enrolled (it keeps its identity in its data volume) or not yet, needs the old token,
and a token kept in balena's cloud in plain text should be the only live one.

`BalenaClient` wraps the SDK: it keeps it off the user's home directory, bounds every call with
a deadline (the SDK's requests have none: its `timeout` setting is read by nothing) and turns
its errors into messages that say whether the API was unreachable or refused the key.
"""

from __future__ import annotations

import contextlib
import io
import re
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel

from cloud_hub.core.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from cloud_hub.fleet.enrollment import EnrollmentService

__all__ = [
    "DEFAULT_API",
    "DEVICE_DATA_DIR",
    "ENV_DATA_DIR",
    "ENV_HUB",
    "ENV_TOKEN",
    "BalenaClient",
    "BalenaError",
    "SetupResult",
    "setup",
    "token_name",
]

DEFAULT_API = "https://api.balena-cloud.com/"
DEFAULT_TIMEOUT_S = 30.0
ENV_HUB = "EDGEPILOT_AGENT_ENROLL_HUB"
ENV_TOKEN = "EDGEPILOT_AGENT_ENROLL_TOKEN"
ENV_DATA_DIR = "EDGEPILOT_AGENT_DATA_DIR"
DEVICE_DATA_DIR = "/var/lib/edgepilot"

T = TypeVar("T")
_ENROLL_TOKEN = re.compile(r"ept_[A-Za-z0-9_-]+")
_WITH_DT = {"$expand": {"is_for__device_type": {"$select": "slug"}}}  # pine options


class BalenaError(InvalidInput):
    """What balena refused or could not do, in words (never the API key)."""


class _Deadline(Exception):
    pass


def _with_deadline(fn: Callable[[], T], timeout_s: float) -> T:
    """`fn()` in a daemon thread, given up on after `timeout_s` (the thread is left blocked on
    its socket; the command exits)."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, daemon=True, name="balena-request").start()
    if not done.wait(timeout_s):
        raise _Deadline
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def normalise_api_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInput(f"--balena-api {url!r} is not an http(s) URL")
    return url if url.endswith("/") else url + "/"


class BalenaClient:
    """One API key on one balena API, every call bounded by `timeout_s`."""

    def __init__(
        self, api_key: str, *, api_url: str = DEFAULT_API, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        from balena import Balena

        if not api_key.strip():
            raise BalenaError("the balena API key is empty")
        self.api_url = normalise_api_url(api_url)
        self.timeout_s = timeout_s
        # In memory: nothing written under ~/.balena (no key left on disk by this command).
        self.sdk = Balena({"data_directory": False})
        self.sdk.settings.set("api_endpoint", self.api_url)
        self.sdk.pine.api_prefix = self.api_url + "v7/"
        self._key = api_key.strip()
        self.sdk.auth.login_with_token(self._key)

    # -- errors -------------------------------------------------------------------------------
    def _unreachable(self, why: str) -> BalenaError:
        return BalenaError(f"the balena API at {self.api_url} is unreachable ({why})")

    def _refused_key(self) -> BalenaError:
        return BalenaError(
            f"the balena API at {self.api_url} refused the API key (check --balena-token-file "
            "or BALENA_API_KEY: a key from balena's dashboard, Preferences → Access tokens)"
        )

    def _diagnose(self) -> BalenaError:
        """The SDK says NotLoggedIn for a refused key and a refused connection alike: ask the
        API's /ping, which needs no key, which of the two it was."""
        import requests

        try:
            requests.get(self.api_url + "ping", timeout=min(self.timeout_s, 10.0))
        except requests.Timeout:
            return self._unreachable(f"no answer within {min(self.timeout_s, 10.0):g} s")
        except requests.RequestException as exc:
            return self._unreachable(_reason(exc))
        return self._refused_key()

    def _scrub(self, text: str) -> str:
        """balena's answer with no secret in it (an error may quote what it was sent)."""
        return _ENROLL_TOKEN.sub("ept_…", text.replace(self._key, "…"))

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one SDK call; its errors as a BalenaError saying `what` failed."""
        import requests
        from balena import exceptions as bx

        try:
            # The SDK prints the body of a 5xx answer to stdout (it may quote a secret it was
            # sent, and it would break --json): keep its prints out.
            with contextlib.redirect_stdout(io.StringIO()):
                return _with_deadline(fn, self.timeout_s)
        except _Deadline:
            raise self._unreachable(f"no answer within {self.timeout_s:g} s to {what}") from None
        except bx.NotLoggedIn:
            raise self._diagnose() from None
        except requests.Timeout:
            raise self._unreachable(f"no answer within {self.timeout_s:g} s") from None
        except requests.RequestException as exc:
            raise self._unreachable(_reason(exc)) from None
        except bx.RequestError as exc:
            if exc.status_code == 401:
                raise self._refused_key() from None
            body = self._scrub(str(getattr(exc, "body", "") or "")).strip()[:200]
            raise BalenaError(
                f"balena refused to {what}: HTTP {exc.status_code}" + (f": {body}" if body else "")
            ) from None

    # -- what setup and config need -------------------------------------------------------------
    def whoami(self) -> dict[str, Any]:
        """Checks the key (login_with_token only stores it)."""
        found: dict[str, Any] = self.call("check the API key", self.sdk.auth.whoami)
        return found

    def find_fleet(self, name_or_slug: str) -> dict[str, Any] | None:
        """The balena fleet with this slug (`org/name`) or, without a `/`, this name among the
        fleets the key reaches directly; None when there is none."""
        from balena import exceptions as bx

        app = self.sdk.models.application
        what = f"look up balena fleet {name_or_slug}"
        try:
            if "/" in name_or_slug:
                found: dict[str, Any] = self.call(what, lambda: app.get(name_or_slug, _WITH_DT))
            else:
                found = self.call(what, lambda: app.get_by_name(name_or_slug, _WITH_DT))
        except bx.ApplicationNotFound:
            return None
        except bx.AmbiguousApplication:
            raise BalenaError(
                f"several balena fleets are named {name_or_slug!r}: give --balena-fleet ORG/NAME"
            ) from None
        return found

    def organization(self, org: str | None) -> str:
        """The organization handle a new fleet goes to: `org`, else the key's only one."""
        if org is not None:
            return org
        orgs: list[dict[str, Any]] = self.call(
            "list organizations", self.sdk.models.organization.get_all
        )
        if len(orgs) == 1:
            return str(orgs[0]["handle"])
        handles = ", ".join(str(o.get("handle")) for o in orgs) or "none"
        raise BalenaError(f"give --org: the API key belongs to organizations {handles}")

    def create_fleet(self, name: str, device_type: str, org: str | None) -> dict[str, Any]:
        from balena import exceptions as bx

        handle = self.organization(org)
        try:
            made: dict[str, Any] = self.call(
                f"create balena fleet {name}",
                lambda: self.sdk.models.application.create(name, device_type, handle),
            )
        except bx.InvalidDeviceType:
            raise BalenaError(f"balena knows no device type {device_type!r}") from None
        except bx.OrganizationNotFound:
            raise BalenaError(f"balena organization {handle!r} not found") from None
        except bx.BalenaDiscontinuedDeviceType:
            raise BalenaError(f"balena's device type {device_type!r} is discontinued") from None
        return made

    def env_vars(self, app_id: int) -> dict[str, str]:
        rows: list[dict[str, Any]] = self.call(
            "read the fleet's variables",
            lambda: self.sdk.models.application.env_var.get_all_by_application(app_id),
        )
        return {str(r["name"]): str(r.get("value", "")) for r in rows}

    def set_env_var(self, app_id: int, name: str, value: str) -> None:
        self.call(
            f"set the fleet variable {name}",
            lambda: self.sdk.models.application.env_var.set(app_id, name, value),
        )

    def fleet_device_type(self, app: dict[str, Any]) -> str:
        """The device type of a fleet from find_fleet (or balena's answer, read again)."""
        expanded = app.get("is_for__device_type")
        if not (isinstance(expanded, list) and expanded and "slug" in expanded[0]):
            app_id = int(app["id"])
            app = self.call(
                "read the fleet's device type",
                lambda: self.sdk.models.application.get(app_id, _WITH_DT),
            )
            expanded = app["is_for__device_type"]
        return str(expanded[0]["slug"])

    def recommended_os(self, device_type: str) -> str:
        from balena import exceptions as bx

        try:
            version: str | None = self.call(
                f"list balenaOS versions for {device_type}",
                lambda: self.sdk.models.os.get_max_satisfying_version(device_type, "recommended"),
            )
        except bx.InvalidDeviceType:
            raise BalenaError(f"balena knows no device type {device_type!r}") from None
        if version is None:
            raise BalenaError(
                f"balena has no recommended balenaOS for {device_type}: give --version"
            )
        return version

    def os_config(self, app_id: int, options: dict[str, Any]) -> dict[str, Any]:
        from balena import exceptions as bx

        try:
            config: Any = self.call(
                "make config.json", lambda: self.sdk.models.os.get_config(app_id, options)
            )
        except bx.ApplicationNotFound:
            raise BalenaError(f"balena fleet {app_id} not found") from None
        # balena_auth.request returns whatever came back, errors included: check the shape.
        if not isinstance(config, dict) or "applicationId" not in config:
            raise BalenaError("balena did not answer with a config.json")
        return config


def _reason(exc: Exception) -> str:
    import requests

    if isinstance(exc, requests.ConnectionError):
        text = str(exc)
        return "connection refused" if "refused" in text.lower() else "connection failed"
    return exc.__class__.__name__


# -- setup ----------------------------------------------------------------------------------------
class SetupResult(BaseModel):
    balena_fleet_id: int
    balena_fleet_slug: str
    balena_fleet_created: bool
    balena_device_type: str
    fleet: str
    fleet_created: bool
    token_id: int
    token_name: str
    token_expires_at: datetime
    variables: dict[str, str]  # name → created | updated | unchanged (values never shown)
    revoked_tokens: list[int]


def token_name(app_id: int) -> str:
    """What setup names the tokens it makes for a balena fleet (how a rerun finds them)."""
    return f"balena-{app_id}"


def check_hub_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(
            f"--hub-url {url!r} is not an http(s) URL: give the address devices reach the hub "
            "at, e.g. http://hub.example:8000"
        )
    if parts.hostname in ("localhost", "127.0.0.1", "::1"):
        raise InvalidInput(
            f"--hub-url {url!r} is this machine's loopback address: devices cannot reach it"
        )
    return url.rstrip("/")


def setup(
    client: BalenaClient,
    enrollment: EnrollmentService,
    *,
    fleet: str,
    balena_fleet: str,
    device_type: str,
    org: str | None,
    hub_url: str,
    expires_s: float,
    max_uses: int | None,
) -> SetupResult:
    from cloud_hub.fleet.enroll_store import EnrollTokenCreate, FleetCreate

    hub_url = check_hub_url(hub_url)
    client.whoami()  # a refused key or an unreachable API stops here, before any token exists

    # Names are unique within an organization: with --org, look the fleet up by its slug.
    app = client.find_fleet(
        balena_fleet if org is None or "/" in balena_fleet else f"{org}/{balena_fleet}"
    )
    app_created = app is None
    if app is None:
        app = client.create_fleet(
            balena_fleet.rsplit("/", 1)[-1], device_type, _org(balena_fleet, org)
        )
    app_id = int(app["id"])

    try:
        enrollment.get_fleet(fleet)
        fleet_created = False
    except NotFound:
        enrollment.create_fleet(FleetCreate(name=fleet))
        fleet_created = True
    name = token_name(app_id)
    created = enrollment.create_token(
        EnrollTokenCreate(fleet=fleet, expires_s=expires_s, max_uses=max_uses, name=name)
    )

    wanted = {ENV_HUB: hub_url, ENV_DATA_DIR: DEVICE_DATA_DIR, ENV_TOKEN: created.token}
    states: dict[str, str] = {}
    try:
        current = client.env_vars(app_id)
        for var, value in wanted.items():
            if current.get(var) == value:
                states[var] = "unchanged"
                continue
            client.set_env_var(app_id, var, value)
            states[var] = "updated" if var in current else "created"
    except BaseException:
        enrollment.revoke_token(created.id)  # never set on the fleet: no one needs it
        raise

    revoked = [
        t.id
        for t in enrollment.list_tokens()
        if t.name == name and t.id != created.id and t.state == "live"
    ]
    for token_id in revoked:
        enrollment.revoke_token(token_id)
    return SetupResult(
        balena_fleet_id=app_id,
        balena_fleet_slug=str(app.get("slug", "")),
        balena_fleet_created=app_created,
        balena_device_type=device_type if app_created else client.fleet_device_type(app),
        fleet=fleet,
        fleet_created=fleet_created,
        token_id=created.id,
        token_name=created.name,
        token_expires_at=created.expires_at,
        variables=states,
        revoked_tokens=revoked,
    )


def _org(balena_fleet: str, org: str | None) -> str | None:
    if org is not None or "/" not in balena_fleet:
        return org
    return balena_fleet.split("/", 1)[0]
