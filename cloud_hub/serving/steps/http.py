"""`http`: the rows answered by a remote HTTP backend: another hub's endpoint
(`POST /api/v1/endpoints/{name}/predict`) or a device's local API (`POST /v1/predict`). Both
take `{"inputs": [...]}` (or `{"image_b64": ...}` for one image) and answer
`{"predictions": [{"label", "score", "scores"}, ...]}`.

The classes must be known when the endpoint is built: `labels`, or `model` (an alias of the
endpoint whose classes the backend answers with). A backend that is slower than `timeout_ms`,
unreachable, or answers anything but 200 fails the step (put a `circuit_breaker` around it),
except 400, 413, 415 and 422: the backend refused what the caller sent, the caller's bad input
(a 401/403, 404 or 429 is the backend's or this spec's fault, not the caller's). The request id
travels as `X-Request-ID`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from cloud_hub.serving.engine.errors import BadInput
from cloud_hub.serving.engine.step import (
    BuildEnv,
    RunContext,
    Signature,
    Step,
    StepParams,
    register_step,
)
from cloud_hub.serving.engine.values import Value
from cloud_hub.serving.steps.routing import Latencies


class HttpParams(StepParams):
    url: str = Field(pattern=r"^https?://", description="the backend's predict URL")
    labels: list[str] | None = Field(default=None, min_length=1, description="its classes")
    model: str | None = Field(default=None, description="…or an alias whose classes it has")
    timeout_ms: float = Field(default=2000.0, gt=0, le=600_000)
    headers: dict[str, str] = Field(default_factory=dict, description="sent with every call")

    @model_validator(mode="after")
    def _classes(self) -> HttpParams:
        if (self.labels is None) == (self.model is None):
            raise ValueError("give exactly one of 'labels' or 'model': the backend's classes")
        return self


# the backend's answers that say the input itself was wrong (the caller's fault)
CALLER_FAULTS = frozenset({400, 413, 415, 422})


class RemoteFailed(Exception):
    """The backend did not answer, or answered an error or something unreadable."""


@register_step
class HttpStep(Step):
    kind = "http"
    Params = HttpParams
    arity = (0, 1)
    runtime_params = frozenset({"timeout_ms"})

    def __init__(self, name: str, inputs: list[str], params: Any, env: BuildEnv) -> None:
        super().__init__(name, inputs, params, env)
        import httpx  # here, not at import: the model-in-image server never needs it

        if params.labels is not None:
            self.labels = tuple(params.labels)
        else:
            self.labels = env.model(params.model, step=name).labels
        self._httpx = httpx
        self.client = httpx.Client(headers=params.headers)
        self.latency = Latencies()
        self._lock = threading.Lock()  # requests run on many threads at once
        self.calls = 0
        self.failures = 0

    def _count(self, *, calls: int = 0, failures: int = 0) -> None:
        with self._lock:
            self.calls += calls
            self.failures += failures

    def signature(self, inputs: list[Signature], target: Callable[[str], Signature]) -> Signature:
        if inputs and inputs[0].kind in ("scores", "results", "tensors"):
            raise self.fail(
                f"its input {self.inputs[0]!r} gives {inputs[0].kind}: send it rows or images"
            )
        return Signature("scores", (None, len(self.labels)), self.labels)

    def _body(self, given: Value) -> dict[str, Any]:
        if given.x is not None:
            return {"inputs": given.x.tolist()}
        if given.raw is not None and given.rows == 1 and isinstance(given.raw[0], bytes):
            import base64

            return {"image_b64": base64.b64encode(given.raw[0]).decode()}
        raise BadInput(
            "an http step sends numeric rows or one image: got "
            + ("several images" if given.raw is not None else "data ids"),
            step=self.name,
        )

    def run(self, ctx: RunContext, inputs: list[Value]) -> Value:
        (given,) = inputs
        params: HttpParams = ctx.params(self)
        body = self._body(given)
        self._count(calls=1)
        httpx = self._httpx
        try:
            resp = self.client.post(
                params.url,
                json=body,
                headers={"x-request-id": ctx.request_id} if ctx.request_id else None,
                timeout=params.timeout_ms / 1000,
            )
        except httpx.TimeoutException:
            self._count(failures=1)
            raise RemoteFailed(f"{params.url}: no answer within {params.timeout_ms:g} ms") from None
        except httpx.HTTPError as exc:
            self._count(failures=1)
            raise RemoteFailed(f"{params.url}: {type(exc).__name__}: {exc}") from None
        self.latency.add(resp.elapsed.total_seconds() * 1000)
        if resp.status_code in CALLER_FAULTS:
            raise BadInput(f"{params.url} refused the input: {resp.text[:300]}", step=self.name)
        if resp.status_code != 200:
            self._count(failures=1)
            raise RemoteFailed(f"{params.url} answered {resp.status_code}: {resp.text[:300]}")
        try:
            return self._scores(resp.json(), given.rows)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            self._count(failures=1)
            raise RemoteFailed(f"{params.url}: an answer this step cannot read: {exc}") from None

    def _scores(self, doc: dict[str, Any], rows: int) -> Value:
        preds = doc["predictions"]
        if len(preds) != rows:
            raise ValueError(f"{len(preds)} predictions for {rows} rows")
        remote = doc.get("labels")
        if remote is not None and tuple(remote) != self.labels:
            raise ValueError(f"its classes {remote} are not {list(self.labels)}")
        x = np.zeros((rows, len(self.labels)), dtype=np.float32)
        for i, p in enumerate(preds):
            scores = p.get("scores")
            if isinstance(scores, list) and len(scores) == len(self.labels):
                x[i] = scores
            elif p.get("label") in self.labels:  # a device's default answer has no scores
                x[i, self.labels.index(p["label"])] = 1.0
            else:
                raise ValueError(
                    f"prediction {i} has neither {len(self.labels)} scores nor a class"
                )
        return Value(kind="scores", rows=rows, x=x, labels=self.labels)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            calls, failures = self.calls, self.failures
        return {
            "url": self.params.url,
            "calls": calls,
            "failures": failures,
            "latency_ms": self.latency.summary(),
        }

    def close(self) -> None:
        self.client.close()
