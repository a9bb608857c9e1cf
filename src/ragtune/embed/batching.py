"""Concurrent questions share one embedding model call.

Under load, every request embeds its own short question. One model call per question costs
mostly fixed overhead (a forward pass through every layer), and sixteen of them running at
once on two cores only fight for the CPU. `BatchingEmbedder` lets small calls arriving while
the model is busy wait, then embeds all of them in the next single call ("combining"): no
timer, so an idle server adds no latency, and the busier it is the larger the batches. Large
calls (ingestion batches) go straight to the model.

    >>> import numpy as np
    >>> from ragtune.embed.batching import BatchingEmbedder
    >>> class Lengths:
    ...     name, backend, dimension = "lengths", "python", 1
    ...     def embed(self, texts, show_progress=False):
    ...         return np.array([[len(t)] for t in texts], dtype=np.float32)
    >>> BatchingEmbedder(Lengths()).embed(["a", "abc"]).tolist()
    [[1.0], [3.0]]
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ragtune.embed import Embedder

# Calls with more texts than this are not worth delaying: they are batches already.
MAX_COMBINED_TEXTS = 64


@dataclass
class _Call:
    texts: list[str]
    vectors: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False


class BatchingEmbedder:
    """An Embedder that embeds concurrent small calls together (see the module docstring)."""

    def __init__(self, inner: Embedder, max_texts: int = MAX_COMBINED_TEXTS) -> None:
        if max_texts <= 0:
            raise ValueError(f"max_texts must be greater than 0; got {max_texts}")
        self.inner = inner
        self.name = inner.name
        self.backend = inner.backend
        self.dimension = inner.dimension
        self.max_texts = max_texts
        self._waiting: list[_Call] = []
        self._queue_lock = threading.Lock()
        self._model_lock = threading.Lock()  # one combined model call at a time

    def embed(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        if len(texts) > self.max_texts or not texts:
            return self.inner.embed(texts, show_progress)
        call = _Call(list(texts))
        with self._queue_lock:
            self._waiting.append(call)
        with self._model_lock:
            while not call.done:  # nobody took it along: run what waits, oldest first, until it is done
                self._run_waiting()
        if call.error is not None:
            raise call.error
        assert call.vectors is not None
        return call.vectors

    def _run_waiting(self) -> None:
        with self._queue_lock:
            calls: list[_Call] = []
            total = 0
            while self._waiting and (not calls or total + len(self._waiting[0].texts) <= self.max_texts):
                total += len(self._waiting[0].texts)
                calls.append(self._waiting.pop(0))
        try:
            vectors = self.inner.embed([t for c in calls for t in c.texts])
        except BaseException as exc:  # every waiting caller gets the model's error
            for c in calls:
                c.error, c.done = exc, True
            return
        start = 0
        for c in calls:
            c.vectors, c.done = vectors[start : start + len(c.texts)], True
            start += len(c.texts)
