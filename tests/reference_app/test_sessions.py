"""Sessions: expiry in memory, and a key-value store shared by several real app servers."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import redis.asyncio as redis

from reference_app import sessions as sessions_module
from reference_app.sessions import KeyValueSessions, KeyValueWriteMarks, MemorySessions, MemoryWriteMarks, WriteMark

from .conftest import Server, make_config, start_server


@pytest.mark.anyio
async def test_memory_sessions_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(sessions_module.time, "monotonic", lambda: now[0])
    store = MemorySessions(ttl_seconds=60, marks=MemoryWriteMarks())
    token = await store.create(42)
    assert len(token) >= 40
    caller = await store.resolve(token, with_mark=False)
    assert caller is not None and caller.user_id == 42
    now[0] += 61
    assert await store.resolve(token, with_mark=False) is None
    # Expired sessions are swept when later logins come along, so memory does not grow forever.
    for user in range(3):
        await store.create(user)
    now[0] += 61
    await store.create(99)
    assert len(store) == 1


@pytest.mark.anyio
async def test_memory_write_marks_count_and_keep_the_latest_position() -> None:
    marks = MemoryWriteMarks()
    assert await marks.get(1) == WriteMark()
    await marks.record(1, 500)
    assert await marks.record(1, 300) == WriteMark(seq=2, lsn=500)
    store = MemorySessions(ttl_seconds=60, marks=marks)
    caller = await store.resolve(await store.create(1), with_mark=True)
    assert caller is not None and caller.mark == WriteMark(seq=2, lsn=500)


@pytest.mark.anyio
async def test_keyvalue_sessions_live_in_expiring_keys(clean_kv: str) -> None:
    client = redis.Redis.from_url(clean_kv)
    try:
        marks = KeyValueWriteMarks(client)
        store = KeyValueSessions(client=client, ttl_seconds=120, marks=marks)
        token = await store.create(7)
        assert await client.get(f"session:{token}") == b"7"
        assert 0 < await client.ttl(f"session:{token}") <= 120
        await marks.record(7, 900)
        caller = await store.resolve(token, with_mark=True)
        assert caller is not None and (caller.user_id, caller.mark) == (7, WriteMark(seq=1, lsn=900))
        await store.delete(token)
        assert await store.resolve(token, with_mark=True) is None
        assert await store.resolve("nonsense", with_mark=False) is None
    finally:
        await client.aclose()


def _login(server: Server, user: int) -> str:
    response = httpx.post(
        f"{server.url}/api/login", json={"email": f"user{user}@example.com", "password": f"password{user}"}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def test_a_keyvalue_session_is_valid_on_every_server(
    seeded_url: str, clean_kv: str, servers: list[Server], tmp_path: Path
) -> None:
    for name in ("app-a", "app-b"):
        config = make_config(seeded_url, server_name=name, sessions="keyvalue", keyvalue_url=clean_kv, pool_size=2)
        servers.append(start_server(config, tmp_path))
    a, b = servers
    token = _login(a, 2)
    headers = {"Authorization": f"Bearer {token}"}
    on_b = httpx.get(f"{b.url}/api/profile", headers=headers)
    assert on_b.status_code == 200 and on_b.json()["id"] == 2
    assert on_b.headers["x-served-by"] == "app-b"
    assert httpx.post(f"{b.url}/api/logout", headers=headers).status_code == 204
    on_a = httpx.get(f"{a.url}/api/profile", headers=headers)
    assert on_a.status_code == 401 and on_a.headers["x-served-by"] == "app-a"


def test_a_memory_session_is_valid_only_where_it_was_made(
    seeded_url: str, servers: list[Server], tmp_path: Path
) -> None:
    for name in ("app-a", "app-b"):
        servers.append(start_server(make_config(seeded_url, server_name=name, pool_size=2), tmp_path))
    a, b = servers
    headers = {"Authorization": f"Bearer {_login(a, 3)}"}
    assert httpx.get(f"{a.url}/api/profile", headers=headers).status_code == 200
    assert httpx.get(f"{b.url}/api/profile", headers=headers).status_code == 401
