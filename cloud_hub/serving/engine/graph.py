"""An endpoint's graph: built and checked from its spec, then run once per request.

Checks, each a SpecError naming the step: unknown kind, bad params, unknown model version, a
reference to a step that does not exist, a cycle (over data inputs and calls alike), a step not
connected to the output, and a shape that does not fit between two steps.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cloud_hub.core.errors import InvalidInput
from cloud_hub.serving.engine.errors import ModelOff, SpecError
from cloud_hub.serving.engine.params import NO_PARAMS, ResolvedParams
from cloud_hub.serving.engine.spec import EndpointSpec
from cloud_hub.serving.engine.step import REQUEST, BuildEnv, Signature, Step, build_step
from cloud_hub.serving.engine.values import ANSWER_KINDS, Value


class StepFailed(Exception):
    """A step raised something other than bad input: a fault of the server, not the caller."""

    def __init__(self, step: str, exc: BaseException) -> None:
        text = (str(exc).strip() or type(exc).__name__).splitlines()[0][:300]
        super().__init__(f"step {step!r} failed: {text}")
        self.step = step
        # what the request had been tagged with when it failed (the A/B variant that failed):
        # set by the endpoint, logged with the failure
        self.tags: dict[str, str] | None = None


@dataclass
class Graph:
    steps: dict[str, Step]
    output: str
    signatures: dict[str, Signature]
    order: list[str]

    def close(self) -> None:
        # the steps that call others first: a shadow lets its candidates' calls end before
        # the candidates (an http step's client, say) are closed under them
        for name in reversed(self.order):
            self.steps[name].close()


def _deps(step: Step) -> list[str]:
    return [*step.inputs, *step.targets()]


def _check_references(steps: dict[str, Step]) -> None:
    for step in steps.values():
        for name in step.inputs:
            if name not in steps:
                raise SpecError(f"input {name!r} is not a step of this endpoint", step=step.name)
        for name in step.targets():
            if name not in steps:
                raise SpecError(f"it calls {name!r}, which is not a step", step=step.name)
            if name == step.name:
                raise SpecError("it calls itself (a cycle)", step=step.name)


def _topological(steps: dict[str, Step]) -> list[str]:
    """Dependencies first; SpecError naming the cycle if there is one."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name) :] + [name]
            raise SpecError(f"cycle: {' → '.join(cycle)}", step=name)
        state[name] = 1
        for dep in _deps(steps[name]):
            visit(dep, [*path, name])
        state[name] = 2
        order.append(name)

    for name in steps:
        visit(name, [])
    return order


def _output(spec: EndpointSpec, steps: dict[str, Step]) -> str:
    if spec.output is not None:
        if spec.output not in steps:
            raise SpecError(f"output {spec.output!r} is not a step of this endpoint")
        return spec.output
    used = {dep for step in steps.values() for dep in _deps(step)}
    sinks = [name for name in steps if name not in used]
    if len(sinks) != 1:
        raise SpecError(
            f"the graph has {len(sinks)} final steps ({', '.join(sinks)}): name one as 'output'"
        )
    return sinks[0]


def _check_connected(steps: dict[str, Step], output: str) -> None:
    seen: set[str] = set()
    todo = [output]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += _deps(steps[name])
    for name in steps:
        if name not in seen:
            raise SpecError(f"not connected to the output step {output!r}", step=name)


def compile_graph(spec: EndpointSpec, env: BuildEnv) -> Graph:
    steps: dict[str, Step] = {}
    try:
        for step_spec in spec.steps:
            steps[step_spec.name] = build_step(step_spec, env)
        _check_references(steps)
        order = _topological(steps)
        output = _output(spec, steps)
        _check_connected(steps, output)
        sigs: dict[str, Signature] = {}
        for name in order:
            step = steps[name]
            inputs = [sigs[i] for i in step.inputs] or [REQUEST]
            sigs[name] = step.signature(inputs, sigs.__getitem__)
            step.bind(inputs, sigs.__getitem__)
        if sigs[output].kind not in ANSWER_KINDS:
            raise SpecError(
                f"the output gives {sigs[output].describe()}, not class scores, a head's "
                "results or a model's tensors",
                step=output,
            )
    except BaseException:
        for step in steps.values():
            step.close()
        raise
    return Graph(steps=steps, output=output, signatures=sigs, order=order)


@dataclass(frozen=True)
class ExtraAnswer:
    """An answer a step logged beside the one returned (a shadow's), for the prediction log."""

    step: str
    role: str
    value: Value
    latency_ms: float
    error: str | None
    ts: float


@dataclass
class Run:
    """One request going through a graph: the RunContext its steps see."""

    graph: Graph
    request: Value
    fanout: Executor
    request_key: str | None = None
    request_id: str = ""
    attributes: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    runtime: ResolvedParams = NO_PARAMS
    trace: list[str] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)
    deferred: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    extra: list[ExtraAnswer] = field(default_factory=list)
    observed: dict[int, np.ndarray] = field(default_factory=dict)
    # set once the request's answer is logged: later `log` calls go straight to it
    late_log: Callable[[ExtraAnswer], None] | None = None
    _memo: dict[str, Future[Value]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # a fork's request: where its log and observations go
    _parent: Run | None = None

    @property
    def key(self) -> str | None:
        return self.request_key

    def fork(self) -> Run:
        """A context for work done beside the request (a shadow's candidates): the same
        request, parameters, memo and log, but its own tags, counters, trace and deferred
        steps, so nothing it does shows in the answer, however early it ends."""
        return Run(
            self.graph,
            self.request,
            self.fanout,
            request_key=self.request_key,
            request_id=self.request_id,
            attributes=self.attributes,
            headers=self.headers,
            runtime=self.runtime,
            _memo=self._memo,
            _lock=self._lock,
            _parent=self._parent or self,
        )

    def params(self, step: Step) -> Any:
        return self.runtime.for_step(step)

    def killed(self, model_alias: str) -> bool:
        return model_alias in self.runtime.kill

    def killed_version(self, version_id: int) -> bool:
        return version_id in self.runtime.killed_versions

    def tag(self, key: str, value: str) -> None:
        with self._lock:
            self.tags[key] = value

    def log(
        self, step: str, role: str, value: Value, latency_ms: float, error: str | None = None
    ) -> None:
        if self._parent is not None:
            self._parent.log(step, role, value, latency_ms, error)
            return
        entry = ExtraAnswer(step, role, value, latency_ms, error, time.time())
        with self._lock:
            late = self.late_log
            if late is None:
                self.extra.append(entry)
        if late is not None:
            late(entry)

    def observe(self, version_id: int, x: np.ndarray) -> None:
        if self._parent is not None:
            self._parent.observe(version_id, x)
            return
        if len(x) == self.request.rows:
            with self._lock:
                self.observed.setdefault(version_id, x)

    def close_log(self, late: Callable[[ExtraAnswer], None]) -> list[ExtraAnswer]:
        """The answers logged so far; those logged from now on go to `late`."""
        with self._lock:
            self.late_log = late
            extra, self.extra = self.extra, []
        return extra

    def result(self, output: str | None = None) -> Value:
        """The value of the output step (or of `output`, another step of the graph)."""
        return self.call(output or self.graph.output)

    def call(self, step: str, rows: np.ndarray | None = None) -> Value:
        if rows is not None:
            return self._evaluate(step, rows)
        with self._lock:
            future = self._memo.get(step)
            owner = future is None
            if future is None:
                future = self._memo[step] = Future()
        if owner:
            try:
                future.set_result(self._evaluate(step, None))
            except BaseException as exc:
                future.set_exception(exc)
        return future.result()

    def call_many(self, steps: Sequence[str], rows: np.ndarray | None = None) -> list[Value]:
        if not steps:
            return []
        futures = [self.fanout.submit(self.call, s, rows) for s in steps[1:]]
        values = [self.call(steps[0], rows)]
        for step, future in zip(steps[1:], futures, strict=True):
            # not started yet (the pool is busy): run it here rather than wait for a thread,
            # so nested fan-outs cannot deadlock the pool
            values.append(self.call(step, rows) if future.cancel() else future.result())
        return values

    def note(self, counter: str, n: int = 1) -> None:
        with self._lock:
            self.counters[counter] += n

    def defer(self, step: str) -> None:
        with self._lock:
            if step not in self.deferred:
                self.deferred.append(step)

    def _input(self, name: str, rows: np.ndarray | None) -> Value:
        """A step's input, for all rows (evaluated once per request) or for some: then taken
        from the full value if that exists, else computed for those rows only (so a cache
        hit skips the preprocessing before the model too)."""
        if rows is None:
            return self.call(name)
        with self._lock:
            future = self._memo.get(name)
        if future is not None:
            return future.result().take(rows)
        return self._evaluate(name, rows)

    def _evaluate(self, name: str, rows: np.ndarray | None) -> Value:
        step = self.graph.steps[name]
        if step.inputs:
            inputs = [self._input(i, rows) for i in step.inputs]
        else:
            inputs = [self.request if rows is None else self.request.take(rows)]
        try:
            value = step.run(self, inputs)
        except (InvalidInput, StepFailed, ModelOff):
            raise
        except Exception as exc:
            raise StepFailed(name, exc) from exc
        expected = inputs[0].rows
        if value.rows != expected:
            raise StepFailed(name, RuntimeError(f"gave {value.rows} rows for {expected}"))
        with self._lock:
            self.trace.append(name)
        return value
