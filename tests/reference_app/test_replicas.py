"""Stage4: reads spread over streaming replicas, and every user reads their own writes.

To make staleness certain rather than a matter of timing, some tests pause WAL replay on the
replicas (``pg_wal_replay_pause()``): a write then stays invisible on them until replay resumes,
and the app must send the writer's reads to the primary meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from reference_app.config import AppConfig
from tests.sql import fetch_value as scalar

from .conftest import DatabaseServer, api, login, make_config, seed, unique_name

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning"),
]


async def wait_replayed(primary: str, replicas: list[str], timeout: float = 15) -> None:
    """Until every replica has replayed everything the primary wrote so far."""
    target = await scalar(primary, "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint")
    deadline = asyncio.get_running_loop().time() + timeout
    for replica in replicas:
        while True:
            try:
                position = await scalar(replica, "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint")
            except asyncpg.InvalidCatalogNameError:  # the replica has not replayed CREATE DATABASE yet
                position = 0
            if position >= target:
                break
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{replica} did not catch up")
            await asyncio.sleep(0.02)


@pytest.fixture
def replicated(pg_replicated: DatabaseServer) -> tuple[str, list[str]]:
    name = unique_name("repl")
    primary = seed(pg_replicated.create_database(name))
    return primary, pg_replicated.replicas_of(name)


def stage4(primary: str, replicas: list[str], keyvalue_url: str, **changes: Any) -> AppConfig:
    flags: dict[str, Any] = {
        "replica_urls": tuple(replicas),
        "reads": "replicas",
        "sessions": "keyvalue",
        "keyvalue_url": keyvalue_url,
        "joins": "app",
        "query_cache": True,
        "pool_size": 2,
        "replica_lsn_refresh_ms": 50,
    }
    return make_config(primary, **{**flags, **changes})


@contextlib.asynccontextmanager
async def replay_paused(replicas: list[str]) -> AsyncIterator[None]:
    for replica in replicas:
        await scalar(replica, "SELECT pg_wal_replay_pause()")
    try:
        yield
    finally:
        for replica in replicas:
            await scalar(replica, "SELECT pg_wal_replay_resume()")


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get("/api/_stats")).json()
    return body


async def test_reads_are_spread_over_the_replicas(replicated: tuple[str, list[str]], clean_kv: str) -> None:
    primary, replicas = replicated
    await wait_replayed(primary, replicas)
    async with api(stage4(primary, replicas, clean_kv, query_cache=False)) as client:
        before = await stats(client)
        for book in range(1, 41):
            assert (await client.get(f"/api/books/{book}")).status_code == 200
        after = await stats(client)
    assert after["queries"]["primary"] == before["queries"]["primary"]
    assert after["queries"]["replica-1"] - before["queries"]["replica-1"] == 20
    assert after["queries"]["replica-2"] - before["queries"]["replica-2"] == 20


async def test_own_writes_are_read_back_while_replicas_lag(replicated: tuple[str, list[str]], clean_kv: str) -> None:
    primary, replicas = replicated
    await wait_replayed(primary, replicas)
    async with api(stage4(primary, replicas, clean_kv)) as client:
        writer = await login(client, 3)
        bystander = await login(client, 4)
        async with replay_paused(replicas):
            rented = await client.post("/api/rentals", json={"book_id": 15}, headers=writer)
            assert rented.status_code == 201
            before = await stats(client)
            mine = (await client.get("/api/users/3/rentals", params={"status": "open"}, headers=writer)).json()
            assert rented.json() in mine["items"]
            profile = (await client.get("/api/profile", headers=writer)).json()
            assert profile["total_rentals"] == 9
            book = (await client.get("/api/books/15", headers=writer)).json()
            assert book["available"] == (await scalar(primary, "SELECT available FROM books WHERE id = 15"))
            middle = await stats(client)
            assert middle["reads"]["primary_for_freshness"] - before["reads"]["primary_for_freshness"] == 3
            # Someone who wrote nothing keeps reading from the (paused) replicas.
            assert (await client.get("/api/users/4/rentals", headers=bystander)).status_code == 200
            after = await stats(client)
            assert after["reads"]["primary_for_freshness"] == middle["reads"]["primary_for_freshness"]
            assert after["reads"]["replicas"] == middle["reads"]["replicas"] + 1
        await wait_replayed(primary, replicas)
        await asyncio.sleep(0.15)  # let the background refresh see the replicas' new positions
        before = await stats(client)
        await client.get("/api/users/3/charges", headers=writer)
        after = await stats(client)
        assert after["reads"]["replicas"] == before["reads"]["replicas"] + 1


async def test_a_write_on_one_server_is_read_back_on_another(replicated: tuple[str, list[str]], clean_kv: str) -> None:
    primary, replicas = replicated
    await wait_replayed(primary, replicas)
    async with (
        api(stage4(primary, replicas, clean_kv, server_name="app-a")) as a,
        api(stage4(primary, replicas, clean_kv, server_name="app-b")) as b,
    ):
        headers = await login(a, 5)
        async with replay_paused(replicas):
            rented = (await a.post("/api/rentals", json={"book_id": 16}, headers=headers)).json()
            on_b = (await b.get("/api/users/5/rentals", headers=headers)).json()
            assert on_b["items"][0] == rented
            assert (await stats(b))["reads"]["primary_for_freshness"] >= 1


async def test_no_stale_own_reads_under_a_stream_of_writes(replicated: tuple[str, list[str]], clean_kv: str) -> None:
    primary, replicas = replicated
    await wait_replayed(primary, replicas)
    async with api(stage4(primary, replicas, clean_kv)) as client:
        headers = await login(client, 6)
        stale = 0
        for book in range(50, 70):
            rented = await client.post("/api/rentals", json={"book_id": book}, headers=headers)
            if rented.status_code != 201:
                continue
            rental = rented.json()
            items = (await client.get("/api/users/6/rentals", params={"status": "open"}, headers=headers)).json()
            stale += rental not in items["items"]
            assert (await client.post(f"/api/rentals/{rental['id']}/return", headers=headers)).status_code == 200
            items = (await client.get("/api/users/6/rentals", params={"status": "open"}, headers=headers)).json()
            stale += any(item["id"] == rental["id"] for item in items["items"])
        assert stale == 0
        assert (await stats(client))["queries"]["replica-1"] > 0


async def test_a_failing_replica_sends_reads_to_the_primary(replicated: tuple[str, list[str]], clean_kv: str) -> None:
    primary, replicas = replicated
    await wait_replayed(primary, replicas)
    async with api(stage4(primary, replicas, clean_kv, query_cache=False)) as client:
        service = client.app.service
        assert service is not None
        service.db._pools[1].terminate()  # replica-1's pool is gone, as if the replica had died
        for book in range(1, 9):
            assert (await client.get(f"/api/books/{book}")).status_code == 200
        after = await stats(client)
    # replica-1 failed once and was then skipped: the other reads went to replica-2 directly
    assert after["replica_failures"] >= 1 and after["replicas_skipped"] == ["replica-1"]
    assert after["queries"]["replica-2"] >= 7


async def test_a_hung_replica_costs_one_timeout_then_is_skipped(replicated: tuple[str, list[str]],
                                                                 clean_kv: str, pg_replicated: DatabaseServer) -> None:
    """A replica that stops answering (a frozen host) must not hold reads: after one timeout its
    reads go elsewhere, and it serves again once it answers."""
    import signal
    import time

    cluster = pg_replicated.creator
    if cluster is None:
        pytest.skip("needs replicas this suite started (it freezes one)")
    primary, replicas = replicated
    await wait_replayed(primary, replicas)
    config = stage4(primary, replicas, clean_kv, query_cache=False, replica_timeout_ms=300, replica_retry_ms=60000,
                    replica_lsn_refresh_ms=60000)
    async with api(config) as client:
        frozen = cluster.replicas[0].process
        frozen.signal_tree(signal.SIGSTOP)
        try:
            started = time.monotonic()
            for book in range(1, 13):
                assert (await client.get(f"/api/books/{book}")).status_code == 200
            elapsed = time.monotonic() - started
            after = await stats(client)
        finally:
            frozen.signal_tree(signal.SIGCONT)
    assert after["replicas_skipped"] == ["replica-1"]
    assert elapsed < 2.0, elapsed  # one 0.3 s timeout, not one per read
    assert after["queries"]["replica-2"] >= 10


async def test_public_reads_go_on_from_the_primary_when_the_session_store_is_down(
        replicated: tuple[str, list[str]], tmp_path: Path) -> None:
    """A logged-in caller's book read needs their write position from the session store; without it
    the primary, which has every write, answers instead of a 503."""
    from scalesim.components.binaries import find_binaries
    from scalesim.components.keyvalue import start_keyvalue
    from scalesim.components.process import free_port

    primary, replicas = replicated
    await wait_replayed(primary, replicas)
    server = start_keyvalue(binary=find_binaries("embedded").keyvalue_server, run_dir=tmp_path, port=free_port())
    try:
        async with api(stage4(primary, replicas, server.url, query_cache=False)) as client:
            reader = await login(client, 5)
            server.process.kill()
            before = await stats(client)
            answer = await client.get("/api/books/7", headers=reader)
            assert answer.status_code == 200, answer.text
            after = await stats(client)
            assert after["queries"]["primary"] - before["queries"]["primary"] >= 1
            # a request that needs the session itself says plainly that the store is unavailable
            profile = await client.get("/api/profile", headers=reader)
            assert profile.status_code == 503 and "key-value server is unavailable" in profile.json()["error"]
    finally:
        server.process.stop()
