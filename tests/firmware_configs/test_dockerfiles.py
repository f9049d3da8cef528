"""The Dockerfiles for a Raspberry Pi and a Jetson, read without Docker (no daemon and no arm64
emulation here): their base images, a non-root user, the data dir a volume, the agent extra
installed, a health check on the agent's /v1/health, no secret baked in, every RUN valid shell,
every COPY source present and let through by the .dockerignore."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

import firmware_configs
from edge_agent.config import ConfigError, load_config, needs_enrollment
from tests.firmware_configs.dockerfile import Dockerfile, Stage, parse

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = "/var/lib/edgepilot"
SECRET_WORDS = re.compile(r"TOKEN|PASSWORD|SECRET|PSK|KEY", re.I)
JETSON_INDEX = "https://pypi.jetson-ai-lab.io/jp6/cu126"


def dockerfile(name: str, **build_args: str) -> Dockerfile:
    return parse(firmware_configs.read(f"docker/{name}"), build_args)


def assert_runs_the_agent_safely(stage: Stage, python: str = "python") -> None:
    """What every image of the agent must do, whatever its base."""
    users = stage.all("USER")
    assert users and users[-1].args not in ("root", "0")
    last_run = max(i.line for i in stage.all("RUN"))
    assert users[-1].line > last_run  # nothing runs as root after the switch
    volumes = " ".join(i.args for i in stage.all("VOLUME"))
    assert DATA_DIR in volumes or not volumes  # balena: the compose file's named volume
    env: dict[str, str] = {}
    for ins in stage.all("ENV"):
        env.update(ins.pairs())
    assert env["EDGEPILOT_AGENT_DATA_DIR"] == DATA_DIR
    for ins in stage.all("ENV") + stage.all("ARG"):
        for key, value in ins.pairs().items():
            assert not SECRET_WORDS.search(key), f"line {ins.line}: {key} looks like a secret"
            assert not value.startswith("ept_")
    (health,) = stage.all("HEALTHCHECK")
    assert "/v1/health" in health.args and "127.0.0.1" in health.args
    code = re.search(rf'CMD {python} -c "(.*)"$', health.args)
    assert code is not None
    compile(code.group(1), "HEALTHCHECK", "exec")
    for run in stage.all("RUN"):
        script = re.sub(r"^--mount=\S+\s+", "", run.args)
        res = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
        assert res.returncode == 0, f"line {run.line}: {res.stderr}"


def installs_agent_extra(stage: Stage) -> bool:
    return any(
        "pip install --no-cache-dir" in i.args and "[agent]" in i.args for i in stage.all("RUN")
    )


def copy_sources(df: Dockerfile) -> list[str]:
    sources = []
    for stage in df.stages:
        for ins in stage.all("COPY"):
            if "--from=" in ins.args:
                continue
            sources += [w for w in ins.args.split()[:-1] if not w.startswith("--")]
    return sources


@pytest.mark.parametrize("name", ["Dockerfile.pi", "Dockerfile.jetson"])
def test_image_runs_the_agent_as_a_non_root_user(name: str) -> None:
    df = dockerfile(name)
    assert_runs_the_agent_safely(df.final)
    assert df.final.all("VOLUME")[0].args == DATA_DIR
    assert df.final.all("ENTRYPOINT")[0].exec_form() == ["edgepilot-agent"]
    assert df.final.all("CMD")[0].exec_form() == ["run", "--config", "/etc/edgepilot/agent.toml"]
    assert any(installs_agent_extra(stage) for stage in df.stages)


@pytest.mark.parametrize("name", ["Dockerfile.pi", "Dockerfile.jetson"])
def test_copied_files_exist_and_pass_the_dockerignore(name: str) -> None:
    """The context is the repository root; the per-Dockerfile ignore file lets through only the
    folders the wheel is built from."""
    ignore = firmware_configs.read(f"docker/{name}.dockerignore").splitlines()
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    assert "*" in ignore and ".venv" not in allowed and "tests" not in allowed
    sources = copy_sources(dockerfile(name))
    assert "firmware_configs/agent/agent-container.toml" in sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert source.split("/")[0] in allowed, f"{source} is left out by the .dockerignore"


def test_pi_image_is_python_3_11_slim() -> None:
    df = dockerfile("Dockerfile.pi")
    assert df.final.base == "python:3.11-slim-bookworm"
    assert df.stages[0].name == "wheel" and df.stages[0].base == df.final.base


def test_jetson_image_matches_the_jetpack_major() -> None:
    df = dockerfile("Dockerfile.jetson")
    assert "L4T_VERSION" in df.global_args
    assert re.fullmatch(r"nvcr\.io/nvidia/l4t-jetpack:r36\.\d+\.\d+", df.final.base)
    assert dockerfile("Dockerfile.jetson", L4T_VERSION="r36.3.0").final.base.endswith(":r36.3.0")
    text = firmware_configs.read("docker/Dockerfile.jetson")
    # the documented install line, and the build arg that selects it (empty: the CPU build)
    assert f"pip install --extra-index-url {JETSON_INDEX} onnxruntime-gpu" in text
    (arg,) = [i for i in df.final.all("ARG") if "ORT_GPU_INDEX" in i.args]
    assert arg.pairs()["ORT_GPU_INDEX"] == JETSON_INDEX
    (install,) = [i for i in df.final.all("RUN") if "onnxruntime-gpu" in i.args]
    assert 'if [ -n "$ORT_GPU_INDEX" ]' in install.args
    assert "pip uninstall -y onnxruntime" in install.args  # the CPU build's module goes first
    assert "keeping the CPU onnxruntime" in install.args


def test_container_config_enrolls_from_the_environment(tmp_path: Path) -> None:
    config = firmware_configs.root() / "agent" / "agent-container.toml"
    assert firmware_configs.placeholders(config.read_text()) == set()
    env = {
        "EDGEPILOT_AGENT_DATA_DIR": str(tmp_path),
        "EDGEPILOT_AGENT_ENROLL_HUB": "http://hub.example:8000",
        "EDGEPILOT_AGENT_ENROLL_TOKEN": "ept_container_test_token",
    }
    loaded = load_config(config, env=env)
    assert needs_enrollment(loaded) and loaded.data_dir == tmp_path
    assert loaded.enroll is not None and loaded.enroll.hub == "http://hub.example:8000"
    assert loaded.http.host == "127.0.0.1" and loaded.http.port == 8081  # the HEALTHCHECK's
    with pytest.raises(ConfigError, match="enroll"):
        load_config(config, env={"EDGEPILOT_AGENT_DATA_DIR": str(tmp_path)})
