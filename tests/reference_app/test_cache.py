"""Stage3: the query cache (hits, invalidation on writes) and the profile object cache with workers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as redis

from reference_app.config import AppConfig
from reference_app.workers import build_worker

from .conftest import AppClient, api, login, make_config

pytestmark = [
    pytest.mark.anyio,
    # arq's own shutdown calls a redis-py method that redis-py deprecated; not ours to fix.
    pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning"),
]


def stage3(database_url: str, keyvalue_url: str, **changes: Any) -> AppConfig:
    flags: dict[str, Any] = {
        "sessions": "keyvalue",
        "joins": "app",
        "query_cache": True,
        "object_cache": True,
        "keyvalue_url": keyvalue_url,
        "pool_size": 3,
        "query_cache_ttl_seconds": 30,
    }
    return make_config(database_url, **{**flags, **changes})


async def drain_jobs(config: AppConfig) -> tuple[int, int]:
    """Run an arq worker in burst mode until the queue is empty; returns (completed, failed)."""
    worker = build_worker(config, burst=True, handle_signals=False, poll_delay=0.01)
    try:
        await worker.main()
    finally:
        await worker.close()
    return worker.jobs_complete, worker.jobs_failed


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get("/api/_stats")).json()
    return body


@pytest.fixture
async def client(fresh_seeded_url: str, clean_kv: str) -> AsyncIterator[AppClient]:
    async with api(stage3(fresh_seeded_url, clean_kv)) as client:
        yield client


async def test_repeated_reads_hit_the_cache(client: httpx.AsyncClient) -> None:
    first = await client.get("/api/books/5")
    before = await stats(client)
    for _ in range(3):
        again = await client.get("/api/books/5")
        assert again.json() == first.json()
    after = await stats(client)
    assert after["query_cache"]["hits"] == before["query_cache"]["hits"] + 3
    assert after["queries"]["primary"] == before["queries"]["primary"]
    assert after["cache"]["hits"] == before["cache"]["hits"] + 3
    catalog = [(await client.get("/api/books", params={"page": 2})).json() for _ in range(2)]
    assert catalog[0] == catalog[1]


async def test_entries_are_hashed_keys_with_a_ttl(client: httpx.AsyncClient, clean_kv: str) -> None:
    await client.get("/api/books/6")
    kv = redis.Redis.from_url(clean_kv)
    try:
        keys = [key async for key in kv.scan_iter("qc:*")]
        assert keys
        for key in keys:
            name = key.decode()
            digest = name.split(":")[1]
            assert len(digest) == 64 and int(digest, 16) >= 0
            assert 0 < await kv.ttl(key) <= 30
    finally:
        await kv.aclose()


async def test_a_write_invalidates_what_it_changed(client: httpx.AsyncClient) -> None:
    user = 3
    headers = await login(client, user)
    book_before = (await client.get("/api/books/9")).json()
    rentals_before = (await client.get(f"/api/users/{user}/rentals", headers=headers)).json()
    charges_before = (await client.get(f"/api/users/{user}/charges", headers=headers)).json()
    await client.get("/api/books/9")  # now certainly cached
    catalog = await client.get("/api/books", params={"page": 2})
    rented = await client.post("/api/rentals", json={"book_id": 9}, headers=headers)
    assert rented.status_code == 201
    book_after = (await client.get("/api/books/9")).json()
    assert book_after["available"] == book_before["available"] - 1
    rentals_after = (await client.get(f"/api/users/{user}/rentals", headers=headers)).json()
    assert rentals_after["items"] == [rented.json(), *rentals_before["items"]]
    charges_after = (await client.get(f"/api/users/{user}/charges", headers=headers)).json()
    assert charges_after["rentals"] == charges_before["rentals"] + 1
    # Unrelated entries survive the write.
    before = await stats(client)
    assert (await client.get("/api/books", params={"page": 2})).json() == catalog.json()
    assert (await stats(client))["query_cache"]["hits"] == before["query_cache"]["hits"] + 1


async def test_the_profile_is_cached_at_login_and_refreshed_by_the_worker(
    client: httpx.AsyncClient, fresh_seeded_url: str, clean_kv: str
) -> None:
    user = 4
    headers = await login(client, user)
    first = (await client.get("/api/profile", headers=headers)).json()
    assert (await stats(client))["object_cache"]["hits"] == 1  # loaded at login, served from the cache

    assert (await client.post("/api/rentals", json={"book_id": 12}, headers=headers)).status_code == 201
    # Before any worker ran: the cached profile predates the write, so the app must not serve it.
    before = await stats(client)
    fresh = (await client.get("/api/profile", headers=headers)).json()
    assert fresh["open_rentals"] == first["open_rentals"] + 1
    assert fresh["total_rentals"] == first["total_rentals"] + 1
    assert (await stats(client))["object_cache"]["misses"] == before["object_cache"]["misses"] + 1

    config = stage3(fresh_seeded_url, clean_kv)
    completed, failed = await drain_jobs(config)
    assert (completed, failed) == (1, 0)
    kv = redis.Redis.from_url(clean_kv)
    try:
        assert await kv.hget(f"profile:{user}", "as_of") == b"1"
    finally:
        await kv.aclose()
    before = await stats(client)
    again = (await client.get("/api/profile", headers=headers)).json()
    assert again == fresh
    assert (await stats(client))["object_cache"]["hits"] == before["object_cache"]["hits"] + 1


async def test_a_stale_profile_is_never_stored_over_a_fresher_one(client: AppClient) -> None:
    service = client.app.service
    assert service is not None and service.profile_cache is not None
    cache = service.profile_cache
    assert await cache.put(5, {"id": 5, "open_rentals": 2}, as_of=3)
    assert not await cache.put(5, {"id": 5, "open_rentals": 1}, as_of=2)
    assert await cache.get(5, min_as_of=3) == {"id": 5, "open_rentals": 2}
    assert await cache.get(5, min_as_of=4) is None
