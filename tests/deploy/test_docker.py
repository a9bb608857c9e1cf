"""The Dockerfile: hadolint at its strictest, the structure the deployment relies on, the build
context, and the HEALTHCHECK script run for real. No image is built: there is no Docker engine."""

from __future__ import annotations

import fnmatch
import http.server
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.support import free_port

from .deploytools import DOCKER, REPO, clean_env, run, tool

DOCKERFILE = DOCKER / "Dockerfile"
HEALTHCHECK = DOCKER / "healthcheck.py"


def hadolint(path: Path, tmp_path: Path) -> tuple[int, str]:
    # An explicit, empty configuration: no .hadolint.yaml anywhere can relax the rules.
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: style\n", encoding="utf-8")
    result = run([tool("hadolint"), "--config", str(config), "--no-color", str(path)])
    return result.returncode, result.stdout + result.stderr


def stages(text: str) -> dict[str, list[str]]:
    """Instructions per build stage (continuation lines joined), keyed by stage name."""
    joined = re.sub(r"\\\n", " ", text)
    result: dict[str, list[str]] = {}
    current = None
    for line in joined.splitlines():
        line = line.strip()
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = match.group(1)
            result[current] = []
        elif current and line and not line.startswith("#"):
            result[current].append(line)
    return result


def test_hadolint_passes_at_the_strictest_threshold(tmp_path: Path) -> None:
    rc, output = hadolint(DOCKERFILE, tmp_path)
    assert rc == 0, output


def test_every_ignored_rule_carries_a_reason() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore" in line:
            previous = lines[number - 1].strip() if number else ""
            assert previous.startswith("#") and "hadolint" not in previous and len(previous) > 10, (
                f"line {number + 1}: `{line.strip()}` needs a comment above it saying why"
            )


def test_hadolint_rejects_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:latest\n"
        "RUN apt-get update && apt-get install -y curl\n"
        "RUN cd /app && pip install flask\n"
        "CMD python app.py\n",
        encoding="utf-8",
    )
    rc, output = hadolint(bad, tmp_path)
    assert rc != 0
    # latest tag, unpinned apt packages, cd instead of WORKDIR, unpinned pip, shell-form CMD.
    for rule in ("DL3007", "DL3008", "DL3003", "DL3013", "DL3025"):
        assert rule in output, f"{rule} missing from:\n{output}"


def test_multi_stage_non_root_with_healthcheck_and_server() -> None:
    text = DOCKERFILE.read_text()
    found = stages(text)
    assert list(found) == ["builder", "base", "llm", "api"], "api must be the last (default) target"
    base = " ".join(found["base"])
    assert "USER 10001:10001" in base and "useradd" in base
    assert "--no-cache-dir" not in base, "the runtime stages install nothing"
    assert "COPY --from=builder /opt/venv /opt/venv" in base
    api = found["api"]
    assert "EXPOSE 8000" in api
    assert any("HEALTHCHECK" in line and "http://127.0.0.1:8000/health" in line for line in api)
    assert api[-1] == 'CMD ["ragtune", "serve", "--host", "0.0.0.0", "--port", "8000"]'
    llm = found["llm"]
    assert "EXPOSE 8001" in llm
    assert llm[-1] == 'CMD ["ragtune", "serve-llm", "--host", "0.0.0.0", "--port", "8001"]'
    # No ENTRYPOINT: `docker compose run --rm ragtune ragtune ingest /data` replaces the command.
    assert "ENTRYPOINT" not in text


def test_dependencies_are_a_layer_of_their_own_and_torch_is_pinned() -> None:
    builder = stages(DOCKERFILE.read_text())["builder"]
    order = [i for i, line in enumerate(builder) if line.startswith(("COPY", "RUN pip", "RUN python -c", "RUN case"))]
    steps = [builder[i] for i in order]
    torch_step = next(i for i, s in enumerate(steps) if "torch==" in s)
    pyproject_step = next(i for i, s in enumerate(steps) if s.startswith("COPY pyproject.toml"))
    src_step = next(i for i, s in enumerate(steps) if s.startswith("COPY src"))
    assert torch_step < pyproject_step < src_step, steps
    assert "requirements.txt" in steps[pyproject_step + 1], "dependencies install right after pyproject.toml"
    pin = re.search(r'^\s*"torch==([^"]+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    default = re.search(r"ARG TORCH_VERSION=(\S+)", DOCKERFILE.read_text()).group(1)
    assert pin == default, f"pyproject pins torch=={pin}, the Dockerfile installs {default}"
    assert "https://download.pytorch.org/whl/cpu" in DOCKERFILE.read_text()


def _python_commands() -> list[str]:
    """The `python -c "..."` programs of the builder stage, as the shell would pass them."""
    builder = " ".join(stages(DOCKERFILE.read_text())["builder"])
    return re.findall(r'python -c "([^"]+)"', builder)


def test_the_builders_python_steps_work(tmp_path: Path) -> None:
    """Runs the Dockerfile's own Python one-liners here: the dependency list it extracts, and
    the torch guard, which must pass on this CPU build and refuse it as a CUDA build."""
    requirements_cmd, guard_cmd = _python_commands()
    (tmp_path / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    # Inside double quotes the shell passes \n through unchanged, as run() does here.
    result = run([sys.executable, "-c", requirements_cmd], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    requirements = result.stdout.split()
    assert "torch==2.13.0" in requirements and len(requirements) > 10
    ok = run([sys.executable, "-c", guard_cmd], env=clean_env(TORCH_VERSION="2.13.0", TORCH_VARIANT="cpu"))
    assert ok.returncode == 0, ok.stderr
    refused = run([sys.executable, "-c", guard_cmd], env=clean_env(TORCH_VERSION="2.13.0", TORCH_VARIANT="cuda"))
    assert refused.returncode != 0 and "is not the pinned 2.13.0 cuda build" in refused.stderr


def _ignored(patterns: list[str], path: str) -> bool:
    """.dockerignore semantics for the patterns used here: the last matching pattern wins, and a
    pattern matching a parent directory matches everything under it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if any(
            fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p, pattern.replace("**/", "*/")) for p in prefixes
        ):
            ignored = not negate
    return ignored


def test_build_context_has_the_inputs_and_nothing_secret() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = re.findall(r"^COPY (?!--from)(?:--\S+ )*(\S+) ", DOCKERFILE.read_text(), re.MULTILINE)
    assert sources, "no COPY found"
    for source in sources:
        assert (REPO / source).exists(), source
        assert not _ignored(patterns, source), f"{source} is copied but excluded by .dockerignore"
    assert not _ignored(patterns, "src/ragtune/config.py")
    for secret in (
        ".venv/bin/python",
        ".git/config",
        "deploy/docker/.env",
        "tools/helm",
        "data/milvus.db",
        "src/ragtune/__pycache__/cli.cpython-311.pyc",
        "src/ragtune.egg-info/PKG-INFO",
    ):
        assert _ignored(patterns, secret), f"{secret} would be sent to the Docker daemon"


# --- the HEALTHCHECK script, run as Docker would run it ----------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_healthcheck_script(server: int) -> None:
    def check(target: str) -> tuple[int, str]:
        result = run([sys.executable, str(HEALTHCHECK), target], timeout=30)
        return result.returncode, result.stderr

    assert check(f"http://127.0.0.1:{server}/health") == (0, "")
    rc, err = check(f"http://127.0.0.1:{server}/ready")
    assert rc == 1 and "HTTP 503" in err
    closed = free_port()
    assert check(f"http://127.0.0.1:{closed}/health")[0] == 1
    assert check(f"tcp://127.0.0.1:{server}") == (0, "")
    rc, err = check(f"tcp://127.0.0.1:{closed}")
    assert rc == 1 and "unhealthy" in err
    assert check("ftp://127.0.0.1/")[0] == 1
