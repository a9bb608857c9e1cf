"""Documents filed into collections with metadata, through the indexer and the command line."""

from __future__ import annotations

import json

import pytest

from ragtune.ingest.chunking import document_id
from ragtune.types import Filters, Labels, MetadataError, metadata_conditions
from tests.test_cli import run


def test_one_folder_in_two_collections_is_two_sets_of_documents_pruned_apart(system, sample_dir):
    default = system.ingestor.ingest_paths([sample_dir])
    finance = system.ingestor.ingest_paths([sample_dir], Labels("finance", ("q3",), {"year": 2024}))
    assert len(default.indexed) == len(finance.indexed) == 5
    total = system.catalog.list(limit=50)[1]
    assert total == 10 and system.catalog.collections() == {"finance": 5, "ragtune": 5}
    guide = str(next(p for p in sample_dir.iterdir() if p.is_file()).resolve())
    in_default, in_finance = system.catalog.find(guide), system.catalog.find(guide, "finance")
    assert in_default.id == document_id(guide)  # ids from before collections are kept
    assert in_finance.id != in_default.id and in_finance.metadata == {"year": 2024}

    hits = system.retriever.run("How do I start the server?", 10, filters=Filters(collections=("finance",)))
    assert hits and {h.collection for h in hits} == {"finance"} and all(h.metadata == {"year": 2024} for h in hits)
    scoped = Filters(collections=("finance",), metadata=metadata_conditions({"year": {"gte": 2025}}))
    assert system.retriever.run("How do I start the server?", 10, filters=scoped) == []

    (sample_dir / guide.rsplit("/", 1)[1]).unlink()
    report = system.ingestor.ingest_paths([sample_dir], Labels("finance", ("q3",), {"year": 2024}))
    assert report.removed == [guide] and system.catalog.find(guide) is not None  # the default one stays
    assert system.catalog.find(guide, "finance") is None


def test_new_metadata_reindexes_an_unchanged_file_and_the_same_metadata_does_not(system, sample_dir):
    system.ingestor.ingest_paths([sample_dir], Labels(metadata={"year": 2023}))
    assert len(system.ingestor.ingest_paths([sample_dir], Labels(metadata={"year": 2023})).unchanged) == 5
    again = system.ingestor.ingest_paths([sample_dir], Labels(metadata={"year": 2024}))
    assert len(again.indexed) == 5
    found = system.store.count(Filters(metadata=metadata_conditions({"year": 2024})))
    assert (
        found == system.store.count() and system.store.count(Filters(metadata=metadata_conditions({"year": 2023}))) == 0
    )


def test_a_bad_collection_name_is_refused_before_anything_is_indexed(system, sample_dir):
    with pytest.raises(MetadataError, match="not a valid name"):
        system.ingestor.ingest_paths([sample_dir], Labels("-finance"))
    assert system.catalog.counts()["indexed"] == 0


@pytest.mark.slow
def test_cli_ingest_into_a_collection_with_metadata_and_ask_with_filters(tmp_path, sample_dir):
    data = tmp_path / "data"
    result = run(["ingest", str(sample_dir), "--collection", "finance", "--meta", "year=2024", "-m", "team=ops"], data)
    assert result.returncode == 0, result.stderr
    assert run(["ingest", str(sample_dir)], data).returncode == 0

    # scoped by collection and by metadata (the default collection's documents have none)
    asked = run(
        ["ask", "How do I start the server?", "--where", "year>=2024", "--where", "team=ops|hr", "--json"], data
    )
    assert asked.returncode == 0, asked.stderr
    retrieved = json.loads(asked.stdout)["retrieved"]
    assert retrieved and {r["collection"] for r in retrieved} == {"finance"}
    none = run(["ask", "How do I start the server?", "--collection", "finance", "--where", "year>2024", "--json"], data)
    assert none.returncode == 0 and json.loads(none.stdout)["retrieved"] == []

    listed = run(["documents", "--collection", "finance", "--json"], data)
    documents = json.loads(listed.stdout)["documents"]
    assert len(documents) == 5 and all(d["metadata"] == {"year": 2024, "team": "ops"} for d in documents)

    for bad, says in (  # each rule has its own test; here, that the CLI says it and exits 2
        (["ingest", str(sample_dir), "--meta", "1year=2024"], "metadata key"),
        (["ask", "anything?", "--where", "year~2024"], "--where"),
    ):
        refused = run(bad, data)
        assert refused.returncode == 2 and says in refused.stderr, (bad, refused.stderr)


def test_markdown_front_matter_is_metadata_and_not_text_and_ingest_metadata_overrides_it(system, tmp_path):
    from ragtune.ingest.loaders import load_bytes

    note = b"---\nteam: finance\nyear: 2023\ndate: 2024-05-01\ntags: [a, b]\n---\n# Budget\n\nThe budget grew.\n"
    doc = load_bytes(note, "budget.md")
    assert doc.metadata == {"team": "finance", "year": 2023, "date": "2024-05-01"}  # lists are not metadata
    assert "team:" not in doc.text and doc.sections[0].heading == "Budget"
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "budget.md").write_bytes(note)
    system.ingestor.ingest_paths([folder], Labels(metadata={"year": 2024}))
    record = system.catalog.list()[0][0]
    assert record.metadata == {"team": "finance", "year": 2024, "date": "2024-05-01"}
    assert system.store.count(Filters(metadata=metadata_conditions({"team": "finance", "year": 2024}))) == 1


@pytest.mark.parametrize(
    ("front", "metadata", "text"),
    [
        (b"---\nteam: [unclosed\n---\nbody\n", {}, "team: [unclosed"),  # not YAML: text, as before
        (b"---\n\nA rule, then prose.\n\n---\nbody\n", {}, "A rule, then prose."),  # not a mapping
        (
            b"---\nlast-updated: x\nnote: >\n  folded\n  text\nlong: " + b"y" * 300 + b"\nok: 1\n---\nbody\n",
            {"note": "folded text", "ok": 1},
            "body",
        ),
        (b"---\n\nno closing line, so no front matter\n", {}, "no closing line"),
    ],
)
def test_front_matter_never_fails_a_document_and_keeps_only_valid_metadata(front, metadata, text):
    from ragtune.ingest.loaders import load_bytes

    doc = load_bytes(front, "note.md")
    assert doc.metadata == metadata and text in " ".join([doc.text, *(s.heading for s in doc.sections)])


def test_a_files_own_metadata_yields_to_ingest_metadata_within_the_key_limit():
    from ragtune.types import MAX_METADATA_KEYS, merge_metadata, parse_meta_pair

    own = {f"k{i}": i for i in range(MAX_METADATA_KEYS)}
    merged = merge_metadata(own, {"k0": "given", "team": "ops"})
    assert len(merged) == MAX_METADATA_KEYS and merged["k0"] == "given" and merged["team"] == "ops"
    assert parse_meta_pair("zip=02134") == ("zip", "02134") and parse_meta_pair("year=2024") == ("year", 2024)
    assert parse_meta_pair("ratio=0.5") == ("ratio", 0.5) and parse_meta_pair("flag=true") == ("flag", True)
    with pytest.raises(MetadataError):
        parse_meta_pair("te am=x")
