"""A stage as Kubernetes manifests: the same nodes as ``scalesim up``, as workloads of a namespace.

`kubernetes_manifests` turns a `Scenario` into a list of objects (plain mappings) and
`render_manifests` writes them as one multi-document YAML file for ``kubectl apply -f``:

* ConfigMaps: the balancer's Caddyfile and PostgreSQL's two scripts (the primary's init script
  that creates the replication role, and the replica start script that runs ``pg_basebackup -R``);
* StatefulSet ``primary`` (one pod) and StatefulSet ``replica`` (R pods, ``replica-0`` ..), each
  behind a headless Service, so that every replica has a stable name (``replica-0.replica``) that
  the app lists in ``replica_urls``. A replica pod's init container copies the primary into its
  empty data volume; its main container then runs it as a hot standby;
* Deployment and Service ``keyvalue`` (sessions, write marks, jobs; never evicts) and, in stage3+,
  ``cache`` (the query and profile caches; evicts least recently used keys); a Job ``seed`` that
  waits for the primary and loads the stage's seed data;
* one Deployment and Service per app server, ``app1`` .. ``appN``: the stage is a scale model of
  named nodes, each with its own CPU budget and ``server_name``, and the balancer's upstreams are
  those Services, as in the compose file (a single Deployment behind one Service would hide the
  servers from Caddy's round robin and health checks behind kube-proxy);
* Deployment ``worker`` (W pods; each names itself after its pod) and Deployment and Service
  ``balancer``. Nothing is exposed outside the cluster: ``kubectl port-forward svc/balancer 8080``.

Every container gets its node's CPU budget as request and limit (millicores); servers get
readiness and liveness probes. Data volumes are ``emptyDir``: a benchmark deployment starts from
its seed, not from yesterday's data. Passwords (the database's, the replication role's and the
key-value servers') come from a Secret the operator creates (see docs/deploy.md); none is written
into the manifests.
"""

from __future__ import annotations

import json
from typing import Any

from scalesim.deploy import containers as plan
from scalesim.deploy.containers import ContainerSettings, Hosts
from scalesim.topology import NodeSpec, Scenario

#: The Secret the manifests read passwords from (keys below); created by the operator.
SECRET_NAME = "scalesim-db"
PASSWORD_KEY = "password"
REPLICATION_PASSWORD_KEY = "replication-password"
#: The password of the key-value servers (``keyvalue`` and ``cache``).
KEYVALUE_PASSWORD_KEY = "keyvalue-password"
STATS_TOKEN_KEY = "stats-token"

BALANCER_CONFIG = "scalesim-balancer"
POSTGRES_CONFIG = "scalesim-postgres"
#: The uid and gid of the ``postgres`` user in the official image.
POSTGRES_UID = 999
#: The uid and gid of the ``scalesim`` user in the project's image (see the Dockerfile).
APP_UID = 10001


def kubernetes_manifests(scenario: Scenario, *, settings: ContainerSettings | None = None) -> list[dict[str, Any]]:
    """Every object of `scenario`'s deployment, in the order ``kubectl apply`` should meet them."""
    settings = settings or ContainerSettings()
    replicas = [f"replica-{index}.replica" for index in range(scenario.nodes.replicas.count)]
    hosts = Hosts(primary="primary", replicas=tuple(replicas),
                  keyvalue="keyvalue" if plan.has_keyvalue(scenario) else None,
                  cache="cache" if plan.has_cache(scenario) else None)
    config = plan.app_config(scenario, hosts=hosts, settings=settings)
    objects: list[dict[str, Any]] = [_postgres_config_map(scenario)]
    if plan.has_balancer(scenario):
        objects.append(_balancer_config_map(scenario, settings=settings))
    objects += [_service("primary", role="primary", scenario=scenario, port=settings.postgres_port, headless=True),
                _primary(scenario, settings=settings)]
    if scenario.nodes.replicas.count:
        objects += [_service("replica", role="replica", scenario=scenario, port=settings.postgres_port, headless=True),
                    _replicas(scenario, settings=settings)]
    if plan.has_keyvalue(scenario):
        objects += [_service("keyvalue", role="keyvalue", scenario=scenario, port=settings.keyvalue_port),
                    _keyvalue(scenario, settings=settings)]
    if plan.has_cache(scenario):
        objects += [_service("cache", role="cache", scenario=scenario, port=settings.keyvalue_port),
                    _keyvalue(scenario, settings=settings, role="cache")]
    objects.append(_seed(scenario, settings=settings))
    for name in plan.app_names(scenario):
        objects += [_service(name, role="app", scenario=scenario, port=settings.app_port),
                    _app_server(name, scenario=scenario, config=config, settings=settings)]
    if scenario.nodes.workers.count:
        objects.append(_workers(scenario, config=config, settings=settings))
    if plan.has_balancer(scenario):
        objects += [_service("balancer", role="balancer", scenario=scenario, port=settings.balancer_port),
                    _balancer(scenario, settings=settings)]
    return objects


def render_manifests(objects: list[dict[str, Any]]) -> str:
    return plan.dump_yaml_documents(objects)


# -- building blocks -------------------------------------------------------------------------------

def _labels(name: str, *, role: str, scenario: Scenario) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/component": role,
        "app.kubernetes.io/part-of": "scalesim",
        "scalesim/stage": plan.dns_label(scenario.name),
    }


def _selector(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "scalesim"}


def _metadata(name: str, *, role: str, scenario: Scenario) -> dict[str, Any]:
    return {"name": name, "labels": _labels(name, role=role, scenario=scenario)}


def _resources(spec: NodeSpec) -> dict[str, Any]:
    """The node's CPU budget as both request and limit: a guaranteed share, never more."""
    if spec.cpu is None:
        return {}
    cpu = plan.millicores(spec.cpu)
    return {"resources": {"requests": {"cpu": cpu}, "limits": {"cpu": cpu}}}


def _secret_env(name: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": SECRET_NAME, "key": key}}}


def _value_env(values: dict[str, str]) -> list[dict[str, Any]]:
    return [{"name": name, "value": value} for name, value in values.items()]


def _pod_name_env(name: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}


def _exec_probe(command: list[str], *, period: int, failures: int, initial_delay: int = 0) -> dict[str, Any]:
    return {"exec": {"command": command}, "initialDelaySeconds": initial_delay, "periodSeconds": period,
            "timeoutSeconds": 3, "failureThreshold": failures}


def _http_probe(port: str, *, period: int, failures: int, initial_delay: int = 0) -> dict[str, Any]:
    return {"httpGet": {"path": "/healthz", "port": port}, "initialDelaySeconds": initial_delay,
            "periodSeconds": period, "timeoutSeconds": 3, "failureThreshold": failures}


def _service(name: str, *, role: str, scenario: Scenario, port: int, headless: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": _selector(name),
        "ports": [{"name": "main", "port": port, "targetPort": port, "protocol": "TCP"}],
    }
    if headless:
        spec["clusterIP"] = "None"
    return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(name, role=role, scenario=scenario),
            "spec": spec}


def _workload(kind: str, name: str, *, role: str, scenario: Scenario, replicas: int, pod: dict[str, Any],
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    api_version = "apps/v1"
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": _selector(name)},
        **(extra or {}),
        "template": {"metadata": {"labels": _labels(name, role=role, scenario=scenario)}, "spec": pod},
    }
    return {"apiVersion": api_version, "kind": kind, "metadata": _metadata(name, role=role, scenario=scenario),
            "spec": spec}


# -- config maps -----------------------------------------------------------------------------------

def _postgres_config_map(scenario: Scenario) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _metadata(POSTGRES_CONFIG, role="database", scenario=scenario),
            "data": {plan.PRIMARY_INIT_FILE: plan.PRIMARY_INIT_SCRIPT,
                     plan.REPLICA_SCRIPT_FILE: plan.REPLICA_START_SCRIPT}}


def _balancer_config_map(scenario: Scenario, *, settings: ContainerSettings) -> dict[str, Any]:
    upstreams = [f"{name}:{settings.app_port}" for name in plan.app_names(scenario)]
    caddyfile = plan.balancer_caddyfile(port=settings.balancer_port, upstreams=upstreams, settings=settings.balancer)
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _metadata(BALANCER_CONFIG, role="balancer", scenario=scenario),
            "data": {"Caddyfile": caddyfile}}


# -- PostgreSQL ------------------------------------------------------------------------------------

def _postgres_pod_security() -> dict[str, Any]:
    return {"runAsUser": POSTGRES_UID, "runAsGroup": POSTGRES_UID, "fsGroup": POSTGRES_UID, "runAsNonRoot": True}


def _postgres_probes(settings: ContainerSettings) -> dict[str, Any]:
    ready = plan.postgres_ready_command(settings=settings)
    return {"readinessProbe": _exec_probe(ready, period=2, failures=3),
            "livenessProbe": _exec_probe(ready, period=10, failures=6, initial_delay=30)}


def _data_volume() -> tuple[dict[str, Any], dict[str, Any]]:
    return {"name": "data", "emptyDir": {}}, {"name": "data", "mountPath": plan.PG_VOLUME}


def _primary(scenario: Scenario, *, settings: ContainerSettings) -> dict[str, Any]:
    volume, mount = _data_volume()
    container = {
        "name": "postgres",
        "image": settings.images.postgres,
        "args": ["postgres", *plan.postgres_server_args(settings)],
        "env": [
            *_value_env({"PGDATA": plan.PGDATA, "POSTGRES_USER": settings.db_user, "POSTGRES_DB": settings.database,
                         "SCALESIM_REPLICATION_USER": settings.replication_user}),
            _secret_env("POSTGRES_PASSWORD", PASSWORD_KEY),
            _secret_env("SCALESIM_REPLICATION_PASSWORD", REPLICATION_PASSWORD_KEY),
        ],
        "ports": [{"name": "postgres", "containerPort": settings.postgres_port}],
        "volumeMounts": [mount, {"name": "scripts", "mountPath": f"{plan.PRIMARY_INIT_DIR}/{plan.PRIMARY_INIT_FILE}",
                                 "subPath": plan.PRIMARY_INIT_FILE}],
        **_postgres_probes(settings),
        **_resources(scenario.nodes.primary),
    }
    pod = {"securityContext": _postgres_pod_security(), "containers": [container],
           "volumes": [volume, {"name": "scripts", "configMap": {"name": POSTGRES_CONFIG}}]}
    return _workload("StatefulSet", "primary", role="primary", scenario=scenario, replicas=1, pod=pod,
                     extra={"serviceName": "primary"})


def _replicas(scenario: Scenario, *, settings: ContainerSettings) -> dict[str, Any]:
    volume, mount = _data_volume()
    script = f"{plan.REPLICA_SCRIPT_DIR}/{plan.REPLICA_SCRIPT_FILE}"
    env = [_pod_name_env("REPLICA_NAME"), *_value_env(plan.replica_environment(settings=settings)),
           _secret_env("REPLICATION_PASSWORD", REPLICATION_PASSWORD_KEY),
           # the walreceiver's libpq also finds the password here, should primary_conninfo lack it
           _secret_env("PGPASSWORD", REPLICATION_PASSWORD_KEY)]
    scripts_mount = {"name": "scripts", "mountPath": script, "subPath": plan.REPLICA_SCRIPT_FILE}
    copy = {
        "name": "basebackup",
        "image": settings.images.postgres,
        # Waits for the primary, then pg_basebackup -R into the empty data volume (no arguments:
        # copy only; the main container runs the server).
        "command": ["bash", script],
        "env": env,
        "volumeMounts": [mount, scripts_mount],
        **_resources(scenario.nodes.replicas),
    }
    server = {
        "name": "postgres",
        "image": settings.images.postgres,
        "args": ["postgres", *plan.postgres_server_args(settings)],
        "env": env,
        "ports": [{"name": "postgres", "containerPort": settings.postgres_port}],
        "volumeMounts": [mount],
        **_postgres_probes(settings),
        **_resources(scenario.nodes.replicas),
    }
    pod = {"securityContext": _postgres_pod_security(), "initContainers": [copy], "containers": [server],
           "volumes": [volume, {"name": "scripts", "configMap": {"name": POSTGRES_CONFIG}}]}
    return _workload("StatefulSet", "replica", role="replica", scenario=scenario,
                     replicas=scenario.nodes.replicas.count, pod=pod,
                     extra={"serviceName": "replica", "podManagementPolicy": "Parallel"})


# -- key-value, seed, app servers, workers, balancer -----------------------------------------------

def _keyvalue(scenario: Scenario, *, settings: ContainerSettings, role: str = "keyvalue") -> dict[str, Any]:
    """The key-value server (sessions, marks, jobs), or with ``role="cache"`` the caches' own server."""
    ping = ["redis-cli", "-p", str(settings.keyvalue_port), "ping"]
    policy = "allkeys-lru" if role == "cache" else plan.keyvalue_eviction_policy(scenario)
    container = {
        "name": role,
        "image": settings.images.keyvalue,
        "args": plan.keyvalue_server_command(eviction_policy=policy),
        # The server's password, which redis-cli (the readiness probe) reads as well.
        "env": [_secret_env(plan.KEYVALUE_AUTH_VARIABLE, KEYVALUE_PASSWORD_KEY)],
        "ports": [{"name": "redis", "containerPort": settings.keyvalue_port}],
        "readinessProbe": _exec_probe(ping, period=2, failures=3),
        "livenessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 10, "timeoutSeconds": 3,
                          "failureThreshold": 3, "initialDelaySeconds": 5},
        **_resources(scenario.nodes.role(role)),
    }
    return _workload("Deployment", role, role=role, scenario=scenario, replicas=1,
                     pod={"containers": [container]})


def _app_security() -> dict[str, Any]:
    return {"runAsUser": APP_UID, "runAsGroup": APP_UID, "runAsNonRoot": True}


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _seed(scenario: Scenario, *, settings: ContainerSettings) -> dict[str, Any]:
    url = plan.database_url(host="primary", settings=settings)
    wait = ["bash", "-c",
            f"until pg_isready -q -h primary -p {settings.postgres_port} -U {settings.db_user} -d {settings.database}; "
            "do sleep 1; done"]
    pod = {
        "restartPolicy": "Never",
        "securityContext": _app_security(),
        "initContainers": [{"name": "wait-for-primary", "image": settings.images.postgres, "command": wait,
                            "securityContext": _container_security()}],
        "containers": [{"name": "seed", "image": settings.images.app,
                        "command": plan.seed_command(scenario.data, url=url),
                        "env": [_secret_env("PGPASSWORD", PASSWORD_KEY)],
                        "securityContext": _container_security()}],
    }
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _metadata("seed", role="seed", scenario=scenario),
            "spec": {"backoffLimit": 4,
                     "template": {"metadata": {"labels": _labels("seed", role="seed", scenario=scenario)},
                                  "spec": pod}}}


def _app_env(config: dict[str, Any], *, server_name: str) -> list[dict[str, Any]]:
    passwords = [_secret_env("PGPASSWORD", PASSWORD_KEY), _secret_env(plan.STATS_TOKEN_VARIABLE, STATS_TOKEN_KEY)]
    if config.get("keyvalue_url") or config.get("cache_url"):
        passwords.append(_secret_env(plan.KEYVALUE_PASSWORD_VARIABLE, KEYVALUE_PASSWORD_KEY))
    return [*passwords,
            {"name": "SCALESIM_APP_CONFIG",
             "value": json.dumps({**config, "server_name": server_name}, separators=(",", ":"))},
            {"name": "PYTHONUNBUFFERED", "value": "1"}]


def _app_server(name: str, *, scenario: Scenario, config: dict[str, Any],
                settings: ContainerSettings) -> dict[str, Any]:
    container = {
        "name": "app",
        "image": settings.images.app,
        "command": plan.app_server_command(port=settings.app_port),
        "env": _app_env(config, server_name=name),
        "ports": [{"name": "http", "containerPort": settings.app_port}],
        "readinessProbe": _http_probe("http", period=2, failures=3),
        "livenessProbe": _http_probe("http", period=10, failures=3, initial_delay=20),
        "securityContext": _container_security(),
        **_resources(scenario.nodes.app),
    }
    return _workload("Deployment", name, role="app", scenario=scenario, replicas=1,
                     pod={"securityContext": _app_security(), "containers": [container]})


def _workers(scenario: Scenario, *, config: dict[str, Any], settings: ContainerSettings) -> dict[str, Any]:
    # Kubernetes expands $(POD_NAME) in a value from the variables defined before it: each worker
    # pod's server_name is its own pod name.
    container = {
        "name": "worker",
        "image": settings.images.app,
        "command": list(plan.WORKER_COMMAND),
        "env": [_pod_name_env("POD_NAME"), *_app_env(config, server_name="$(POD_NAME)")],
        "securityContext": _container_security(),
        **_resources(scenario.nodes.workers),
    }
    return _workload("Deployment", "worker", role="worker", scenario=scenario, replicas=scenario.nodes.workers.count,
                     pod={"securityContext": _app_security(), "containers": [container]})


def _balancer(scenario: Scenario, *, settings: ContainerSettings) -> dict[str, Any]:
    container = {
        "name": "caddy",
        "image": settings.images.balancer,
        "ports": [{"name": "http", "containerPort": settings.balancer_port}],
        "volumeMounts": [{"name": "caddyfile", "mountPath": "/etc/caddy"}],
        "readinessProbe": _http_probe("http", period=2, failures=3),
        # Alive is "accepts connections": a balancer whose upstreams are all down is not restarted.
        "livenessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 10, "timeoutSeconds": 3,
                          "failureThreshold": 3, "initialDelaySeconds": 5},
        **_resources(scenario.nodes.balancer),
    }
    pod = {"containers": [container], "volumes": [{"name": "caddyfile", "configMap": {"name": BALANCER_CONFIG}}]}
    return _workload("Deployment", "balancer", role="balancer", scenario=scenario, replicas=1, pod=pod)
