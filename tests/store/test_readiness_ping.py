"""The readiness ping is bounded: a store that accepts connections but never answers
(a frozen Milvus) turns /ready 503 within seconds, not after the call's own deadline."""

import threading
import time
from types import SimpleNamespace

from ragtune.api.readiness import StoreProbe, ping_timeout


def test_a_hanging_ping_is_reported_within_the_timeout_and_not_restarted():
    release = threading.Event()
    calls = []

    def frozen() -> None:
        calls.append(1)
        release.wait(30)

    probe = StoreProbe("http://127.0.0.1:9", interval=0)
    started = time.monotonic()
    problem = probe.ping(frozen, 0.3)
    assert problem and "did not answer within 0.3 s" in problem
    assert time.monotonic() - started < 2
    assert probe.ping(frozen, 0.1) and len(calls) == 1  # the hanging ping is waited on, not repeated
    release.set()
    time.sleep(0.1)
    assert probe.ping(lambda: None, 1) is None  # recovered


def test_a_failing_ping_reports_its_error():
    def fails() -> None:
        raise RuntimeError("collection not loaded")

    assert StoreProbe("/tmp/lite.db").ping(fails, 1) == "collection not loaded"


def test_ping_timeout_is_at_most_two_seconds():
    def system(seconds: float) -> SimpleNamespace:
        return SimpleNamespace(settings=SimpleNamespace(store=SimpleNamespace(milvus_timeout_seconds=seconds)))

    assert ping_timeout(system(10)) == 2.0  # type: ignore[arg-type]
    assert ping_timeout(system(0.5)) == 0.5  # type: ignore[arg-type]
