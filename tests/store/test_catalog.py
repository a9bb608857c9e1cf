from ragtune.store.catalog import FAILED, INDEXED, PENDING, Catalog, IndexedDocument, PendingDocument


def test_status_lifecycle_and_counts(tmp_path):
    catalog = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    catalog.mark_pending([PendingDocument("d1", "/a.md", "h1", size_bytes=10, tags=("x",))])
    assert catalog.get("d1").status == PENDING
    catalog.mark_indexed([IndexedDocument("d1", chunks=4, content_type="text/markdown", title="A")])
    catalog.mark_failed("d2", "/b.txt", "b.txt looks like a binary file")
    record = catalog.find("/a.md")
    assert (record.id, record.status, record.chunks, record.tags) == ("d1", INDEXED, 4, ("x",))
    assert catalog.counts() == {PENDING: 0, INDEXED: 1, FAILED: 1, "chunks": 4}
    rows, total = catalog.list(status=FAILED)
    assert total == 1 and rows[0].error == "b.txt looks like a binary file"


def test_a_failed_update_keeps_the_indexed_version(tmp_path):
    catalog = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    catalog.mark_pending([PendingDocument("d1", "/a.md", "good-hash")])
    catalog.mark_indexed([IndexedDocument("d1", chunks=3, content_type="text/markdown", title="A")])
    catalog.mark_failed("d1", "/a.md", "a.md is not valid UTF-8")
    record = catalog.get("d1")
    assert record.status == FAILED and record.chunks == 3 and record.content_hash == "good-hash"
    assert "previously indexed version is still searchable" in record.error


def test_catalog_survives_reopening_and_delete(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    Catalog(url).mark_pending([PendingDocument("d1", "/a.md", "h")])
    reopened = Catalog(url)
    assert reopened.states() == {"d1": ("h", PENDING)}
    assert reopened.delete("d1") and not reopened.delete("d1")
    assert reopened.get("d1") is None
