"""`Filters.exclude_doc_ids`: every document but the ones named (an unanswerable question's scope),
with document ids bound as literals whatever they contain."""

from __future__ import annotations

import numpy as np
import pytest

from ragtune.store.expressions import filter_expression
from ragtune.store.milvus import MilvusStore
from ragtune.types import Chunk, Filters

HOSTILE_IDS = ['x" or 1==1 or "', '"] or doc_id not in ["', "back\\slash", "it's", 'quote"', "a) or (true", "日本語"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = MilvusStore(str(tmp_path_factory.mktemp("exclude") / "m.db"), "test", dimension=3)
    ids = [*HOSTILE_IDS, "plain"]
    chunks = [Chunk(f"c{i}-00000", doc, 0, f"text {i}", f"/{i}.md", "T", 0, "", ("t",)) for i, doc in enumerate(ids)]
    s.insert(chunks, np.ones((len(ids), 3), dtype=np.float32))
    yield s
    s.close()


@pytest.mark.parametrize("doc_id", HOSTILE_IDS)
def test_excluding_a_document_leaves_exactly_the_others_whatever_its_id(store, doc_id):
    everyone = {*HOSTILE_IDS, "plain"}
    query = np.ones((1, 3), dtype=np.float32)
    scope = Filters(exclude_doc_ids=(doc_id,))
    assert {h.doc_id for h in store.search_dense(query, 20, scope)[0]} == everyone - {doc_id}
    assert {h.doc_id for h in store.search_bm25(["text"], 20, scope)[0]} == everyone - {doc_id}
    assert store.count(scope) == len(everyone) - 1
    # an id that is not stored excludes nothing, and an exclusion narrows other filters, never widens them
    assert store.count(Filters(exclude_doc_ids=(doc_id + "!",))) == len(everyone)
    assert store.count(Filters(doc_ids=(doc_id,), exclude_doc_ids=(doc_id,))) == 0
    assert store.count(Filters(tags=("t",), exclude_doc_ids=(doc_id, "plain"))) == len(everyone) - 2


def test_the_exclusion_is_one_not_in_clause_of_quoted_ids():
    expression = filter_expression(Filters(tags=("t",), exclude_doc_ids=('a"b', "c")))
    assert expression == 'doc_id not in ["a\\"b", "c"] and ARRAY_CONTAINS_ANY(tags, ["t"])'
