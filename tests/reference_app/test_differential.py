"""Every stage answers like stage0: the same requests, the same JSON, before and after writes.

All six stage configurations run against one replicated database. First every stage answers the
same read-only requests; then each stage makes a write (a rent, and a return) and both that stage
and stage0 must show its effects identically.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .conftest import DatabaseServer, api, login, make_config, seed, unique_name
from .test_replicas import wait_replayed

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning"),
]

STAGE_FLAGS: list[dict[str, Any]] = [{}]
for step in (
    {"sessions": "keyvalue"},
    {"joins": "app"},
    {"query_cache": True, "object_cache": True},
    {"reads": "replicas"},
    {"charges": "precomputed"},
):
    STAGE_FLAGS.append({**STAGE_FLAGS[-1], **step})


async def snapshot(client: httpx.AsyncClient, user: int) -> dict[str, Any]:
    headers = await login(client, user)
    paths = [
        "/api/profile",
        f"/api/users/{user}/rentals",
        f"/api/users/{user}/rentals?status=open",
        f"/api/users/{user}/rentals?status=returned",
        f"/api/users/{user}/charges",
        "/api/categories",
        "/api/books",
        "/api/books?page=3&per_page=7",
        "/api/books?category=history",
        "/api/books?category=poetry&per_page=3&page=2",
        *(f"/api/books/{book}" for book in (1, 17, 60, 120)),
    ]
    answers = {}
    for path in paths:
        response = await client.get(path, headers=headers)
        answers[path] = (response.status_code, response.json())
    return answers


@pytest.fixture
def database(pg_replicated: DatabaseServer) -> tuple[str, list[str]]:
    name = unique_name("diff")
    return seed(pg_replicated.create_database(name)), pg_replicated.replicas_of(name)


def config_for(stage: int, database: tuple[str, list[str]], keyvalue_url: str) -> Any:
    primary, replicas = database
    return make_config(
        primary,
        server_name=f"stage{stage}",
        replica_urls=tuple(replicas),
        keyvalue_url=keyvalue_url,
        pool_size=2,
        **STAGE_FLAGS[stage],
    )


async def test_every_stage_answers_like_stage0(database: tuple[str, list[str]], clean_kv: str) -> None:
    await wait_replayed(*database)
    baseline: dict[int, dict[str, Any]] = {}
    async with api(config_for(0, database, clean_kv)) as stage0:
        for user in (1, 2, 3):
            baseline[user] = await snapshot(stage0, user)
    for stage in range(1, 6):
        async with api(config_for(stage, database, clean_kv)) as client:
            for user in (1, 2, 3):
                # twice: the second pass is served from the caches where a stage has them
                assert await snapshot(client, user) == baseline[user], f"stage{stage} differs for user {user}"
                assert await snapshot(client, user) == baseline[user], f"stage{stage} (cached) differs"


async def test_writes_look_the_same_through_every_stage(database: tuple[str, list[str]], clean_kv: str) -> None:
    await wait_replayed(*database)
    for stage in range(6):
        user, book = 10 + stage, 20 + stage
        async with api(config_for(stage, database, clean_kv)) as client, api(config_for(0, database, clean_kv)) as ref:
            headers = await login(client, user)
            rented = await client.post("/api/rentals", json={"book_id": book}, headers=headers)
            assert rented.status_code == 201, rented.text
            assert await snapshot(client, user) == await snapshot(ref, user), f"stage{stage} after a rent"
            returned = await client.post(f"/api/rentals/{rented.json()['id']}/return", headers=headers)
            assert returned.status_code == 200
            assert await snapshot(client, user) == await snapshot(ref, user), f"stage{stage} after a return"
