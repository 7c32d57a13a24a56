"""Kubernetes manifests for every stage: valid objects, budgets as requests and limits, probes, the same topology.

Every object is validated against the Kubernetes JSON schemas that the kubernetes-validate package
ships (strict: unknown fields are errors). The rest reads the objects: one Deployment and Service per
app server, the replicas' init container with pg_basebackup, the balancer's upstreams, the seed
Job, and no password anywhere in the output.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from scalesim.deploy.cli import deploy
from scalesim.deploy.containers import millicores
from scalesim.deploy.kubernetes import SECRET_NAME, kubernetes_manifests, render_manifests
from scalesim.topology import Scenario, bundled_stages, load_scenario

STAGES = bundled_stages()
KUBERNETES_VERSION = "1.33.0"
ROLE_SPECS = {"app": "app", "replica": "replicas", "worker": "workers", "primary": "primary",
              "keyvalue": "keyvalue", "cache": "cache", "balancer": "balancer"}


def _objects(stage: str, **overrides: int) -> tuple[Scenario, list[dict[str, Any]]]:
    scenario = load_scenario(stage).with_overrides(**overrides)
    # Through YAML and back: what kubectl would read.
    return scenario, list(yaml.safe_load_all(render_manifests(kubernetes_manifests(scenario))))


def _find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [obj for obj in objects if obj["kind"] == kind and obj["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}"
    return matches[0]


def _workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] in ("Deployment", "StatefulSet")]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {entry["name"]: entry.get("value", entry.get("valueFrom")) for entry in container.get("env", [])}


@pytest.fixture(scope="module")
def validate() -> Any:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (it ships the Kubernetes JSON schemas)")

    def check(obj: dict[str, Any]) -> None:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)

    return check


@pytest.mark.parametrize("stage", STAGES)
def test_every_object_matches_the_kubernetes_schema(stage: str, validate: Any) -> None:
    _, objects = _objects(stage)
    for obj in objects:
        validate(obj)  # raises kubernetes_validate.ValidationError (or SchemaNotFoundError) with the path


def test_the_schema_catches_a_misspelt_field(validate: Any) -> None:
    import kubernetes_validate

    _, objects = _objects("stage1")
    app = _find(objects, "Deployment", "app1")
    app["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(app)


@pytest.mark.parametrize("stage", STAGES)
def test_workloads_of_the_stage(stage: str) -> None:
    scenario, objects = _objects(stage)
    nodes = scenario.nodes
    kinds = {(obj["kind"], obj["metadata"]["name"]) for obj in objects}
    for index in range(1, nodes.app.count + 1):
        assert {("Deployment", f"app{index}"), ("Service", f"app{index}")} <= kinds
    assert {("StatefulSet", "primary"), ("Service", "primary"), ("Job", "seed"),
            ("ConfigMap", "scalesim-postgres")} <= kinds
    assert (("StatefulSet", "replica") in kinds) == bool(nodes.replicas.count)
    assert (("Deployment", "keyvalue") in kinds) == bool(nodes.keyvalue.count)
    assert (("Deployment", "cache") in kinds) == bool(nodes.cache.count)
    assert (("Deployment", "balancer") in kinds) == bool(nodes.balancer.count)
    assert (("ConfigMap", "scalesim-balancer") in kinds) == bool(nodes.balancer.count)
    if nodes.replicas.count:
        assert _find(objects, "StatefulSet", "replica")["spec"]["replicas"] == nodes.replicas.count
    if nodes.workers.count:
        assert _find(objects, "Deployment", "worker")["spec"]["replicas"] == nodes.workers.count
    assert not [obj for obj in objects if obj["kind"] == "Secret"]


@pytest.mark.parametrize("stage", STAGES)
def test_cpu_budgets_are_requests_and_limits(stage: str) -> None:
    scenario, objects = _objects(stage)
    for workload in _workloads(objects):
        role = workload["metadata"]["labels"]["app.kubernetes.io/component"]
        budget = scenario.nodes.role(ROLE_SPECS[role]).cpu
        pod = workload["spec"]["template"]["spec"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            resources = container.get("resources", {})
            if budget is None:
                assert resources == {}, workload["metadata"]["name"]
            else:
                assert resources["requests"]["cpu"] == resources["limits"]["cpu"] == millicores(budget)


def test_millicores() -> None:
    assert [millicores(cores) for cores in (0.25, 0.5, 0.1, 2, 0.0004)] == ["250m", "500m", "100m", "2000m", "1m"]


@pytest.mark.parametrize("stage", STAGES)
def test_servers_have_readiness_and_liveness_probes(stage: str) -> None:
    _, objects = _objects(stage)
    for workload in _workloads(objects):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            if container.get("ports"):
                assert "readinessProbe" in container and "livenessProbe" in container, workload["metadata"]["name"]
    app = _find(objects, "Deployment", "app1")["spec"]["template"]["spec"]["containers"][0]
    assert app["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


@pytest.mark.parametrize("stage", [stage for stage in STAGES if load_scenario(stage).nodes.replicas.count])
def test_replicas_copy_the_primary_in_an_init_container(stage: str) -> None:
    scenario, objects = _objects(stage)
    replica = _find(objects, "StatefulSet", "replica")
    pod = replica["spec"]["template"]["spec"]
    (copy,) = pod["initContainers"]
    assert copy["command"] == ["bash", "/opt/scalesim/replica-start.sh"]
    assert _env(copy)["REPLICA_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert _env(copy)["REPLICATION_PASSWORD"] == {"secretKeyRef": {"name": SECRET_NAME, "key": "replication-password"}}
    script = _find(objects, "ConfigMap", "scalesim-postgres")["data"]["replica-start.sh"]
    assert re.search(r"pg_basebackup \\\n.*\n\s+-D \"\$PGDATA\" -R -X stream -C -S \"\$slot\"", script)
    (server,) = pod["containers"]
    assert "hot_standby=on" in server["args"]
    assert replica["spec"]["serviceName"] == "replica"
    assert _find(objects, "Service", "replica")["spec"]["clusterIP"] == "None"
    primary = _find(objects, "StatefulSet", "primary")["spec"]["template"]["spec"]["containers"][0]
    assert "wal_level=replica" in primary["args"]


@pytest.mark.parametrize("stage", STAGES)
def test_app_servers_are_configured_by_service_names(stage: str) -> None:
    scenario, objects = _objects(stage)
    for index in range(1, scenario.nodes.app.count + 1):
        container = _find(objects, "Deployment", f"app{index}")["spec"]["template"]["spec"]["containers"][0]
        config = json.loads(_env(container)["SCALESIM_APP_CONFIG"])
        assert config["server_name"] == f"app{index}"
        assert config["database_url"] == "postgresql://scalesim@primary:5432/bookrental"
        assert config["replica_urls"] == [f"postgresql://scalesim@replica-{i}.replica:5432/bookrental"
                                          for i in range(scenario.nodes.replicas.count)]
        assert config["keyvalue_url"] == ("redis://keyvalue:6379/0" if scenario.nodes.keyvalue.count else None)
        assert config["cache_url"] == ("redis://cache:6379/0" if scenario.nodes.cache.count else None)
        assert {key: config[key] for key in ("sessions", "joins", "reads", "charges")} == {
            "sessions": scenario.app.sessions, "joins": scenario.app.joins, "reads": scenario.app.reads,
            "charges": scenario.app.charges}
        assert _env(container)["PGPASSWORD"] == {"secretKeyRef": {"name": SECRET_NAME, "key": "password"}}


def test_workers_name_themselves_after_their_pod() -> None:
    _, objects = _objects("stage5")
    container = _find(objects, "Deployment", "worker")["spec"]["template"]["spec"]["containers"][0]
    names = [entry["name"] for entry in container["env"]]
    assert names.index("POD_NAME") < names.index("SCALESIM_APP_CONFIG")  # $(POD_NAME) needs it defined first
    assert json.loads(_env(container)["SCALESIM_APP_CONFIG"])["server_name"] == "$(POD_NAME)"


@pytest.mark.parametrize("stage", [stage for stage in STAGES if load_scenario(stage).nodes.balancer.count])
def test_balancer_upstreams_are_the_app_services(stage: str) -> None:
    scenario, objects = _objects(stage)
    caddyfile = _find(objects, "ConfigMap", "scalesim-balancer")["data"]["Caddyfile"]
    targets = re.search(r"reverse_proxy ([^{]+)\{", caddyfile)
    assert targets is not None
    assert targets.group(1).split() == [f"app{i}:8000" for i in range(1, scenario.nodes.app.count + 1)]
    assert _find(objects, "Service", "balancer")["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_seed_job_waits_for_the_primary_then_seeds() -> None:
    scenario, objects = _objects("stage3")
    pod = _find(objects, "Job", "seed")["spec"]["template"]["spec"]
    assert "pg_isready" in " ".join(pod["initContainers"][0]["command"])
    command = pod["containers"][0]["command"]
    assert command[:3] == ["python", "-m", "reference_app.seed"]
    assert command[command.index("--books") + 1] == str(scenario.data.books)


@pytest.mark.parametrize("stage", STAGES)
def test_passwords_come_only_from_the_secret(stage: str) -> None:
    _, objects = _objects(stage)
    for obj in objects:
        spec = obj.get("spec", {})
        pod = spec.get("template", {}).get("spec", {})
        for container in pod.get("initContainers", []) + pod.get("containers", []):
            for entry in container.get("env", []):
                if "PASSWORD" in entry["name"]:
                    assert entry["valueFrom"]["secretKeyRef"]["name"] == SECRET_NAME, entry
    text = render_manifests(kubernetes_manifests(load_scenario(stage)))
    assert "scalesim-replication" not in text and ":-scalesim" not in text


def test_cli_writes_the_manifest_into_the_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(deploy, ["k8s", "stage4", "-o", str(tmp_path / "k8s"), "--replicas", "3"])
    assert result.exit_code == 0, result.output
    objects = list(yaml.safe_load_all((tmp_path / "k8s" / "stage4.yaml").read_text()))
    assert _find(objects, "StatefulSet", "replica")["spec"]["replicas"] == 3


def test_cli_unknown_stage_is_one_line() -> None:
    result = CliRunner().invoke(deploy, ["k8s", "stage7"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: unknown stage 'stage7'") and result.output.count("\n") == 1
