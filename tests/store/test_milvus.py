import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ragtune.store.base import StoreError, StoreLockedError, StoreUnavailableError
from ragtune.store.expressions import filter_expression
from ragtune.store.milvus import MilvusStore
from ragtune.types import Chunk, Filters


def _chunk(i: int, text: str, doc: str = "doc", source: str = "/a.md", tags: tuple[str, ...] = ()) -> Chunk:
    return Chunk(f"{doc}-{i:05d}", doc, i, text, source, "T", 0, "", tags)


@pytest.fixture
def store(tmp_path):
    s = MilvusStore(str(tmp_path / "m.db"), "test", dimension=3)
    yield s
    s.close()


def test_dense_bm25_filters_and_delete(store):
    chunks = [
        _chunk(0, "The runners were running along the river", tags=("sport",)),
        _chunk(1, "Vector databases store embeddings", doc="other", source="/b.md", tags=("db",)),
        _chunk(2, "A cat sleeps on the mat"),
    ]
    vectors = np.eye(3, dtype=np.float32)
    store.insert(chunks, vectors)
    assert store.count() == 3
    # BM25 uses English stemming: "run" finds "running"/"runners".
    assert [h.id for h in store.search_bm25(["run"], 3)[0]] == ["doc-00000"]
    dense = store.search_dense(np.array([[0.0, 0.9, 0.1]], dtype=np.float32), 3)[0]
    assert dense[0].id == "other-00001" and dense[0].score > dense[1].score
    assert [h.id for h in store.search_dense(vectors[1:2], 3, Filters(tags=("sport",)))[0]] == ["doc-00000"]
    assert {h.id for h in store.search_dense(vectors[0:1], 3, Filters(sources=("/b.md",)))[0]} == {"other-00001"}
    store.delete_documents(["doc"])
    assert store.count() == 1 and store.chunks("doc") == []


def test_searching_an_empty_collection_finds_nothing(store):
    # before anything is ingested, and again after everything is deleted
    for _ in range(2):
        assert store.search_bm25(["anything", "at all"], 5) == [[], []]
        assert store.search_dense(np.ones((1, 3), dtype=np.float32), 5) == [[]]
        store.insert([_chunk(0, "a first chunk")], np.ones((1, 3), dtype=np.float32))
        assert [h.id for h in store.search_bm25(["first"], 5)[0]] == ["doc-00000"]
        store.delete_documents(["doc"])
    # another process emptied it after this one saw rows: Milvus' failure is caught too
    store._seen_rows = True
    assert store.search_bm25(["anything"], 5) == [[]]


def test_filters_escape_quotes():
    expr = filter_expression(Filters(sources=('/x/"quoted".md',), tags=("a",)))
    assert expr == 'source in ["/x/\\"quoted\\".md"] and ARRAY_CONTAINS_ANY(tags, ["a"])'


def test_second_process_gets_a_clear_lock_message(store, tmp_path):
    script = textwrap.dedent(
        f"""
        from ragtune.store.milvus import MilvusStore, StoreLockedError
        try:
            MilvusStore({str(tmp_path / "m.db")!r}, "test", dimension=3)
        except StoreLockedError as exc:
            print(exc)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120).stdout
    assert "in use by pid" in out and "one process per data path" in out


def test_dimension_mismatch_is_explained(tmp_path):
    MilvusStore(str(tmp_path / "m.db"), "test", dimension=3).close()
    with pytest.raises(StoreError, match="holds 3-d vectors but the embedding model gives 4-d") as refused:
        MilvusStore(str(tmp_path / "m.db"), "test", dimension=4)
    # The store answered: a refusal, not an outage (which the API answers 503, "cannot connect").
    assert not isinstance(refused.value, StoreUnavailableError) and "cannot connect" not in str(refused.value)


def test_same_process_reopen_is_refused_while_open(store, tmp_path):
    with pytest.raises(StoreLockedError):
        MilvusStore(str(tmp_path / "m.db"), "test", dimension=3)


def test_filters_match_non_ascii_quotes_and_backslashes(store):
    # json.dumps wrote "résumé" as "r\u00e9sum\u00e9", which Milvus does not decode: nothing matched
    values = ["résumé", "uploads/café_notes.md", 'say "hi"', "back\\slash", 'both\\"', "日本語"]
    chunks = [_chunk(i, f"text {i}", doc=f"d{i}", source=v, tags=(v,)) for i, v in enumerate(values)]
    store.insert(chunks, np.ones((len(values), 3), dtype=np.float32))
    query = np.ones((1, 3), dtype=np.float32)
    for i, value in enumerate(values):
        for filters in (Filters(tags=(value,)), Filters(sources=(value,))):
            assert [h.id for h in store.search_dense(query, 10, filters)[0]] == [f"d{i}-{i:05d}"], (value, filters)
            assert store.count(filters) == 1
    assert [h.id for h in store.fetch(["d0-00000"])] == ["d0-00000"]
    assert "r\\u00e9" not in filter_expression(Filters(tags=("résumé",)))


def test_closed_port_fails_fast_with_a_clear_message():
    import socket
    import time

    from ragtune.store.base import StoreUnavailableError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as info:
        MilvusStore(f"http://127.0.0.1:{port}", "c", dimension=3, timeout=1)
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "RAGTUNE_MILVUS_URI" in message and "running" in message


def test_a_frozen_server_is_reported_unavailable_within_the_timeout(tmp_path):
    import os
    import signal

    from ragtune.store.base import StoreUnavailableError
    from tests.api.support import MilvusServer

    server = MilvusServer(tmp_path / "srv.db").start()
    try:
        store = MilvusStore(server.uri, "frozen", dimension=3, timeout=1)
        store.insert([_chunk(0, "hello")], np.ones((1, 3), dtype=np.float32))
        pid = server._server._p.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(StoreUnavailableError):  # after its 1 s deadline, not a hang
                store.search_dense(np.ones((1, 3), dtype=np.float32), 1)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert [h.id for h in store.search_dense(np.ones((1, 3), dtype=np.float32), 1)[0]] == ["doc-00000"]
        store.close()
    finally:
        server.stop()
