"""The ONNX Runtime backends: the same vectors as torch, an export made once per model, a
fallback to torch that says why, and the guard that keeps embedders from mixing."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import SQUAD_MINI, THREADS, cli_environment
from ragtune.config import Settings
from ragtune.embed import LocalEmbedder, onnx
from ragtune.embed.embedders import resolve_model_path
from ragtune.ingest.reembed import EmbedderMismatchError
from ragtune.store.catalog import EmbedderRecord
from ragtune.system import build
from ragtune.types import LoadedDocument, Section

TEXTS = [json.loads(line)["text"] for line in (SQUAD_MINI / "corpus.jsonl").read_text().splitlines()][:40] + [
    json.loads(line)["text"] for line in (SQUAD_MINI / "queries.jsonl").read_text().splitlines()
][:40]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embedders")


@pytest.mark.parametrize(("backend", "bound"), [("onnx", 0.99), ("onnx-int8", 0.97)])
def test_onnx_backends_embed_like_torch(embedder, cache_dir, backend, bound):
    reference = embedder.embed(TEXTS)
    onnx_embedder = LocalEmbedder(backend=backend, cache_dir=cache_dir, batch_size=1)
    assert onnx_embedder.backend == backend
    assert onnx_embedder.onnx_file is not None and onnx_embedder.onnx_file.parent.parent == cache_dir
    vectors = onnx_embedder.embed(TEXTS)
    assert vectors.shape == reference.shape and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = (vectors * reference).sum(axis=1)
    assert cosines.min() >= bound, (backend, cosines.min())
    if backend == "onnx":  # the same function, computed by another engine
        assert cosines.min() > 0.9999


def test_second_start_reuses_the_export(cache_dir, caplog):
    first = LocalEmbedder(backend="onnx-int8", cache_dir=cache_dir)
    assert first.onnx_file is not None
    written = first.onnx_file.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="ragtune.embed"):
        second = LocalEmbedder(backend="onnx-int8", cache_dir=cache_dir)
    assert second.onnx_file == first.onnx_file and second.onnx_file.stat().st_mtime_ns == written
    assert not [r for r in caplog.records if "exporting" in r.getMessage()]
    np.testing.assert_array_equal(first.embed(TEXTS[:3]), second.embed(TEXTS[:3]))


def test_a_later_start_loads_the_export_and_tokenizer_alone(cache_dir):
    exported = LocalEmbedder(backend="onnx-int8", cache_dir=cache_dir)  # exports, or finds the export
    assert exported.onnx_file is not None
    # The tokens are sentence-transformers' own: long texts cut at the same length, case, spacing.
    from sentence_transformers import SentenceTransformer

    model_dir = resolve_model_path("all-MiniLM-L6-v2")
    sentence_model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    tokenizer = onnx.TextTokenizer.of(model_dir)
    assert tokenizer is not None and tokenizer.max_length == sentence_model.max_seq_length == 256
    texts = [*TEXTS[:4], TEXTS[0] * 6, "  Who?  ", "ÉTÉ à Zürich\tnaïve — 東京", "x"]
    expected = {k: v for k, v in sentence_model.preprocess(texts).items() if k in ("input_ids", "attention_mask")}
    got = tokenizer(texts)
    assert all(np.array_equal(got[k].numpy(), v.numpy()) for k, v in expected.items())
    assert got["input_ids"].shape[1] == 256  # the long text was truncated, as ST truncates
    code = (
        "import sys; from pathlib import Path; from ragtune.embed import LocalEmbedder; "
        f"e = LocalEmbedder(backend='onnx-int8', cache_dir=Path({str(cache_dir)!r})); "
        "print(e.backend, e.dimension, e.max_tokens, 'sentence_transformers' in sys.modules); "
        f"import numpy; numpy.save({str(cache_dir / 'fast.npy')!r}, e.embed({texts!r}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["onnx-int8", "384", "256", "False"], result.stderr
    np.testing.assert_array_equal(np.load(cache_dir / "fast.npy"), exported.embed(texts))


def test_a_changed_model_is_exported_again(tmp_path, cache_dir):
    original = resolve_model_path("all-MiniLM-L6-v2")
    copy = tmp_path / "minilm"
    shutil.copytree(original, copy)
    assert onnx.model_hash(copy) == onnx.model_hash(original)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last weight
    weights.write_bytes(bytes(data))
    assert onnx.model_hash(copy) != onnx.model_hash(original)
    changed = LocalEmbedder(str(copy), backend="onnx", cache_dir=cache_dir)
    assert changed.onnx_file is not None
    assert changed.onnx_file.parent.name == onnx.model_hash(copy)
    assert (cache_dir / onnx.model_hash(original) / "model.onnx").is_file()  # the original's export stays


def test_a_failed_export_falls_back_to_torch_with_one_warning(tmp_path, monkeypatch, caplog, embedder):
    def broken_export(sentence_model: object, model_dir: Path, out_dir: Path, int8: bool) -> Path:
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(onnx, "export", broken_export)
    with caplog.at_level(logging.WARNING, logger="ragtune.embed"):
        fallback = LocalEmbedder(backend="onnx-int8", cache_dir=tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "onnx-int8" in warnings[0] and "exporter exploded" in warnings[0]
    assert "using torch" in warnings[0]
    assert fallback.backend == "torch" and fallback.onnx_file is None
    np.testing.assert_allclose(fallback.embed(TEXTS[:2]), embedder.embed(TEXTS[:2]), atol=1e-5)


def test_batching_by_length_keeps_each_text_its_own_vector(cache_dir):
    """Texts of very different lengths in one call come back in order, padding trimmed per call."""
    mixed = [TEXTS[0], "Who?", TEXTS[1] * 3, "When was it founded?", *TEXTS[2:12]]
    for backend in ("onnx", "onnx-int8"):
        encoder = LocalEmbedder(backend=backend, cache_dir=cache_dir, batch_size=64)
        together = encoder.embed(mixed)
        alone = np.concatenate([encoder.embed([text]) for text in mixed])
        cosines = (together * alone).sum(axis=1)
        if backend == "onnx":
            assert cosines.min() > 0.99999
        else:  # int8 activations share one scale per call: a text's vector moves a little with its call
            assert cosines.min() > 0.95 and np.median(cosines) > 0.99, cosines


def _documents(n: int) -> list[LoadedDocument]:
    return [
        LoadedDocument(f"doc-{i}.md", "text/markdown", f"Doc {i}", [Section(text)]) for i, text in enumerate(TEXTS[:n])
    ]


def test_a_collection_refuses_an_incompatible_embedder_until_reindexed(tmp_path, embedder, cache_dir):
    settings = Settings(data_dir=tmp_path / "data", torch_threads=THREADS)
    with build(settings, embedder=embedder, generator=False) as system:
        system.ingestor.ingest_documents(_documents(6))
        assert system.catalog.embedder(system.store.collection) == EmbedderRecord(embedder.name, "torch", 384)
        chunks = system.store.count()

    int8 = LocalEmbedder(backend="onnx-int8", cache_dir=cache_dir)
    with pytest.raises(EmbedderMismatchError) as refused:
        build(settings, embedder=int8, generator=False)
    message = str(refused.value)
    assert "(torch, 384-d)" in message and "(onnx-int8, 384-d)" in message and "ragtune reindex" in message

    fp32 = LocalEmbedder(backend="onnx", cache_dir=cache_dir)  # the same numbers as torch: allowed
    build(settings, embedder=fp32, generator=False).close()

    with build(settings, embedder=int8, generator=False, check_vectors=False) as system:
        from ragtune.ingest.reembed import reembed

        before = _stored_vectors(system.store)
        assert reembed(system.catalog, system.store, int8, progress=False) == chunks
    with build(settings, embedder=int8, generator=False) as system:  # a new collection, now the live one
        after = _stored_vectors(system.store)
    assert set(after) == set(before) and len(after) == chunks  # every chunk re-embedded, nothing added or lost
    cosines = np.array([before[i][1] @ after[i][1] for i in before])
    assert all(before[i][0] == after[i][0] for i in before)  # the same text under the same id
    assert cosines.max() < 0.99999 and cosines.min() > 0.97  # int8's vectors now, not torch's
    with pytest.raises(EmbedderMismatchError):
        build(settings, embedder=embedder, generator=False)


def _stored_vectors(store) -> dict[str, tuple[str, np.ndarray]]:
    rows = store._client.query(store.physical, filter='id != ""', output_fields=["id", "text", "dense"])
    return {r["id"]: (r["text"], np.asarray(r["dense"], dtype=np.float32)) for r in rows}


def test_an_index_from_before_the_record_counts_as_torch(tmp_path, embedder, cache_dir):
    settings = Settings(data_dir=tmp_path / "data", torch_threads=THREADS)
    with build(settings, embedder=embedder, generator=False) as system:
        system.ingestor.ingest_documents(_documents(2))
        with system.catalog.session() as s, s.begin():  # as an index written by an older ragtune
            s.execute(__import__("sqlalchemy").text("DELETE FROM embedders"))
    with pytest.raises(EmbedderMismatchError, match="torch"):
        build(settings, embedder=LocalEmbedder(backend="onnx-int8", cache_dir=cache_dir), generator=False)


def test_cli_ingests_and_answers_with_int8_then_guards_the_collection(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, text in enumerate(TEXTS[:4]):
        (docs / f"p{i}.txt").write_text(text, encoding="utf-8")
    env = cli_environment(tmp_path / "data")  # the session's export: the in-process tests above export

    def ragtune(*args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ragtune.cli", *args],
            env=env | overrides,
            capture_output=True,
            text=True,
            timeout=300,
        )

    ingested = ragtune("ingest", str(docs))
    assert ingested.returncode == 0, ingested.stderr
    assert "Warning" not in ingested.stderr and "WARNING" not in ingested.stderr, ingested.stderr
    assert Settings(data_dir=tmp_path / "data").resolved_embedder_cache() == tmp_path / "data" / "embedders"
    asked = ragtune("ask", TEXTS[1].split(".")[0] + "?")
    assert asked.returncode == 0, asked.stderr
    assert "p1.txt" in asked.stdout
    refused = ragtune("ask", "anything?", RAGTUNE_EMBEDDING_BACKEND="torch")
    assert refused.returncode == 2 and "ragtune reindex" in refused.stderr, refused.stderr
    reindexed = ragtune("reindex", RAGTUNE_EMBEDDING_BACKEND="torch")
    assert reindexed.returncode == 0 and "re-embedded" in reindexed.stdout, reindexed.stderr
    assert ragtune("ask", "anything?", RAGTUNE_EMBEDDING_BACKEND="torch").returncode == 0


def test_the_service_embeds_uploads_and_questions_with_int8(tmp_path):
    from api.support import app_client, service_settings, wait_for_job

    settings = service_settings(tmp_path / "data", embedding_backend="onnx-int8")
    with app_client(settings, embedder=None) as client:
        ready = client.get("/ready").json()
        assert ready["ready"] and "(onnx-int8)" in ready["checks"]["embedder"]["detail"]
        files = [("files", (f"p{i}.txt", text.encode())) for i, text in enumerate(TEXTS[:3])]
        job = client.post("/v1/documents", files=files).json()
        assert wait_for_job(client, job["job_id"])["state"] == "done"
        question = TEXTS[2].split(".")[0] + "?"
        retrieved = client.post("/v1/query", json={"question": question, "retrieve_only": True}).json()
        assert retrieved["retrieved"][0]["source"].endswith("p2.txt")
    with pytest.raises(EmbedderMismatchError):  # the service's collection is now int8's
        build(settings.model_copy(update={"embedding": settings.embedding.model_copy(update={"backend": "torch"})}))
