"""Stage2: with ``joins: app`` no statement the app sends to PostgreSQL on a request path has a JOIN.

The SQL is captured where it leaves the app: every connection of the app's pools gets an asyncpg
query logger, which sees the exact text of every statement executed on it. Capture starts once the
app is up: connection setup (where asyncpg looks up array types in the catalog) is not a request.
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import httpx
import pytest

from reference_app import db as db_module

from .conftest import api, login, make_config

pytestmark = pytest.mark.anyio

JOIN = re.compile(r"\bJOIN\b", re.IGNORECASE)


@pytest.fixture
def captured_sql(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    statements: list[str] = []
    original = asyncpg.create_pool

    def create_pool(*args: Any, init: Any = None, **kwargs: Any) -> Any:
        async def logged_init(connection: asyncpg.Connection) -> None:
            connection.add_query_logger(lambda record: statements.append(record.query))
            if init is not None:
                await init(connection)

        return original(*args, init=logged_init, **kwargs)

    monkeypatch.setattr(db_module.asyncpg, "create_pool", create_pool)
    return statements


async def exercise_every_endpoint(client: httpx.AsyncClient, user: int) -> None:
    """One request of every kind, writes included, each checked for success."""
    headers = await login(client, user)
    for path in ("/api/profile", "/api/categories", "/api/books", "/api/books?category=history&per_page=5",
                 "/api/books/3", f"/api/users/{user}/rentals", f"/api/users/{user}/rentals?status=open",
                 f"/api/users/{user}/rentals?status=returned", f"/api/users/{user}/charges"):  # fmt: skip
        response = await client.get(path, headers=headers)
        assert response.status_code == 200, (path, response.text)
    rented = await client.post("/api/rentals", json={"book_id": 4}, headers=headers)
    assert rented.status_code == 201, rented.text
    returned = await client.post(f"/api/rentals/{rented.json()['id']}/return", headers=headers)
    assert returned.status_code == 200
    for path in ("/api/books/4", f"/api/users/{user}/rentals", f"/api/users/{user}/charges", "/api/profile"):
        assert (await client.get(path, headers=headers)).status_code == 200
    assert (await client.post("/api/logout", headers=headers)).status_code == 204


@pytest.mark.parametrize(
    "flags",
    [
        {"joins": "app"},
        {"joins": "app", "sessions": "keyvalue", "query_cache": True, "object_cache": True, "charges": "precomputed"},
    ],
    ids=["stage2", "stage5"],
)
async def test_no_join_in_app_mode(
    fresh_seeded_url: str, clean_kv: str, captured_sql: list[str], flags: dict[str, Any]
) -> None:
    config = make_config(fresh_seeded_url, keyvalue_url=clean_kv, pool_size=2, **flags)
    async with api(config) as client:
        captured_sql.clear()
        await exercise_every_endpoint(client, user=2)
    assert len(captured_sql) >= 10
    assert any("FROM rentals" in sql for sql in captured_sql)
    assert [sql for sql in captured_sql if JOIN.search(sql)] == []


async def test_the_capture_does_see_joins_in_sql_mode(fresh_seeded_url: str, captured_sql: list[str]) -> None:
    async with api(make_config(fresh_seeded_url, pool_size=2)) as client:
        captured_sql.clear()
        await exercise_every_endpoint(client, user=2)
    assert any(JOIN.search(sql) for sql in captured_sql)
