"""The micro-batcher's guarantees: a model must answer one row per row it is given (else every
caller of the batch gets a clear error, with a real ONNX model too), no caller is ever left
waiting, and a leader does not wait for requests that ended elsewhere."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from cloud_hub.core.errors import NotFound
from cloud_hub.hub import Hub
from cloud_hub.registry.registry import NewArtifact
from cloud_hub.serving.engine.batching import MicroBatcher, WrongRowCount
from cloud_hub.serving.engine.engine import ServingEngine
from cloud_hub.serving.engine.graph import StepFailed
from cloud_hub.serving.engine.spec import BatchingSpec, EndpointSpec
from cloud_hub.serving.engine.values import PredictRequest
from tests.cloud_hub.serving.conftest import digits_rows


# -- the batcher alone ---------------------------------------------------------------------------
def _merged(predict: object, callers: int) -> list[object]:
    """`callers` one-row calls that all go into one batch (the leader waits for all of them);
    what each got back: its rows, or the exception it raised."""
    batcher = MicroBatcher(
        predict,  # type: ignore[arg-type]
        BatchingSpec(max_batch_size=callers, max_wait_ms=1000),
        pending=lambda: callers,
        name="wide",
    )

    def call(i: int) -> object:
        try:
            return batcher.submit(np.full((1, 3), i, np.float32))
        except BaseException as exc:
            return exc

    with ThreadPoolExecutor(callers) as pool:
        futures = [pool.submit(call, i) for i in range(callers)]
        return [f.result(timeout=10) for f in futures]  # a hang fails here


def test_a_model_giving_the_wrong_row_count_fails_every_caller_of_the_batch() -> None:
    sizes: list[int] = []

    def one_short(x: np.ndarray) -> np.ndarray:  # drops the last row of a batch
        sizes.append(len(x))
        return x[:-1] * 2 if len(x) > 1 else x * 2

    outs = _merged(one_short, 6)
    assert sizes == [6]  # one merged batch: its callers' rows would be shifted
    for out in outs:
        assert isinstance(out, WrongRowCount), out
        assert "model 'wide' returned 5 rows of scores for a batch of 6 rows" in str(out)
    assert len({id(o) for o in outs}) == 6  # each caller raises its own exception


def test_a_model_returning_something_that_is_not_rows_fails_every_caller() -> None:
    outs = _merged(lambda x: np.float32(1.0), 4)
    assert all(isinstance(o, WrongRowCount) and "returned no rows" in str(o) for o in outs)


def test_a_lone_call_and_batching_off_check_the_row_count_too() -> None:
    def extra(x: np.ndarray) -> np.ndarray:
        return np.concatenate([x, x[:1]])

    for spec in (BatchingSpec(), BatchingSpec(enabled=False)):
        batcher = MicroBatcher(extra, spec, name="extra")
        with pytest.raises(WrongRowCount, match="model 'extra' returned 3 rows of scores for 2"):
            batcher.submit(np.zeros((2, 3), np.float32))
        assert batcher.stats.snapshot()["rows"] == 0


def test_no_caller_is_left_waiting_when_a_batch_dies_mid_way() -> None:
    """Something other than an Exception out of the model (here a BaseException) used to
    leave the callers merged into that batch waiting for ever."""

    class Fatal(BaseException):
        pass

    def dies(x: np.ndarray) -> np.ndarray:
        if len(x) > 1:
            raise Fatal("gone")
        return x

    outs = _merged(dies, 4)  # the leader re-raises Fatal, the others get it
    assert all(isinstance(o, Fatal) for o in outs), outs


def test_a_leader_does_not_wait_for_a_request_that_ended_elsewhere() -> None:
    """Another request in flight makes the leader wait for it (up to max_wait_ms); when that
    request ends without reaching this model (bad input, a cache hit), nothing submits to wake
    the leader: it looks at the count again instead of sleeping out max_wait_ms."""
    in_flight = [2]
    batcher = MicroBatcher(
        lambda x: x, BatchingSpec(max_wait_ms=1000), pending=lambda: in_flight[0], name="m"
    )
    timer = threading.Timer(0.1, lambda: in_flight.__setitem__(0, 1))
    timer.start()
    start = time.perf_counter()
    batcher.submit(np.zeros((1, 2), np.float32))
    took = time.perf_counter() - start
    timer.join()
    assert 0.09 < took < 0.6, took


# -- a real ONNX model that answers the wrong number of rows ------------------------------------
def _onnx(kind: str) -> bytes:
    """64 inputs → 10 softmax scores, then `extra_row`: a constant row put first (N+1 rows, so
    every caller of a merged batch would get its neighbour's row), or `reduce`: the mean over
    the batch axis (one row, whatever N)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    inits = [numpy_helper.from_array(w, "w")]
    if kind == "extra_row":
        inits.append(numpy_helper.from_array(np.full((1, 10), 0.1, np.float32), "const"))
        nodes.append(helper.make_node("Concat", ["const", "probs"], ["scores"], axis=0))
    else:
        nodes.append(helper.make_node("ReduceMean", ["probs"], ["scores"], axes=[0], keepdims=1))
    graph = helper.make_graph(
        nodes,
        f"bad_{kind}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["M", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


@pytest.fixture(scope="module")
def bad_engine(serving_hub: Hub) -> Iterator[ServingEngine]:
    for kind in ("extra_row", "reduce"):
        try:
            serving_hub.registry.resolve_version(f"digits/test-{kind}:1")
        except NotFound:
            serving_hub.registry.register_version(
                "digits",
                f"test-{kind}",
                artifacts=[NewArtifact("onnx", "fp32", _onnx(kind))],
                source="uploaded",
                labels=[str(i) for i in range(10)],
                preprocessing={"input_kind": "tabular", "layout": "NF"},
            )
    engine = ServingEngine(serving_hub.registry, serving_hub.db, threads=16)
    names = []
    try:
        for kind in ("extra_row", "reduce"):
            name = f"bad-rows-{kind}"
            spec = {
                "name": name,
                "models": {"wrong": f"digits/test-{kind}:1"},
                "steps": [{"name": "predict", "kind": "model", "params": {"model": "wrong"}}],
                "batching": {"enabled": True, "max_wait_ms": 200},
            }
            engine.create(EndpointSpec.model_validate(spec))
            names.append(name)
        yield engine
    finally:
        for name in names:
            engine.delete(name)
        engine.close()


def test_an_onnx_model_with_the_wrong_row_count_fails_each_concurrent_caller(
    bad_engine: ServingEngine,
) -> None:
    x, _ = digits_rows()

    def call(i: int) -> object:
        try:
            return bad_engine.predict("bad-rows-extra_row", PredictRequest(inputs=[x[i].tolist()]))
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(8) as pool:
        outs = [f.result(timeout=20) for f in [pool.submit(call, i) for i in range(8)]]
    for out in outs:
        assert isinstance(out, StepFailed), out
        assert out.step == "predict"
        assert "step 'predict' failed: model 'wrong' returned" in str(out)
        assert "a model must give one row per input row" in str(out)


def test_an_onnx_model_reducing_over_the_batch_fails_with_a_step_error(
    bad_engine: ServingEngine,
) -> None:
    x, _ = digits_rows()
    # its output is [1, 10] whatever the batch: not micro-batched, and refused by the step
    with pytest.raises(
        StepFailed,
        match=r"step 'predict' failed: model digits/test-reduce:1 returned scores of shape "
        r"\(1, 10\) for 3 rows",
    ):
        bad_engine.predict("bad-rows-reduce", PredictRequest(inputs=x[:3].tolist()))
    with pytest.raises(StepFailed, match=r"returned 2 rows of scores for 1 rows"):
        bad_engine.predict("bad-rows-extra_row", PredictRequest(inputs=x[:1].tolist()))


def test_batching_off_a_wrong_row_count_is_a_step_error_too(bad_engine: ServingEngine) -> None:
    spec = {
        "name": "bad-rows-unbatched",
        "models": {"wrong": "digits/test-reduce:1"},
        "steps": [{"name": "predict", "kind": "model", "params": {"model": "wrong"}}],
        "batching": {"enabled": False},
    }
    bad_engine.create(EndpointSpec.model_validate(spec))
    try:
        x, _ = digits_rows()
        with pytest.raises(StepFailed, match=r"returned scores of shape \(1, 10\) for 3 rows"):
            bad_engine.predict("bad-rows-unbatched", PredictRequest(inputs=x[:3].tolist()))
    finally:
        bad_engine.delete("bad-rows-unbatched")
