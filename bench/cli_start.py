"""How long one `ragtune ask` takes as a command, this tree against another source tree, in one run.

Both ask the same question of the same index (the bundled samples, embedded with the default
ONNX int8 model), alternately, so load from other processes hits both alike. A command's time
is mostly its start: imports, the embedder, Milvus Lite. The baseline is any other checkout's
``src`` folder, e.g. the commit before a change:

    git worktree add /tmp/ragtune-before HEAD~1
    .venv/bin/python bench/cli_start.py --baseline-src /tmp/ragtune-before/src --out bench/results/cli_start.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUESTION = "What does the operations guide say about backups?"


def ragtune(src: Path, data_dir: Path, *args: str) -> float:
    """Seconds one `ragtune` command takes with `src` first on the path."""
    env = os.environ | {"PYTHONPATH": str(src), "RAGTUNE_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ragtune.cli", *args], env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-src", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cli_start.json")
    args = parser.parse_args()
    trees = {"baseline": args.baseline_src.resolve(), "this tree": REPO / "src"}
    with tempfile.TemporaryDirectory(prefix="ragtune-cli-start-") as scratch:
        data = {name: Path(scratch) / name.replace(" ", "-") for name in trees}
        for name, src in trees.items():  # each index and ONNX export made by its own tree, once
            ragtune(src, data[name], "ingest", str(REPO / "samples"))
            ragtune(src, data[name], "ask", QUESTION)
        times: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(args.repeats):
            for name, src in trees.items():
                times[name].append(ragtune(src, data[name], "ask", QUESTION))
    medians = {name: statistics.median(values) for name, values in times.items()}
    results = {
        "command": f"ragtune ask {QUESTION!r} (extractive, onnx-int8 embedder, the samples' index)",
        "repeats": args.repeats,
        "seconds": {name: [round(t, 2) for t in values] for name, values in times.items()},
        "median_seconds": {name: round(t, 2) for name, t in medians.items()},
        "this_tree_over_baseline": round(medians["this tree"] / medians["baseline"], 2),
        "load_average_at_end": os.getloadavg()[0],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
