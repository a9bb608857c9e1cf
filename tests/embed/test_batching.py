"""Concurrent small embedding calls are combined into one model call, with the same vectors."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ragtune.embed.batching import BatchingEmbedder


class SlowModel:
    """Records each call; slow enough that concurrent callers pile up behind the first."""

    name, backend, dimension = "slow", "python", 2

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail
        self._lock = threading.Lock()

    def embed(self, texts, show_progress=False):
        with self._lock:
            self.calls.append(list(texts))
        time.sleep(0.05)
        if self.fail:
            raise RuntimeError("model crashed")
        return np.array([[len(t), t.count("a")] for t in texts], dtype=np.float32)


def test_concurrent_calls_share_model_calls_and_get_their_own_vectors():
    model = SlowModel()
    batching = BatchingEmbedder(model, max_texts=8)
    questions = [["a" * i] if i % 3 else ["a" * i, "b" * i] for i in range(1, 25)]
    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(batching.embed, questions))
    for texts, vectors in zip(questions, results, strict=True):
        assert vectors.tolist() == [[len(t), t.count("a")] for t in texts]
    assert len(model.calls) < len(questions) / 2  # combined
    assert max(len(c) for c in model.calls) <= 8
    assert sorted(t for c in model.calls for t in c) == sorted(t for q in questions for t in q)


def test_large_calls_go_straight_to_the_model_and_errors_reach_every_caller():
    model = SlowModel()
    assert BatchingEmbedder(model, max_texts=2).embed(["x", "y", "z"]).shape == (3, 2) and model.calls == [
        ["x", "y", "z"]
    ]
    broken = BatchingEmbedder(SlowModel(fail=True))
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(broken.embed, [f"q{i}"]) for i in range(4)]
    for future in futures:
        with pytest.raises(RuntimeError, match="model crashed"):
            future.result()


def test_real_model_vectors_match_unbatched(embedder):
    batching = BatchingEmbedder(embedder)
    questions = ["How do I rotate API keys?", "What is hybrid search?", "Where is the data kept?", "Why BM25?"]
    with ThreadPoolExecutor(4) as pool:
        combined = list(pool.map(lambda q: batching.embed([q])[0], questions))
    assert np.allclose(np.stack(combined), embedder.embed(questions), atol=1e-5)
