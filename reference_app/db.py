"""Connection pools, read routing and read-your-writes.

One asyncpg pool per database: the primary, and in stage4 each streaming replica. Writes always go
to the primary inside a transaction (:meth:`Database.write`). Reads go to the primary unless the
config says ``reads: replicas``, in which case they are spread round-robin over the replicas.

Spreading reads over replicas breaks a promise users take for granted: having rented a book, they
expect to see it in their rentals on the next click, yet a replica replays the primary's WAL a
moment later. The app keeps that promise with log positions (LSNs, as plain integers):

1. After a write commits, the app asks the primary for its current WAL insert position. That
   position lies at or beyond the commit record, so a replica that has replayed up to it has
   replayed the write. The session layer stores it as the user's *write mark*.
2. Every read carries a ``min_lsn``: the user's write mark (and, for cached reads, the positions of
   the writes that last invalidated the cache entry, see ``cache.py``). A replica may serve the read
   only if its replay position is known to be at or beyond ``min_lsn``.
3. Each process keeps the last replay position it has seen from every replica, refreshed in the
   background every ``replica_lsn_refresh_ms`` and on demand: when the next replica in turn is not
   known to be fresh enough, one probe (``pg_last_wal_replay_lsn()``) asks it again. If it is still
   behind, the read goes to the primary instead of waiting. On loopback replay lags by well under a
   millisecond, so the probe almost always lets the replica serve the read.

Known positions only ever grow, so the check is conservative: a replica is never credited with a
position it has not reported. Probes are counted apart from request queries in the statistics.

A replica that fails a read or a probe -- down, or hung and not answering within
``replica_timeout_ms`` -- is skipped for ``replica_retry_ms``: its reads go to the other replicas
(or the primary, which has the data too) without each request paying the timeout again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from reference_app.config import AppConfig
from reference_app.queries import Queries, Statement

log = logging.getLogger(__name__)

PRIMARY = 0

# Failures that mean "this database cannot answer now" (answered with 503), as opposed to bugs.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InterfaceError,
)


#: A ``min_lsn`` no replica can promise: the read must see every write, so only the primary serves it
#: (used when the caller's own write position cannot be looked up, e.g. the key-value server is down).
EVERY_WRITE = 2**64 - 1


class DatabaseUnavailable(Exception):
    """A database could not be reached; the app answers 503."""


@dataclass(slots=True)
class RoutingStats:
    """Counters of one process: statements per database and how reads were routed."""

    labels: list[str]
    queries: list[int]
    replica_reads: int = 0
    primary_reads: int = 0
    primary_reads_for_freshness: int = 0
    lsn_probes: int = 0
    replica_failures: int = 0
    known_replay_lsn: list[int] = field(default_factory=list)
    # Until when (monotonic seconds) each replica is skipped after a failure.
    skipped_until: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "queries": dict(zip(self.labels, self.queries, strict=True)),
            "reads": {
                "primary": self.primary_reads,
                "replicas": self.replica_reads,
                # of the primary reads: those a replica could not serve fresh enough
                "primary_for_freshness": self.primary_reads_for_freshness,
            },
            "lsn_probes": self.lsn_probes,
            "replica_failures": self.replica_failures,
            "known_replay_lsn": dict(zip(self.labels[1:], self.known_replay_lsn, strict=True)),
            "replicas_skipped": [label for label, until in zip(self.labels[1:], self.skipped_until, strict=True)
                                 if until > time.monotonic()],
        }


class Writer:
    """The statements of one write transaction on the primary (counted like any other query)."""

    __slots__ = ("_connection", "_stats")

    def __init__(self, connection: asyncpg.Connection, stats: RoutingStats) -> None:
        self._connection = connection
        self._stats = stats

    async def fetch(self, statement: Statement, *args: Any) -> list[asyncpg.Record]:
        self._stats.queries[PRIMARY] += 1
        return await self._connection.fetch(statement.sql, *args)

    async def fetchrow(self, statement: Statement, *args: Any) -> asyncpg.Record | None:
        self._stats.queries[PRIMARY] += 1
        return await self._connection.fetchrow(statement.sql, *args)

    async def execute(self, statement: Statement, *args: Any) -> str:
        self._stats.queries[PRIMARY] += 1
        return await self._connection.execute(statement.sql, *args)


class Database:
    """Pools for the primary and the replicas, with read routing (see the module docstring)."""

    def __init__(self, *, config: AppConfig, queries: Queries) -> None:
        self._config = config
        self._queries = queries
        self._urls = [config.database_url, *config.replica_urls]
        self._use_replicas = config.reads == "replicas" and bool(config.replica_urls)
        self._pools: list[asyncpg.Pool] = []
        self._next_replica = 0
        self._refresher: asyncio.Task[None] | None = None
        labels = ["primary", *(f"replica-{i}" for i in range(1, len(config.replica_urls) + 1))]
        self.stats = RoutingStats(
            labels=labels, queries=[0] * len(labels), known_replay_lsn=[0] * len(config.replica_urls),
            skipped_until=[0.0] * len(config.replica_urls),
        )
        self._replica_timeout = config.replica_timeout_ms / 1000
        self._replica_retry = config.replica_retry_ms / 1000

    @property
    def tracks_lsn(self) -> bool:
        """Whether writes must record the primary's WAL position (only useful with replica reads)."""
        return self._use_replicas

    async def open(self) -> None:
        """Open every pool (replicas only when reads go to them) and start the replay-position watch."""
        urls = self._urls if self._use_replicas else self._urls[:1]
        try:
            for url in urls:
                pool = await asyncpg.create_pool(
                    url,
                    min_size=self._config.pool_size,
                    max_size=self._config.pool_size,
                    # JIT compilation only pays off for long analytical queries, never for ours.
                    server_settings={"jit": "off", "application_name": self._config.server_name},
                    init=_prepare_connection,
                )
                self._pools.append(pool)
        except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
            await self.close()
            raise DatabaseUnavailable(f"cannot open a pool for {_redact(url)}: {exc}") from exc
        if self._use_replicas:
            await self._refresh_all()
            self._refresher = asyncio.create_task(self._refresh_forever(), name="replica-lsn-refresh")

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        pools, self._pools = self._pools, []
        for pool in pools:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), timeout=5)

    # -- reads ---------------------------------------------------------------------------------------

    async def read(self, statement: Statement, args: Sequence[Any] = (), *, min_lsn: int = 0) -> list[Any]:
        """Run a read-only statement where the routing rules say, fresh to at least ``min_lsn``."""
        if self._use_replicas:
            index = await self._route(min_lsn)
        else:
            index = PRIMARY
            self.stats.primary_reads += 1
        self.stats.queries[index] += 1
        try:
            if index == PRIMARY:
                return await self._pools[index].fetch(statement.sql, *args)
            rows: list[Any] = await self._on_replica(index, statement.sql, args, many=True)
            return rows
        except UNAVAILABLE_ERRORS as exc:
            if index == PRIMARY:
                raise DatabaseUnavailable(f"primary is unavailable: {exc}") from exc
            # A replica that fails is no reason to fail the request: the primary has the data too.
            log.warning("%s failed a read, retrying on the primary: %s", self.stats.labels[index],
                        exc or type(exc).__name__)
            self._skip(index - 1)
            return await self.read_primary(statement, args)

    async def _on_replica(self, index: int, sql: str, args: Sequence[Any], *, many: bool) -> Any:
        """One statement on a replica, bounded in time from acquiring a connection to the answer.

        A connection whose statement failed or timed out is closed at once rather than reset and
        reused: resetting it would wait on a server that may not answer (a frozen host)."""
        pool = self._pools[index]
        connection = await pool.acquire(timeout=self._replica_timeout)
        try:
            if many:
                return await connection.fetch(sql, *args, timeout=self._replica_timeout)
            return await connection.fetchval(sql, *args, timeout=self._replica_timeout)
        except BaseException:
            connection.terminate()
            raise
        finally:
            await pool.release(connection)

    def _skip(self, replica: int) -> None:
        self.stats.replica_failures += 1
        self.stats.skipped_until[replica] = time.monotonic() + self._replica_retry

    def _usable(self, replica: int) -> bool:
        return self.stats.skipped_until[replica] <= time.monotonic()

    async def read_primary(self, statement: Statement, args: Sequence[Any] = ()) -> list[Any]:
        """Read from the primary regardless of routing (workers)."""
        self.stats.primary_reads += 1
        self.stats.queries[PRIMARY] += 1
        try:
            return await self._pools[PRIMARY].fetch(statement.sql, *args)
        except UNAVAILABLE_ERRORS as exc:
            raise DatabaseUnavailable(f"primary is unavailable: {exc}") from exc

    async def _route(self, min_lsn: int) -> int:
        if min_lsn >= EVERY_WRITE:
            self.stats.primary_reads += 1
            self.stats.primary_reads_for_freshness += 1
            return PRIMARY
        replicas = len(self._pools) - 1
        start = self._next_replica
        self._next_replica = (start + 1) % replicas
        known = self.stats.known_replay_lsn
        for step in range(replicas):
            candidate = (start + step) % replicas
            if known[candidate] >= min_lsn and self._usable(candidate):
                self.stats.replica_reads += 1
                return candidate + 1
        # No replica is known to be fresh enough: ask the one whose turn it is, once.
        if self._usable(start) and await self._probe(start) >= min_lsn and self._usable(start):
            self.stats.replica_reads += 1
            return start + 1
        self.stats.primary_reads += 1
        self.stats.primary_reads_for_freshness += 1
        return PRIMARY

    async def _probe(self, replica: int) -> int:
        """Ask one replica for its replay position and remember it (positions only grow)."""
        self.stats.lsn_probes += 1
        try:
            position = await self._on_replica(replica + 1, self._queries.replay_lsn.sql, (), many=False)
        except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
            log.warning("replay-position probe of replica-%d failed: %s", replica + 1, exc or type(exc).__name__)
            self._skip(replica)
            return self.stats.known_replay_lsn[replica]
        known = self.stats.known_replay_lsn
        known[replica] = max(known[replica], int(position or 0))
        return known[replica]

    async def _refresh_all(self) -> None:
        # Side by side: one hung replica must not hold up the others' positions.
        await asyncio.gather(*(self._probe(replica) for replica in range(len(self._pools) - 1)))

    async def _refresh_forever(self) -> None:
        period = self._config.replica_lsn_refresh_ms / 1000
        while True:
            await asyncio.sleep(period)
            try:
                await self._refresh_all()
            except Exception:  # the watch must outlive any one failure; probes fall back meanwhile
                log.exception("refreshing the replicas' replay positions failed")

    # -- writes --------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[Writer]:
        """A transaction on the primary; exceptions roll it back and propagate."""
        try:
            async with self._pools[PRIMARY].acquire() as connection, connection.transaction():
                yield Writer(connection, self.stats)
        except UNAVAILABLE_ERRORS as exc:
            raise DatabaseUnavailable(f"primary is unavailable: {exc}") from exc

    async def commit_position(self) -> int:
        """The primary's WAL insert position now (call after a commit); 0 when not tracking."""
        if not self._use_replicas:
            return 0
        self.stats.queries[PRIMARY] += 1
        try:
            return int(await self._pools[PRIMARY].fetchval(self._queries.current_lsn.sql))
        except UNAVAILABLE_ERRORS as exc:
            raise DatabaseUnavailable(f"primary is unavailable: {exc}") from exc


async def _prepare_connection(connection: asyncpg.Connection) -> None:
    """Make asyncpg look up the array types now, at connection setup, rather than mid-request.

    asyncpg learns how to decode array columns (``books.author_names`` and friends) by querying
    the catalog -- a query with joins -- the first time a connection meets one. Doing it here keeps
    that lookup off every request path, which matters in stage2, whose promise is that requests
    issue no SQL JOIN.
    """
    await connection.fetchrow("SELECT NULL::integer[], NULL::text[]")


def _redact(url: str) -> str:
    """The URL without a password, for messages."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}@{host}"
