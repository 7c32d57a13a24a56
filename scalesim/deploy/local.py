"""Bringing a stage up on this machine, on real servers, and down again.

`LocalDeployment` is the one object that holds a deployment's state, in the spirit of Locust's
``Environment``: the scenario, the run folder, the CPU budgets, and every node it started (role,
port, process, CPU group). ``up()`` starts the nodes in dependency order:

    PostgreSQL primary → schema and seed data → streaming replicas (copies of the seeded primary)
    → key-value server → cache server → app servers (started together, then awaited) → workers → balancer

and if any step fails it stops everything started so far before the error reaches the user.
``down()`` stops nodes in the reverse order. Every node runs in its own process group, so a
deployment outlives the command that made it (``scalesim up``) and can be stopped from another
shell (``scalesim down``) through the state file ``deployment.json`` in the run folder.

Every PostgreSQL cluster and key-value server asks for a random password of its own, which node
URLs and the app's configuration carry in memory. ``deployment.json`` holds them redacted (``***``):
the passwords, the full URLs and the unredacted app configuration go to ``secrets.json`` beside it,
a file only its owner may read (mode 0600), for whoever must connect while the deployment is up.
Teardown removes it, with the data folder (where the servers' own password files live).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scalesim.components.appserver import start_app_server, start_worker, wait_app_ready
from scalesim.components.balancer import BalancerSettings, start_balancer
from scalesim.components.binaries import Binaries, find_binaries, version_of
from scalesim.components.credentials import redact, redact_url, write_private
from scalesim.components.keyvalue import start_keyvalue
from scalesim.components.postgres import PostgresCluster, PostgresSettings, answers_query
from scalesim.components.process import LOOPBACK, ManagedProcess, free_port, http_ok, port_accepts
from scalesim.deploy.appconfig import app_config
from scalesim.deploy.ledger import RunLedger
from scalesim.errors import ComponentError, ScalesimError
from scalesim.faults.delayproxy import DelayProxyProcess, start_delay_proxy
from scalesim.measure.budgets import CpuBudgets, CpuGroup, remove_stale_groups
from scalesim.measure.cpu import node_cpu_seconds
from scalesim.topology import Scenario

STATE_FILE = "deployment.json"
#: The unredacted node URLs and app configuration of a running deployment (mode 0600).
SECRETS_FILE = "secrets.json"
Progress = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class DeploymentSettings:
    """Tuning values of a local deployment, in one place."""

    components: str = "embedded"
    enforce_budgets: bool = True
    # Connections per database per app process: enough for the concurrency one process sees
    # under a CPU budget of a fraction of a core, small enough that 3 apps x 3 databases fit.
    pool_size: int = 10
    session_ttl_seconds: int = 3600
    query_cache_ttl_seconds: int = 30
    app_start_timeout: float = 60.0
    postgres: PostgresSettings = field(default_factory=PostgresSettings)
    balancer: BalancerSettings = field(default_factory=BalancerSettings)


@dataclass(kw_only=True)
class Node:
    """One running server: what it is, where it listens, its process and CPU account."""

    name: str
    role: str
    port: int | None
    cpu_budget: float | None
    process: ManagedProcess
    cpu_group: CpuGroup | None = None
    url: str | None = None
    health_url: str | None = None

    def cpu_seconds(self) -> float:
        return node_cpu_seconds(pid=self.process.pid, group=self.cpu_group)

    def healthy(self) -> bool:
        """Whether the node serves: its health check, a query for PostgreSQL (which accepts
        connections while it still recovers from a crash), else its port."""
        if not self.process.alive():
            return False
        if self.health_url is not None:
            return http_ok(self.health_url)
        if self.role in ("primary", "replica") and self.url:
            return answers_query(self.url)
        return self.port is None or port_accepts(self.port)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "port": self.port, "pid": self.process.pid,
                "cpu_budget": self.cpu_budget, "url": redact_url(self.url) if self.url else None,
                "health_url": self.health_url,
                "log": str(self.process.log_path)}


def new_run_id(scenario_name: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{scenario_name}-{os.urandom(2).hex()}"


@dataclass(kw_only=True)
class LocalDeployment:
    scenario: Scenario
    run_dir: Path
    settings: DeploymentSettings = field(default_factory=DeploymentSettings)
    progress: Progress = field(default=lambda message: None)
    run_id: str = ""
    nodes: list[Node] = field(default_factory=list)
    budgets: CpuBudgets = field(init=False)
    binaries: Binaries = field(init=False)
    cluster: PostgresCluster | None = field(default=None, init=False)
    entry_url: str = field(default="", init=False)
    timings: dict[str, float] = field(default_factory=dict, init=False)
    app_config: dict[str, Any] = field(default_factory=dict, init=False)
    # The process ledger's entry (scalesim/deploy/ledger.py): what a `kill -9` of scalesim would orphan.
    ledger: RunLedger | None = field(default=None, init=False)
    # Nodes the app servers and workers reach through a delay proxy, so that a latency fault can
    # slow them down (scalesim/faults/delayproxy.py); the proxies by the name of the node they front.
    delayed: tuple[str, ...] = ()
    proxies: dict[str, DelayProxyProcess] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.run_id = self.run_id or self.run_dir.name
        self.binaries = find_binaries(self.settings.components)
        self.budgets = CpuBudgets(run_id=self.run_id, enforce=self.settings.enforce_budgets)

    # -- bring-up -----------------------------------------------------------------------------

    def up(self) -> None:
        """Start every node of the stage; on any failure stop what was started, then re-raise."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        try:
            self.ledger = RunLedger.open(run_id=self.run_id, run_dir=self.run_dir)
            self._start_database()
            self._start_keyvalue()
            self._start_cache()
            self._start_delay_proxies()
            self._start_apps()
            self._start_workers()
            self._start_balancer()
            self.budgets.apply()
            self.timings["up_seconds"] = time.monotonic() - started
            self.write_state()
        except BaseException:
            self.down()
            raise

    def _group(self, name: str, cores: float | None) -> CpuGroup | None:
        return self.budgets.group(name, cores=cores)

    def _timed(self, label: str, started: float) -> None:
        self.timings[label] = time.monotonic() - started

    def _start_database(self) -> None:
        spec = self.scenario.nodes
        self.progress("starting PostgreSQL primary")
        started = time.monotonic()
        self.cluster = PostgresCluster(binaries=self.binaries, run_dir=self.run_dir, settings=self.settings.postgres)
        primary = self.cluster.start_primary(port=free_port(), cpu_group=self._group("primary", spec.primary.cpu))
        self._add_node(name="primary", role="primary", port=primary.port, cpu=spec.primary.cpu,
                       process=primary.process, url=primary.url)
        self._timed("postgres_seconds", started)
        started = time.monotonic()
        data = self.scenario.data
        self.progress(f"seeding {data.users} users, {data.books} books, {data.users * data.rentals_per_user} rentals")
        seed_database(primary.url, users=data.users, authors=data.authors, books=data.books,
                      rentals_per_user=data.rentals_per_user, seed=data.seed)
        self.cluster.settle()
        self._timed("seed_seconds", started)
        started = time.monotonic()
        for index in range(1, spec.replicas.count + 1):
            self.progress(f"making streaming replica {index} of {spec.replicas.count}")
            name = f"replica{index}"
            replica = self.cluster.add_replica(port=free_port(), cpu_group=self._group(name, spec.replicas.cpu))
            self._add_node(name=name, role="replica", port=replica.port, cpu=spec.replicas.cpu,
                           process=replica.process, url=replica.url)
        if spec.replicas.count:
            self._timed("replicas_seconds", started)

    def _start_keyvalue(self) -> None:
        spec = self.scenario.nodes.keyvalue
        if spec.count == 0:
            return
        self.progress("starting key-value server")
        # Sessions, write marks and jobs must not be dropped: a full server refuses writes. Only when
        # the caches share it (no cache node) does it evict, as a cache must.
        app = self.scenario.app
        shares_caches = self.scenario.nodes.cache.count == 0 and (app.query_cache or app.object_cache)
        server = start_keyvalue(binary=self.binaries.keyvalue_server, run_dir=self.run_dir, port=free_port(),
                                eviction_policy="allkeys-lru" if shares_caches else "noeviction",
                                # Sessions, marks and jobs outlive a crash of the server: a restart
                                # must not log every user out or drop queued work.
                                persistent=True, cpu_group=self._group("keyvalue", spec.cpu))
        self._add_node(name="keyvalue", role="keyvalue", port=server.port, cpu=spec.cpu, process=server.process,
                       url=server.url)

    def _start_cache(self) -> None:
        """The caches' own key-value server (stage3+): evicts least recently used keys when full."""
        spec = self.scenario.nodes.cache
        if spec.count == 0:
            return
        self.progress("starting cache server")
        server = start_keyvalue(binary=self.binaries.keyvalue_server, run_dir=self.run_dir, port=free_port(),
                                name="cache", eviction_policy="allkeys-lru", cpu_group=self._group("cache", spec.cpu))
        self._add_node(name="cache", role="cache", port=server.port, cpu=spec.cpu, process=server.process,
                       url=server.url)

    def _start_delay_proxies(self) -> None:
        for name in self.delayed:
            node = next((node for node in self.nodes if node.name == name), None)
            if node is None or node.port is None:
                raise ComponentError(f"no node {name!r} with a port to put a delay proxy in front of")
            proxy = start_delay_proxy(target=name, upstream_port=node.port, run_dir=self.run_dir)
            self.proxies[name] = proxy
            self.record_process_group(name=f"proxy-{name}", pgid=proxy.process.pid)

    def _url_for_app(self, node: Node) -> str:
        """The node's URL as the app servers reach it: through its delay proxy when it has one."""
        url = node.url or ""
        proxy = self.proxies.get(node.name)
        return url.replace(f":{node.port}/", f":{proxy.port}/", 1) if proxy is not None else url

    def _build_app_config(self) -> dict[str, Any]:
        by_role = {node.role: node for node in self.nodes}
        return app_config(self.scenario, database_url=self._url_for_app(by_role["primary"]),
                          replica_urls=[self._url_for_app(node) for node in self.nodes if node.role == "replica"],
                          keyvalue_url=self._url_for_app(by_role["keyvalue"]) if "keyvalue" in by_role else None,
                          cache_url=self._url_for_app(by_role["cache"]) if "cache" in by_role else None,
                          settings=self.settings)

    def _start_apps(self) -> None:
        spec = self.scenario.nodes.app
        self.app_config = self._build_app_config()
        self.progress(f"starting {spec.count} app server{'s' if spec.count > 1 else ''}")
        started = time.monotonic()
        apps = []
        for index in range(1, spec.count + 1):
            name = f"app{index}"
            app = start_app_server(name=name, port=free_port(), config=self.app_config, run_dir=self.run_dir,
                                   cpu_group=self._group(name, spec.cpu))
            apps.append(app)
            self._add_node(name=name, role="app", port=app.port, cpu=spec.cpu, process=app.process, url=app.url,
                           health_url=f"{app.url}/healthz")
        for app in apps:  # started together, awaited together: start-up overlaps
            wait_app_ready(app, timeout=self.settings.app_start_timeout)
        self._timed("apps_seconds", started)
        self.entry_url = apps[0].url

    def _start_workers(self) -> None:
        spec = self.scenario.nodes.workers
        for index in range(1, spec.count + 1):
            name = f"worker{index}"
            worker = start_worker(name=name, config=self.app_config, run_dir=self.run_dir,
                                  cpu_group=self._group(name, spec.cpu))
            self._add_node(name=name, role="worker", port=None, cpu=spec.cpu, process=worker.process)
        if spec.count:
            self.progress(f"started {spec.count} background worker{'s' if spec.count > 1 else ''}")
            time.sleep(0.3)
            for node in self.nodes:
                if node.role == "worker" and not node.process.alive():
                    raise ComponentError(f"{node.name} exited during start-up: {node.process.last_log_line()}")

    def _start_balancer(self) -> None:
        spec = self.scenario.nodes.balancer
        if spec.count == 0:
            return
        self.progress("starting load balancer")
        upstreams = [node.port for node in self.nodes if node.role == "app" and node.port is not None]
        balancer = start_balancer(binary=self.binaries.caddy, run_dir=self.run_dir, port=free_port(),
                                  upstreams=upstreams, settings=self.settings.balancer,
                                  cpu_group=self._group("balancer", spec.cpu))
        self._add_node(name="balancer", role="balancer", port=balancer.port, cpu=spec.cpu, process=balancer.process,
                       url=balancer.url, health_url=f"{balancer.url}/healthz")
        self.entry_url = balancer.url

    def _add_node(self, *, name: str, role: str, port: int | None, cpu: float | None, process: ManagedProcess,
                  url: str | None = None, health_url: str | None = None) -> None:
        self.record_process_group(name=name, pgid=process.pid)
        self.nodes.append(Node(name=name, role=role, port=port, cpu_budget=cpu, process=process,
                               cpu_group=self.budgets.groups.get(name), url=url, health_url=health_url))

    # -- state, inspection, teardown -------------------------------------------------------------

    def component_versions(self) -> dict[str, str]:
        versions = {"postgres": version_of(self.binaries.pg("postgres"))}
        if any(node.role in ("keyvalue", "cache") for node in self.nodes):
            versions["keyvalue"] = version_of(self.binaries.keyvalue_server)
        if any(node.role == "balancer" for node in self.nodes):
            versions["balancer"] = "caddy " + version_of(self.binaries.caddy).split()[0]
        return versions

    def state(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "scenario": self.scenario.name,
            "scenario_file": str(self.scenario.source),
            "run_dir": str(self.run_dir.resolve()),
            "entry_url": self.entry_url,
            "components": self.settings.components,
            "budgets_enforced": self.budgets.enforced,
            "budgets_note": self.budgets.reason,
            "data_dirs": [str(node.data_dir) for node in self.cluster.nodes] if self.cluster else [],
            "timings": self.timings,
            "nodes": [node.to_dict() for node in self.nodes],
            "app_config": redact(self.app_config),
            "secrets_file": SECRETS_FILE,
            # Password files outside the run folder (PostgreSQL's, when its data folders are private).
            "credential_files": [str(self.cluster.passfile)] if self.cluster and self.cluster.passfile else [],
        }

    def secrets(self) -> dict[str, Any]:
        """What `state` redacts: every node's URL with its password, and the app's whole configuration."""
        return {"node_urls": {node.name: node.url for node in self.nodes if node.url},
                "app_config": self.app_config}

    def write_state(self) -> None:
        write_private(self.run_dir / SECRETS_FILE, json.dumps(self.secrets(), indent=2))
        (self.run_dir / STATE_FILE).write_text(json.dumps(self.state(), indent=2))

    def node_restarted(self, node: Node) -> None:
        """A node was started again (a fault's end): its new process is what `down` must stop."""
        self.record_process_group(name=node.name, pgid=node.process.pid)
        self.write_state()

    def down(self) -> None:
        """Stop every node, newest first, then remove CPU groups and database files (logs stay)."""
        for proxy in self.proxies.values():
            with contextlib.suppress(Exception):
                proxy.process.stop()
        for node in reversed(self.nodes):
            with contextlib.suppress(Exception):
                node.process.stop()
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster.cleanup_data()
        self.budgets.remove()
        remove_state(self.run_dir)
        if self.ledger is not None:
            self.ledger.close()
            self.ledger = None

    def record_process_group(self, *, name: str, pgid: int | None) -> None:
        """Put a process group this deployment (or its load generator) started in the ledger, with the
        folders holding the database's data (and its password file), which a sweep removes."""
        if self.ledger is not None and pgid:
            data_roots = {node.data_dir.parent for node in self.cluster.nodes} if self.cluster is not None else set()
            self.ledger.record_group(name=name, pgid=pgid, data_dirs=sorted(data_roots))

    def detach(self) -> None:
        """The deployment outlives this process on purpose (`scalesim up`); `scalesim down` stops it."""
        if self.ledger is not None:
            self.ledger.mark_detached()


def seed_database(url: str, **sizes: int) -> None:
    """Create the reference app's schema and seed data (sync or async seeder alike)."""
    from reference_app.seed import seed_database as seeder

    result = seeder(url, **sizes)
    if inspect.isawaitable(result):
        asyncio.run(_await(result))


async def _await(awaitable: Any) -> Any:
    return await awaitable


# -- deployments left running by `scalesim up` ---------------------------------------------------

def read_state(run_dir: Path, *, with_secrets: bool = False) -> dict[str, Any]:
    """The state file of a deployment; `with_secrets` puts the passwords back into its URLs and
    app configuration (for a caller that must connect to the servers)."""
    path = run_dir / STATE_FILE
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ScalesimError(f"no readable deployment state at {path}: {exc}") from None
    if with_secrets:
        secrets = read_secrets(run_dir)
        urls = secrets.get("node_urls", {})
        for node in state.get("nodes", []):
            node["url"] = urls.get(node.get("name"), node.get("url"))
        state["app_config"] = secrets.get("app_config", state.get("app_config"))
    return state


def read_secrets(run_dir: Path) -> dict[str, Any]:
    """The secrets file of a running deployment (readable by the user who started it, and root)."""
    path = run_dir / SECRETS_FILE
    try:
        secrets: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ScalesimError(f"no readable deployment secrets at {path}: {exc}") from None
    return secrets


def remove_state(run_dir: Path) -> None:
    """Forget a stopped deployment: its state and secrets files, and its data folder, where the
    servers' configuration and password files live (logs stay)."""
    for name in (STATE_FILE, SECRETS_FILE):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "data", ignore_errors=True)


def stop_from_state(state: dict[str, Any]) -> list[str]:
    """Stop the nodes a state file lists (from another process); returns the names stopped."""
    stopped = []
    for node in reversed(state.get("nodes", [])):
        pid = node.get("pid")
        if not pid or not _group_alive(pid):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _group_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        stopped.append(node["name"])
    for data_dir in state.get("data_dirs", []):
        shutil.rmtree(data_dir, ignore_errors=True)
    for credential_file in state.get("credential_files", []):
        Path(credential_file).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # a private folder of the data folders, empty by now
            Path(credential_file).parent.rmdir()
    if state.get("run_dir"):
        remove_state(Path(state["run_dir"]))
    remove_stale_groups(state.get("run_id", ""))
    return stopped


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def node_health(node: dict[str, Any]) -> str:
    pid = node.get("pid")
    if not pid or not _group_alive(pid):
        return "down"
    if node.get("health_url"):
        return "healthy" if http_ok(node["health_url"]) else "unhealthy"
    port = node.get("port")
    if port is None:
        return "running"
    return "healthy" if port_accepts(port, host=LOOPBACK) else "unhealthy"
