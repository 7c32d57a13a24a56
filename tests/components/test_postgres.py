"""PostgreSQL: a real primary and streaming replicas that replay what the primary writes."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from scalesim.components.postgres import PostgresCluster


async def _fetch(url: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


def test_replicas_stream_from_the_primary(postgres_replicated: PostgresCluster) -> None:
    cluster = postgres_replicated
    url = cluster.create_database("streaming_check")
    asyncio.run(_fetch(url, "CREATE TABLE t (n int)"))
    asyncio.run(_fetch(url, "INSERT INTO t SELECT generate_series(1, 100)"))
    rows = asyncio.run(_fetch(cluster.primary.url_for("postgres"),
                              "SELECT application_name, state FROM pg_stat_replication ORDER BY 1"))
    assert [(r["application_name"], r["state"]) for r in rows] == [("replica1", "streaming"), ("replica2", "streaming")]
    for replica in cluster.replicas:
        deadline = time.monotonic() + 10
        while True:
            try:
                count = asyncio.run(_fetch(replica.url_for("streaming_check"), "SELECT count(*) AS n FROM t"))[0]["n"]
            except asyncpg.PostgresError:
                count = 0
            if count == 100 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert count == 100
        recovery = asyncio.run(_fetch(replica.url_for("postgres"), "SELECT pg_is_in_recovery() AS r"))[0]["r"]
        assert recovery is True


def test_only_loopback_is_listened_on(postgres: PostgresCluster) -> None:
    rows = asyncio.run(_fetch(postgres.primary.url_for("postgres"), "SHOW listen_addresses"))
    assert rows[0][0] == "127.0.0.1"
