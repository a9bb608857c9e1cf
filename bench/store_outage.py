"""Times of a frozen (SIGSTOP) and a stopped Milvus server as the API sees them."""
import json, os, signal, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.api.support: the real server helpers
from ragtune.embed.embedders import LocalEmbedder
from tests.api.support import MilvusServer, app_client, service_settings, wait_for_job, wait_until

Q = {"question": "Which port does the Milvus server listen on?"}
tmp = Path(tempfile.mkdtemp())
milvus = MilvusServer(tmp / "m" / "s.db").start()
out = {}
def timed(name, call):
    t = time.monotonic(); r = call(); out[name] = (round(time.monotonic() - t, 2), r.status_code); return r
with app_client(service_settings(tmp / "data", milvus_uri=milvus.uri), LocalEmbedder(batch_size=32)) as c:
    a = c.post("/v1/documents", files=[("files", ("m.md", b"# Milvus\n\nThe Milvus server listens on port 19530."))]).json()
    wait_for_job(c, a["job_id"])
    pid = milvus._server._p.pid
    os.kill(pid, signal.SIGSTOP)
    timed("frozen /ready", lambda: c.get("/ready"))
    timed("frozen /metrics", lambda: c.get("/metrics"))
    timed("frozen /v1/query", lambda: c.post("/v1/query", json=Q))
    timed("frozen /v1/query stream", lambda: c.post("/v1/query", json=Q | {"stream": True}))
    timed("frozen /v1/chat/completions", lambda: c.post("/v1/chat/completions", json={"model": "ragtune", "messages": [{"role": "user", "content": Q["question"]}]}))
    os.kill(pid, signal.SIGCONT)
    t = time.monotonic(); wait_until(lambda: c.get("/ready").status_code == 200, 60, "ready"); out["frozen: recovered after SIGCONT"] = round(time.monotonic() - t, 2)
    milvus.stop()
    timed("stopped /ready", lambda: c.get("/ready"))
    timed("stopped /v1/query", lambda: c.post("/v1/query", json=Q))
    milvus.start()
    t = time.monotonic(); wait_until(lambda: c.get("/ready").status_code == 200, 60, "ready"); out["stopped: recovered after restart"] = round(time.monotonic() - t, 2)
    timed("after /v1/query", lambda: c.post("/v1/query", json=Q))
milvus.stop()
print(json.dumps(out, indent=1))
Path("bench/results/store_outage.json").write_text(json.dumps({"milvus_timeout_seconds": 10, "seconds_and_status": out}, indent=1) + "\n")
