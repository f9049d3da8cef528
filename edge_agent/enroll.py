"""Zero-touch enrollment, the device's side: prove a fleet token, get an identity.

`enroll` makes (once) the device's key pair, sends the hub a signed `EnrollRequest` (the token,
the hardware id and model, the runtimes installed, the agent's version), and stores what the hub
answers in `{data_dir}/identity.json` (0600); then it deletes the token file. It tries once:
a refusal raises `EnrollmentRefused` with the hub's reason (an expired, revoked or used-up token,
a revoked device, a bad clock), a hub it cannot reach `HubUnreachable`.

`enroll_until_done` is what `edgepilot-agent run` does on a device that has not enrolled: it
tries until the hub accepts, backing off exponentially (with jitter) after each failure and
logging each on one line, and never raises: an agent started by systemd must not crash-loop on a
token an operator has yet to replace. HTTP is the standard library's (urllib): the agent's
install stays small. Neither the token nor the broker password is ever logged.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import os
import random
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

from pydantic import ValidationError

from edge_agent.config import EnrollSettings
from edge_agent.core.wire import (
    ENROLL_PATH,
    EnrollRequest,
    EnrollResponse,
    WireError,
    enroll_signing_message,
)
from edge_agent.hardware import (
    HardwareIdUnavailable,
    agent_version,
    available_runtimes,
    hardware_id,
    hardware_model,
)
from edge_agent.identity import (
    Identity,
    IdentityError,
    device_key,
    public_key_b64,
    save_identity,
)

__all__ = [
    "EnrollResult",
    "EnrollmentError",
    "EnrollmentRefused",
    "HubUnreachable",
    "enroll",
    "enroll_until_done",
]

log = logging.getLogger(__name__)

_MAX_DETAIL = 300  # characters of the hub's reason kept in a message


class EnrollmentError(Exception):
    """Enrollment did not happen; the message says why (never a secret)."""


class EnrollmentRefused(EnrollmentError):
    """The hub answered, and refused: `status` is its HTTP status, `detail` its reason."""

    def __init__(self, status: int, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"the hub refused the enrollment ({status}): {detail}")
        self.status = status
        self.detail = detail
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Whether trying again may work without a change on the device: a new token, a raised
        limit, an un-revoked device, a hub back up. A 400 or 422 is a bug or a bad clock."""
        return self.status not in (400, 422)


class HubUnreachable(EnrollmentError):
    """No answer from the hub: a connection refused, a timeout, a TLS failure."""


@dataclass(frozen=True)
class EnrollResult:
    identity: Identity
    reenrolled: bool
    identity_path: Path
    token_file_removed: Path | None


def read_token(settings: EnrollSettings) -> str:
    """The fleet token: `token`, else the first line of `token_file`."""
    if settings.token:
        return settings.token.strip()
    if settings.token_file is None:
        raise EnrollmentError("no enrollment token: give enroll.token or enroll.token_file")
    try:
        text = settings.token_file.read_text()
    except FileNotFoundError:
        raise EnrollmentError(
            f"the enrollment token file {settings.token_file} does not exist (already used? "
            "a device deletes it once enrolled)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not text"
        raise EnrollmentError(
            f"cannot read the enrollment token file {settings.token_file}: {reason}"
        ) from None
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise EnrollmentError(f"the enrollment token file {settings.token_file} is empty")
    return token


def _ssl_context(settings: EnrollSettings) -> ssl.SSLContext | None:
    if not settings.hub.startswith("https://"):
        return None
    cafile = str(settings.hub_ca_file) if settings.hub_ca_file is not None else None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise EnrollmentError(f"cannot use hub_ca_file {settings.hub_ca_file}: {exc}") from None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _detail(body: bytes, status: int) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    detail = doc.get("detail") if isinstance(doc, dict) else None
    if isinstance(detail, list):  # FastAPI's 422: a list of {loc, msg}
        detail = "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg', '')}"
            for d in detail
            if isinstance(d, dict)
        )
    if not isinstance(detail, str) or not detail:
        detail = f"HTTP {status} without a reason"
    return detail[:_MAX_DETAIL]


def post_enroll(settings: EnrollSettings, request: EnrollRequest) -> EnrollResponse:
    """Send one signed request; the hub's answer, or EnrollmentRefused / HubUnreachable."""
    url = settings.hub + ENROLL_PATH
    post = urllib.request.Request(
        url,
        data=request.dumps(),
        method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    context = _ssl_context(settings)
    try:
        with urllib.request.urlopen(post, timeout=settings.timeout_s, context=context) as answer:
            body = answer.read()
    except urllib.error.HTTPError as exc:
        with contextlib.closing(exc):
            body = exc.read()
            status = exc.code
            retry_after = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
        raise EnrollmentRefused(status, _detail(body, status), retry_after=retry_after) from None
    except urllib.error.URLError as exc:
        raise HubUnreachable(f"cannot reach the hub at {settings.hub}: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise HubUnreachable(f"cannot reach the hub at {settings.hub}: {exc}") from None
    try:
        response: EnrollResponse = EnrollResponse.loads(body)
    except WireError:
        raise EnrollmentError(
            f"the hub at {url} answered something that is not an enrollment"
        ) from None
    return response


def signed_request(
    token: str, hw_id: str, data_dir: Path, *, hardware: str, clock: Callable[[], float]
) -> EnrollRequest:
    """The request the hub checks: every field signed with the device's own key."""
    runtimes = available_runtimes()
    if not runtimes:
        raise EnrollmentError(
            "no runtime installed: install onnxruntime or ai-edge-litert (the agent can run "
            "nothing without one)"
        )
    key = device_key(data_dir)
    request = EnrollRequest(
        token=token,
        hardware_id=hw_id,
        hardware=_printable(hardware)[:256],
        hostname=re.sub(r"[^A-Za-z0-9.-]", "", socket.gethostname())[:253],
        agent_version=agent_version()[:64],
        runtimes=runtimes,
        public_key=public_key_b64(key),
        ts=clock(),
    )
    signature = key.sign(enroll_signing_message(request))
    return request.model_copy(update={"signature": base64.b64encode(signature).decode()})


def _printable(text: str) -> str:
    """What the wire contract takes for a hardware model: printable ASCII."""
    return "".join(c for c in text if " " <= c <= "~")


def enroll(
    settings: EnrollSettings,
    data_dir: Path,
    *,
    hardware: str | None = None,
    root: Path = Path("/"),
    clock: Callable[[], float] = time.time,
) -> EnrollResult:
    """Enroll once: the stored identity, or EnrollmentError (EnrollmentRefused: the hub's reason;
    HubUnreachable: no answer). `root` is where hardware facts are read (tests: a fake root)."""
    token = read_token(settings)
    try:
        hw_id = settings.hardware_id or hardware_id(root)
    except HardwareIdUnavailable as exc:
        raise EnrollmentError(str(exc)) from None
    try:
        request = signed_request(
            token, hw_id, data_dir, hardware=hardware or hardware_model(root), clock=clock
        )
    except IdentityError as exc:
        raise EnrollmentError(str(exc)) from None
    except ValidationError as exc:  # a token or hardware id the contract cannot carry
        fields = sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]})
        raise EnrollmentError(
            f"cannot make an enrollment request: invalid {', '.join(fields) or 'field'}"
        ) from None
    response = post_enroll(settings, request)
    identity = Identity(
        device_id=response.device_id,
        fleet=response.fleet,
        hub=settings.hub,
        broker=response.broker,
        username=response.username,
        password=response.password,
        hub_public_key=response.hub_public_key,
        hardware_id=hw_id,
    )
    try:
        path = save_identity(data_dir, identity)
    except IdentityError as exc:
        raise EnrollmentError(f"enrolled as {response.device_id}, but {exc}") from None
    removed = _remove_token_file(settings)
    log.info(
        "%s as %s in fleet %s at %s",
        "re-enrolled" if response.reenrolled else "enrolled",
        response.device_id,
        response.fleet,
        settings.hub,
    )
    return EnrollResult(identity, response.reenrolled, path, removed)


def _remove_token_file(settings: EnrollSettings) -> Path | None:
    if settings.token or settings.token_file is None:
        return None  # the token came from the config or the environment, not from the file
    try:
        settings.token_file.unlink()
    except FileNotFoundError:
        return None
    except OSError as exc:  # e.g. its folder is not the agent's to write: empty the file then
        try:
            os.truncate(settings.token_file, 0)
        except OSError:
            log.warning(
                "enrolled, but cannot delete the token file %s: %s (delete it by hand)",
                settings.token_file,
                exc.strerror or exc,
            )
            return None
        log.warning(
            "enrolled; cannot delete the token file %s (%s): emptied it instead",
            settings.token_file,
            exc.strerror or exc,
        )
    return settings.token_file


def backoff_delays(
    first: float, longest: float, *, jitter: float = 0.25, rand: Callable[[], float] = random.random
) -> Callable[[int], float]:
    """The wait after the n-th failure (n from 0): `first` doubling up to `longest`, each cut by
    up to `jitter` of itself at random, so a fleet powered on at once does not retry in step."""

    def delay(n: int) -> float:
        base = min(longest, first * 2 ** min(n, 62))
        return base * (1.0 - jitter * rand())

    return delay


def enroll_until_done(
    settings: EnrollSettings,
    data_dir: Path,
    *,
    stop: threading.Event | None = None,
    wait: Callable[[float], bool] | None = None,
    rand: Callable[[], float] = random.random,
    hardware: str | None = None,
    root: Path = Path("/"),
    clock: Callable[[], float] = time.time,
) -> EnrollResult | None:
    """Try `enroll` until it succeeds; None when stopped first. Never raises: each failure is
    logged on one line and followed by a back-off (`wait(seconds)` returns True to stop; by
    default it waits on `stop`). A refusal that retrying alone cannot fix (400, 422: a bug or
    the device's clock) waits the longest back-off before the next try."""
    stop = stop if stop is not None else threading.Event()
    wait = wait if wait is not None else stop.wait
    delay = backoff_delays(settings.retry_min_s, settings.retry_max_s, rand=rand)
    failures = 0
    while not stop.is_set():
        try:
            return enroll(settings, data_dir, hardware=hardware, root=root, clock=clock)
        except EnrollmentRefused as exc:
            seconds = delay(failures) if exc.retryable else settings.retry_max_s
            if exc.retry_after is not None:
                seconds = min(max(seconds, exc.retry_after), settings.retry_max_s)
            level = logging.WARNING if exc.retryable else logging.ERROR
            log.log(
                level,
                "enrollment at %s refused (%d): %s; retrying in %.1f s",
                settings.hub,
                exc.status,
                exc.detail,
                seconds,
            )
        except EnrollmentError as exc:
            seconds = delay(failures)
            log.warning("enrollment: %s; retrying in %.1f s", exc, seconds)
        except Exception as exc:  # noqa: BLE001 - a bug must not crash-loop the service either
            seconds = settings.retry_max_s
            log.error(
                "enrollment failed unexpectedly (%s: %s); retrying in %.1f s",
                type(exc).__name__,
                exc,
                seconds,
            )
        failures += 1
        if wait(seconds):
            return None
    return None
