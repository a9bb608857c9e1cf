"""Load test of `ragtune serve`: concurrent clients sending retrieval-only questions over 10k chunks.

    .venv/bin/python bench/load.py                       # 16 clients, 60 s, 10,000 chunks
    .venv/bin/python bench/load.py --profile --out bench/results/service.md

1. Builds (once; cached under bench/out/) an index of `--chunks` distinct chunks: passages of
   four to six sentences drawn with a fixed seed from the SQuAD dev corpus in shared/data.
2. Starts `ragtune serve` on a free loopback port over that index, as a user would.
3. Runs `--clients` concurrent clients for `--duration` seconds (after `--warmup`), each
   sending POST /v1/query {"question": <a SQuAD question>, "retrieve_only": true} in a loop.
4. Reports throughput, latency percentiles and errors; splits the server's time per request
   into the embedding model, the vector store and ragtune's own code from the server's
   Prometheus histograms; with --profile, samples the server with py-spy for a CPU profile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
SQUAD = REPO.parent / "shared" / "data" / "squad-dev"
SEED = 13


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60.0, help="Measured seconds.")
    parser.add_argument("--warmup", type=float, default=5.0, help="Seconds of load before measuring.")
    parser.add_argument("--mode", default="hybrid", choices=["dense", "bm25", "hybrid"])
    parser.add_argument("--torch-threads", type=int, default=1, help="RAGTUNE_TORCH_THREADS of the server.")
    parser.add_argument(
        "--embedding-backend",
        choices=["torch", "onnx", "onnx-int8"],
        help="RAGTUNE_EMBEDDING_BACKEND of the server (default: ragtune's); the index is re-embedded to match.",
    )
    parser.add_argument("--profile", action="store_true", help="Sample the server with py-spy while measuring.")
    parser.add_argument("--out", type=Path, help="Write the results as Markdown here.")
    parser.add_argument("--work-dir", type=Path, default=REPO / "bench" / "out" / "load")
    return parser.parse_args()


# --- the index ----------------------------------------------------------------------------------
def passages(n: int) -> list[tuple[str, str]]:
    """`n` distinct (title, text) passages of 4-6 SQuAD sentences each, under 1,000 characters."""
    from ragtune.generate.extractive import split_sentences

    sentences, titles = [], []
    for line in (SQUAD / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        for sentence in split_sentences(record["text"]):
            if 40 <= len(sentence) <= 220:
                sentences.append(sentence)
                titles.append(record["title"])
    rng = random.Random(SEED)
    out, seen = [], set()
    while len(out) < n:
        start = rng.randrange(len(sentences))
        picked = [start, *rng.sample(range(len(sentences)), rng.randint(3, 5))]
        text = " ".join(sentences[i] for i in picked)
        if len(text) < 1000 and text not in seen:
            seen.add(text)
            out.append((titles[start], text))
    return out


def build_index(data_dir: Path, n_chunks: int, backend: str) -> dict:
    marker = data_dir / "bench-index.json"
    if marker.exists() and json.loads(marker.read_text())["chunks"] == n_chunks:
        match_embedder(data_dir, backend)
        return json.loads(marker.read_text())
    import shutil

    from ragtune.config import Settings
    from ragtune.system import build
    from ragtune.types import LoadedDocument, Section

    shutil.rmtree(data_dir, ignore_errors=True)
    started = time.perf_counter()
    docs = [
        LoadedDocument(f"squad-mix/{i:05d}.txt", "text/plain", title, [Section(text)])
        for i, (title, text) in enumerate(passages(n_chunks))
    ]
    settings = Settings(data_dir=data_dir, torch_threads=os.cpu_count() or 1, embedding_backend=backend)
    with build(settings, generator=False) as system:
        report = system.ingestor.ingest_documents(docs)
        count = system.store.count()
    if report.failed or count != n_chunks:
        raise SystemExit(f"indexing went wrong: {len(report.failed)} failed, {count} chunks stored, {n_chunks} wanted")
    info = {"chunks": count, "documents": len(docs), "index_seconds": round(time.perf_counter() - started, 1)}
    marker.write_text(json.dumps(info))
    return info


def match_embedder(data_dir: Path, backend: str) -> None:
    """Re-embeds the cached index when it was built with another backend's numbers."""
    from ragtune.config import Settings
    from ragtune.ingest.reembed import same_vectors
    from ragtune.store.catalog import Catalog, EmbedderRecord

    settings = Settings(data_dir=data_dir)
    catalog = Catalog(settings.resolved_catalog_url())
    recorded = catalog.embedder(settings.store.collection)
    catalog.close()
    if recorded is None or same_vectors(recorded, EmbedderRecord(recorded.model, backend, recorded.dimension)):
        return
    print(f"re-embedding the index ({recorded.backend} -> {backend}) …", flush=True)
    env = os.environ | {"RAGTUNE_DATA_DIR": str(data_dir), "RAGTUNE_EMBEDDING_BACKEND": backend}
    env["RAGTUNE_TORCH_THREADS"] = str(os.cpu_count() or 1)
    subprocess.run([sys.executable, "-m", "ragtune.cli", "reindex"], env=env, check=True)


def questions() -> list[str]:
    lines = (SQUAD / "queries.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines]


# --- the server ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, torch_threads: int, backend: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = os.environ | {
        "RAGTUNE_DATA_DIR": str(data_dir),
        "RAGTUNE_TORCH_THREADS": str(torch_threads),
        "RAGTUNE_EMBEDDING_BACKEND": backend,
        "HF_HUB_OFFLINE": "1",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "ragtune.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"ragtune serve exited; see {log_path}")
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise SystemExit(f"ragtune serve did not become ready in 300 s; see {log_path}")


def child_pids(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        found += [int(c) for c in children]
    return found + [g for c in found for g in child_pids(c)]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


# --- the load -----------------------------------------------------------------------------------
async def run_load(url: str, qs: list[str], clients: int, warmup: float, duration: float, mode: str) -> dict:
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    measuring = asyncio.Event()
    stop = asyncio.Event()
    rng = random.Random(SEED)

    async def client(http: httpx.AsyncClient) -> None:
        while not stop.is_set():
            question = rng.choice(qs)
            started = time.perf_counter()
            try:
                response = await http.post(
                    "/v1/query", json={"question": question, "retrieve_only": True, "mode": mode}
                )
                outcome = str(response.status_code)
                if response.status_code == 200 and not response.json()["retrieved"]:
                    outcome = "200-empty"
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            if measuring.is_set() and not stop.is_set():
                latencies.append(time.perf_counter() - started)
                statuses[outcome] += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:
        tasks = [asyncio.create_task(client(http)) for _ in range(clients)]
        await asyncio.sleep(warmup)
        before = (await http.get("/metrics")).text
        measuring.set()
        started = time.perf_counter()
        await asyncio.sleep(duration)
        stop.set()
        elapsed = time.perf_counter() - started
        await asyncio.gather(*tasks)
        after = (await http.get("/metrics")).text
    return {"latencies": latencies, "statuses": statuses, "elapsed": elapsed, "metrics": (before, after)}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1] if len(values) > 1 else values[0]


# --- where the server's time goes ------------------------------------------------------------------
_SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? ([0-9.e+-]+)$")


def histogram_sums(exposition: str) -> dict[str, float]:
    """sum and count of the request, retrieval, embedding and store histograms."""
    wanted = {}
    for line in exposition.splitlines():
        match = _SAMPLE.match(line)
        if not match or not match.group(1).endswith(("_sum", "_count")):
            continue
        name, labels, value = match.groups()
        labels = labels or ""
        if name.startswith("ragtune_http_request_duration_seconds") and 'route="/v1/query"' not in labels:
            continue
        if name.startswith("ragtune_vectorstore_query_duration_seconds") and "search" not in labels:
            continue
        if name.startswith(
            ("ragtune_http_request_duration", "ragtune_retrieval", "ragtune_embedding", "ragtune_vectorstore")
        ):
            key = name.removeprefix("ragtune_")
            wanted[key] = wanted.get(key, 0.0) + float(value)
    return wanted


def breakdown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    requests = delta["http_request_duration_seconds_count"] or 1
    per_request = {
        "request": delta["http_request_duration_seconds_sum"] / requests,
        "retrieval": delta["retrieval_duration_seconds_sum"] / requests,
        "embedding": delta["embedding_duration_seconds_sum"] / requests,
        "store": delta["vectorstore_query_duration_seconds_sum"] / requests,
    }
    per_request["overhead"] = per_request["request"] - per_request["embedding"] - per_request["store"]
    return {k: v * 1000 for k, v in per_request.items()}  # ms


# py-spy names a frame "function (package/module.py:line)"; the first match from the innermost
# frame outwards decides where a sample's time went.
_CATEGORIES = [
    (
        "embedding model (ONNX Runtime or torch, sentence-transformers, tokenizers)",
        re.compile(r"[(/](onnxruntime|torch|sentence_transformers|transformers|tokenizers|numpy)/"),
    ),
    ("vector store client (pymilvus, grpc, protobuf)", re.compile(r"[(/](pymilvus|grpc|google/protobuf)/")),
    (
        "HTTP and validation (uvicorn, starlette, fastapi, pydantic, json)",
        re.compile(r"[(/](uvicorn|starlette|fastapi|pydantic|pydantic_core|anyio|h11|httptools|json)/"),
    ),
    ("ragtune's own code", re.compile(r"[(/]ragtune/")),
]


# Blocked, not computing: py-spy reports a thread waiting in Python-visible code as busy. A sample
# whose innermost line is one of these waits is counted as waiting, not as CPU.
_WAIT_LINE = re.compile(
    r"\.acquire\(|\.wait\(|next_event\(|\bwith\b[^:]*_lock\b|_lock\.__enter__\(|run_until_complete\("
)
_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>[^()]+):(?P<line>\d+)\)$")


def _source_line(path: str, line: int, cache: dict[tuple[str, int], str]) -> str:
    key = (path, line)
    if key not in cache:
        cache[key] = ""
        for root in sys.path:
            candidate = Path(root or ".") / path
            if candidate.is_file():
                lines = candidate.read_text(encoding="utf-8", errors="replace").splitlines()
                cache[key] = lines[line - 1] if 0 < line <= len(lines) else ""
                break
    return cache[key]


def profile_summary(raw: Path) -> tuple[list[tuple[str, float]], list[tuple[str, float]], int, float]:
    """From py-spy's collapsed stacks: (where the CPU samples went, hottest CPU frames, all
    samples, the share of samples that were waits)."""
    categories: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    lines: dict[tuple[str, int], str] = {}
    total = waiting = 0
    for entry in raw.read_text().splitlines():
        stack, _, count = entry.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        leaf = _FRAME.match(frames[-1])
        if leaf and _WAIT_LINE.search(_source_line(leaf["path"], int(leaf["line"]), lines)):
            waiting += n
            continue
        leaves[frames[-1]] += n
        for frame in reversed(frames):
            name = next((label for label, pattern in _CATEGORIES if pattern.search(frame)), None)
            if name:
                categories[name] += n
                break
        else:
            categories["other (threads, asyncio, stdlib)"] += n
    busy = total - waiting
    shares = [(k, v / busy) for k, v in categories.most_common()]
    return shares, [(k, v / busy) for k, v in leaves.most_common(12)], total, waiting / total


# --- report ---------------------------------------------------------------------------------------
def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    args = parse_args()
    if not SQUAD.is_dir():
        raise SystemExit(f"{SQUAD} is missing: this benchmark needs the squad-dev set beside the repository")
    from ragtune.config import Settings

    backend = args.embedding_backend or Settings().embedding.backend
    args.work_dir.mkdir(parents=True, exist_ok=True)
    data_dir = args.work_dir / f"data-{args.chunks}"
    print(f"index: {args.chunks} chunks in {data_dir} …", flush=True)
    index = build_index(data_dir, args.chunks, backend)
    qs = questions()
    server, url = start_server(data_dir, args.torch_threads, backend, args.work_dir / "serve.log")
    profiler = None
    try:
        pids = [server.pid, *child_pids(server.pid)]  # the server and the Milvus Lite process
        cpu_before = {p: cpu_seconds(p) for p in pids}
        raw = args.work_dir / "profile.txt"
        if args.profile:
            profiler = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "--pid",
                    str(server.pid),
                    "--rate",
                    "100",
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                    "--duration",
                    str(int(args.warmup + args.duration)),
                    "--nonblocking",
                ],  # pausing the server for each sample would cut its throughput by a third
                stdout=subprocess.DEVNULL,
                stderr=(args.work_dir / "py-spy.log").open("w"),
            )
        load_before = Path("/proc/loadavg").read_text().split()[0]
        print(
            f"load: {args.clients} clients, {args.warmup:.0f} s warm-up + {args.duration:.0f} s against {url} …",
            flush=True,
        )
        result = asyncio.run(run_load(url, qs, args.clients, args.warmup, args.duration, args.mode))
        cpu = {p: cpu_seconds(p) - cpu_before[p] for p in pids}
        if profiler is not None:
            profiler.wait(120)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)

    latencies, statuses, elapsed = result["latencies"], result["statuses"], result["elapsed"]
    ok = statuses.get("200", 0)
    errors = sum(statuses.values()) - ok
    split = breakdown(*(histogram_sums(text) for text in result["metrics"]))
    lines = [
        f"Command: `.venv/bin/python bench/load.py --chunks {args.chunks} --clients {args.clients} --duration {args.duration:.0f}"
        f"{' --profile' if args.profile else ''} --embedding-backend {backend}` (server: `ragtune serve`, RAGTUNE_TORCH_THREADS={args.torch_threads}, "
        f"RAGTUNE_EMBEDDING_BACKEND={backend}, retrieval mode {args.mode}).",
        "",
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()}; the load generator, the server "
        "and Milvus Lite share these CPUs.",
        "",
        f"Index: {index['chunks']} chunks (passages of SQuAD-dev sentences), built once by the first run and reused "
        f"from bench/out/load/ (building took {index['index_seconds']} s on the shared machine; not a throughput figure).",
        "",
        "| clients | duration | requests | req/s | p50 | p95 | p99 | errors |",
        "|---|---|---|---|---|---|---|---|",
        f"| {args.clients} | {elapsed:.1f} s | {sum(statuses.values())} | {ok / elapsed:.1f} | "
        f"{percentile(latencies, 0.50) * 1000:.1f} ms | {percentile(latencies, 0.95) * 1000:.1f} ms | "
        f"{percentile(latencies, 0.99) * 1000:.1f} ms | {errors} |",
        "",
        "Where the server's time goes, per request (from its Prometheus histograms; wall time inside the server: "
        "a question's embedding includes its wait to join a batch, and waiting for a CPU counts where it happens):",
        "",
        "| part | ms per request | share |",
        "|---|---|---|",
        f"| embedding the question (model) | {split['embedding']:.2f} | {split['embedding'] / split['request']:.0%} |",
        f"| vector store searches (dense + BM25, Milvus Lite) | {split['store']:.2f} | {split['store'] / split['request']:.0%} |",
        f"| ragtune and HTTP overhead (the rest) | {split['overhead']:.2f} | {split['overhead'] / split['request']:.0%} |",
        f"| whole request in the server | {split['request']:.2f} | 100% |",
        "",
        "CPU seconds used during the run: "
        + ", ".join(f"{'server' if p == server.pid else f'child {p} (Milvus Lite)'} {s:.1f} s" for p, s in cpu.items())
        + f", this load generator {time.process_time():.1f} s (including its startup). The 1-minute load average "
        f"was {load_before} before the run; other processes on the machine compete for the same CPUs.",
    ]
    if errors:
        lines += ["", f"Outcomes: {dict(statuses)}"]
    if args.profile and raw.exists():
        shares, leaves, samples, waiting = profile_summary(raw)
        lines += [
            "",
            f"CPU profile of the server process (py-spy, 100 Hz, {samples} samples; Milvus Lite runs in its own process "
            f"and is not in it). {waiting:.0%} of the samples caught a thread waiting (for the model lock, a Milvus reply, "
            "the event loop's next event); the shares below are of the other samples, where the server computed:",
            "",
            "| where | share of CPU samples |",
            "|---|---|",
            *[f"| {name} | {share:.0%} |" for name, share in shares],
            "",
            "Hottest functions (innermost frame):",
            "",
            "| function | share |",
            "|---|---|",
            *[f"| `{leaf}` | {share:.1%} |" for leaf, share in leaves],
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
