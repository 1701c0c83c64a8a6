"""The deployment files say what the README promises: the Kubernetes manifests pass the
Kubernetes schema (kubernetes-validate, strict: no unknown fields), the compose file has the
services and settings it must, and runtime and test dependencies are apart. Files only."""
from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT

pytestmark = pytest.mark.unit

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.31"  # the oldest Kubernetes the manifests target
TEST_TOOLS = {"pytest", "hypothesis", "xpyd-sim", "schemathesis", "playwright", "kubernetes-validate"}


def _name(requirement: str) -> str:
    return re.split(r"[\s;<>=!~\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _requirements(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _documents() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d]
            for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"}


def _by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for docs in _documents().values() for d in docs if d["kind"] == kind}


def _container(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


# ---- dependencies -------------------------------------------------------------------------


def test_runtime_requirements_are_install_requires_and_hold_no_test_tool():
    runtime = _requirements(ROOT / "requirements.txt")
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    install_requires = [r for r in config["options"]["install_requires"].splitlines() if r.strip()]
    assert sorted(runtime) == sorted(install_requires)
    assert not TEST_TOOLS & {_name(r) for r in runtime}
    assert {"prometheus-client", "gunicorn", "tenacity", "cachetools", "flower"} <= {_name(r) for r in runtime}


def test_test_requirements_add_the_tools_to_the_runtime_set_with_bounds():
    lines = _requirements(ROOT / "requirements-test.txt")
    assert lines[0] == "-r requirements.txt"
    assert {_name(r) for r in lines[1:]} == TEST_TOOLS
    for requirement in _requirements(ROOT / "requirements.txt") + lines[1:]:
        assert re.search(r">=", requirement), f"{requirement}: give a lower bound"


def test_the_readme_and_ci_install_the_test_set():
    readme = (ROOT / "README.md").read_text()
    assert "pip install -r requirements-test.txt -e . && python -m pytest tests" in readme
    assert "pip install -r requirements.txt -e . && autotuner run examples/quickstart.json" in readme
    assert "-r requirements-test.txt" in (ROOT / ".ci/run").read_text()


# ---- the image and the Procfile -----------------------------------------------------------


def test_the_dockerfile_pins_its_base_and_runs_as_a_non_root_user_with_a_health_check():
    text = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_BASE=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    final = text[text.rindex("\nFROM "):]
    assert re.search(r"^USER 10001:10001$", final, re.M)
    assert re.search(r"^HEALTHCHECK .*autotuner-healthcheck", final, re.M)
    assert "/healthz" in (DEPLOY / "docker/healthcheck.py").read_text()
    assert not re.search(r"apt-get|gcc|build-essential", final)


def test_procfile_flower_requires_basic_auth():
    flower = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("flower:"))
    assert re.search(r"--basic-auth=\"?\$\{FLOWER_BASIC_AUTH:\?", flower), flower


# ---- Kubernetes ---------------------------------------------------------------------------


def test_every_manifest_is_listed_by_the_kustomization_and_no_secret_is_committed():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(_documents())
    assert [g["envs"] for g in kustomization["secretGenerator"]] == [["secrets.env"]]
    assert not _by_kind("Secret"), "secrets come from secrets.env (git-ignored), never a manifest"
    example = dict(line.split("=", 1) for line in _requirements(K8S / "secrets.env.example"))
    assert all("change-me" in value for value in example.values())
    assert "FLOWER_BASIC_AUTH" in example and "DATABASE_URL" in example


@pytest.mark.parametrize("name", sorted(_documents()))
def test_manifests_pass_the_kubernetes_schema(name):
    import kubernetes_validate

    for document in _documents()[name]:
        if document["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: checked below
        try:
            kubernetes_validate.validate(document, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} {document['kind']} {document['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_web_probes_healthz_and_is_scraped_for_metrics():
    web = _by_kind("Deployment")["web"]
    container = _container(web)
    assert container["command"][:4] == ["autotuner", "web", "--host", "0.0.0.0"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert web["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert "web" in _by_kind("Service")


def test_flower_takes_basic_auth_from_the_secret_and_the_shared_settings():
    container = _container(_by_kind("Deployment")["flower"])
    env = {e["name"]: e for e in container["env"]}
    assert env["FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"]["name"] == "autotuner-secrets"
    assert {"configMapRef": {"name": "autotuner-config"}} in container["envFrom"]
    assert "AUTOTUNER_VISIBILITY_TIMEOUT" in _by_kind("ConfigMap")["autotuner-config"]["data"]


def test_each_gpu_worker_requests_its_gpus_runs_non_root_and_has_time_to_finish():
    workers = {n: d for n, d in _by_kind("Deployment").items() if n.startswith("worker-")}
    assert len(workers) >= 2
    for name, deployment in workers.items():
        spec = deployment["spec"]["template"]["spec"]
        container = _container(deployment)
        gpus = len(container["command"][container["command"].index("--gpus") + 1].split(","))
        assert container["resources"]["limits"]["nvidia.com/gpu"] == str(gpus), name
        assert container["command"][container["command"].index("--group") + 1] == "$(POD_NAME)"
        assert spec["terminationGracePeriodSeconds"] >= 3600, name
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert "autotuner-healthcheck" in " ".join(container["livenessProbe"]["exec"]["command"])


def test_keda_scales_each_worker_on_its_share_of_the_backlog():
    deployments = _by_kind("Deployment")
    scaled = _by_kind("ScaledObject")
    workers = {n for n in deployments if n.startswith("worker-")}
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled.values()} == workers
    for item in scaled.values():
        target = deployments[item["spec"]["scaleTargetRef"]["name"]]
        gpus = target["spec"]["template"]["metadata"]["labels"]["autotuner/gpus"]
        (trigger,) = item["spec"]["triggers"]
        assert trigger["type"] == "prometheus"
        assert f'autotuner_experiments_waiting{{gpus="{gpus}"}}' in trigger["metadata"]["query"]
        assert float(trigger["metadata"]["threshold"]) > 0
        assert item["spec"]["maxReplicaCount"] >= item["spec"]["minReplicaCount"]


# ---- compose ------------------------------------------------------------------------------


def test_compose_redis_keeps_jobs_and_postgres_keeps_data():
    services = _compose()["services"]
    redis = " ".join(services["redis"]["command"])
    assert "--maxmemory-policy noeviction" in redis and "--appendonly yes" in redis
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])


def test_compose_runs_every_role_with_one_settings_file_and_flower_behind_auth():
    compose = _compose()
    services = compose["services"]
    assert services["web"]["command"][:4] == ["autotuner", "web", "--host", "0.0.0.0"]
    assert services["coordinator"]["command"] == ["autotuner", "coordinator"]
    autotuner = {n: s for n, s in services.items() if n not in ("redis", "postgres")}
    # One env file for all: one broker URL and one AUTOTUNER_VISIBILITY_TIMEOUT, Flower included.
    assert {s["env_file"] for s in autotuner.values()} == {"${AUTOTUNER_ENV_FILE:-compose.env}"}
    assert "flower" in services["flower"]["command"]
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    example = (DEPLOY / "compose.env.example").read_text()
    assert "AUTOTUNER_VISIBILITY_TIMEOUT=" in example and "FLOWER_BASIC_AUTH=" in example


def test_compose_has_a_gpu_worker_per_group_and_a_simulated_profile():
    services = _compose()["services"]
    gpu_workers = {n: s for n, s in services.items() if "--gpus" in s.get("command", [])}
    assert len(gpu_workers) >= 2
    groups = [s["command"][s["command"].index("--gpus") + 1] for s in gpu_workers.values()]
    assert len(set(groups)) == len(groups)
    for service in gpu_workers.values():
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert service["profiles"] == ["gpu"]
    sim = [s for s in services.values() if "--simulated-gpus" in s.get("command", [])]
    assert [s["profiles"] for s in sim] == [["sim"]]
