"""Fixtures for the reference app's tests: real databases, a real key-value server, the app itself.

Servers come from the suite's shared fixtures in ``tests/conftest.py`` (``postgres``,
``postgres_replicated``, ``keyvalue_url``: real PostgreSQL and Valkey on free ports), unless the
environment points at servers that are already running, which makes a quick edit-test loop:

* ``SCALESIM_TEST_DATABASE_URL`` -- any database on a PostgreSQL server where the test user may
  ``CREATE DATABASE`` (tests create their own databases on that server);
* ``SCALESIM_TEST_REPLICA_URLS`` -- comma-separated URLs of streaming replicas of that server;
* ``SCALESIM_TEST_KEYVALUE_URL`` -- a Redis-compatible server (tests use its database 5 and flush it).

Each test module seeds a small database of its own (50 users, 120 books), so modules never see
each other's writes. The app runs in-process through httpx's ASGI transport (with its lifespan
driven by ``ReferenceApp.running()``), or as real uvicorn processes where a test needs several
servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import redis

from reference_app.app import ReferenceApp, create_app
from reference_app.config import AppConfig
from reference_app.seed import seed_database
from scalesim.components.process import http_ok

REPO = Path(__file__).resolve().parents[2]
SMALL_DATA = {"users": 50, "authors": 30, "books": 120, "rentals_per_user": 8, "seed": 7}
KEYVALUE_DB = 5
_names = itertools.count(1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def _with_keyvalue_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def unique_name(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{next(_names)}"


@dataclass
class DatabaseServer:
    """Creates fresh databases on a primary; knows the replicas' URLs for each."""

    primary_url: str
    replica_urls: list[str] = field(default_factory=list)
    creator: Any = None  # the shared fixture's cluster, when it made the server

    created: list[str] = field(default_factory=list)

    def create_database(self, name: str) -> str:
        if self.creator is not None:
            return str(self.creator.create_database(name))
        asyncio.run(self._execute(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return _with_database(self.primary_url, name)

    def drop_created(self) -> None:
        """Drop the databases made on a server the environment named (shared fixtures clean up alone)."""
        while self.created:
            asyncio.run(self._execute(f'DROP DATABASE IF EXISTS "{self.created.pop()}" WITH (FORCE)'))

    async def _execute(self, sql: str) -> None:
        connection = await asyncpg.connect(self.primary_url)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    def replicas_of(self, name: str) -> list[str]:
        return [_with_database(url, name) for url in self.replica_urls]


@pytest.fixture(scope="session")
def pg_server(request: pytest.FixtureRequest) -> Iterator[DatabaseServer]:
    url = os.environ.get("SCALESIM_TEST_DATABASE_URL")
    if url:
        server = DatabaseServer(primary_url=url)
        yield server
        server.drop_created()
        return
    cluster = request.getfixturevalue("postgres")
    yield DatabaseServer(primary_url=cluster.url_for("postgres"), creator=cluster)


@pytest.fixture(scope="session")
def pg_replicated(request: pytest.FixtureRequest) -> Iterator[DatabaseServer]:
    url = os.environ.get("SCALESIM_TEST_DATABASE_URL")
    replicas = [u for u in os.environ.get("SCALESIM_TEST_REPLICA_URLS", "").split(",") if u]
    if url and replicas:
        server = DatabaseServer(primary_url=url, replica_urls=replicas)
        yield server
        server.drop_created()
        return
    cluster = request.getfixturevalue("postgres_replicated")
    yield DatabaseServer(
        primary_url=cluster.url_for("postgres"),
        replica_urls=[node.url_for("postgres") for node in cluster.replicas],
        creator=cluster,
    )


@pytest.fixture(scope="session")
def kv_url(request: pytest.FixtureRequest) -> str:
    url = os.environ.get("SCALESIM_TEST_KEYVALUE_URL") or request.getfixturevalue("keyvalue_url")
    return _with_keyvalue_db(url, KEYVALUE_DB)


@pytest.fixture
def clean_kv(kv_url: str) -> str:
    """The key-value URL, with its database flushed first (caches must not leak between tests)."""
    client = redis.Redis.from_url(kv_url)
    try:
        client.flushdb()
    finally:
        client.close()
    return kv_url


def seed(url: str, **overrides: int) -> str:
    asyncio.run(seed_database(url, **{**SMALL_DATA, **overrides}))
    return url


@pytest.fixture(scope="module")
def seeded_url(pg_server: DatabaseServer) -> str:
    """A database seeded with the small data set, shared by the tests of one module."""
    return seed(pg_server.create_database(unique_name("ref")))


@pytest.fixture
def fresh_seeded_url(pg_server: DatabaseServer) -> str:
    """A database seeded with the small data set for one test alone."""
    return seed(pg_server.create_database(unique_name("reff")))


def make_config(database_url: str, **changes: Any) -> AppConfig:
    return AppConfig(server_name=changes.pop("server_name", "test-app"), database_url=database_url, **changes)


class AppClient(httpx.AsyncClient):
    """An httpx client that also holds the in-process app it talks to (tests peek at its state)."""

    app: ReferenceApp


@contextlib.asynccontextmanager
async def api(config: AppConfig) -> AsyncIterator[AppClient]:
    """An httpx client talking to the app in-process, with the app's lifespan around it."""
    app = create_app(config)
    async with (
        app.running(),
        AppClient(transport=httpx.ASGITransport(app=app), base_url="http://app.test") as client,
    ):
        client.app = app
        yield client


async def login(client: httpx.AsyncClient, user: int) -> dict[str, str]:
    """Log seed user ``user`` in; returns the Authorization header."""
    response = await client.post("/api/login", json={"email": f"user{user}@example.com", "password": f"password{user}"})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


# -- real uvicorn processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_server(config: AppConfig, log_dir: Path) -> Server:
    port = free_port()
    log = log_dir / f"{config.server_name}-{port}.log"
    env = {**os.environ, "SCALESIM_APP_CONFIG": config.to_json(), "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "uvicorn", "reference_app.app:create_app", "--factory"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(port=port, process=process, log=log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app server exited: {log.read_text()[-2000:]}")
        if http_ok(f"{server.url}/healthz", timeout=1):
            return server
        time.sleep(0.05)
    stop_server(server)
    raise RuntimeError(f"app server did not become healthy: {log.read_text()[-2000:]}")


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    """Start uvicorn servers with ``servers.append(start_server(config, tmp_path))``; all stop at the end."""
    started: list[Server] = []
    try:
        yield started
    finally:
        for server in started:
            stop_server(server)
