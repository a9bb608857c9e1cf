"""The Helm chart: `helm lint`, `helm template`, kubernetes-validate --strict, and the properties
that matter in a cluster (probes on the real routes, HPA on the right Deployment, the ConfigMap
speaking the app's settings, anti-affinity, security). Nothing is deployed: there is no cluster."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
import yaml

from ragtune.config import Settings

from .conftest import RELEASE, SERVICE_MONITOR_API, Rendered, write_values
from .deploytools import CHART, KUBERNETES_VERSIONS, PROD_VALUES, clean_env, run, tool

API = f"{RELEASE}-ragtune-api"
FULLNAME = f"{RELEASE}-ragtune"
# Resources the chart renders whose API is a CRD, so kubernetes-validate has no schema for them.
CRD_KINDS = {"ServiceMonitor"}
# Keys the chart derives from its own layout instead of taking them from .Values.config.
DERIVED_SETTINGS = {"data_dir", "milvus_uri", "catalog_url", "host", "port", "embedded_worker"}


def containers(doc: dict) -> list[dict]:
    spec = doc["spec"]
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod = spec["template"]["spec"] if "template" in spec else spec
    return pod["containers"]


def pod_spec(doc: dict) -> dict:
    spec = doc["spec"]
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"] if "template" in spec else spec


def ragtune_workloads(rendered: Rendered) -> list[dict]:
    """Every ragtune-owned pod template (not the vendored Milvus / PostgreSQL stand-ins)."""
    kinds = ("Deployment", "Job", "CronJob", "Pod")
    return [
        doc
        for doc in rendered.docs
        if doc["kind"] in kinds and doc["metadata"]["labels"].get("app.kubernetes.io/name") == "ragtune"
    ]


# --- lint and schema validation ----------------------------------------------------------------


@pytest.mark.parametrize("values", [None, PROD_VALUES], ids=["default", "production"])
def test_helm_lint_strict(helm: str, values: Path | None) -> None:
    args = ["-f", str(values)] if values else []
    result = run([helm, "lint", "--strict", str(CHART), *args])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", [None, PROD_VALUES], ids=["default", "production"])
def test_client_side_install_renders_hooks_tests_and_notes(helm: str, values: Path | None) -> None:
    # --dry-run=client needs no cluster (KUBECONFIG points nowhere) and renders NOTES.txt too.
    args = ["-f", str(values)] if values else []
    result = run(
        [helm, "install", RELEASE, str(CHART), "-n", "ragtune", "--dry-run=client", *args],
        env=clean_env(KUBECONFIG="/dev/null"),
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert f"helm test {RELEASE} -n ragtune" in notes
    assert ("https://ragtune.example.com/" if values else f"port-forward svc/{FULLNAME}") in notes
    assert f"{FULLNAME}-test-ready" in result.stdout  # the `helm test` pod


def _kubernetes_validate(manifests: Path) -> tuple[int, str]:
    cmd = [tool("kubernetes-validate"), "--strict", "--quiet"]
    for version in KUBERNETES_VERSIONS:
        cmd += ["-k", version]
    result = run([*cmd, str(manifests)])
    return result.returncode, result.stdout + result.stderr


# Extra renders that switch on templates and branches the two values files leave off.
VARIANTS = {
    "default": (),
    "production": ("-f", str(PROD_VALUES), "--api-versions", SERVICE_MONITOR_API),
    # The oldest Kubernetes the chart supports, as .Capabilities.KubeVersion too.
    "production-on-1.29": ("-f", str(PROD_VALUES), "--api-versions", SERVICE_MONITOR_API, "--kube-version", "1.29.0"),
    "no-autoscaling-persistence": (
        "--set",
        "api.autoscaling.enabled=false",
        "--set",
        "api.replicas=3",
        "--set",
        "persistence.enabled=true",
        "--set",
        "worker.enabled=false",
        "--set",
        "api.podAntiAffinity=none",
        "--set",
        "ingress.enabled=true",
    ),
    "llm-network-policy": ("--set", "llm.enabled=true", "--set", "networkPolicy.enabled=true"),
    "llm-vllm-tensor-parallel-adapters": (
        "--set",
        "llm.enabled=true",
        "--set",
        "llm.tensorParallel=4",
        "--set",
        "llm.adapters[0].name=rag",
        "--set",
        "llm.adapters[0].path=smollm2-rag/adapter",
        "--set",
        "llm.adapterStorage.existingClaim=ragtune-adapters",
    ),
    "llm-ragtune-engine-on-cpu": ("--set", "llm.enabled=true", "--set", "llm.engine=ragtune", "--set", "llm.gpus=0"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_rendered_manifests_validate_strictly(render, tmp_path: Path, variant: str) -> None:
    rendered = render(*VARIANTS[variant])
    manifests = tmp_path / "manifests.yaml"
    manifests.write_text(rendered.text, encoding="utf-8")
    rc, output = _kubernetes_validate(manifests)
    assert rc == 0, output
    # kubernetes-validate only warns (exit 0) for a kind it has no schema for: accept that for
    # CRDs alone, so a typo in a core apiVersion cannot slip through as "no schema".
    for line in output.splitlines():
        if line.startswith("WARN"):
            assert any(f"kind {kind} " in line for kind in CRD_KINDS), line
    assert len(rendered.docs) >= 8


def test_a_cluster_older_than_1_29_is_refused(helm: str) -> None:
    result = run([helm, "template", RELEASE, str(CHART), "--kube-version", "1.28.0"])
    assert result.returncode != 0
    assert "chart requires kubeVersion: >=1.29.0-0" in result.stderr


def test_kubernetes_validate_rejects_an_unknown_field(default_render: Rendered, tmp_path: Path) -> None:
    deployment = json.loads(json.dumps(default_render.get("Deployment", API)))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {"path": "/health"}
    manifests = tmp_path / "broken.yaml"
    manifests.write_text(yaml.safe_dump(deployment), encoding="utf-8")
    rc, output = _kubernetes_validate(manifests)
    assert rc != 0 and "httpGett" in output, output


# --- values that must fail, with a message that says what to fix --------------------------------
# Types, enums, unknown keys and the "X off needs Y" rules are in values.schema.json: helm lint,
# helm template and helm install all reject them. Rules JSON Schema cannot state (comparing two
# values, a password inside a URL) are `fail` calls in the templates: they stop helm template and
# helm install, while helm lint (Helm 4) only logs them, at INFO level.

SCHEMA_VIOLATIONS = {
    "replicas-three": ({"api": {"replicas": "three"}}, "at '/api/replicas': got string, want integer"),
    "unknown-setting": ({"config": {"chunk_szie": 500}}, "chunk_szie"),
    "bad-retrieval-mode": ({"config": {"retrieval_mode": "fuzzy"}}, "at '/config/retrieval_mode'"),
    "bad-antiaffinity": ({"api": {"podAntiAffinity": "sometimes"}}, "at '/api/podAntiAffinity'"),
    "bad-cron": ({"indexing": {"cronJob": {"schedule": "every day"}}}, "at '/indexing/cronJob/schedule'"),
    "milvus-without-uri": ({"milvus": {"enabled": False}}, "at '/externalMilvus/uri'"),
    "postgres-without-url": ({"postgresql": {"enabled": False}}, "at '/externalPostgresql/url'"),
    "index-job-without-documents": ({"indexing": {"job": {"enabled": True}}}, "at '/indexing/volume'"),
    "milvus-bad-image-policy": ({"milvus": {"image": {"all": {"pullPolicy": "Sometimes"}}}}, "pullPolicy"),
    "llm-unknown-engine": ({"llm": {"engine": "sglang"}}, "at '/llm/engine': value must be one of 'vllm', 'ragtune'"),
    "llm-no-tensor-parallel": ({"llm": {"tensorParallel": 0}}, "at '/llm/tensorParallel': minimum: got 0, want 1"),
    "llm-lora-rank-vllm-refuses": ({"llm": {"maxLoraRank": 12}}, "at '/llm/maxLoraRank': value must be one of 1, 8"),
    "llm-adapters-without-a-claim": (
        {"llm": {"adapters": [{"name": "rag", "path": "smollm2-rag/adapter"}]}},
        "at '/llm/adapterStorage/existingClaim'",
    ),
}

TEMPLATE_FAILURES = {
    "overlap-above-size": (
        {"config": {"chunk_size": 200, "chunk_overlap": 200}},
        "chunk_overlap (200) must be smaller than config.chunk_size (200)",
    ),
    "password-in-url": (
        {"postgresql": {"enabled": False}, "externalPostgresql": {"url": "postgresql+psycopg://u:secret@db:5432/x"}},
        "must not contain a password",
    ),
    "hpa-min-above-max": (
        {"api": {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}},
        "minReplicas (5) is above maxReplicas (3)",
    ),
    "hpa-without-cpu-request": (
        {"api": {"resources": {"requests": {"cpu": None}}}},
        "needs api.resources.requests.cpu",
    ),
    "milvus-cluster-mode": ({"milvus": {"cluster": {"enabled": True}}}, "standalone-only stand-in"),
    "llm-adapter-names-twice": (
        {
            "llm": {
                "enabled": True,
                "adapters": [{"name": "rag", "path": "a"}, {"name": "rag", "path": "b"}],
                "adapterStorage": {"existingClaim": "ragtune-adapters"},
            }
        },
        'the model name "rag" is used twice',
    ),
    "llm-adapters-on-the-ragtune-engine": (
        {
            "llm": {
                "enabled": True,
                "engine": "ragtune",
                "adapters": [{"name": "rag", "path": "a"}],
                "adapterStorage": {"existingClaim": "ragtune-adapters"},
            }
        },
        "llm.adapters needs llm.engine=vllm",
    ),
}


@pytest.mark.parametrize("case", list(SCHEMA_VIOLATIONS))
def test_values_breaking_the_schema_fail_lint_and_template(helm: str, tmp_path: Path, case: str) -> None:
    values, message = SCHEMA_VIOLATIONS[case]
    path = write_values(tmp_path, values)
    template = run([helm, "template", RELEASE, str(CHART), "-f", str(path)])
    assert template.returncode != 0, f"helm template accepted {values}"
    assert message in template.stderr, template.stderr
    lint = run([helm, "lint", str(CHART), "-f", str(path)])
    assert lint.returncode != 0, f"helm lint accepted {values}"
    assert message in lint.stdout + lint.stderr


@pytest.mark.parametrize("case", list(TEMPLATE_FAILURES))
def test_inconsistent_values_fail_template_with_the_fix(helm: str, tmp_path: Path, case: str) -> None:
    values, message = TEMPLATE_FAILURES[case]
    path = write_values(tmp_path, values)
    template = run([helm, "template", RELEASE, str(CHART), "-f", str(path)])
    assert template.returncode != 0, f"helm template accepted {values}"
    assert message in template.stderr, template.stderr


# --- the API Deployment ------------------------------------------------------------------------


def test_probes_use_the_app_routes_and_port(default_render: Rendered) -> None:
    api = default_render.get("Deployment", API)
    (container,) = containers(api)
    assert container["command"] == ["ragtune", "serve", "--host", "0.0.0.0", "--port", "8000"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_rolling_update_is_25_percent(default_render: Rendered) -> None:
    strategy = default_render.get("Deployment", API)["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}


def test_hpa_targets_the_api_deployment(default_render: Rendered) -> None:
    (hpa,) = default_render.kinds("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": API}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}
    # The HPA owns the replica count: a `replicas` in the Deployment would fight it on upgrades.
    assert "replicas" not in default_render.get("Deployment", API)["spec"]


def test_without_autoscaling_the_deployment_has_replicas(render) -> None:
    rendered = render("--set", "api.autoscaling.enabled=false", "--set", "api.replicas=3")
    assert not rendered.kinds("HorizontalPodAutoscaler")
    assert rendered.get("Deployment", API)["spec"]["replicas"] == 3


@pytest.mark.parametrize("mode", ["preferred", "required", "none"])
def test_pod_anti_affinity_across_hostnames(render, mode: str) -> None:
    rendered = render("--set", f"api.podAntiAffinity={mode}")
    api = rendered.get("Deployment", API)
    spec = pod_spec(api)
    selector = api["spec"]["selector"]["matchLabels"]
    if mode == "none":
        assert "affinity" not in spec
        return
    anti = spec["affinity"]["podAntiAffinity"]
    if mode == "preferred":
        (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
        term = term["podAffinityTerm"]
    else:
        (term,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == selector


def test_pdb_selects_the_api_pods(default_render: Rendered, render) -> None:
    (pdb,) = default_render.kinds("PodDisruptionBudget")
    assert (
        pdb["spec"]["selector"]["matchLabels"]
        == default_render.get("Deployment", API)["spec"]["selector"]["matchLabels"]
    )
    assert pdb["spec"]["minAvailable"] == 1
    # One API pod and a budget of one would block every node drain: no budget then.
    single = render("--set", "api.autoscaling.enabled=false", "--set", "api.replicas=1")
    assert not single.kinds("PodDisruptionBudget")


def test_service_and_ingress_reach_the_api(production_render: Rendered) -> None:
    service = production_render.get("Service", FULLNAME)
    api = production_render.get("Deployment", API)
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    (ingress,) = production_render.kinds("Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"secretName": "ragtune-example-com-tls", "hosts": ["ragtune.example.com"]}]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "ragtune.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": FULLNAME, "port": {"name": "http"}}


@pytest.mark.parametrize("which", ["default", "production"])
def test_every_ragtune_container_is_locked_down(
    default_render: Rendered, production_render: Rendered, which: str
) -> None:
    rendered = default_render if which == "default" else production_render
    workloads = ragtune_workloads(rendered)
    assert len(workloads) >= (3 if which == "default" else 6)
    for doc in workloads:
        spec = pod_spec(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, doc["metadata"]["name"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            if doc["kind"] != "Pod":  # the helm test pod only makes one HTTP request
                assert {"/tmp", "/var/lib/ragtune"} <= mounts, doc["metadata"]["name"]


# --- settings: the ConfigMap and Secret speak the app's RAGTUNE_* names --------------------------


def _setting_keys(data: dict) -> set[str]:
    assert all(key.startswith("RAGTUNE_") for key in data), sorted(data)
    return {key.removeprefix("RAGTUNE_").lower() for key in data}


def test_configmap_and_secret_keys_are_the_app_settings(default_render: Rendered) -> None:
    fields = set(Settings.flat_names())
    configmap = _setting_keys(default_render.get("ConfigMap", FULLNAME)["data"])
    secret = _setting_keys(default_render.get("Secret", FULLNAME)["stringData"])
    unknown = (configmap | secret) - fields
    assert not unknown, f"not fields of ragtune.config.Settings (the app would ignore them): {sorted(unknown)}"
    missing = fields - configmap - secret
    assert not missing, (
        f"Settings fields the chart does not set: {sorted(missing)}; add each to `config:` (or, if secret, "
        "`secrets:`) in deploy/helm/ragtune/values.yaml and to values.schema.json"
    )
    assert not configmap & secret
    # The seed's chunking and model, visible as such.
    data = default_render.get("ConfigMap", FULLNAME)["data"]
    assert (data["RAGTUNE_CHUNK_SIZE"], data["RAGTUNE_CHUNK_OVERLAP"]) == ("1000", "200")
    assert data["RAGTUNE_EMBEDDING_MODEL"] == "sentence-transformers/all-MiniLM-L6-v2"


def app_value(name: str, text: str) -> object:
    """The value the app gets from RAGTUNE_<NAME>=text (its own validators split lists)."""
    return Settings(_env_file=None, **{name: text}).flat(name)


def app_default(name: str) -> object:
    return Settings.flat_field(name).get_default(call_default_factory=True)


def test_chart_defaults_are_the_app_defaults(default_render: Rendered) -> None:
    data = default_render.get("ConfigMap", FULLNAME)["data"]
    for key, text in data.items():
        name = key.removeprefix("RAGTUNE_").lower()
        if name in DERIVED_SETTINGS:
            continue
        assert app_value(name, text) == app_default(name), (
            f"{key}={text!r} but the app's default is {app_default(name)!r}"
        )
    # Large numbers survive Helm's float64 values (no 5.24288e+07).
    assert data["RAGTUNE_MAX_FILE_BYTES"] == str(Settings.flat_field("max_file_bytes").default)


def test_schema_types_match_the_settings() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    config_schema = schema["properties"]["config"]
    assert config_schema["additionalProperties"] is False
    assert set(config_schema["properties"]) == set(values["config"])
    assert set(schema["properties"]["secrets"]["properties"]) == set(values["secrets"])
    json_type = {int: "integer", float: "number", str: "string", bool: "boolean", list: "array"}
    for name, prop in config_schema["properties"].items():
        annotation = Settings.flat_field(name).annotation
        if typing.get_origin(annotation) is typing.Literal:
            assert prop["enum"] == list(typing.get_args(annotation)), name
        else:
            assert prop["type"] == json_type[typing.get_origin(annotation) or annotation], name


def test_chart_layout_settings(default_render: Rendered, render) -> None:
    data = default_render.get("ConfigMap", FULLNAME)["data"]
    (container,) = containers(default_render.get("Deployment", API))
    # The app listens where the Service and the probes point.
    assert (data["RAGTUNE_HOST"], data["RAGTUNE_PORT"]) == ("0.0.0.0", str(container["ports"][0]["containerPort"]))
    # Worker pods run the jobs, so the API pods do not; without them the API pods must.
    assert app_value("embedded_worker", data["RAGTUNE_EMBEDDED_WORKER"]) is False
    alone = render("--set", "worker.enabled=false").get("ConfigMap", FULLNAME)["data"]
    assert app_value("embedded_worker", alone["RAGTUNE_EMBEDDED_WORKER"]) is True
    # Lists reach the app as lists.
    assert app_value("auth_exempt_paths", data["RAGTUNE_AUTH_EXEMPT_PATHS"]) == app_default("auth_exempt_paths")
    origins = render("--set", "config.cors_origins={https://a.example,https://b.example}").get("ConfigMap", FULLNAME)[
        "data"
    ]
    assert app_value("cors_origins", origins["RAGTUNE_CORS_ORIGINS"]) == ["https://a.example", "https://b.example"]


def test_catalog_and_milvus_point_at_the_bundled_services(default_render: Rendered) -> None:
    data = default_render.get("ConfigMap", FULLNAME)["data"]
    milvus = default_render.get("Service", f"{RELEASE}-milvus")
    port = {p["name"]: p["port"] for p in milvus["spec"]["ports"]}["milvus"]
    assert data["RAGTUNE_MILVUS_URI"] == f"http://{RELEASE}-milvus:{port}"
    postgres = default_render.get("Service", f"{RELEASE}-postgresql")
    assert data["RAGTUNE_CATALOG_URL"] == f"postgresql+psycopg://ragtune@{postgres['metadata']['name']}:5432/ragtune"
    # No password in the ConfigMap: PGPASSWORD comes from the database Secret.
    (container,) = containers(default_render.get("Deployment", API))
    (pgpassword,) = [e for e in container["env"] if e["name"] == "PGPASSWORD"]
    ref = pgpassword["valueFrom"]["secretKeyRef"]
    secret = default_render.get("Secret", ref["name"])
    assert ref["key"] in secret["data"]
    assert {"configMapRef": {"name": FULLNAME}} in container["envFrom"]
    assert {"secretRef": {"name": FULLNAME}} in container["envFrom"]


def test_production_uses_external_services_and_an_existing_secret(production_render: Rendered) -> None:
    data = production_render.get("ConfigMap", FULLNAME)["data"]
    assert data["RAGTUNE_MILVUS_URI"] == "http://milvus.milvus.svc.cluster.local:19530"
    assert data["RAGTUNE_CATALOG_URL"].startswith("postgresql+psycopg://app@ragtune-db-rw.")
    assert not production_render.kinds("StatefulSet"), "no bundled Milvus / PostgreSQL in production"
    assert FULLNAME not in production_render.names("Secret"), "existingSecret: the chart creates none"
    for doc in ragtune_workloads(production_render):
        for container in pod_spec(doc)["containers"]:
            if "envFrom" in container:
                assert {"secretRef": {"name": "ragtune-secrets"}} in container["envFrom"]


# --- worker, LLM, indexing, monitoring ---------------------------------------------------------


def test_worker_runs_the_worker_command(default_render: Rendered) -> None:
    (container,) = containers(default_render.get("Deployment", f"{FULLNAME}-worker"))
    assert container["command"] == ["ragtune", "worker"]


def test_llm_is_off_by_default_and_on_a_gpu_node_when_enabled(
    default_render: Rendered, production_render: Rendered
) -> None:
    assert f"{FULLNAME}-llm" not in default_render.names("Deployment")
    llm = production_render.get("Deployment", f"{FULLNAME}-llm")
    spec = pod_spec(llm)
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert llm["spec"]["strategy"] == {"type": "Recreate"}
    service = production_render.get("Service", f"{FULLNAME}-llm")
    assert service["spec"]["selector"] == llm["spec"]["selector"]["matchLabels"]


def flags(args: list[str]) -> dict[str, list[str]]:
    """Each --flag of a command line with the values that follow it (none for a switch)."""
    parsed: dict[str, list[str]] = {}
    for arg in args:
        if arg.startswith("--"):
            assert arg not in parsed, f"{arg} given twice: the last one would win"
            parsed[arg] = []
        else:
            parsed[next(reversed(parsed))].append(arg)
    return parsed


def test_vllm_serves_the_model_on_tensor_parallel_gpus_with_every_adapter(render, tmp_path: Path) -> None:
    values = {
        "llm": {
            "enabled": True,
            "servedModelName": "smollm2",
            "tensorParallel": 4,
            "adapters": [{"name": "rag", "path": "smollm2-rag/adapter"}, {"name": "legal", "path": "/legal/v2"}],
            "adapterStorage": {"existingClaim": "ragtune-adapters", "mountPath": "/lora/"},
            "maxLoras": 2,
            "vllm": {"extraArgs": ["--max-model-len", "4096"]},
        }
    }
    llm = render("-f", str(write_values(tmp_path, values))).get("Deployment", f"{FULLNAME}-llm")
    spec = pod_spec(llm)
    (container,) = spec["containers"]
    assert container["image"] == "vllm/vllm-openai:v0.11.0"
    assert container["command"] == ["vllm", "serve"]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert flags(container["args"]) == {
        "--model": ["HuggingFaceTB/SmolLM2-135M-Instruct"],
        "--served-model-name": ["smollm2"],
        "--host": ["0.0.0.0"],
        "--port": [str(port)],
        "--tensor-parallel-size": ["4"],
        "--enable-lora": [],
        "--max-loras": ["2"],
        "--max-lora-rank": ["16"],
        # One flag, one name=path per adapter: vLLM keeps only the last of repeated flags.
        "--lora-modules": ["rag=/lora/smollm2-rag/adapter", "legal=/lora/legal/v2"],
        "--max-model-len": ["4096"],
    }
    # One GPU per tensor-parallel shard, requested and limited alike.
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 4
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert mounts["adapters"] == {"name": "adapters", "mountPath": "/lora/", "readOnly": True}
    assert volumes["adapters"]["persistentVolumeClaim"] == {"claimName": "ragtune-adapters", "readOnly": True}
    assert mounts["dshm"]["mountPath"] == "/dev/shm" and volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    # Caches go to the writable data volume: the root filesystem stays read-only.
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HOME"] == env["HF_HOME"].rsplit("/", 1)[0] == mounts["data"]["mountPath"]


def test_vllm_without_adapters_mounts_no_claim(render) -> None:
    (container,) = containers(render("--set", "llm.enabled=true").get("Deployment", f"{FULLNAME}-llm"))
    args = flags(container["args"])
    assert "--lora-modules" not in args and "--enable-lora" in args  # adapters can be added by an upgrade
    assert args["--tensor-parallel-size"] == ["1"] and container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {m["name"] for m in container["volumeMounts"]} == {"tmp", "data", "dshm"}


def test_production_points_the_api_at_vllm_and_allows_its_adapters(production_render: Rendered) -> None:
    values = yaml.safe_load(PROD_VALUES.read_text())["llm"]
    data = production_render.get("ConfigMap", FULLNAME)["data"]
    service = production_render.get("Service", f"{FULLNAME}-llm")
    assert data["RAGTUNE_GENERATOR"] == "openai"
    assert (
        data["RAGTUNE_LLM_BASE_URL"] == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/v1"
    )
    (container,) = containers(production_render.get("Deployment", f"{FULLNAME}-llm"))
    args = flags(container["args"])
    # The names the API lets requests choose are the ones vLLM serves.
    assert args["--served-model-name"] == [data["RAGTUNE_LLM_MODEL"]]
    assert app_value("llm_models", data["RAGTUNE_LLM_MODELS"]) == [a["name"] for a in values["adapters"]]
    assert [m.split("=")[0] for m in args["--lora-modules"]] == [a["name"] for a in values["adapters"]]


@pytest.mark.parametrize("gpus", [1, 0])
def test_the_ragtune_engine_still_runs_serve_llm(render, gpus: int) -> None:
    rendered = render("--set", "llm.enabled=true", "--set", "llm.engine=ragtune", "--set", f"llm.gpus={gpus}")
    (container,) = containers(rendered.get("Deployment", f"{FULLNAME}-llm"))
    assert container["image"] == "ragtune-llm:0.1.0"
    assert container["command"] == ["ragtune", "serve-llm", "--host", "0.0.0.0", "--port", "8001"]
    assert container["startupProbe"]["tcpSocket"] == {"port": "http"}
    assert container["resources"]["limits"].get("nvidia.com/gpu") == (gpus or None)
    assert {m["name"] for m in container["volumeMounts"]} == {"tmp", "data"}


@pytest.mark.parametrize("kind", ["Job", "CronJob"])
def test_indexing_is_an_indexed_sharded_job(production_render: Rendered, kind: str) -> None:
    shards = yaml.safe_load(PROD_VALUES.read_text())["indexing"]["shards"]
    (doc,) = production_render.kinds(kind)
    spec = doc["spec"]["jobTemplate"]["spec"] if kind == "CronJob" else doc["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == shards
    (container,) = containers(doc)
    assert container["command"] == ["ragtune", "ingest", "/data", "--shard", f"$(JOB_COMPLETION_INDEX)/{shards}"]
    (index_env,) = [e for e in container["env"] if e["name"] == "JOB_COMPLETION_INDEX"]
    assert (
        index_env["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/data"]["readOnly"] is True
    if kind == "Job":
        assert doc["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    else:
        assert doc["spec"]["schedule"] == "30 2 * * *"
        assert doc["spec"]["concurrencyPolicy"] == "Forbid"


def test_shard_count_follows_values(render) -> None:
    rendered = render(
        "--set",
        "indexing.job.enabled=true",
        "--set",
        "indexing.shards=3",
        "--set",
        "indexing.volume.persistentVolumeClaim.claimName=docs",
    )
    (job,) = rendered.kinds("Job")
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    assert containers(job)[0]["command"][-1] == "$(JOB_COMPLETION_INDEX)/3"


def test_service_monitor_only_where_the_crd_exists(render, production_render: Rendered) -> None:
    without_crd = render("-f", str(PROD_VALUES))
    assert not without_crd.kinds("ServiceMonitor")
    (monitor,) = production_render.kinds("ServiceMonitor")
    assert monitor["spec"]["endpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    assert monitor["spec"]["selector"]["matchLabels"] == production_render.get("Service", FULLNAME)["spec"]["selector"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_network_policy_admits_the_release_and_listed_peers(production_render: Rendered) -> None:
    policy = production_render.get("NetworkPolicy", API)
    assert (
        policy["spec"]["podSelector"]["matchLabels"]
        == production_render.get("Deployment", API)["spec"]["selector"]["matchLabels"]
    )
    peers = policy["spec"]["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": RELEASE}}} in peers
    assert len(peers) == 3
    assert production_render.get("NetworkPolicy", f"{FULLNAME}-llm")


def test_vendored_dependencies_say_they_are_stand_ins() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    deps = {d["name"]: d for d in chart["dependencies"]}
    assert deps["milvus"]["condition"] == "milvus.enabled"
    assert deps["postgresql"]["condition"] == "postgresql.enabled"
    for name in deps:
        readme = (CHART / "charts" / name / "README.md").read_text()
        assert "stand-in" in readme and "helm dependency update" in readme
    assert "zilliztech.github.io/milvus-helm" in (CHART / "charts" / "milvus" / "README.md").read_text()
