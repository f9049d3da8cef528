"""The hub's model contract: every model that loads is accepted (REST and CLI), with a task, a
head checked against its signature, and a preprocessing spec (given, or inferred from an image
input); a head that does not fit is refused with 422 naming the field; PATCH changes a head.

Real third-party files (onnxruntime's bundled ONNX models, MediaPipe's .tflite models), the real
app over HTTP and the real `edgepilot` process.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cloud_hub.api.app import create_app
from cloud_hub.hub import Hub
from tests.cloud_hub.conftest import Device, unique
from tests.conftest import admin_headers, run_cli
from tests.third_party import MEDIAPIPE_MODELS, all_models, mediapipe_model, onnxruntime_model
from tests.waiting import wait_until

#: What each model's signature gives without a head: classification for a lone score output
#: (or a scikit-learn classifier's label and scores), raw for everything else.
DEFAULT_TASK = {
    "logreg_iris.onnx": "classification",
    "mul_1.onnx": "classification",
    "sigmoid.onnx": "raw",
}
REFUSED = "face_landmark_with_attention.tflite"


@pytest.fixture
def client(hub: Hub) -> Iterator[TestClient]:
    with TestClient(create_app(hub, scheduler=False), headers=admin_headers(hub)) as c:
        yield c


def upload(
    client: TestClient, path: Path, ref: str = "third/m", name: str | None = None, **form: Any
) -> Any:
    project, model = ref.split("/")
    data = {k: v if isinstance(v, str) else json.dumps(v) for k, v in form.items()}
    return client.post(
        f"/api/v1/projects/{project}/models/{model}/versions",
        files={"file": (name or path.name, path.read_bytes(), "application/octet-stream")},
        data=data,
    )


def _model_name(file_name: str) -> str:
    return file_name.split(".")[0].replace("_", "-")


def test_every_third_party_model_is_accepted_over_rest(client: TestClient) -> None:
    models = all_models()
    assert len(models) == 17
    for name, path in models.items():
        resp = upload(client, path, f"third/{_model_name(name)}")
        if name == REFUSED:
            assert resp.status_code == 422, resp.text
            detail = resp.json()["detail"]
            assert detail.startswith(f"{name} does not load: LiteRT cannot load the model")
            assert "custom op Landmarks2TransformMatrix" in detail
            continue
        assert resp.status_code == 201, f"{name}: {resp.text}"
        version = resp.json()
        assert version["task"] == DEFAULT_TASK.get(name, "raw"), name
        assert version["head"]["task"] == version["task"]
        art = version["artifacts"][0]
        assert art["format"] == ("tflite" if name.endswith(".tflite") else "onnx")
        runtime_outputs = [o["name"] for o in art["signature"]["outputs"]]
        assert runtime_outputs, name
        if name.endswith(".tflite"):  # every MediaPipe model takes an [1, H, W, 3] image
            shape = art["signature"]["inputs"][0]["shape"]
            pre = version["preprocessing"]
            assert pre["input_kind"] == "image" and pre["layout"] == "NHWC", name
            assert pre["size"] == shape[1:3] and pre["color"] == "rgb", name
        else:
            assert version["preprocessing"] is None, name
        shown = client.get(f"/api/v1/versions/{version['id']}").json()
        assert (shown["task"], shown["head"]) == (version["task"], version["head"])
    # the refused file left nothing behind
    listed = {m["name"] for m in client.get("/api/v1/projects/third/models").json()}
    assert _model_name(REFUSED) not in listed and len(listed) == 16


def test_iris_classifier_gets_its_labels_in_the_head(client: TestClient) -> None:
    resp = upload(client, onnxruntime_model("logreg_iris.onnx"), labels=["a", "b", "c"])
    assert resp.status_code == 201, resp.text
    head = resp.json()["head"]
    assert head["task"] == "classification"
    assert head["output"] == "probabilities"  # the ZipMap's scores, not the int64 label
    assert head["labels"] == ["a", "b", "c"]


def test_content_decides_not_the_file_name(client: TestClient) -> None:
    """A .tflite file named .onnx is stored and served as the TFLite model it is."""
    path = mediapipe_model("hand_recrop.tflite")
    resp = upload(client, path, "third/renamed", name="hand_recrop.onnx")
    assert resp.status_code == 201, resp.text
    art = resp.json()["artifacts"][0]
    assert art["format"] == "tflite"
    assert client.get(art["download_url"]).content == path.read_bytes()


def test_head_that_does_not_fit_is_refused_naming_the_field(client: TestClient, hub: Hub) -> None:
    path = mediapipe_model("hand_landmark_lite.tflite")
    cases = [
        (
            {"task": "regression", "output": "nope"},
            "head.output: the model has no output 'nope' (it has: Identity [1, 63], "
            "Identity_1 [1, 1], Identity_2 [1, 1], Identity_3 [1, 63])",
        ),
        ({"task": "regression"}, "head.output: the model has 4 outputs"),
        (
            {"task": "classification", "output": "Identity", "labels": ["x"]},
            "head.labels: 1 labels",
        ),
        ({"task": "sorting"}, "head.task: Input tag 'sorting' found using 'task' does not match"),
        (
            {"task": "regression", "output": "Identity", "colour": 1},
            "head.colour: Extra inputs are not permitted",
        ),
    ]
    for head, message in cases:
        resp = upload(client, path, "third/hand", head=head)
        assert resp.status_code == 422, (head, resp.text)
        assert resp.json()["detail"].startswith(message), (head, resp.json()["detail"])
    mismatch = upload(client, path, "third/hand", task="keypoints", head={"task": "regression"})
    assert mismatch.status_code == 422
    assert mismatch.json()["detail"] == (
        "head.task: the head is for 'regression' but task is 'keypoints'"
    )
    bad_pre = upload(
        client, path, "third/hand", preprocessing={"input_kind": "image", "size": [0, 5]}
    )
    assert bad_pre.status_code == 422
    assert bad_pre.json()["detail"].startswith("preprocessing")
    assert "size must be positive" in bad_pre.json()["detail"]
    unknown = upload(client, path, "third/hand", preprocessing={"input_kind": "image", "sise": 3})
    assert unknown.status_code == 422 and "preprocessing.sise" in unknown.json()["detail"]
    assert client.get("/api/v1/projects/third").status_code == 404  # nothing stored
    assert not [p for p in hub.settings.artifacts_dir.rglob("*") if p.is_file()]


def test_patch_changes_the_head_and_is_validated(client: TestClient) -> None:
    created = upload(client, mediapipe_model("hand_landmark_lite.tflite"), "third/hand")
    assert created.status_code == 201, created.text
    version = created.json()
    assert version["task"] == "raw"
    vid = version["id"]
    resp = client.patch(
        f"/api/v1/versions/{vid}",
        json={"head": {"task": "regression", "output": "Identity_1", "names": ["presence"]}},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["task"] == "regression"
    assert resp.json()["head"] == {
        "task": "regression",
        "output": "Identity_1",
        "names": ["presence"],
    }
    assert resp.json()["preprocessing"] == version["preprocessing"]  # kept
    bad = client.patch(
        f"/api/v1/versions/{vid}", json={"head": {"task": "embedding", "output": "logits"}}
    )
    assert bad.status_code == 422
    assert bad.json()["detail"].startswith("head.output: the model has no output 'logits'")
    assert client.get(f"/api/v1/versions/{vid}").json()["head"]["output"] == "Identity_1"
    # a task alone: its default head (here: the output must be named, 4 outputs)
    task_only = client.patch(f"/api/v1/versions/{vid}", json={"task": "embedding"})
    assert task_only.status_code == 422
    assert task_only.json()["detail"].startswith("head.output: the model has 4 outputs")
    raw = client.patch(f"/api/v1/versions/{vid}", json={"task": "raw", "preprocessing": None})
    assert raw.status_code == 200, raw.text
    assert (raw.json()["head"], raw.json()["preprocessing"]) == ({"task": "raw"}, None)
    pre = client.patch(
        f"/api/v1/versions/{vid}",
        json={"preprocessing": {"input_kind": "image", "size": [224, 224], "color": "bgr"}},
    )
    assert pre.status_code == 200 and pre.json()["preprocessing"]["color"] == "bgr"
    bad_pre = client.patch(
        f"/api/v1/versions/{vid}", json={"preprocessing": {"input_kind": "image", "dtype": "f16"}}
    )
    assert bad_pre.status_code == 422 and "preprocessing" in bad_pre.json()["detail"]
    missing = client.patch("/api/v1/versions/999999", json={"task": "raw"})
    assert missing.status_code == 404


def test_labels_go_into_the_head(client: TestClient) -> None:
    vid = upload(client, onnxruntime_model("logreg_iris.onnx"), "third/iris").json()["id"]
    resp = client.patch(f"/api/v1/versions/{vid}", json={"labels": ["x", "y", "z"]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["labels"] == ["x", "y", "z"]
    assert resp.json()["head"]["labels"] == ["x", "y", "z"]


# -- the CLI, as a real process ---------------------------------------------------------------
def _cli_json(args: list[str], env: dict[str, str]) -> Any:
    done = run_cli([*args, "--json"], env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_every_third_party_model_through_the_cli(cli_env: dict[str, str]) -> None:
    for name, path in all_models().items():
        done = run_cli(["models", "upload", str(path), f"cli/{_model_name(name)}"], cli_env)
        if name == REFUSED:
            assert done.returncode == 2, done.stdout
            assert "needs the custom op Landmarks2TransformMatrix" in done.stderr
            continue
        assert done.returncode == 0, f"{name}: {done.stderr}"
        task = DEFAULT_TASK.get(name, "raw")
        out = done.stdout
        assert f"task: {task}" in out and f"head: {task}" in out, out
        if name in MEDIAPIPE_MODELS:
            assert "preprocessing: image " in out and "color=rgb" in out, out
            assert "preprocessing inferred from the input's shape" in out
        else:
            assert "preprocessing: - (tensors only)" in out
    shown = run_cli(["models", "show", "cli/face-detection-short-range:1"], cli_env)
    assert shown.returncode == 0, shown.stderr
    for row in ("regressors", "[1, 896, 16]", "classificators", "[1, 896, 1]", "[1, 128, 128, 3]"):
        assert row in shown.stdout
    listed = _cli_json(["models", "list"], cli_env)
    assert len(listed) == 16


def test_cli_upload_with_preprocessing_flags(cli_env: dict[str, str], tmp_path: Path) -> None:
    path = mediapipe_model("selfie_segmentation.tflite")
    head = tmp_path / "head.json"
    head.write_text(json.dumps({"task": "regression", "output": "activation_10"}))
    args = ["models", "upload", str(path), "cli/selfie", "--head", str(head)]
    args += ["--size", "256x256", "--color", "bgr", "--layout", "NHWC", "--dtype", "float32"]
    args += ["--scale", "0.00784", "--mean", "1,1,1", "--std", "1,1,1", "--resize", "letterbox"]
    version = _cli_json(args, cli_env)
    assert version["task"] == "regression" and version["head"]["output"] == "activation_10"
    pre = version["preprocessing"]
    assert pre["size"] == [256, 256] and pre["color"] == "bgr" and pre["resize"] == "letterbox"
    assert pre["scale"] == pytest.approx(0.00784)
    assert pre["mean"] == [1.0, 1.0, 1.0] and pre["std"] == [1.0, 1.0, 1.0]
    # a file, with a flag on top of it
    spec = tmp_path / "pre.json"
    spec.write_text(json.dumps({"input_kind": "image", "size": [256, 256], "color": "rgb"}))
    other = _cli_json(
        [
            "models",
            "upload",
            str(path),
            "cli/selfie",
            "--preprocessing",
            str(spec),
            "--dtype",
            "uint8",
        ],
        cli_env,
    )
    assert other["preprocessing"]["color"] == "rgb" and other["preprocessing"]["dtype"] == "uint8"
    table = run_cli(["models", "show", f"{other['id']}"], cli_env)
    assert (
        "preprocessing: image 256x256, color=rgb" in table.stdout and "dtype=uint8" in table.stdout
    )


def test_cli_update(cli_env: dict[str, str], tmp_path: Path) -> None:
    path = mediapipe_model("iris_landmark.tflite")
    vid = _cli_json(["models", "upload", str(path), "cli/iris"], cli_env)["id"]
    head = tmp_path / "head.json"
    head.write_text(json.dumps({"task": "regression", "output": "output_iris"}))
    done = run_cli(
        ["models", "update", str(vid), "--head", str(head), "--size", "64x64", "--color", "bgr"],
        cli_env,
    )
    assert done.returncode == 0, done.stderr
    assert "task: regression" in done.stdout and "output=output_iris" in done.stdout
    assert "color=bgr" in done.stdout
    shown = _cli_json(["models", "show", "cli/iris:1"], cli_env)
    assert shown["head"]["output"] == "output_iris" and shown["preprocessing"]["color"] == "bgr"
    head.write_text(json.dumps({"task": "regression", "output": "nope"}))
    bad = run_cli(["models", "update", str(vid), "--head", str(head)], cli_env)
    assert bad.returncode == 2 and "head.output: the model has no output 'nope'" in bad.stderr
    nothing = run_cli(["models", "update", str(vid)], cli_env)
    assert nothing.returncode == 2 and "nothing to change" in nothing.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--size", "big"], "--size 'big': expected HxW"),
        (["--size", "0x5"], "--size '0x5': expected HxW"),
        (["--color", "cmyk"], "'cmyk' is not one of"),
        (["--layout", "HWC"], "'HWC' is not one of"),
        (["--dtype", "float16"], "'float16' is not one of"),
        (["--resize", "zoom"], "'zoom' is not one of"),
        (["--mean", "a,b,c", "--std", "1,1,1"], "--mean 'a,b,c': expected numbers"),
        (["--mean", "0,0,0"], "give both mean and std"),
        (["--std", "0,1,1", "--mean", "0,0,0"], "std must not contain 0"),
        (["--scale", "x"], "Invalid value for '--scale'"),
        (["--task", "sorting"], "'sorting' is not one of"),
        (["--size", "64x64", "--size", "32x32"], "--size was given 2 times"),
        (["--task", "raw", "--task", "raw"], "--task was given 2 times"),
    ],
)
def test_cli_bad_flags_exit_2(cli_env: dict[str, str], flags: list[str], message: str) -> None:
    path = mediapipe_model("iris_landmark.tflite")
    done = run_cli(["models", "upload", str(path), "cli/bad", *flags], cli_env)
    assert done.returncode == 2, done.stdout
    assert message in done.stderr, done.stderr
    listed = run_cli(["models", "list", "--json"], cli_env)
    assert json.loads(listed.stdout) == []  # nothing registered


# -- what follows the version: its device's desired state, its quantized child, old rows --------
def test_the_desired_state_carries_the_head(
    fleet_hub: Hub, service: Any, make_device: Callable[[str], Device]
) -> None:
    from cloud_hub.fleet.schemas import DeploymentCreate, DeviceCreate
    from cloud_hub.registry.uploads import upload_model

    path = mediapipe_model("iris_landmark.tflite")
    head = {"task": "regression", "output": "output_iris", "names": []}
    version = upload_model(
        fleet_hub.registry,
        project="fleet",
        model=unique("iris"),
        data=path.read_bytes(),
        filename=path.name,
        head=head,
    ).version
    dev_id = unique("pi")
    fleet_hub.fleet.devices.register(DeviceCreate(id=dev_id, runtimes=["litert"]))
    dep = fleet_hub.fleet.deployments.create(DeploymentCreate(version=version.ref, device=dev_id))
    wait_until(lambda: fleet_hub.fleet.devices.get(dev_id).desired_deployment_id == dep.id)
    model = make_device(dev_id).desired().model
    assert model is not None and model.format == "tflite"
    assert model.head == head == version.head
    assert model.preprocessing == version.preprocessing
    assert model.preprocessing is not None and model.preprocessing["size"] == [64, 64]


def test_a_quantized_version_inherits_task_head_and_preprocessing(client: TestClient) -> None:
    import warnings

    from sklearn.datasets import load_iris
    from sklearn.neural_network import MLPClassifier

    from converters import sklearn_to_onnx

    X, y = load_iris(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged: irrelevant here
        mlp = MLPClassifier(hidden_layer_sizes=(16,), max_iter=300, random_state=0).fit(X, y)
    onnx_bytes = sklearn_to_onnx(mlp, n_features=4)
    head = {"task": "classification", "output": "probabilities", "top_k": 2}
    pre = {"input_kind": "tabular", "layout": "NF"}
    resp = client.post(
        "/api/v1/projects/q/models/iris/versions",
        files={"file": ("iris.onnx", onnx_bytes, "application/octet-stream")},
        data={
            "head": json.dumps(head),
            "labels": '["s", "ve", "vi"]',
            "preprocessing": json.dumps(pre),
        },
    )
    assert resp.status_code == 201, resp.text
    parent = resp.json()
    assert parent["head"]["top_k"] == 2 and parent["head"]["labels"] == ["s", "ve", "vi"]
    child = client.post(
        f"/api/v1/versions/{parent['id']}/quantize", json={"dataset": "iris", "method": "dynamic"}
    )
    assert child.status_code == 201, child.text
    got = child.json()
    assert got["parent_id"] == parent["id"]
    assert (got["task"], got["head"], got["preprocessing"], got["labels"]) == (
        parent["task"],
        parent["head"],
        parent["preprocessing"],
        parent["labels"],
    )


def test_a_version_from_before_heads_reads_as_its_default_head(
    client: TestClient, hub: Hub
) -> None:
    """Migration 11 leaves a NULL head on versions registered before it: read as the default."""
    vid = upload(client, onnxruntime_model("logreg_iris.onnx"), "old/iris", labels=["a", "b", "c"])
    vid = vid.json()["id"]
    with hub.db.transaction() as db:
        db.execute("UPDATE versions SET head = NULL, task = 'classification' WHERE id = ?", [vid])
    shown = client.get(f"/api/v1/versions/{vid}").json()
    assert shown["task"] == "classification"
    assert shown["head"]["output"] == "probabilities" and shown["head"]["labels"] == ["a", "b", "c"]


# -- task heads of real models (examples/heads/) ------------------------------------------------
EXAMPLE_HEADS = Path(__file__).resolve().parents[3] / "examples" / "heads"


def _kept(given: Any, stored: Any) -> bool:
    if isinstance(given, dict):
        return isinstance(stored, dict) and all(
            k in stored and _kept(v, stored[k]) for k, v in given.items()
        )
    return bool(given == stored)


def test_example_heads_are_accepted_with_their_models(client: TestClient) -> None:
    heads = sorted(EXAMPLE_HEADS.glob("*.json"))
    assert len(heads) >= 7
    for file in heads:
        head = json.loads(file.read_text())
        path = mediapipe_model(f"{file.stem}.tflite")
        resp = upload(client, path, f"heads/{_model_name(file.name)}", head=head)
        assert resp.status_code == 201, f"{file.name}: {resp.text}"
        version = resp.json()
        assert version["task"] == head["task"]
        assert _kept(head, version["head"]), file.name  # what the file says, defaults filled
        assert version["labels"] == head.get("labels", [])


def test_detection_head_that_does_not_fit_is_refused_naming_the_field(client: TestClient) -> None:
    head = json.loads((EXAMPLE_HEADS / "face_detection_short_range.json").read_text())
    face = mediapipe_model("face_detection_short_range.tflite")
    missing = upload(client, face, "det/face", head={**head, "boxes": "x"})
    assert missing.status_code == 422
    assert missing.json()["detail"] == (
        "head.boxes: the model has no output 'x' (it has: regressors [1, 896, 16], "
        "classificators [1, 896, 1])"
    )
    scores = upload(client, face, "det/face", head={**head, "scores": "nope"})
    assert scores.status_code == 422
    assert scores.json()["detail"].startswith("head.scores: the model has no output 'nope'")
    hand = mediapipe_model("hand_landmark_lite.tflite")
    rank = upload(
        client,
        hand,
        "det/hand",
        head={"task": "detection", "boxes": "Identity", "scores": "Identity_1"},
    )
    assert rank.status_code == 422
    assert rank.json()["detail"] == (
        "head.boxes: a boxes output Identity must have rank 3, it has shape [1, 63] (rank 2)"
    )
    task_only = upload(client, face, "det/face", task="detection")
    assert task_only.status_code == 422
    assert task_only.json()["detail"].startswith("head.boxes: a detection head must say")
    assert client.get("/api/v1/projects/det").status_code == 404  # nothing stored
    # PATCH is validated the same way, and changes the head when it fits
    vid = upload(client, face, "det/face").json()["id"]
    bad = client.patch(f"/api/v1/versions/{vid}", json={"head": {**head, "boxes": "x"}})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("head.boxes: the model")
    good = client.patch(f"/api/v1/versions/{vid}", json={"head": head, "labels": ["face"]})
    assert good.status_code == 200, good.text
    assert good.json()["task"] == "detection" and good.json()["head"]["anchors"]["num_layers"] == 4


def test_cli_upload_with_an_example_head(cli_env: dict[str, str]) -> None:
    head = EXAMPLE_HEADS / "palm_detection_full.json"
    path = mediapipe_model("palm_detection_full.tflite")
    args = ["models", "upload", str(path), "cli/palm", "--head", str(head)]
    args += ["--size", "192x192", "--color", "rgb", "--resize", "letterbox", "--scale", "0.00392"]
    done = run_cli(args, cli_env)
    assert done.returncode == 0, done.stderr
    assert "task: detection" in done.stdout and "head: detection (" in done.stdout
    assert "boxes=Identity" in done.stdout and "decoder=anchors" in done.stdout
    assert "preprocessing: image 192x192, color=rgb" in done.stdout
    assert "resize=letterbox" in done.stdout and "inferred" not in done.stdout
    bad = run_cli(
        ["models", "upload", str(path), "cli/palm", "--task", "keypoints", "--head", str(head)],
        cli_env,
    )
    assert bad.returncode == 2
    assert "head.task: the head is for 'detection' but task is 'keypoints'" in bad.stderr
