"""Counters read from the running nodes at the edges of each measurement window.

The app servers report their own counters (queries per database, cache hits and misses) at
``/api/_stats``, to the holder of the deployment's ops token (the app config's ``stats_token``);
PostgreSQL reports committed transactions per database and, on the primary, each replica's replay
lag. A window's figures are the difference of two snapshots.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

from scalesim.components.postgres import DATABASE


def app_stats(url: str, *, token: str | None = None, timeout: float = 2.0) -> dict[str, Any]:
    """An app server's counters; ``token`` is the deployment's ``stats_token`` when it has one.

    Empty when the server does not answer (or refuses the token): a snapshot must not fail a run.
    """
    request = urllib.request.Request(f"{url}/api/_stats")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            data: dict[str, Any] = json.loads(response.read())
            return data
    except (urllib.error.URLError, OSError, ValueError):
        return {}


#: Values in /api/_stats that are not counters: identities and gauges, meaningless as differences.
NOT_COUNTERS = frozenset({"pid", "server", "known_replay_lsn", "sessions_in_memory"})


def numeric_delta(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """after - before for every counter, recursively (counters only grow)."""
    delta: dict[str, Any] = {}
    for key, value in after.items():
        if key in NOT_COUNTERS:
            continue
        old = before.get(key)
        if isinstance(value, Mapping):
            delta[key] = numeric_delta(old if isinstance(old, Mapping) else {}, value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            delta[key] = value - (old if isinstance(old, int | float) and not isinstance(old, bool) else 0)
    return delta


def sum_counters(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, Mapping):
                total[key] = sum_counters([total.get(key, {}), value])
            elif isinstance(value, int | float) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
    return total


async def _database_snapshot(urls: Mapping[str, str], primary: str | None) -> dict[str, Any]:
    import asyncpg

    snapshot: dict[str, Any] = {"transactions": {}, "replication": []}
    for name, url in urls.items():
        try:
            conn = await asyncpg.connect(url, timeout=3)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            continue
        try:
            row = await conn.fetchrow("SELECT xact_commit + xact_rollback AS xacts, tup_returned, tup_fetched "
                                      "FROM pg_stat_database WHERE datname = $1", DATABASE)
            if row is not None:
                snapshot["transactions"][name] = int(row["xacts"])
            if name == primary:
                rows = await conn.fetch(
                    "SELECT application_name, state, "
                    "EXTRACT(EPOCH FROM COALESCE(replay_lag, '0'::interval)) * 1000 AS replay_lag_ms, "
                    "pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) AS lag_bytes FROM pg_stat_replication")
                snapshot["replication"] = [
                    {"replica": r["application_name"], "state": r["state"],
                     "replay_lag_ms": float(r["replay_lag_ms"] or 0.0), "lag_bytes": int(r["lag_bytes"] or 0)}
                    for r in rows]
        finally:
            await conn.close()
    return snapshot


def database_snapshot(urls: Mapping[str, str], *, primary: str | None) -> dict[str, Any]:
    """Transactions per PostgreSQL node, and replication lag as the primary sees it."""
    return asyncio.run(_database_snapshot(urls, primary))
