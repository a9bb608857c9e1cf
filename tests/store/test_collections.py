"""Collections and custom metadata at the store: scoped searches, safe metadata filters, and
stores and catalogs made before either, upgraded in place."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from pymilvus import DataType, MilvusClient

from ragtune.store.base import StoreError
from ragtune.store.catalog import Catalog, PendingDocument
from ragtune.store.milvus import _OUTPUT_FIELDS, MilvusStore
from ragtune.types import Chunk, Filters, MetadataError, metadata_conditions

INJECTIONS = ['x" or 1==1 or "', '"] or 1==1 or ["', "back\\slash", "it's", 'quote"', "a) or (true"]


def _chunk(i: int, text: str, collection: str, metadata: dict | None = None) -> Chunk:
    doc = f"{collection}-doc{i}"
    return Chunk(f"{doc}-00000", doc, 0, text, f"/{doc}.md", "T", 0, "", (), collection, metadata or {})


@pytest.fixture
def store(tmp_path):
    s = MilvusStore(str(tmp_path / "m.db"), "ragtune", dimension=3)
    yield s
    s.close()


def test_a_scoped_search_never_returns_another_collections_chunks_even_the_best_match(store):
    same = "Quarterly revenue rose by four percent"
    store.insert(
        [_chunk(0, same, "shared"), _chunk(1, same + " in the finance report", "finance")],
        np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]], dtype=np.float32),
    )
    query = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)
    assert store.search_dense(query, 5)[0][0].collection == "shared"  # the best match overall
    for hits in (
        store.search_dense(query, 5, Filters(collections=("finance",)))[0],
        store.search_bm25(["quarterly revenue"], 5, Filters(collections=("finance",)))[0],
    ):
        assert [h.collection for h in hits] == ["finance"]
    assert store.count(Filters(collections=("finance", "shared"))) == 2
    assert store.count(Filters(collections=("hr",))) == 0


def test_metadata_filters_equality_in_ranges_and_booleans(store):
    chunks = [
        _chunk(0, "a", "ragtune", {"team": "finance", "year": 2022, "draft": True}),
        _chunk(1, "b", "ragtune", {"team": "legal", "year": 2023, "score": 0.5}),
        _chunk(2, "c", "ragtune", {"team": "finance", "year": 2024}),
        _chunk(3, "d", "ragtune"),
    ]
    store.insert(chunks, np.ones((4, 3), dtype=np.float32))

    def found(spec: dict) -> set[str]:
        hits = store.search_dense(np.ones((1, 3), dtype=np.float32), 10, Filters(metadata=metadata_conditions(spec)))
        return {h.text for h in hits[0]}

    assert found({"team": "finance"}) == {"a", "c"}
    assert found({"team": ["legal", "hr"]}) == {"b"}
    assert found({"year": {"gte": 2023}}) == {"b", "c"}
    assert found({"year": {"gt": 2022, "lt": 2024}}) == {"b"}
    assert found({"team": "finance", "year": {"lte": 2022}}) == {"a"}
    assert found({"draft": True}) == {"a"}
    assert found({"score": {"gte": 0.25}}) == {"b"}
    assert found({"team": {"ne": "finance"}}) >= {"b"}
    hit = store.search_dense(
        np.ones((1, 3), dtype=np.float32), 10, Filters(metadata=metadata_conditions({"year": 2022}))
    )
    assert hit[0][0].metadata == {"team": "finance", "year": 2022, "draft": True}


@pytest.mark.parametrize("value", INJECTIONS)
def test_quotes_and_operators_in_metadata_values_match_only_literally(store, value):
    store.insert(
        [_chunk(0, "target", "ragtune", {"team": value}), _chunk(1, "other", "secret", {"team": "x"})],
        np.ones((2, 3), dtype=np.float32),
    )
    query = np.ones((1, 3), dtype=np.float32)

    def texts(filters: Filters) -> list[str]:
        return [h.text for h in store.search_dense(query, 10, filters)[0]]

    assert texts(Filters(metadata=metadata_conditions({"team": value}))) == ["target"]
    assert texts(Filters(metadata=metadata_conditions({"team": [value]}))) == ["target"]
    # the value as a filter on a scope that excludes it finds nothing, not everything
    assert texts(Filters(collections=("ragtune",), metadata=metadata_conditions({"team": value + "!"}))) == []
    assert texts(Filters(collections=(value,))) == []


@pytest.mark.parametrize(
    "spec",
    [
        {'team"]': "x"},
        {"team": {"like": "x%"}},
        {"year": {"gte": "2023"}},
        {"team": {"in": []}},
        {"team": {"in": "finance"}},
        {"team": {"eq": ["a"]}},
        {"year": {"gte": float("nan")}},
        {"team": {}},
        {"team": None},
    ],
)
def test_a_malformed_metadata_filter_is_refused_before_the_store(spec):
    with pytest.raises(MetadataError):
        metadata_conditions(spec)


def _old_collection(path: str, rows: int) -> None:
    """A collection as ragtune wrote it before collections and metadata (its schema then)."""
    from pymilvus import Function, FunctionType

    client = MilvusClient(path)
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("doc_id", DataType.VARCHAR, max_length=64)
    schema.add_field("text", DataType.VARCHAR, max_length=65535, enable_analyzer=True)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_field("dense", DataType.FLOAT_VECTOR, dim=3)
    for name, length in (("source", 4096), ("title", 1024), ("heading", 1024)):
        schema.add_field(name, DataType.VARCHAR, max_length=length)
    schema.add_field("page", DataType.INT64)
    schema.add_field("tags", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=32, max_length=128)
    schema.add_function(Function("bm25", FunctionType.BM25, ["text"], ["sparse"]))
    index = client.prepare_index_params()
    index.add_index("dense", index_type="FLAT", metric_type="COSINE")
    index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    client.create_collection("ragtune", schema=schema, index_params=index, consistency_level="Strong")
    client.insert(
        "ragtune",
        [
            {
                "id": f"d-{i:05d}",
                "doc_id": "d",
                "text": f"old chunk number {i}",
                "dense": [1.0, float(i), 0.0],
                "source": "/d.md",
                "title": "D",
                "heading": "",
                "page": 0,
                "tags": ["old"],
            }
            for i in range(rows)
        ],
    )
    client.close()


def _check_upgraded(path: str, rows: int) -> None:
    store = MilvusStore(path, "ragtune", dimension=3)
    try:
        assert store.count() == rows and store.count(Filters(collections=("ragtune",))) == rows
        hit = store.fetch(["d-00007"])[0]
        assert (hit.text, hit.tags, hit.collection, hit.metadata) == ("old chunk number 7", ("old",), "ragtune", {})
        assert store.search_dense(np.array([[1.0, 7.0, 0.0]], dtype=np.float32), 1)[0][0].id == "d-00007"
        assert store.search_bm25(["number 7"], 1)[0][0].id == "d-00007"  # BM25 rebuilt from the text
    finally:
        store.close()
    client = MilvusClient(path)
    assert client.list_collections() == ["ragtune"]
    client.close()


def test_a_store_from_before_collections_is_upgraded_in_place_without_losing_a_row(tmp_path):
    path = str(tmp_path / "m.db")
    _old_collection(path, rows=1200)  # over one copy batch
    _check_upgraded(path, 1200)
    _check_upgraded(path, 1200)  # opening it again changes nothing


def test_an_empty_store_from_before_collections_is_upgraded_too(tmp_path):
    path = str(tmp_path / "empty.db")
    _old_collection(path, rows=0)
    store = MilvusStore(path, "ragtune", dimension=3)
    assert store.count() == 0 and store._current("ragtune")
    store.close()


def test_an_old_store_of_another_dimension_is_refused_before_it_is_upgraded(tmp_path):
    path = str(tmp_path / "m.db")
    _old_collection(path, rows=3)
    with pytest.raises(StoreError, match="3-d vectors"):
        MilvusStore(path, "ragtune", dimension=4)
    reopened = MilvusStore(path, "ragtune", dimension=3)  # still whole, and upgradable
    assert reopened.count() == 3
    reopened.close()


def test_an_upgrade_stopped_in_its_first_copy_is_redone_and_one_stopped_after_it_is_finished(tmp_path):
    halfway = str(tmp_path / "halfway.db")
    _old_collection(halfway, rows=20)
    client = MilvusClient(halfway)  # a copy begun and left with a stray row
    client.create_collection("ragtune__upgrading", dimension=3)
    client.insert("ragtune__upgrading", [{"id": 1, "vector": [1.0, 0.0, 0.0]}])
    client.close()
    _check_upgraded(halfway, 20)

    copied = str(tmp_path / "copied.db")
    _old_collection(copied, rows=20)
    store = MilvusStore(copied, "ragtune", dimension=3)  # upgraded ...
    store._create("ragtune__upgrading")
    store._copy("ragtune", "ragtune__upgrading", _OUTPUT_FIELDS, {})
    store.close()
    client = MilvusClient(copied)  # ... as if stopped once the first copy was complete and the old one dropped
    client.drop_collection("ragtune")
    client.close()
    _check_upgraded(copied, 20)


def test_a_catalog_from_before_collections_is_upgraded_and_a_source_may_be_in_two_collections(tmp_path):
    path = tmp_path / "catalog.db"
    with sqlite3.connect(path) as db:  # the documents table as it was
        db.executescript(
            """
            CREATE TABLE documents (
                id VARCHAR(64) PRIMARY KEY, source VARCHAR(4096) NOT NULL, content_hash VARCHAR(64) NOT NULL,
                status VARCHAR(16) NOT NULL, error TEXT NOT NULL, chunks INTEGER NOT NULL,
                content_type VARCHAR(128) NOT NULL, title VARCHAR(1024) NOT NULL, size_bytes INTEGER NOT NULL,
                tags JSON NOT NULL, created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL);
            CREATE UNIQUE INDEX ix_documents_source ON documents (source);
            INSERT INTO documents VALUES ('d1', '/a.md', 'h', 'indexed', '', 3, 'text/markdown', 'A', 10, '[]',
                '2026-01-01 00:00:00', '2026-01-01 00:00:00');
            """
        )
    catalog = Catalog(f"sqlite:///{path}", default_collection="ragtune")
    old = catalog.get("d1")
    assert old is not None and (old.collection, old.metadata, old.chunks) == ("ragtune", {}, 3)
    catalog.mark_pending([PendingDocument("d2", "/a.md", "h2", collection="finance", metadata={"year": 2024})])
    assert catalog.find("/a.md").id == "d1" and catalog.find("/a.md", "finance").id == "d2"
    assert catalog.collections() == {"finance": 1, "ragtune": 1}
    assert [r.id for r in catalog.list(collections=("finance",))[0]] == ["d2"]
    catalog.close()
    reopened = Catalog(f"sqlite:///{path}", default_collection="ragtune")  # a second start changes nothing
    assert reopened.get("d2").metadata == {"year": 2024} and reopened.collections() == {"finance": 1, "ragtune": 1}
    reopened.close()
