"""The GitHub Actions workflow cannot run here: it is validated against the workflow JSON schema
that check-jsonschema ships (offline), and checked to run the same entry point as local CI."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from .deploytools import DOCKER, REPO, run, tool

WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"


def validate(path: Path):
    return run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(path)])


def test_workflow_matches_the_github_schema() -> None:
    result = validate(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_workflow_fails_the_schema(tmp_path: Path) -> None:
    broken = yaml.safe_load(WORKFLOW.read_text())
    del broken["jobs"]["test"]["runs-on"]
    path = tmp_path / "ci.yml"
    path.write_text(yaml.safe_dump(broken), encoding="utf-8")
    result = validate(path)
    assert result.returncode != 0
    assert "runs-on" in result.stdout + result.stderr


def test_ci_runs_make_test_and_pushes_only_on_tags() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads `on` as true
    assert triggers["push"]["tags"] == ["v*"] and "pull_request" in triggers
    test_steps = [step.get("run", "") for step in workflow["jobs"]["test"]["steps"]]
    assert "bash .ci/run" in test_steps
    assert "make test" in (REPO / ".ci" / "run").read_text()
    image = workflow["jobs"]["image"]
    assert image["needs"] == "test"
    assert image["env"]["PUSH"] == "${{ startsWith(github.ref, 'refs/tags/v') }}"
    targets = set(re.findall(r"^FROM \S+ AS (\S+)", (DOCKER / "Dockerfile").read_text(), re.MULTILINE))
    for step in image["steps"]:
        uses = step.get("uses", "")
        if uses.startswith("docker/build-push-action"):
            assert (REPO / step["with"]["file"]).is_file()
            assert step["with"]["target"] in targets
            push = step["with"]["push"]
            assert push == "${{ env.PUSH == 'true' }}" or (push is True and step.get("if") == "env.PUSH == 'true'"), (
                step
            )
        if uses.startswith("docker/login-action"):
            assert step["if"] == "env.PUSH == 'true'"
