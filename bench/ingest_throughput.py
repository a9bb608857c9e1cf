"""Ingestion throughput: `ragtune ingest` end to end vs raw `SentenceTransformer.encode`.

Both embed exactly the same chunk texts with the same model, batch size and threads, in
one run; the ratio (ragtune chunks/s ÷ raw chunks/s) is the claim in BENCHMARKS.md
(goal ≥ 0.9: parsing, chunking, hashing, the catalog and Milvus inserts cost ≤ 10%).

    .venv/bin/python bench/ingest_throughput.py [--files 300] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from ragtune.config import Settings
from ragtune.embed import LocalEmbedder
from ragtune.ingest.chunking import chunk_document
from ragtune.ingest.formats import Limits
from ragtune.ingest.loaders import load_bytes
from ragtune.system import build

SQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad-dev" / "docs"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--copies", type=int, default=1, help="copies of the 10 squad-dev articles")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        docs = Path(tmp) / "docs"
        docs.mkdir()
        for copy in range(args.copies):
            for article in sorted(SQUAD.glob("*.md")):
                (docs / f"{copy}-{article.name}").write_text(article.read_text(encoding="utf-8"), encoding="utf-8")
        # torch on both sides: this measures ragtune's own cost around the model (the backends
        # are compared in bench/embedding_backends.py).
        settings = Settings(data_dir=Path(tmp) / "data", embedding_backend="torch")
        embedder = LocalEmbedder(batch_size=settings.embedding.batch_size)
        chunks = [
            c
            for path in sorted(docs.iterdir())
            for c in chunk_document(
                load_bytes(path.read_bytes(), str(path), Limits(settings.ingest.max_uncompressed_bytes)),
                settings.ingest.chunk_size,
                settings.ingest.chunk_overlap,
            )
        ]
        texts = [c.text for c in chunks]
        embedder.embed(texts[:64])  # warm-up, same for both

        started = time.perf_counter()
        embedder._model.encode(texts, batch_size=embedder.batch_size, normalize_embeddings=True)
        raw_s = time.perf_counter() - started

        with build(settings, embedder=embedder, generator=False) as system:
            started = time.perf_counter()
            report = system.ingestor.ingest_paths([docs], progress=False)
            ragtune_s = time.perf_counter() - started
        assert report.chunks == len(chunks), (report.chunks, len(chunks))

    result = {
        "chunks": len(chunks),
        "files": len(report.indexed),
        "raw_encode_chunks_per_s": round(len(chunks) / raw_s, 1),
        "ragtune_ingest_chunks_per_s": round(len(chunks) / ragtune_s, 1),
        "ratio": round(raw_s / ragtune_s, 3),
        "torch_threads": args.threads,
    }
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
