"""`ragtune tune embedder` on a tiny sentence-transformers model built here from a config: the model it
writes serves as RAGTUNE_EMBEDDING_MODEL, its report holds every metric before and after, training
changes the weights and lowers the loss, hard negatives are chosen as documented, and bad input
exits 2 with a message."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ragtune.config import Settings
from ragtune.eval.datasets import BeirDataset, CorpusDoc, load_beir
from ragtune.system import build
from ragtune.tune.pairs import QuestionSet, mine_examples, usable_negative
from ragtune.tune.report import TuneReport
from tests.builders import tiny_sentence_model
from tests.inprocess import Result
from tests.tune.conftest import CHUNKING, DOCUMENTS

METRICS = {f"{mode}_{metric}" for mode in ("dense", "hybrid", "bm25") for metric in ("ndcg@10", "recall@5")}
# Large enough steps for a random 2-layer model to learn something in a few seconds.
TRAINING = ["--batch-size", "4", "--epochs", "4", "--learning-rate", "1e-3", "--per-chunk", "2", "--holdout", "0.34"]


@contextlib.contextmanager
def environment(values: dict[str, str], cwd: Path) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)  # no .env file from the checkout
        for name, value in values.items():
            patch.setenv(name, value)
        yield


def ragtune(args: list[str | Path], env: dict[str, str], cwd: Path) -> Result:
    """`ragtune ARGS` in this process (as `tests.inprocess.run_ragtune`, for module-scoped fixtures)."""
    from ragtune.cli import main

    out, err = io.StringIO(), io.StringIO()
    with environment(env, cwd), pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["ragtune", *map(str, args)])
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exited:
            main()
    code = exited.value.code
    return Result(code if isinstance(code, int) else 1, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_sentence_model(tmp_path_factory.mktemp("tiny"), DOCUMENTS.values())


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, corpus: Path, base_model: Path) -> dict[str, str]:
    """The environment of an index of the tune package's corpus, embedded by the tiny model."""
    data = tmp_path_factory.mktemp("live") / "data"
    env = {
        "RAGTUNE_DATA_DIR": str(data),
        "RAGTUNE_EMBEDDING_MODEL": str(base_model),
        "RAGTUNE_EMBEDDING_BACKEND": "torch",
        "RAGTUNE_TORCH_THREADS": "1",
        **{f"RAGTUNE_{name.upper()}": str(value) for name, value in CHUNKING.items()},
    }
    with environment(env, data.parent), build(Settings(), generator=False) as system:
        assert len(system.ingestor.ingest_paths([corpus]).indexed) == len(DOCUMENTS)
    return env


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory, live: dict[str, str]) -> tuple[Path, Result]:
    """One `ragtune tune embedder --json` run over the live index: (its --out folder, the result)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    return out, ragtune(["tune", "embedder", "--out", out, *TRAINING, "--json"], live, out.parent)


def test_the_command_reports_every_metric_before_and_after_and_leaves_the_index_alone(tuned, live, base_model):
    out, result = tuned
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)  # stdout is the report alone
    assert report == json.loads((out / "report.json").read_text())
    assert TuneReport.read(out / "report.json").model == str((out / "model").resolve()) == report["model"]
    assert report["kind"] == "embedder" and report["main_metric"] == "hybrid_ndcg@10"
    assert set(report["before"]) == set(report["after"]) == METRICS
    assert all(0.0 <= value <= 1.0 for value in [*report["before"].values(), *report["after"].values()])
    details = report["details"]
    assert details["base_model"] == str(base_model) and details["options"]["learning_rate"] == 1e-3
    assert details["training"]["steps"] > 0 and details["training"]["examples"] > 0
    assert details["hard_negatives"]["mined"] == details["training"]["examples"]  # one each
    questions = details["questions"]
    assert questions["writer"] == "rules" and questions["round_trip_top_k"] == 20
    assert questions["holdout_questions"] > 0
    manifest = json.loads((out / "questions" / "manifest.json").read_text())
    assert (manifest["per_chunk"], manifest["holdout"], manifest["unanswerable"]) == (2, 0.34, 0.0)
    # The live index still holds the base model's vectors: building over it checks that.
    with environment(live, out.parent), build(Settings(), generator=False) as system:
        assert system.embedder.name == str(base_model) and system.store.count() > 0


def _train_pairs(questions: Path) -> list[tuple[str, str]]:
    train = load_beir(questions / "train")
    return [(train.queries[q], train.corpus[next(iter(train.qrels[q]))].text) for q in train.queries]


def _loss(model_dir: Path, pairs: list[tuple[str, str]]) -> float:
    """MultipleNegativesRankingLoss of the pairs in one batch: each question against every chunk."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    features = [model.preprocess([q for q, _ in pairs]), model.preprocess([p for _, p in pairs])]
    with torch.no_grad():
        return float(MultipleNegativesRankingLoss(model)(features, None))


def test_training_changes_the_weights_and_lowers_the_loss(tuned, base_model):
    from safetensors.torch import load_file

    out, result = tuned
    before, after = load_file(base_model / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert before.keys() == after.keys()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert len(changed) > len(before) // 2, changed
    pairs = _train_pairs(out / "questions")
    assert _loss(out / "model", pairs) < _loss(base_model, pairs)
    loss = json.loads(result.stdout)["details"]["training"]["loss"]
    assert loss["last_epoch"] < loss["first_epoch"]


@pytest.mark.slow
def test_the_tuned_model_serves_as_the_embedding_model_with_the_default_backend(tuned, live, corpus, tmp_path):
    from ragtune.embed import LocalEmbedder

    out, _ = tuned
    model, cache = out / "model", tmp_path / "embedders"
    env = live | {
        "RAGTUNE_DATA_DIR": str(tmp_path / "data"),
        "RAGTUNE_EMBEDDING_MODEL": str(model),
        "RAGTUNE_EMBEDDING_BACKEND": "onnx-int8",
        "RAGTUNE_EMBEDDING_CACHE_DIR": str(cache),
    }
    assert ragtune(["ingest", corpus], env, tmp_path).code == 0
    question = "When was the village football club founded?"
    answer = ragtune(["ask", question, "--mode", "dense", "--json"], env, tmp_path)
    assert answer.code == 0, answer.stderr
    assert json.loads(answer.stdout)["retrieved"]
    # The export is the tuned model's own (keyed by its files), and later starts load it alone,
    # without sentence-transformers, with the same vectors as torch.
    base = LocalEmbedder(live["RAGTUNE_EMBEDDING_MODEL"], backend="onnx", cache_dir=cache)
    exported = LocalEmbedder(str(model), backend="onnx", cache_dir=cache)
    alone = LocalEmbedder(str(model), backend="onnx", cache_dir=cache)
    assert base.onnx_file != exported.onnx_file and alone._model is None and alone.backend == "onnx"
    texts = [DOCUMENTS["etna.md"], "When was the village football club founded?"]
    torch_vectors = LocalEmbedder(str(model)).embed(texts)
    assert np.allclose(alone.embed(texts), torch_vectors, atol=1e-4)
    assert not np.allclose(base.embed(texts), torch_vectors, atol=1e-2)


def _question_set(chunks: dict[str, list[str]], train_docs: set[str]) -> QuestionSet:
    """A set over documents of chunks "<doc>-<n>": training questions are added by the caller."""
    corpus = {
        f"{doc}-{n}": CorpusDoc(f"{doc}-{n}", doc, text)
        for doc, texts in chunks.items()
        for n, text in enumerate(texts)
    }
    place = {cid: (cid.rsplit("-", 1)[0], int(cid.rsplit("-", 1)[1])) for cid in corpus}
    train = BeirDataset({c: d for c, d in corpus.items() if place[c][0] in train_docs}, {}, {})
    return QuestionSet(Path("set"), {}, train, BeirDataset(corpus, {}, {}), place)


def test_hard_negatives_are_training_chunks_away_from_the_question_and_without_its_answer():
    questions = _question_set(
        {"a": ["a0", "a1 the port is 19530", "a2", "a3", "a4"], "b": ["b0 listens on 19530", "b1"], "h": ["h0"]},
        train_docs={"a", "b"},
    )
    usable = [c for c in questions.holdout.corpus if usable_negative(c, "a-2", ["19530"], questions)]
    # not its own chunk, nor a neighbour (overlap), nor one holding the answer, nor held-out text
    assert usable == ["a-0", "a-4", "b-1"]
    questions.train.queries.update({"q1": "Which port?", "q2": "Which is b1?"})
    questions.train.qrels.update({"q1": {"a-2": 1}, "q2": {"b-1": 1}})
    questions.train.answers["q1"] = ["19530"]
    rankings = {"q1": ["a-2", "h-0", "a-1", "b-0", "a-4", "a-0"], "q2": ["b-1", "b-0"]}
    examples, short = mine_examples(questions, rankings, count=2)
    assert [(e.question, e.positive, e.negatives) for e in examples] == [("Which port?", "a2", ("a4", "a0"))]
    assert short == 1  # q2's only other chunk is its neighbour


@pytest.fixture(scope="module")
def empty_index(tmp_path_factory: pytest.TempPathFactory, base_model: Path) -> dict[str, str]:
    """The environment of a data directory whose store and catalog exist and hold nothing."""
    data = tmp_path_factory.mktemp("empty") / "data"
    env = {"RAGTUNE_DATA_DIR": str(data), "RAGTUNE_EMBEDDING_MODEL": str(base_model)}
    with environment(env | {"RAGTUNE_EMBEDDING_BACKEND": "torch"}, data.parent):
        build(Settings(), generator=False).close()
    return env


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--batch-size", "1"], {}, "--batch-size must be 2 to 1024"),
        (["--epochs", "0"], {}, "--epochs must be above 0"),
        (["--learning-rate", "0"], {}, "--learning-rate must be above 0"),
        (["--hard-negatives", "11"], {}, "--hard-negatives must be 0 to 10"),
        (["--per-chunk", "0"], {}, "--per-chunk must be 1 to 20"),
        (["--holdout", "1"], {}, "--holdout must be above 0 and below 1"),
        (["--questions", "{set}", "--per-chunk", "2"], {}, "a --questions set has its own"),
        (["--corpus", "{missing}"], {}, "--corpus {missing}: no such folder"),
        (["--corpus", "{corpus}", "--questions", "{set}"], {}, "--corpus and --questions both"),
        (["--questions", "{missing}"], {}, "no such folder"),
        (["--questions", "{corpus}"], {}, "is not a question set made by ragtune synth"),
        (["--questions", "{no_holdout}"], {}, "has no holdout/ split"),
        ([], {"RAGTUNE_DATA_DIR": "{missing}"}, "there is no index at"),
        ([], {"RAGTUNE_DATA_DIR": "{empty}"}, "holds no chunks"),
        ([], {"RAGTUNE_EMBEDDING_BASE_URL": "http://127.0.0.1:9/v1"}, "only a local sentence-transformers model"),
        ([], {"RAGTUNE_EMBEDDING_MODEL": "{missing}"}, "is neither"),
    ],
)
def test_bad_input_exits_2_with_a_message_and_writes_nothing(
    args, env, message, tuned, live, corpus, tmp_path, empty_index
):
    done, _ = tuned
    no_holdout = tmp_path / "no-holdout"
    shutil.copytree(done / "questions", no_holdout)
    shutil.rmtree(no_holdout / "holdout")
    names = {
        "missing": str(tmp_path / "missing"),
        "corpus": str(corpus),
        "set": str(done / "questions"),
        "no_holdout": str(no_holdout),
        "empty": empty_index["RAGTUNE_DATA_DIR"],
    }
    out = tmp_path / "out"
    given = [a.format(**names) for a in args]
    result = ragtune(
        ["tune", "embedder", "--out", out, *given], live | {k: v.format(**names) for k, v in env.items()}, tmp_path
    )
    assert result.code == 2, result.stderr
    assert message.format(**names) in result.stderr
    assert not out.exists()


def test_an_out_folder_that_holds_something_is_refused(tuned, live, tmp_path):
    done, _ = tuned
    result = ragtune(["tune", "embedder", "--out", done], live, tmp_path)
    assert result.code == 2 and "already exists and is not an empty folder" in result.stderr


def test_promotion_is_refused_while_the_settings_name_the_model_themselves(tuned, live, tmp_path):
    out, _ = tuned
    refused = ragtune(["tune", "promote", out / "report.json"], live, tmp_path)
    assert refused.code == 2 and "RAGTUNE_EMBEDDING_MODEL is set explicitly" in refused.stderr
    # --promote is checked before any training, and the run writes nothing.
    early = ragtune(["tune", "embedder", "--out", tmp_path / "run", "--promote"], live, tmp_path)
    assert early.code == 2 and "RAGTUNE_EMBEDDING_MODEL is set explicitly" in early.stderr
    assert not (tmp_path / "run").exists()
    with environment(live, tmp_path), build(Settings(), generator=False) as system:
        assert system.embedder.name == live["RAGTUNE_EMBEDDING_MODEL"]  # still the configured one
