"""Each file of the hostile test corpus (tests/hostile/corpus.py) through the parsing sandbox with
the default limits: seconds, outcome, and the time as a ratio to a good Markdown file of 1 MB
parsed in the same run. Writes bench/results/hostile_parse.json (BENCHMARKS.md, "hostile corpus")."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the builders the corpus uses
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.hostile.corpus

from ragtune.config import Settings
from ragtune.ingest.formats import Limits, LoaderError
from ragtune.ingest.sandbox import BoundedParser
from tests.hostile.corpus import corpus, good_text

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    settings = Settings()
    limits = Limits.of(settings.ingest)
    size, overlap = settings.ingest.chunk_size, settings.ingest.chunk_overlap
    parser = BoundedParser(settings.ingest.parse_timeout_s, settings.ingest.parse_max_memory_mb)

    def parse(data: bytes, name: str) -> tuple[float, str]:
        started = time.monotonic()
        try:
            outcome = f"{len(parser.parse(data, name, limits, size, overlap)[1])} chunks"
        except LoaderError as exc:
            outcome = exc.code
        return time.monotonic() - started, outcome

    try:
        parse(b"warm up", "warm.txt")
        baseline, _ = parse((good_text("baseline") * 8_000).encode(), "baseline.md")
        rows = {}
        for f in corpus():
            if f.on_disk:
                seconds, outcome = parse(f.data, f.name)
                rows[f.name] = {
                    "bytes": len(f.data),
                    "seconds": round(seconds, 2),
                    "vs_good_1mb_markdown": round(seconds / baseline, 2),
                    "outcome": outcome,
                }
                print(f"{f.name[:40]:42} {len(f.data):>10} B {seconds:7.2f} s  {outcome}", flush=True)
    finally:
        parser.close()
    result = {"good_1mb_markdown_seconds": round(baseline, 2), "files": rows}
    out = ROOT / "bench" / "results" / "hostile_parse.json"
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"baseline {baseline:.2f} s; wrote {out}")


if __name__ == "__main__":
    main()
