"""A deployment's servers are reachable from this machine alone, ask for passwords, and leave none behind.

One real stage4 run (primary and two streaming replicas, the key-value and cache servers, Caddy,
three app servers and the workers; a few seconds of Locust load) is probed while it is loaded:
every listening socket of every process of every node, PostgreSQL logins without, with a wrong and
with the right password, key-value servers asked without a password, the secrets and state files.
Once the run is over and down, every file left in the run folder (logs, Locust's output, results,
the report) is searched for every password. Smaller tests follow the path of ``scalesim down`` in
another shell (the state file alone finds the secrets, and removes them), run the container
key-value servers' start command with a real Valkey, and read the compose and Kubernetes files for
the references that replace passwords there.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import psutil
import pytest

from reference_app.config import AppConfig
from scalesim.components.binaries import find_binaries
from scalesim.components.credentials import MASK, redact, redact_url
from scalesim.components.keyvalue import answers_ping
from scalesim.components.process import ManagedProcess, free_port
from scalesim.deploy.compose import compose_project
from scalesim.deploy.containers import keyvalue_server_command
from scalesim.deploy.kubernetes import KEYVALUE_PASSWORD_KEY, SECRET_NAME, kubernetes_manifests
from scalesim.deploy.local import (
    SECRETS_FILE,
    STATE_FILE,
    DeploymentSettings,
    LocalDeployment,
    Node,
    read_state,
    stop_from_state,
)
from scalesim.report.build import run_report
from scalesim.runner import Run
from scalesim.topology import LoadProfile, Scenario, load_scenario

LOOPBACK = "127.0.0.1"
COMPONENTS = os.environ.get("SCALESIM_TEST_COMPONENTS", "embedded")


def _small(stage: str, **overrides: int) -> Scenario:
    scenario = load_scenario(stage).with_overrides(**overrides)
    short = LoadProfile(steps=(6,), step_seconds=4, warmup_seconds=1, spawn_rate=50)
    return dataclasses.replace(scenario, quick=short,
                               data=dataclasses.replace(scenario.data, users=50, books=100, authors=30,
                                                        rentals_per_user=3))


# -- what the probes look at -----------------------------------------------------------------------

def _node_processes(node: Node) -> list[psutil.Process]:
    """Every process of a node: its process group, and the descendants that left it (PostgreSQL's
    backends call setsid)."""
    leader = node.process.pid
    assert leader is not None
    found: dict[int, psutil.Process] = {}
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(leader)
        for process in [root, *root.children(recursive=True)]:
            found[process.pid] = process
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == leader:
                found[process.pid] = process
    return list(found.values())


def _sockets(nodes: list[Node]) -> list[dict[str, Any]]:
    """Every listening TCP socket and every bound UDP socket of the deployment's processes."""
    sockets = []
    for node in nodes:
        for process in _node_processes(node):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
                for connection in process.net_connections(kind="inet"):
                    listening = connection.type == socket.SOCK_STREAM and connection.status == psutil.CONN_LISTEN
                    bound_udp = connection.type == socket.SOCK_DGRAM and bool(connection.laddr)
                    if listening or bound_udp:
                        sockets.append({"node": node.name, "process": process.name(), "ip": connection.laddr.ip,
                                        "port": connection.laddr.port,
                                        "kind": "tcp" if connection.type == socket.SOCK_STREAM else "udp"})
    return sockets


async def _login(url: str, *, password: str | None) -> str:
    """``ok`` or the name of the error a login gets (no password file or variable can help it)."""
    parts = urlsplit(url)
    try:
        conn = await asyncpg.connect(host=parts.hostname, port=parts.port, user=parts.username,
                                     database=parts.path.lstrip("/"), password=password,
                                     passfile="/nonexistent/.pgpass", timeout=10)
    except (asyncpg.PostgresError, OSError) as exc:
        return type(exc).__name__
    try:
        return "ok" if await conn.fetchval("SELECT 1") == 1 else "wrong answer"
    finally:
        await conn.close()


async def _fetch(url: str, sql: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return [tuple(row) for row in await conn.fetch(sql)]
    finally:
        await conn.close()


def _raw_reply(port: int, request: bytes) -> bytes:
    with socket.create_connection((LOOPBACK, port), timeout=3) as sock:
        sock.sendall(request)
        return sock.recv(256)


def _probe(deployment: LocalDeployment) -> dict[str, Any]:
    """What the security tests assert on, taken while the deployment is up and loaded."""
    assert deployment.cluster is not None
    password = deployment.cluster.password
    databases = {node.name: node.url or "" for node in deployment.nodes if node.role in ("primary", "replica")}
    logins = {name: {"none": asyncio.run(_login(url, password=None)),
                     "wrong": asyncio.run(_login(url, password=password[::-1])),
                     "right": asyncio.run(_login(url, password=password))} for name, url in databases.items()}
    primary = databases["primary"]
    keyvalues = {node.name: node for node in deployment.nodes if node.role in ("keyvalue", "cache")}
    secrets_path = deployment.run_dir / SECRETS_FILE
    return {
        "sockets": _sockets(deployment.nodes),
        "ports": {node.name: node.port for node in deployment.nodes if node.port is not None},
        "logins": logins,
        "hba": asyncio.run(_fetch(primary, "SELECT type, database, user_name, address, netmask, auth_method "
                                           "FROM pg_hba_file_rules ORDER BY rule_number")),
        "stored_password": asyncio.run(_fetch(primary, "SELECT left(rolpassword, 14) FROM pg_authid "
                                                       "WHERE rolname = current_user"))[0][0],
        "keyvalue_without_password": {name: _raw_reply(node.port or 0, b"PING\r\n")
                                      for name, node in keyvalues.items()},
        "keyvalue_passwords": {name: urlsplit(node.url or "").password for name, node in keyvalues.items()},
        "postgres_password": password,
        "stats_token": deployment.app_config.get("stats_token"),
        "secrets_mode": stat.S_IMODE(secrets_path.stat().st_mode),
        "secrets": json.loads(secrets_path.read_text()),
        "state_text": (deployment.run_dir / STATE_FILE).read_text(),
    }


def _files_holding(folder: Path, secrets: list[str]) -> dict[str, list[str]]:
    """Every file under `folder` that holds one of `secrets`, and which (by position in the list)."""
    found: dict[str, list[str]] = {}
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            content = path.read_bytes()
            hits = [f"secret {index}" for index, secret in enumerate(secrets) if secret.encode() in content]
            if hits:
                found[str(path.relative_to(folder))] = hits
    return found


# -- one loaded stage4 -----------------------------------------------------------------------------

@dataclasses.dataclass
class ObservedRun:
    probe: dict[str, Any]
    results: dict[str, Any]
    run_dir: Path

    @property
    def passwords(self) -> list[str]:
        secrets = [self.probe["postgres_password"], *self.probe["keyvalue_passwords"].values()]
        if self.probe["stats_token"]:
            secrets.append(self.probe["stats_token"])
        return [secret for secret in secrets if secret]


@pytest.fixture(scope="module")
def stage4_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObservedRun]:
    run_dir = tmp_path_factory.mktemp("security") / "run"
    run_dir.mkdir()
    probes: list[dict[str, Any]] = []
    failures: list[BaseException] = []
    the_run: Run

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "measure_start" and not probes and not failures:
            try:
                assert the_run.deployment is not None
                probes.append(_probe(the_run.deployment))
            except Exception as exc:  # noqa: BLE001 (reported below, after the run has stopped everything)
                failures.append(exc)

    the_run = Run(scenario=_small("stage4"), run_dir=run_dir, quick=True,
                  settings=DeploymentSettings(enforce_budgets=False), on_load_event=on_event)
    results = the_run.execute()
    run_report(results, run_dir)
    if failures:
        raise failures[0]
    assert probes, "the load generator never started a measurement window"
    yield ObservedRun(probe=probes[0], results=results, run_dir=run_dir)


def test_every_socket_of_every_node_is_on_loopback(stage4_run: ObservedRun) -> None:
    sockets = stage4_run.probe["sockets"]
    assert [entry for entry in sockets if entry["ip"] != LOOPBACK] == []
    # The probe saw each server's own port: it looked at the right processes.
    listening = {(entry["node"], entry["port"]) for entry in sockets if entry["kind"] == "tcp"}
    assert set(stage4_run.probe["ports"].items()) <= listening
    servers = {"primary", "replica1", "replica2", "keyvalue", "app1", "app2", "app3", "balancer"}
    assert servers <= set(stage4_run.probe["ports"])


def test_postgres_wants_the_password_on_every_node(stage4_run: ObservedRun) -> None:
    logins = stage4_run.probe["logins"]
    assert sorted(logins) == ["primary", "replica1", "replica2"]
    for outcome in logins.values():
        assert outcome["none"] != "ok" and outcome["wrong"] == "InvalidPasswordError"
        assert outcome["right"] == "ok"
    assert stage4_run.probe["stored_password"] == "SCRAM-SHA-256$"
    for kind, _database, users, address, netmask, method in stage4_run.probe["hba"]:
        assert (kind, users, address, netmask, method) == ("host", ["all"], LOOPBACK, "255.255.255.255",
                                                           "scram-sha-256")
    assert sorted(rule[1][0] for rule in stage4_run.probe["hba"]) == ["all", "replication"]


def test_keyvalue_servers_want_their_password(stage4_run: ObservedRun) -> None:
    replies = stage4_run.probe["keyvalue_without_password"]
    assert "keyvalue" in replies
    for reply in replies.values():
        assert reply.startswith(b"-NOAUTH"), reply
    assert all(stage4_run.probe["keyvalue_passwords"].values())


def test_state_file_is_redacted_and_the_secrets_file_is_private(stage4_run: ObservedRun) -> None:
    probe = stage4_run.probe
    assert probe["secrets_mode"] == 0o600
    state = json.loads(probe["state_text"])
    for secret in stage4_run.passwords:
        assert secret not in probe["state_text"]
    urls = {node["name"]: node["url"] for node in state["nodes"]}
    assert urls["primary"].startswith(f"postgresql://scalesim:{MASK}@{LOOPBACK}:")
    assert urls["keyvalue"].startswith(f"redis://:{MASK}@{LOOPBACK}:")
    assert state["app_config"]["database_url"] == urls["primary"]
    # The secrets file holds what the state file masks: working URLs and the whole app config.
    secrets = probe["secrets"]
    assert probe["postgres_password"] in secrets["node_urls"]["primary"]
    assert probe["keyvalue_passwords"]["keyvalue"] in secrets["app_config"]["keyvalue_url"]


def test_no_file_of_the_run_holds_a_password_after_down(stage4_run: ObservedRun) -> None:
    run_dir = stage4_run.run_dir
    assert stage4_run.results["steps"][0]["total"]["requests"] > 0  # a real run, with logs worth searching
    for name in ("results.json", "report.html", "logs/primary.log", "logs/replica1.log", "logs/keyvalue.log",
                 "logs/app1.log", "logs/worker1.log", "logs/balancer.log"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "locust").iterdir())
    assert _files_holding(run_dir, stage4_run.passwords) == {}
    assert not (run_dir / SECRETS_FILE).exists() and not (run_dir / STATE_FILE).exists()
    assert not (run_dir / "data").exists()  # server configurations and password files went with the servers


# -- `scalesim down` from another shell ----------------------------------------------------------------

def test_the_state_file_alone_finds_and_removes_every_secret(tmp_path: Path) -> None:
    """What `scalesim status` and `down` in another shell do with a deployment's files (no servers here:
    the loaded stage4 above shows the same files made by real ones)."""
    run_dir, private = tmp_path / "run", tmp_path / "private"
    full_url, password = "postgresql://scalesim:s3cret@127.0.0.1:5432/bookrental", "s3cret"
    (run_dir / "data" / "keyvalue").mkdir(parents=True)
    (run_dir / "data" / "keyvalue" / "keyvalue.conf").write_text(f"requirepass {password}\n")
    private.mkdir()
    (private / ".pgpass").write_text(f"127.0.0.1:*:*:scalesim:{password}\n")
    (run_dir / SECRETS_FILE).write_text(json.dumps({"node_urls": {"primary": full_url},
                                                    "app_config": {"database_url": full_url}}))
    state = {"run_id": "x", "run_dir": str(run_dir), "data_dirs": [], "credential_files": [str(private / ".pgpass")],
             "nodes": [{"name": "primary", "pid": None, "url": redact_url(full_url)}],
             "app_config": {"database_url": redact_url(full_url)}}
    (run_dir / STATE_FILE).write_text(json.dumps(state))

    assert password not in json.dumps(read_state(run_dir))
    full = read_state(run_dir, with_secrets=True)
    assert full["nodes"][0]["url"] == full["app_config"]["database_url"] == full_url
    assert stop_from_state(read_state(run_dir)) == []
    assert _files_holding(tmp_path, [password]) == {}
    assert not (run_dir / SECRETS_FILE).exists() and not (run_dir / "data").exists()
    assert not private.exists()  # the private folder of PostgreSQL's data, empty once its files are gone


# -- container deployments ---------------------------------------------------------------------------

def test_container_keyvalue_servers_take_their_password_from_the_environment(tmp_path: Path) -> None:
    """The start command of the compose and Kubernetes key-value servers, run for real with this
    machine's Valkey behind a stand-in for the image's entrypoint (which starts what it is given)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    entrypoint = bin_dir / "docker-entrypoint.sh"
    entrypoint.write_text('#!/bin/sh\nexec "$@"\n')
    port = free_port()
    server = bin_dir / "redis-server"
    server.write_text(f'#!/bin/sh\nshift\nexec {find_binaries(COMPONENTS).keyvalue_server} - "$@" '
                      f"--port {port} --bind {LOOPBACK}\n")
    for script in (entrypoint, server):
        script.chmod(0o755)
    command = keyvalue_server_command(eviction_policy="allkeys-lru")
    assert "s3cret-key" not in " ".join(command)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "REDISCLI_AUTH": "s3cret-key"}
    process = ManagedProcess(name="keyvalue container", argv=command, env=env, log_path=tmp_path / "kv.log")
    process.start()
    try:
        process.wait_ready(lambda: answers_ping(port), timeout=15)
        assert _raw_reply(port, b"PING\r\n").startswith(b"-NOAUTH")
        assert answers_ping(port, password="s3cret-key")
        assert "s3cret-key" not in " ".join(psutil.Process(process.pid).cmdline())
    finally:
        process.stop()
    missing = subprocess.run(command, env={"PATH": env["PATH"]}, capture_output=True, text=True, timeout=10,
                             check=False)
    assert missing.returncode != 0 and "REDISCLI_AUTH must hold the password" in missing.stderr


def test_container_files_hold_references_to_passwords_only() -> None:
    scenario = load_scenario("stage4")
    services = compose_project(scenario)["services"]
    reference = "${SCALESIM_KEYVALUE_PASSWORD:-scalesim-keyvalue}"  # interpolated by Compose at `up`
    assert services["keyvalue"]["environment"] == {"REDISCLI_AUTH": reference}
    assert services["app1"]["environment"]["SCALESIM_KEYVALUE_PASSWORD"] == reference
    stage0_app = compose_project(load_scenario("stage0"))["services"]["app1"]
    assert "SCALESIM_KEYVALUE_PASSWORD" not in stage0_app["environment"]  # no key-value server, no password
    objects = kubernetes_manifests(scenario)
    keyvalue = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "keyvalue")
    [container] = keyvalue["spec"]["template"]["spec"]["containers"]
    assert container["env"] == [{"name": "REDISCLI_AUTH", "valueFrom": {"secretKeyRef": {
        "name": SECRET_NAME, "key": KEYVALUE_PASSWORD_KEY}}}]
    # The app fills the password in, as asyncpg does with PGPASSWORD.
    config = '{"database_url": "postgresql://scalesim@primary:5432/bookrental", "sessions": "keyvalue", ' \
             '"keyvalue_url": "redis://keyvalue:6379/0"}'
    app = AppConfig.from_env({"SCALESIM_APP_CONFIG": config, "SCALESIM_KEYVALUE_PASSWORD": "s3cret-key"})
    assert app.keyvalue_url == "redis://:s3cret-key@keyvalue:6379/0"
    assert AppConfig.from_env({"SCALESIM_APP_CONFIG": config}).keyvalue_url == "redis://keyvalue:6379/0"


# -- redaction ---------------------------------------------------------------------------------------

def test_redaction_masks_passwords_and_secret_values_only() -> None:
    assert redact_url("postgresql://scalesim:pw@127.0.0.1:5432/db") == "postgresql://scalesim:***@127.0.0.1:5432/db"
    assert redact_url("redis://:pw@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert redact_url("postgresql://scalesim@primary:5432/db") == "postgresql://scalesim@primary:5432/db"
    assert redact_url("http://127.0.0.1:8080/a@b") == "http://127.0.0.1:8080/a@b"
    config = {"database_url": "postgresql://u:pw@h:1/d", "replica_urls": ["postgresql://u:pw@h:2/d"],
              "stats_token": "tok", "sessions": "keyvalue", "pool_size": 10, "cache_url": None}
    assert redact(config) == {"database_url": "postgresql://u:***@h:1/d", "replica_urls": ["postgresql://u:***@h:2/d"],
                              "stats_token": "***", "sessions": "keyvalue", "pool_size": 10, "cache_url": None}
