"""`--artifact auto` at the hub: which candidates a device gets, the desired state that carries
them, the reports it accepts and refuses over a real Mosquitto, the choice it settles from the
timings, and the reuse of that choice for the next device of the same hardware type."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable

import numpy as np
import pytest
from typer.testing import CliRunner

from cloud_hub.cli.main import app
from cloud_hub.core.errors import InvalidInput
from cloud_hub.fleet.desired import DesiredStates
from cloud_hub.fleet.mqtt_service import FleetService
from cloud_hub.fleet.schemas import DeploymentCreate, DeviceCreate, ShadowCreate
from cloud_hub.fleet.variant_choice import candidates_for
from cloud_hub.hub import Hub
from cloud_hub.registry.conversion import EvalData, quantize_version
from cloud_hub.registry.registry import NewArtifact
from cloud_hub.registry.schemas import Version
from edge_agent.core.wire import DesiredState, VariantReport, VariantTiming, fastest_variant
from edge_agent.signing import verify_model
from tests.cloud_hub.conftest import Device, unique
from tests.waiting import wait_until

MakeDevice = Callable[[str], Device]


@pytest.fixture(scope="module")
def iris_fp32() -> bytes:
    from sklearn.datasets import load_iris
    from sklearn.neural_network import MLPClassifier

    from converters import sklearn_to_onnx

    X, y = load_iris(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged: irrelevant here
        model = MLPClassifier(hidden_layer_sizes=(256,), max_iter=200, random_state=0).fit(X, y)
    return sklearn_to_onnx(model, 4)


def _quantized(hub: Hub, fp32: bytes) -> Version:
    """The real conversion path: an uploaded fp32 model and its dynamically quantized int8
    twin, each with its accuracy in the conversion report."""
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    parent = hub.registry.register_version(
        "auto",
        "iris",
        artifacts=[NewArtifact("onnx", "fp32", fp32)],
        source="uploaded",
        labels=["setosa", "versicolor", "virginica"],
    )
    return quantize_version(hub.registry, parent, EvalData(X[:50], X, y), method="dynamic")


def _timings(version: Version, p50: dict[tuple[str, int], float]) -> list[VariantTiming]:
    arts = {a.precision: a for a in version.artifacts}
    return [
        VariantTiming(
            sha256=arts[prec].sha256,
            format="onnx",
            precision=prec,  # type: ignore[arg-type]
            threads=threads,
            load_ms=3.0,
            p50_ms=ms,
            p99_ms=ms * 2,
            rss_mb=1.0,
            runs=100,
        )
        for (prec, threads), ms in p50.items()
    ]


def _report(dev_id: str, desired: DesiredState, timings: list[VariantTiming]) -> VariantReport:
    assert desired.deployment_id is not None and desired.model is not None
    order = [c.sha256 for c in desired.auto.candidates] if desired.auto else []
    chosen = fastest_variant(timings, order)
    return VariantReport(
        device_id=dev_id,
        deployment_id=desired.deployment_id,
        version_id=desired.model.version_id,
        hardware="x86_64",
        cpu_count=2,
        timings=timings,
        chosen_sha256=None if chosen is None else chosen.sha256,
        chosen_threads=None if chosen is None else chosen.threads,
    )


def test_candidates_are_the_runnable_artifacts_within_the_accuracy_budget(
    hub: Hub, iris_fp32: bytes
) -> None:
    version = _quantized(hub, iris_fp32)
    found = candidates_for(version.artifacts, ["onnxruntime"], 1.0)
    assert found is not None
    assert [(a.format, a.precision) for a in found.ordered] == [("onnx", "fp32"), ("onnx", "int8")]
    assert found.default.precision == "fp32" and found.excluded == {}
    assert candidates_for(version.artifacts, ["litert"], 1.0) is None  # nothing it can run

    arts = [  # the same artifacts as if their conversion report had said otherwise
        a.model_copy(update={"metrics": {"accuracy": acc}})
        for a, acc in zip(version.artifacts, (0.96, 0.94), strict=True)
    ]
    tight = candidates_for(arts, ["onnxruntime"], 1.0)
    assert tight is not None and [a.precision for a in tight.ordered] == ["fp32"]
    assert "more than 1 points below the best" in tight.excluded["onnx/int8"]
    loose = candidates_for(arts, ["onnxruntime"], 2.5)
    assert loose is not None and len(loose.ordered) == 2
    unknown = [arts[0], arts[1].model_copy(update={"metrics": {}})]
    some = candidates_for(unknown, ["onnxruntime"], 1.0)
    assert some is not None and some.excluded == {
        "onnx/int8": "no accuracy in the conversion report"
    }


def test_an_auto_deployment_sends_signed_candidates_and_refuses_what_makes_no_sense(
    hub: Hub, iris_fp32: bytes
) -> None:
    version = _quantized(hub, iris_fp32)
    hub.fleet.devices.register(DeviceCreate(id="pi-a", hardware="rpi5", runtimes=["onnxruntime"]))
    with pytest.raises(InvalidInput, match="accuracy_budget needs artifact 'auto'"):
        hub.fleet.deployments.create(
            DeploymentCreate(version=version.ref, device="pi-a", accuracy_budget=2)
        )
    with pytest.raises(InvalidInput, match="shadow.artifact: artifact 'auto'"):
        hub.fleet.deployments.create(
            DeploymentCreate(
                version=version.ref,
                device="pi-a",
                shadow=ShadowCreate(
                    version=f"{version.project}/{version.model}:1", artifact="auto"
                ),
            )
        )
    dep = hub.fleet.deployments.create(
        DeploymentCreate(version=version.ref, device="pi-a", artifact="auto")
    )
    assert dep.accuracy_budget == 1.0
    (row,) = dep.devices
    assert row.candidates == ["onnx/fp32", "onnx/int8"] and row.choice is None
    assert row.artifact == "onnx/fp32"  # the default pick, what runs if nothing is measured

    desired = DesiredStates(hub.db, hub.registry, hub.fleet.signer).build(dep.id, "pi-a")
    assert desired.auto is not None and desired.model is not None
    assert [c.precision for c in desired.auto.candidates] == ["fp32", "int8"]
    assert desired.auto.accuracy == [a.metrics["accuracy"] for a in version.artifacts]
    for ref in desired.auto.candidates:  # each one signed for this version, as a model is
        data = hub.registry.artifact_blob(ref.sha256)
        verify_model(ref, data, hub.fleet.signer.public_key_b64)
    assert DesiredState.loads(desired.dumps()) == desired


def test_reports_settle_the_choice_refuse_strangers_and_are_reused_by_hardware_type(
    fleet_hub: Hub, service: FleetService, iris_fp32: bytes, make_device: MakeDevice
) -> None:
    version = _quantized(fleet_hub, iris_fp32)
    first, second, other = unique("pi"), unique("pi"), unique("jetson")
    for dev_id, hardware in ((first, "rpi5"), (second, "rpi5"), (other, "orin")):
        fleet_hub.fleet.devices.register(
            DeviceCreate(id=dev_id, hardware=hardware, runtimes=["onnxruntime"])
        )
    dep = fleet_hub.fleet.deployments.create(
        DeploymentCreate(version=version.ref, device=first, artifact="auto")
    )
    dev = make_device(first)
    desired = dev.desired()
    assert desired.auto is not None
    fp32, int8 = (c.sha256 for c in desired.auto.candidates)
    # every candidate may be fetched while measuring
    assert set(service.rollout.fetchable_sha256s(first)) == {fp32, int8}

    # hostile or buggy reports are refused, counted, and change nothing
    good = _timings(version, {("fp32", 1): 0.30, ("fp32", 2): 0.25, ("int8", 1): 0.12})
    stranger = good[0].model_copy(update={"sha256": hashlib.sha256(b"x").hexdigest()})
    dev.send("variants", _report(first, desired, [*good, stranger]).model_copy())
    wrong_version = _report(first, desired, good).model_copy(update={"version_id": 999_999})
    dev.send("variants", wrong_version)
    dev.send("variants", b'{"v": 1, "device_id": "' + first.encode() + b'", "timings": []}')
    wait_until(lambda: service.stats().get("rejected", 0) >= 2, what="the two refusals")
    wait_until(lambda: service.stats().get("malformed", 0) >= 1, what="the malformed one")
    assert fleet_hub.fleet.deployments.get(dep.id).devices[0].choice is None

    # a good report: the hub settles the fastest (int8, 1 thread) and publishes it without auto
    dev.send("variants", _report(first, desired, good))
    wait_until(lambda: fleet_hub.fleet.deployments.get(dep.id).devices[0].choice == "measured")
    row = fleet_hub.fleet.deployments.get(dep.id).devices[0]
    assert (row.artifact, row.threads) == ("onnx/int8", 1)
    assert [v.p50_ms for v in row.variants] == [0.12, 0.25, 0.30]  # fastest first
    assert [v.chosen for v in row.variants] == [True, False, False]
    settled = wait_until(
        lambda: next(
            (s for s in map(DesiredState.loads, dev.messages("desired")) if s.auto is None), None
        ),
        what="the desired state published again without auto",
    )
    assert settled.model is not None and settled.model.sha256 == int8 and settled.threads == 1
    assert service.rollout.fetchable_sha256s(first) == [int8]

    # the next device of that hardware type gets the choice without measuring; another kind not
    dep2 = fleet_hub.fleet.deployments.create(
        DeploymentCreate(version=version.ref, devices=[second, other], artifact="auto")
    )
    dev2, dev3 = make_device(second), make_device(other)
    reused, fresh = dev2.desired(), dev3.desired()
    assert reused.auto is None and reused.model is not None and reused.model.sha256 == int8
    assert fresh.auto is not None
    rows = {d.device_id: d for d in fleet_hub.fleet.deployments.get(dep2.id).devices}
    assert rows[second].choice == "reused" and rows[second].variants[0].source == "reused"
    assert rows[second].variants[0].hardware == "rpi5" and rows[other].choice is None

    # the table a user reads
    result = CliRunner().invoke(
        app,
        ["--data-dir", str(fleet_hub.settings.data_dir), "deployments", "show", str(dep.id)],
        terminal_width=160,
    )
    assert result.exit_code == 0, result.output
    assert "measured rpi5" in result.output and "chose onnx/int8 with 1 threads" in result.output
    assert "▶" in result.output and "0.120" in result.output
