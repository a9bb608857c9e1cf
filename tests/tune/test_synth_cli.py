"""`ragtune synth` and `ragtune eval … --index` as a user runs them: the set a corpus gives, and bad input
answered with exit code 2 and a message, creating nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import THREADS
from ragtune.config import Settings
from ragtune.system import build
from tests.conftest import SQUAD_MINI
from tests.inprocess import Result, run_ragtune
from tests.tune.conftest import CHUNKING


@pytest.fixture(scope="module")
def empty_index(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Path:
    """A data directory whose store and catalog exist and hold nothing."""
    data = tmp_path_factory.mktemp("empty") / "data"
    build(Settings(data_dir=data), embedder=embedder).close()
    return data


@pytest.fixture
def ragtune(monkeypatch, capsys, tmp_path, embedder) -> Callable[..., Result]:
    """`ragtune ARGS` on the data directory given, with the tests' chunking."""
    monkeypatch.chdir(tmp_path)  # no .env file from the checkout
    monkeypatch.setenv("RAGTUNE_TORCH_THREADS", str(THREADS))
    for name, value in CHUNKING.items():
        monkeypatch.setenv(f"RAGTUNE_{name.upper()}", str(value))
    # Every command would load the embedding model again (seconds each); the session's is the same model.
    monkeypatch.setattr("ragtune.system.build_embedder", lambda *args, **kwargs: embedder)

    def run(*args: str | Path, data: Path, env: dict[str, str] | None = None) -> Result:
        monkeypatch.setenv("RAGTUNE_DATA_DIR", str(data))
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        return run_ragtune(list(args), monkeypatch, capsys)

    return run


@pytest.mark.slow
def test_synth_from_a_corpus_writes_the_set_an_index_of_it_gives(ragtune, corpus, question_set, tmp_path):
    out = tmp_path / "questions"
    options = ["--unanswerable", "0.5", "--holdout", "0.34"]  # OPTIONS, as the set from the index used
    result = ragtune("synth", "--corpus", corpus, "--out", out, *options, data=tmp_path / "unused")
    assert result.code == 0, result.stderr
    expected, manifest, _ = question_set  # from the live index of the same files
    held_out = manifest["splits"]["holdout"]["documents"]
    assert "questions written by rules" in result.stdout and f"holdout: {held_out} documents" in result.stdout
    for split in ("train", "holdout"):
        files = sorted(p.relative_to(expected) for p in (expected / split).rglob("*") if p.is_file())
        assert files and all((out / f).read_bytes() == (expected / f).read_bytes() for f in files)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == {"corpus": str(corpus.resolve())} and manifest["writer"] == "rules"
    assert manifest["seed"] == 0 and manifest["round_trip_top_k"] == 5
    assert not (tmp_path / "unused").exists()  # a scratch store, never the configured one


@pytest.mark.parametrize(
    ("args", "data", "env", "message"),
    [
        (["synth", "--corpus", "{missing}", "--out", "{out}"], "index", {}, "no such folder"),
        (["synth", "--out", "{out}"], "missing", {}, "there is no index at"),
        (["synth", "--out", "{out}"], "empty", {}, "holds no chunks"),
        (["synth", "--out", "{out}", "--holdout", "1.5"], "index", {}, "--holdout must be at least 0 and below 1"),
        (["synth", "--out", "{set}"], "index", {}, "already exists and is not an empty folder"),
        (["synth", "--corpus", "{corpus}", "--tag", "x", "--out", "{out}"], "index", {}, "--tag selects documents"),
        (["synth", "--out", "{out}", "--tag", "nope"], "index", {}, "no indexed documents with tag 'nope'"),
        (["eval", "retrieval", "{set}/holdout", "--index"], "missing", {}, "there is no index at"),
        (["eval", "answers", "{set}/holdout", "--index"], "empty", {}, "holds no chunks"),
        (["eval", "retrieval", "{missing}", "--index"], "index", {}, "is not a directory"),
        (["eval", "retrieval", "{squad}", "--index", "--limit", "5"], "index", {}, "passages {squad} judges"),
        (
            ["eval", "answers", "{set}/holdout"],
            "index",
            {"RAGTUNE_FAITHFULNESS_MODEL": "/no/such/model"},
            "RAGTUNE_FAITHFULNESS_MODEL '/no/such/model' is not a directory",
        ),
    ],
)
def test_bad_input_exits_2_with_a_message_and_creates_nothing(
    ragtune, args, data, env, message, tmp_path, corpus, question_set, index_settings, empty_index
):
    places = {
        "missing": tmp_path / "missing",
        "out": tmp_path / "out",
        "set": question_set[0],
        "corpus": corpus,
        "squad": SQUAD_MINI,  # a set made elsewhere: the index holds none of its passages
    }
    data_dirs = {"index": index_settings.data_dir, "empty": empty_index, "missing": tmp_path / "missing"}
    result = ragtune(*(a.format(**places) for a in args), data=data_dirs[data], env=env)
    assert result.code == 2, (result.stdout, result.stderr)
    assert message.format(**places) in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "missing").exists() and not (tmp_path / "out").exists()
