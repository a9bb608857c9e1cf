"""Issue 15's costs, each as a ratio to a baseline measured in the same run:

1. parsing and chunking one document of each format (the same rows of text) through the
   parsing sandbox, against the plain-text file;
2. a dense search of 20,000 chunks in 4 collections scoped to one collection, and also
   filtered by metadata (equality + a numeric range), against the unfiltered search;
3. opening a Milvus Lite store made before collections (its in-place upgrade) of 10,000 rows,
   against inserting those rows into a new store.

Writes bench/results/formats_filters.json (BENCHMARKS.md, "Formats, collections and filters")."""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.builders, tests.store

import numpy as np
import torch

from ragtune.config import Settings
from ragtune.ingest.formats import Limits
from ragtune.ingest.sandbox import BoundedParser
from ragtune.store.milvus import MilvusStore
from ragtune.types import Chunk, Filters, metadata_conditions
from tests.builders import (
    docx_with_table,
    image_bytes,
    pptx_bytes,
    table_pdf_bytes,
    text_image,
    xlsx_bytes,
)
from tests.store.test_collections import _old_collection

ROOT = Path(__file__).resolve().parents[1]
ROWS = [["region", "quarter", "revenue"]] + [[f"region {i}", f"Q{i % 4 + 1}", str(1000 + i)] for i in range(40)]
LINES = [" ".join(row) for row in ROWS]


def documents() -> dict[str, bytes]:
    csv_text = "\n".join(",".join(row) for row in ROWS) + "\n"
    return {
        "baseline.txt": "\n".join(LINES).encode(),
        "front-matter.md": ("---\nteam: finance\nyear: 2024\n---\n# Revenue\n\n" + "\n\n".join(LINES)).encode(),
        "table.pdf": table_pdf_bytes("Revenue by region", ROWS, "End of table"),
        "table.docx": docx_with_table("Revenue by region", ROWS, "End of table"),
        "slides.pptx": pptx_bytes([(f"Slide {i}", LINES[i], "notes") for i in range(1, 11)], ROWS[:8]),
        "sheet.xlsx": xlsx_bytes(
            {"revenue": [[c if j < 2 else int(c) if c.isdigit() else c for j, c in enumerate(r)] for r in ROWS]}
        ),
        "sheet.csv": csv_text.encode(),
        "page.png": image_bytes([text_image(LINES[:12])]),
        "scan.pdf": image_bytes([text_image(LINES[:12])], "PDF"),
    }


def parse_costs() -> dict[str, dict[str, float | int]]:
    settings = Settings()
    limits = Limits.of(settings.ingest)
    parser = BoundedParser(settings.ingest.parse_timeout_s, settings.ingest.parse_max_memory_mb)
    size, overlap = settings.ingest.chunk_size, settings.ingest.chunk_overlap
    results: dict[str, dict[str, float | int]] = {}
    try:
        parser.parse(b"warm up", "warm.txt", limits, size, overlap)
        for name, data in documents().items():
            times, chunks = [], 0
            for _ in range(3):
                started = time.perf_counter()
                chunks = len(parser.parse(data, name, limits, size, overlap)[1])
                times.append(time.perf_counter() - started)
            results[name] = {"seconds": statistics.median(times), "chunks": chunks}
    finally:
        parser.close()
    base = results["baseline.txt"]["seconds"]
    for row in results.values():
        row["ratio"] = round(row["seconds"] / base, 1)
        row["seconds"] = round(row["seconds"], 4)
    return results


def filter_costs(directory: Path) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(0)
    store = MilvusStore(str(directory / "filters.db"), "ragtune", dimension=384)
    count = 20_000
    chunks = [
        Chunk(
            f"d{i}-00000",
            f"d{i}",
            0,
            f"chunk {i}",
            f"/d{i}.md",
            "T",
            0,
            "",
            (),
            f"team{i % 4}",
            {"year": 2015 + i % 10},
        )
        for i in range(count)
    ]
    vectors = rng.standard_normal((count, 384)).astype(np.float32)
    store.insert(chunks, vectors)
    queries = rng.standard_normal((50, 384)).astype(np.float32)
    cases = {
        "no filter": None,
        "one collection": Filters(collections=("team1",)),
        "collection + metadata": Filters(
            collections=("team1",), metadata=metadata_conditions({"year": {"gte": 2020}, "team": {"ne": "x"}})
        ),
    }
    results = {}
    for name, filters in cases.items():
        store.search_dense(queries[:2], 10, filters)  # warm
        started = time.perf_counter()
        for q in queries:
            store.search_dense(q[None], 10, filters)
        results[name] = {"ms_per_query": (time.perf_counter() - started) / len(queries) * 1000}
    store.close()
    base = results["no filter"]["ms_per_query"]
    for row in results.values():
        row["ratio"] = round(row["ms_per_query"] / base, 2)
        row["ms_per_query"] = round(row["ms_per_query"], 2)
    return results


def upgrade_cost(directory: Path) -> dict[str, float]:
    rows = 10_000
    fresh = MilvusStore(str(directory / "fresh.db"), "ragtune", dimension=3)
    chunks = [Chunk(f"d-{i:05d}", "d", i, f"old chunk number {i}", "/d.md", "D", 0, "", ("old",)) for i in range(rows)]
    started = time.perf_counter()
    fresh.insert(chunks, np.ones((rows, 3), dtype=np.float32))
    insert = time.perf_counter() - started
    fresh.close()
    _old_collection(str(directory / "old.db"), rows)
    started = time.perf_counter()
    MilvusStore(str(directory / "old.db"), "ragtune", dimension=3).close()
    upgrade = time.perf_counter() - started
    return {
        "rows": rows,
        "insert_s": round(insert, 2),
        "upgrade_s": round(upgrade, 2),
        "ratio": round(upgrade / insert, 2),
    }


def main() -> None:
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        report = {"parse": parse_costs(), "filters": filter_costs(Path(tmp)), "upgrade": upgrade_cost(Path(tmp))}
    out = ROOT / "bench" / "results" / "formats_filters.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
