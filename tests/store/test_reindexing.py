"""A reindex's catalog bookkeeping (`ragtune.store.reindexing`): what is left to copy or remove,
the one-transaction switch that waits for it, and the writes it refuses afterwards."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest
from sqlalchemy import inspect, update

from ragtune.store.catalog import PENDING, Catalog, CatalogError, EmbedderRecord, IndexedDocument, PendingDocument
from ragtune.store.reindexing import ReindexBusyError, Reindexing, ReindexLeaseRow, Shadow

NEW = EmbedderRecord("new-model", "torch", 8)


def _catalog(tmp_path) -> Catalog:
    return with_documents(Catalog(f"sqlite:///{tmp_path / 'c.db'}"))


def with_documents(catalog: Catalog) -> Catalog:
    """`catalog` (empty) with three indexed documents, d1 to d3, of 1 to 3 chunks."""
    for i in (1, 2, 3):
        catalog.mark_pending([PendingDocument(f"d{i}", f"/d{i}.md", f"h{i}")])
        catalog.mark_indexed([IndexedDocument(f"d{i}", chunks=i, content_type="text/markdown", title="")])
    return catalog


def _ids(plan: Reindexing) -> list[str]:
    return [d.id for d in plan.stale(limit=100)]


def test_copies_are_counted_per_version_and_the_switch_waits_for_the_rest(tmp_path):
    switch_waits_for_every_copy(_catalog(tmp_path))


def switch_waits_for_every_copy(catalog: Catalog) -> None:
    """The copies and the switch, on `with_documents`' catalog (also run on PostgreSQL)."""
    catalog.record_embedder("ragtune", EmbedderRecord("old-model", "torch", 4))
    plan = Reindexing(catalog, "ragtune")
    plan.begin("ragtune__1", NEW)
    assert plan.shadow() == Shadow("ragtune__1", 8, NEW) and plan.left() == (3, 6)
    plan.copied(plan.stale(limit=2))  # d1, d2
    assert _ids(plan) == ["d3"] and plan.done() == 2 and not plan.switch(previous_dimension=4)

    plan.copied(plan.stale(limit=100))
    catalog.mark_pending([PendingDocument("d1", "/d1.md", "h1-changed")])  # ingested again meanwhile
    catalog.mark_failed("d2", "/d2.md", "unreadable now")  # same hash, another status
    catalog.delete("d3")
    catalog.mark_pending([PendingDocument("d4", "/d4.md", "h4")])  # new
    assert _ids(plan) == ["d1", "d2", "d4"] and plan.removed(limit=100) == ["d3"]
    assert not plan.switch(previous_dimension=4)
    assert catalog.physical("ragtune") == "ragtune" and catalog.embedder("ragtune").model == "old-model"

    plan.copied(plan.stale(limit=100))
    plan.forget(plan.removed(limit=100))
    assert plan.switch(previous_dimension=4)
    assert catalog.physical("ragtune") == "ragtune__1" and catalog.embedder("ragtune") == NEW
    assert plan.shadow() == Shadow("ragtune", 4, None) and plan.done() == 0  # the previous one, to drop
    plan.dropped()
    assert plan.shadow() is None


def test_beginning_again_forgets_the_earlier_shadows_copies(tmp_path):
    catalog = _catalog(tmp_path)
    plan = Reindexing(catalog, "ragtune")
    plan.begin("ragtune__1", NEW)
    plan.copied(plan.stale(limit=100))
    assert catalog.embedder("ragtune") is None  # no live embedder recorded: none is made up
    plan.begin("ragtune__2", EmbedderRecord("other", "torch", 8))
    assert plan.done() == 0 and _ids(plan) == ["d1", "d2", "d3"]
    assert Reindexing(catalog, "elsewhere").shadow() is None  # per store collection


def test_writes_into_a_collection_switched_away_from_are_refused(tmp_path):
    catalog = _catalog(tmp_path)
    plan = Reindexing(catalog, "ragtune")
    plan.begin("ragtune__1", NEW)
    catalog.mark_pending([PendingDocument("d1", "/d1.md", "h1-changed")])  # an ingestion, started before
    plan.copied(plan.stale(limit=100))
    assert plan.switch(previous_dimension=4)

    stale_writer = ("ragtune", "ragtune")
    with pytest.raises(CatalogError, match="reindex"):
        catalog.mark_indexed([IndexedDocument("d1", 2, "text/markdown", "")], written_to=stale_writer)
    assert catalog.get("d1").status == PENDING  # left for the next ingest to redo
    with pytest.raises(CatalogError, match="reindex"):
        catalog.delete("d2", written_to=stale_writer)
    assert catalog.get("d2") is not None

    current = ("ragtune", "ragtune__1")
    catalog.mark_indexed([IndexedDocument("d1", 2, "text/markdown", "")], written_to=current)
    assert catalog.delete("d2", written_to=current)
    catalog.mark_indexed([IndexedDocument("d3", 3, "text/markdown", "")], written_to=("other", "other"))


def test_a_catalog_from_before_reindexing_gains_the_columns(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    catalog = Catalog(url)
    catalog.record_embedder("ragtune", EmbedderRecord("m", "torch", 4))
    with catalog.engine.begin() as connection:  # as an older ragtune made it
        for column in ("physical", "shadow", "shadow_model", "shadow_backend", "shadow_dimension"):
            connection.exec_driver_sql(f"ALTER TABLE embedders DROP COLUMN {column}")
    catalog.close()
    reopened = Catalog(url)
    assert {"physical", "shadow_dimension"} <= {c["name"] for c in inspect(reopened.engine).get_columns("embedders")}
    assert reopened.physical("ragtune") == "ragtune" and reopened.embedder("ragtune") == EmbedderRecord("m", "torch", 4)


def test_one_run_at_a_time_holds_the_lease_until_it_runs_out_or_its_process_is_gone(tmp_path):
    one_run_at_a_time(_catalog(tmp_path))


def one_run_at_a_time(catalog: Catalog) -> None:
    """The reindex lease, on an empty catalog or `with_documents`' (also run on PostgreSQL)."""
    first, second = Reindexing(catalog, "ragtune"), Reindexing(catalog, "ragtune")
    first.claim(lease_seconds=60)
    first.claim(lease_seconds=60)  # its own lease: renewed
    with pytest.raises(ReindexBusyError, match=rf"a reindex of 'ragtune' is running \(.*:{os.getpid()}:"):
        second.claim(lease_seconds=60)
    Reindexing(catalog, "other").claim(lease_seconds=60)  # another collection is free

    def holder(**values: object) -> None:
        with catalog.session() as s, s.begin():
            s.execute(update(ReindexLeaseRow).where(ReindexLeaseRow.collection == "ragtune").values(**values))

    holder(lease_until=0.0)  # the first run stalled past its lease: the second takes over
    second.claim(lease_seconds=60)
    with pytest.raises(ReindexBusyError, match="another run took it over"):
        first.renew(lease_seconds=60)
    first.release()  # releases only its own lease
    with pytest.raises(ReindexBusyError):
        Reindexing(catalog, "ragtune").claim(lease_seconds=60)

    # A holder of this host whose process no longer runs (killed) is taken over at once; a live
    # one elsewhere is waited for.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holder(owner=f"{socket.gethostname()}:{dead.stdout.strip()}:x")
    Reindexing(catalog, "ragtune").claim(lease_seconds=60)
    holder(owner="elsewhere:1:x", lease_until=9e12)
    with pytest.raises(ReindexBusyError, match=r"running \(elsewhere:1:x\)"):
        Reindexing(catalog, "ragtune").claim(lease_seconds=60)

    # Two runs taking over a lease that ran out, at once: one gets it.
    holder(lease_until=0.0)
    assert sorted(claim_at_once(catalog, "ragtune")) == ["busy", "claimed"]


def claim_at_once(catalog: Catalog, collection: str) -> list[str]:
    """What two runs claiming `collection` at the same moment got: "claimed" or "busy" each."""
    outcomes: list[str] = []
    start = threading.Barrier(2)

    def claim(run: Reindexing) -> None:
        start.wait()
        try:
            run.claim(lease_seconds=60)
            outcomes.append("claimed")
        except ReindexBusyError:
            outcomes.append("busy")

    threads = [threading.Thread(target=claim, args=(Reindexing(catalog, collection),)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcomes
