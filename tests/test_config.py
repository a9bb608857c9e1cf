"""Settings: every flat RAGTUNE_* name keeps working next to the nested sections, from every source."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ragtune.config import FLAT_NAMES, Settings

# A value for each flat name that differs from its default and passes validation.
_VALUES = {
    "milvus_uri": "http://milvus:19530",
    "milvus_token": "root:secret",
    "collection": "team_docs",
    "catalog_url": "postgresql+psycopg://rag@db/rag",
    "milvus_timeout_seconds": "3.5",
    "chunk_size": "800",
    "chunk_overlap": "100",
    "ingest_batch_chunks": "64",
    "max_file_bytes": "1000",
    "max_uncompressed_bytes": "2000",
    "parse_timeout_s": "7.5",
    "parse_max_memory_mb": "512",
    "max_nesting_depth": "64",
    "max_pages": "30",
    "max_extracted_chars": "5000",
    "ocr": "off",
    "embedding_model": "/models/minilm",
    "embedding_base_url": "http://embed:8080/v1",
    "embedding_api_key": "ek",
    "embedding_backend": "onnx",
    "embedding_batch_size": "8",
    "embedding_device": "cuda",
    "embedding_cache_dir": "/cache/embedders",
    "retrieval_mode": "bm25",
    "top_k": "9",
    "rrf_k": "30",
    "dense_weight": "0.5",
    "bm25_weight": "2.0",
    "candidates": "70",
    "reranker_model": "/models/rerank",
    "context_window": "1",
    "generator": "openai",
    "min_relevance": "0.5",
    "answer_sentences": "3",
    "max_question_chars": "99",
    "llm_base_url": "http://vllm:8000/v1",
    "llm_api_key": "lk",
    "llm_model": "qwen",
    "llm_models": "rag,legal",
    "llm_adapter": "/adapters/rag",
    "llm_quant": "nf4",
    "llm_tensor_parallel": "2",
    "llm_max_new_tokens": "64",
    "llm_temperature": "0.7",
    "llm_timeout_seconds": "9.5",
    "llm_max_retries": "5",
    "llm_context_tokens": "4096",
    "host": "0.0.0.0",
    "port": "9000",
    "api_keys": "k1,k2",
    "auth_exempt_paths": "/health",
    "rate_limit_per_minute": "10",
    "rate_limit_burst": "3",
    "max_upload_bytes": "500",
    "max_files_per_request": "4",
    "max_body_bytes": "700",
    "cors_origins": "https://a.example,https://b.example",
    "embedded_worker": "false",
    "job_lease_seconds": "12.5",
    "job_poll_seconds": "0.5",
    "job_max_attempts": "7",
    "faithfulness_model": "/models/nli",
    "faithfulness_threshold": "0.8",
}


def test_every_section_field_has_exactly_one_flat_name():
    targets = list(FLAT_NAMES.values())
    assert len(targets) == len(set(targets))
    for section in ("store", "ingest", "embedding", "retrieval", "answer", "llm", "service", "eval"):
        fields = set(type(getattr(Settings(), section)).model_fields)
        assert fields == {name for sec, name in targets if sec == section}, section
    assert set(_VALUES) == set(FLAT_NAMES)


def test_every_flat_environment_name_reaches_its_section(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no .env file
    for flat, value in _VALUES.items():
        monkeypatch.setenv(f"RAGTUNE_{flat.upper()}", value)
    settings = Settings()
    for flat in FLAT_NAMES:
        assert settings.flat(flat) != Settings.flat_field(flat).get_default(call_default_factory=True), flat
    assert settings.service.api_keys == ["k1", "k2"] and settings.service.embedded_worker is False
    assert settings.llm.models == ["rag", "legal"]
    assert settings.retrieval.mode == "bm25" and settings.llm.temperature == 0.7


def test_nested_names_keyword_arguments_and_precedence(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAGTUNE_RETRIEVAL__TOP_K", "7")
    monkeypatch.setenv("RAGTUNE_BM25_WEIGHT", "3")
    settings = Settings()
    assert (settings.retrieval.top_k, settings.retrieval.bm25_weight) == (7, 3.0)
    # keyword arguments, flat or nested, win over the environment; other fields of the section stay
    assert Settings(top_k=2).retrieval.top_k == 2
    nested = Settings(retrieval={"top_k": 4})
    assert (nested.retrieval.top_k, nested.retrieval.bm25_weight) == (4, 3.0)


def test_yaml_file_and_dotenv_take_flat_or_nested_keys(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "ragtune.yaml"
    config.write_text("top_k: 3\nllm:\n  model: qwen\nchunk_size: 600\n")
    monkeypatch.setenv("RAGTUNE_CONFIG", str(config))
    (tmp_path / ".env").write_text("RAGTUNE_CHUNK_SIZE=700\nRAGTUNE_GENERATOR=local\n")
    settings = Settings()
    # .env outranks the YAML file; the YAML file fills what nothing else sets
    assert (settings.retrieval.top_k, settings.llm.model) == (3, "qwen")
    assert (settings.ingest.chunk_size, settings.answer.generator) == (700, "local")


def test_bad_values_name_the_setting(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError, match="chunk_overlap must be smaller than chunk_size"):
        Settings(chunk_size=100, chunk_overlap=100)
    with pytest.raises(ValidationError, match="cannot both be 0"):
        Settings(dense_weight=0, bm25_weight=0)
    monkeypatch.setenv("RAGTUNE_TOP_K", "0")
    with pytest.raises(ValidationError, match=r"retrieval\.top_k"):
        Settings()
    with pytest.raises(ValidationError, match="collection"):
        Settings(collection="bad name")
