"""The cache server is optional: down, hung or missing at start, requests still succeed from the database.

Stage3+ keeps the caches on a Valkey of their own (``cache_url``), apart from the session store. Each
test starts that cache server as a real process on a free port, drives the real app in-process
against it and against the suite's key-value server (sessions, write marks, jobs), then breaks the
cache server: stops it (connections refused), pauses it with SIGSTOP (it accepts connections and
never answers: the slow case, to the limit), or starts the app before it exists. Requests must keep
answering 200 at database speed, paying the cache timeout at most once per retry window rather than
once per request, and the caches must come back by themselves once the server answers again on the
same port.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis
import redis.asyncio as aioredis

from reference_app.cache import CacheBreaker, CacheSkipped
from reference_app.config import AppConfig
from reference_app.workers import build_worker
from scalesim.components.binaries import find_binaries
from scalesim.components.keyvalue import KeyValueServer, start_keyvalue
from scalesim.components.process import free_port

from .conftest import AppClient, api, login, make_config

pytestmark = [
    pytest.mark.anyio,
    # arq's own shutdown calls a redis-py method that redis-py deprecated; not ours to fix.
    pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning"),
]

COMPONENTS = os.environ.get("SCALESIM_TEST_COMPONENTS", "embedded")
TIMEOUT_MS = 250
RETRY_MS = 1000


def stage3(database_url: str, keyvalue_url: str, cache_url: str | None, **changes: Any) -> AppConfig:
    flags: dict[str, Any] = {
        "sessions": "keyvalue",
        "joins": "app",
        "query_cache": True,
        "object_cache": True,
        "keyvalue_url": keyvalue_url,
        "cache_url": cache_url,
        "pool_size": 3,
        "cache_timeout_ms": TIMEOUT_MS,
        "cache_retry_ms": RETRY_MS,
    }
    return make_config(database_url, **{**flags, **changes})


def start_cache(run_dir: Path, port: int | None = None) -> KeyValueServer:
    return start_keyvalue(binary=find_binaries(COMPONENTS).keyvalue_server, run_dir=run_dir,
                          port=port or free_port(), name="cache", eviction_policy="allkeys-lru")


def answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def restart(server: KeyValueServer) -> None:
    """The same server again: same port, same settings and password, and (no persistence) no data."""
    server.process.start()
    server.process.wait_ready(lambda: answers(server.url), timeout=15)


def pause(server: KeyValueServer) -> None:
    """SIGSTOP: the kernel still accepts connections for it, and it never answers."""
    assert server.process.pid is not None
    os.kill(server.process.pid, signal.SIGSTOP)


def resume(server: KeyValueServer) -> None:
    if server.process.alive() and server.process.pid is not None:
        os.kill(server.process.pid, signal.SIGCONT)


@pytest.fixture
def cache_server(tmp_path: Path) -> Iterator[KeyValueServer]:
    server = start_cache(tmp_path / "cache")
    try:
        yield server
    finally:
        resume(server)  # a paused server must run to act on the stop signal
        server.process.stop()


@pytest.fixture
async def client(fresh_seeded_url: str, clean_kv: str, cache_server: KeyValueServer) -> AsyncIterator[AppClient]:
    async with api(stage3(fresh_seeded_url, clean_kv, cache_server.url)) as client:
        yield client


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get("/api/_stats")).json()
    return body


async def timed_get(client: httpx.AsyncClient, path: str, **options: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await client.get(path, **options)
    return response, time.monotonic() - started


async def available_book(client: httpx.AsyncClient, *, first: int) -> int:
    """A book with a copy to rent (seed rentals leave some books with none)."""
    for book in range(first, first + 40):
        if (await client.get(f"/api/books/{book}")).json()["available"] >= 1:
            return book
    raise AssertionError(f"no book between {first} and {first + 39} has a copy left")


async def wait_for_retry() -> None:
    """Past the breaker's pause: the next cache call tries the server again."""
    await anyio.sleep(RETRY_MS / 1000 + 0.1)


def key_kinds(url: str) -> set[str]:
    client = redis.Redis.from_url(url)
    try:
        return {key.decode().split(":", 1)[0] for key in client.scan_iter(count=1000)}
    finally:
        client.close()


# -- configuration ----------------------------------------------------------------------------------


def test_cache_url_defaults_to_the_keyvalue_server() -> None:
    shared = AppConfig(database_url="postgresql://u@h/db", keyvalue_url="redis://kv:6379/0", query_cache=True)
    assert shared.cache_server_url == "redis://kv:6379/0" and not shared.separate_cache_server
    apart = shared.replace(cache_url="redis://cache:6379/0")
    assert apart.cache_server_url == "redis://cache:6379/0" and apart.separate_cache_server
    assert AppConfig.from_json(apart.to_json()) == apart
    with pytest.raises(ValueError, match="'cache_url' must be a redis:// URL"):
        shared.replace(cache_url="http://cache")
    with pytest.raises(ValueError, match="'cache_timeout_ms' must be at least 1"):
        shared.replace(cache_timeout_ms=0)


async def test_the_breaker_skips_for_a_pause_then_lets_one_call_try() -> None:
    now = [100.0]
    breaker = CacheBreaker(retry_seconds=1.0, clock=lambda: now[0])
    release = anyio.Event()

    async def fails() -> None:
        raise redis.ConnectionError("refused")

    async def answers_later() -> str:
        await release.wait()
        return "PONG"

    async def answers_now() -> str:
        return "PONG"

    with pytest.raises(redis.ConnectionError):
        await breaker.call(fails)
    assert breaker.is_open and breaker.outages == 1
    now[0] += 0.9
    with pytest.raises(CacheSkipped):
        await breaker.call(answers_now)  # within the pause: not even tried
    now[0] += 0.2
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(breaker.call, answers_later)  # the one probe...
        await anyio.sleep(0.01)
        with pytest.raises(CacheSkipped):
            await breaker.call(answers_now)  # ...while every other call is still skipped
        release.set()
    assert not breaker.is_open and breaker.outages == 1
    assert await breaker.call(answers_now) == "PONG"


# -- where things live ------------------------------------------------------------------------------


async def test_sessions_stay_on_the_keyvalue_server_and_caches_go_to_the_cache_server(
    client: AppClient, clean_kv: str, cache_server: KeyValueServer, fresh_seeded_url: str
) -> None:
    headers = await login(client, 5)
    for _ in range(2):
        assert (await client.get("/api/books/5")).status_code == 200
        assert (await client.get("/api/users/5/rentals", headers=headers)).status_code == 200
    assert (await client.post("/api/rentals", json={"book_id": 11}, headers=headers)).status_code == 201
    # The worker's profile refresh goes to the cache server too; its queue stays on the key-value server.
    worker = build_worker(stage3(fresh_seeded_url, clean_kv, cache_server.url), burst=True, handle_signals=False,
                          poll_delay=0.01)
    try:
        await worker.main()
    finally:
        await worker.close()
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
    sessions, caches = key_kinds(clean_kv), key_kinds(cache_server.url)
    assert {"session", "uw"} <= sessions and not sessions & {"qc", "qv", "profile"}
    assert {"qc", "qv", "profile"} <= caches and not caches & {"session", "uw"}
    cache = aioredis.Redis.from_url(cache_server.url)
    try:
        assert await cache.hget("profile:5", "as_of") == b"1"  # the refresh after the write
    finally:
        await cache.aclose()
    assert (await stats(client))["cache"]["hits"] >= 2


# -- the cache server fails --------------------------------------------------------------------------


async def test_a_stopped_cache_server_costs_nothing_and_the_caches_return_with_it(
    client: AppClient, cache_server: KeyValueServer
) -> None:
    headers = await login(client, 6)
    book = await available_book(client, first=8)
    assert (await stats(client))["cache_server"] == {"available": True, "outages": 0, "deferred_bumps": 0}

    cache_server.process.stop()
    started = time.monotonic()
    for _ in range(5):
        for path in (f"/api/books/{book}", "/api/profile", "/api/users/6/rentals", "/api/users/6/charges"):
            response = await client.get(path, headers=headers)
            assert response.status_code == 200, response.text
    rented = await client.post("/api/rentals", json={"book_id": book}, headers=headers)
    assert rented.status_code == 201
    assert (await client.post(f"/api/rentals/{rented.json()['id']}/return", headers=headers)).status_code == 200
    assert (await client.post("/api/login", json={"email": "user7@example.com", "password": "password7"})
            ).status_code == 200
    assert time.monotonic() - started < 5  # 23 requests, none waiting on the dead server
    down = await stats(client)
    assert down["cache_server"]["available"] is False and down["cache_server"]["outages"] == 1
    assert down["query_cache"]["skipped"] + down["object_cache"]["skipped"] >= 20
    assert down["query_cache"]["errors"] + down["object_cache"]["errors"] <= 2  # one failed try per window

    restart(cache_server)  # same port, empty
    await wait_for_retry()
    first = await client.get(f"/api/books/{book}")
    assert first.status_code == 200 and first.json()["available"] >= 1  # rented and returned while down
    again = await client.get(f"/api/books/{book}")
    assert again.json() == first.json()
    back = await stats(client)
    assert back["cache_server"] == {"available": True, "outages": 1, "deferred_bumps": 0}
    assert back["query_cache"]["hits"] == down["query_cache"]["hits"] + 1  # the second read hit
    assert (await client.get("/api/profile", headers=headers)).status_code == 200
    assert (await client.get("/api/profile", headers=headers)).status_code == 200
    assert (await stats(client))["object_cache"]["hits"] >= down["object_cache"]["hits"] + 1


async def test_a_hung_cache_server_costs_one_timeout_per_retry_window(
    client: AppClient, cache_server: KeyValueServer
) -> None:
    headers = await login(client, 9)
    pause(cache_server)
    try:
        first, first_s = await timed_get(client, "/api/books/3")
        assert first.status_code == 200
        assert first_s >= TIMEOUT_MS / 1000 * 0.9  # it waited for the cache once...
        assert first_s < 3 * TIMEOUT_MS / 1000 + 0.5  # ...and only for its timeout
        started = time.monotonic()
        for path in ("/api/books/3", "/api/profile", "/api/users/9/rentals", "/api/users/9/charges") * 2:
            response = await client.get(path, headers=headers)
            assert response.status_code == 200, response.text
        # Eight requests inside the retry window: had each waited for the timeout it would be 2 s.
        assert time.monotonic() - started < 1.0
        assert (await stats(client))["cache_server"]["available"] is False
        await wait_for_retry()
        probe, probe_s = await timed_get(client, "/api/books/3")  # one request tries again, and waits again
        assert probe.status_code == 200 and probe_s >= TIMEOUT_MS / 1000 * 0.9
    finally:
        resume(cache_server)
    await wait_for_retry()
    before = await stats(client)
    await client.get("/api/books/3")
    await client.get("/api/books/3")
    after = await stats(client)
    assert after["cache_server"]["available"] is True and after["cache_server"]["outages"] == 1  # one outage
    assert after["query_cache"]["hits"] >= before["query_cache"]["hits"] + 1


async def test_invalidations_missed_during_an_outage_are_sent_before_the_next_lookup(
    client: AppClient, cache_server: KeyValueServer
) -> None:
    headers = await login(client, 10)
    book = await available_book(client, first=20)
    cached = (await client.get(f"/api/books/{book}")).json()  # a hit: the entry is on the cache server
    pause(cache_server)
    try:
        await client.get("/api/categories")  # times out: the breaker opens
        # The write's bump is skipped (never reaches the server), so the entry above would stay current.
        assert (await client.post("/api/rentals", json={"book_id": book}, headers=headers)).status_code == 201
        assert (await stats(client))["cache_server"]["deferred_bumps"] == 2  # the user's and the book's tags
    finally:
        resume(cache_server)
    await wait_for_retry()
    fresh = (await client.get(f"/api/books/{book}")).json()
    assert fresh["available"] == cached["available"] - 1
    assert (await stats(client))["cache_server"]["deferred_bumps"] == 0


# -- start-up ---------------------------------------------------------------------------------------


async def test_the_app_starts_without_its_cache_server_and_turns_the_caches_on_when_it_answers(
    fresh_seeded_url: str, clean_kv: str, tmp_path: Path
) -> None:
    server = start_cache(tmp_path / "late")
    server.process.stop()  # its port and password are known; nothing listens there yet
    try:
        async with api(stage3(fresh_seeded_url, clean_kv, server.url)) as client:
            headers = await login(client, 11)
            for _ in range(3):
                assert (await client.get("/api/books/2")).status_code == 200
                assert (await client.get("/api/profile", headers=headers)).status_code == 200
            off = await stats(client)
            assert off["cache_server"]["available"] is False and off["cache"] == {"hits": 0, "misses": 0}
            restart(server)
            await wait_for_retry()
            for _ in range(2):
                assert (await client.get("/api/books/2")).status_code == 200
            on = await stats(client)
            assert on["cache_server"]["available"] is True and on["query_cache"]["hits"] == 1
    finally:
        server.process.stop()


async def test_the_session_store_is_still_required_at_start(
    fresh_seeded_url: str, cache_server: KeyValueServer
) -> None:
    config = stage3(fresh_seeded_url, f"redis://127.0.0.1:{free_port()}/0", cache_server.url)
    with pytest.raises(RuntimeError, match="cannot reach the key-value server"):
        async with api(config):
            pass
