"""`POST /v1/admin/reload`: a promoted adapter or embedder is served without a restart, /ready and /metrics
say so, and a model that does not load leaves the service as documented (the adapter: the old one serving)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from ragtune.api.deps import Services
from ragtune.store.keys import KeyStore
from ragtune.tune.promote import promote
from ragtune.tune.report import TuneReport
from tests.api.support import SAMPLES, app_client, sample_files, service_settings, wait_for_job
from tests.builders import build_tiny_llama, tiny_sentence_model

ADMIN_KEY = "rt_reload_admin_key"


def _adapter(base: Path, target: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    # init_lora_weights=False: random A and B, so the adapter changes the outputs.
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), config).save_pretrained(target)
    return target


def _logits(services) -> torch.Tensor:
    lm = services.system.rag.generator.lm
    with torch.inference_mode():
        return lm.model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits[0, -1]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def test_reload_serves_a_promoted_adapter_and_reports_it(tmp_path, embedder, tiny_llama):
    settings = service_settings(
        tmp_path / "data", generator="local", llm_model=str(tiny_llama), llm_max_new_tokens=4, api_keys=ADMIN_KEY
    )
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with app_client(settings, embedder) as client:
        before = client.get("/ready", headers=admin).json()["serving"]
        assert before["adapter"] == "" and before["adapter_promoted_at"] is None and before["generator"] == "local"
        assert before["embedder"] == embedder.name and before["embedder_promoted_at"] is None
        assert 'adapter="",adapter_promoted="false"' in client.get("/metrics", headers=admin).text
        base_logits = _logits(client.app.state.services)

        reader = KeyStore(client.app.state.services.system.catalog).create("r", role="reader").secret
        client.app.state.services.authenticator.refresh()
        refused = client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {reader}"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
        assert client.post("/v1/admin/reload", headers=admin).json()["reloaded"] == []  # nothing promoted yet

        # An adapter that does not load is refused, and the service goes on with what it served.
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "adapter_config.json").write_text("{not json")
        assert promote(settings, TuneReport("answerer", str(broken), "f1", {"f1": 0.1}, {"f1": 0.2})).promote
        failed = client.post("/v1/admin/reload", headers=admin)
        assert failed.status_code == 500 and failed.json()["error"]["code"] == "reload_failed", failed.text
        assert "adapter did not load" in failed.json()["error"]["message"]
        assert client.get("/ready", headers=admin).json()["serving"]["adapter"] == ""
        assert client.post("/v1/query", json={"question": "What is on?"}, headers=admin).status_code == 200

        adapter = _adapter(tiny_llama, tmp_path / "adapter")
        report = TuneReport("answerer", str(adapter), "f1", before={"f1": 0.1}, after={"f1": 0.2})
        assert promote(settings, report).promote  # what `ragtune tune answerer --promote` does
        reloaded = client.post("/v1/admin/reload", headers=admin)
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["reloaded"] == ["adapter"]
        serving = client.get("/ready", headers=admin).json()["serving"]
        assert serving["adapter"] == str(adapter.resolve()) and serving["adapter_promoted_at"] is not None
        assert serving["embedder"] == before["embedder"]  # the embedder was not touched
        metrics = client.get("/metrics", headers=admin).text
        assert f'adapter="{adapter.resolve()}",adapter_promoted="true"' in metrics
        assert metrics.count("ragtune_serving_info{") == 1  # the old series is gone
        assert not torch.allclose(_logits(client.app.state.services), base_logits, atol=1e-4)  # the adapter is on
        answered = client.post("/v1/query", json={"question": "What is on?"}, headers=admin)
        assert answered.status_code == 200, answered.text
        assert client.post("/v1/admin/reload", headers=admin).json()["reloaded"] == []


@contextmanager
def _embedder_promoted(tmp_path: Path, embedder) -> Iterator[tuple[TestClient, Path, Services]]:
    """A service over the samples whose tiny tuned embedder was just promoted, as a
    `/v1/tune/embedder` job with "promote": true does on the service's own store (its vectors
    re-embedded into a 32-d collection), not yet reloaded: (client, the model, the services)."""
    tuned = tiny_sentence_model(tmp_path / "tuned", (p.read_text(errors="replace") for p in SAMPLES.iterdir()))
    settings = service_settings(tmp_path / "data", embedding_backend="torch")
    with app_client(settings, embedder) as client:
        accepted = client.post("/v1/documents", files=sample_files())
        assert wait_for_job(client, accepted.json()["job_id"])["state"] == "done"
        services = client.app.state.services
        report = TuneReport("embedder", str(tuned), "hybrid_ndcg@10", {"hybrid_ndcg@10": 0.5}, {"hybrid_ndcg@10": 0.6})
        assert promote(settings, report, system=services.system).promote
        yield client, tuned, services


def test_reload_after_an_embedder_promotion_serves_the_new_model_on_its_own_vectors(tmp_path, embedder):
    with _embedder_promoted(tmp_path, embedder) as (client, tuned, services):
        before_collection = services.system.store.physical

        reloaded = client.post("/v1/admin/reload")
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["reloaded"] == ["embedder", "adapter"]
        serving = client.get("/ready").json()
        assert serving["ready"], serving
        assert serving["serving"]["embedder"] == str(tuned.resolve()) and serving["serving"]["dimension"] == 32
        assert serving["serving"]["embedder_promoted_at"] is not None
        fresh = client.app.state.services
        assert fresh is not services and fresh.system.store.physical != before_collection
        answer = client.post("/v1/query", json={"question": "How do I reset my password?"})
        assert answer.status_code == 200 and answer.json()["citations"], answer.text
        assert 'embedder_promoted="true"' in client.get("/metrics").text


def test_a_promoted_embedder_that_does_not_load_leaves_503_with_the_reason_until_a_reload_loads_it(tmp_path, embedder):
    with _embedder_promoted(tmp_path, embedder) as (client, tuned, _):
        # The index now holds the tuned model's vectors only; then its folder goes missing.
        away = tuned.rename(tmp_path / "moved")

        failed = client.post("/v1/admin/reload")
        assert failed.status_code == 500 and failed.json()["error"]["code"] == "reload_failed", failed.text
        assert "did not load" in failed.json()["error"]["message"]
        for response in (client.get("/ready"), client.post("/v1/query", json={"question": "How do I reset it?"})):
            assert response.status_code == 503, response.text  # the query through the auth middleware too
            error = response.json()["error"]
            assert error["code"] == "unavailable" and "POST /v1/admin/reload" in error["message"]

        away.rename(tuned)
        reloaded = client.post("/v1/admin/reload")
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["serving"]["embedder"] == str(tuned.resolve())
        assert client.get("/ready").status_code == 200
        answer = client.post("/v1/query", json={"question": "How do I reset my password?"})
        assert answer.status_code == 200 and answer.json()["citations"], answer.text
