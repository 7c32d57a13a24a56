"""Stage3's caches: a query cache and a profile object cache, on a cache server of their own.

The caches live on the server named by ``cache_url`` (a Valkey with LRU eviction, apart from the
session store), or in the key-value server when there is no separate one. Everything they hold can
be recomputed from the database, so the cache server is optional at every moment: see "When the
cache server fails" below.

Query cache
    A cached read is keyed by ``qc:<sha256(SQL text + parameters)>:<versions>`` and holds the rows as
    JSON for ``query_cache_ttl_seconds``. Invalidation uses *version tags* rather than lists of keys
    to delete: each cached statement names the tags its rows depend on (``user:<id>`` for a user's
    profile, rentals and charges; ``book:<id>`` for a book's detail, whose availability changes), and
    the current value of every tag (``qv:<tag>``) is part of the key. A write bumps the tags it
    touches *after* its transaction commits, so every later lookup computes a new key and misses;
    entries under old versions are never read again and simply expire. One Lua script reads the
    versions and the entry in a single round trip.

    The ordering closes the classic race of delete-based invalidation (a reader that fetched rows
    before the write stores them after the invalidation): such a reader stores under the old
    version, which nobody asks for any more. With replica reads (stage4) a tag's version is the
    primary's WAL position after the write, and a miss is read with ``min_lsn`` = the largest version,
    so rows stored under a version are never older than the write that set it (see ``db.py``).
    Without replicas a version is a plain counter (``INCR``).

    Staleness bound: none for writes made through the app -- a lookup after a write's response never
    returns rows from before that write. Entries expire after ``query_cache_ttl_seconds`` regardless.
    A bump the cache server does not take (it is down or too slow) is kept in the process and sent
    before the process's next lookup, which reads the database until it has been sent; another app
    server that still reaches the cache server may meanwhile return the old entry, for at most that
    TTL (when the server is down, nobody reads it, and a restarted server starts empty).

Profile object cache
    ``profile:<user_id>`` holds the user's PROFILE (a hash: ``as_of``, ``data``). It is loaded at
    login; after each write the app enqueues an arq job and a worker recomputes it from the primary
    (``workers.refresh_profile``). ``as_of`` is the user's write count (the ``seq`` of their write
    mark, see ``sessions.py``) read *before* the profile was computed, so the profile reflects at
    least that many writes. The app serves the cached profile only when ``as_of`` is at least the
    user's current write count; otherwise it reads the database (and stores what it read). The
    profile is only ever shown to its owner, so no request ever sees a profile older than the
    requesting user's last write; the worker makes the next read a hit again, typically within
    ``worker_poll_ms`` plus a few milliseconds. Stores never replace a newer ``as_of``.

When the cache server fails
    Every call to a separate cache server gives up after ``cache_timeout_ms`` (connecting or waiting
    for the answer; no retries), and a :class:`CacheBreaker` shared by both caches then skips the
    server for ``cache_retry_ms``: lookups are misses that read the database, stores and bumps are
    skipped (bumps kept for later, as above). After that pause one call at a time tries the server
    again; the first that succeeds closes the breaker, so the caches come back by themselves when
    the server does (redis-py reconnects, and reloads the Lua scripts a restarted server lost).

Both caches count their hits, misses, errors and skipped calls per process; ``/api/_stats`` shows
the counters and the breaker.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from reference_app.config import AppConfig
from reference_app.encoding import dumps, loads
from reference_app.queries import Statement

log = logging.getLogger(__name__)

QUERY_PREFIX = "qc:"
TAG_PREFIX = "qv:"
PROFILE_PREFIX = "profile:"

# Bumps kept while the cache server is unreachable, at most: past that, the oldest are dropped (and
# their entries may stay stale until they expire) rather than letting an outage grow the process.
MAX_DEFERRED_TAGS = 10_000

# Errors that say the server is unreachable or too slow (the breaker opens), as opposed to an
# answer that is an error (a script error: the server is fine).
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError)

T = TypeVar("T")


def user_tag(user_id: int) -> str:
    return f"{TAG_PREFIX}user:{user_id}"


def book_tag(book_id: int) -> str:
    return f"{TAG_PREFIX}book:{book_id}"


def profile_key(user_id: int) -> str:
    return f"{PROFILE_PREFIX}{user_id}"


@dataclass(slots=True)
class CacheCounters:
    hits: int = 0
    misses: int = 0
    errors: int = 0
    skipped: int = 0  # calls not made because the breaker was open

    def as_dict(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "errors": self.errors, "skipped": self.skipped}


class CacheSkipped(Exception):
    """The breaker is open: the call was not made."""


class CacheBreaker:
    """A circuit breaker for the cache server, shared by the caches of one process.

    Closed, every call goes through. A call that cannot reach the server or times out opens it for
    ``retry_seconds``: calls are skipped (:class:`CacheSkipped`) and requests read the database
    instead of each waiting for a timeout. Then one call at a time is let through; if it reaches the
    server the breaker closes, if not it stays open for another ``retry_seconds``.
    """

    def __init__(self, *, retry_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._retry_seconds = retry_seconds
        self._clock = clock
        self._open_until: float | None = None  # None: closed
        self._probing = False
        self.outages = 0  # how many times the breaker opened

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    def as_dict(self) -> dict[str, Any]:
        return {"available": not self.is_open, "outages": self.outages}

    def trip(self, reason: object) -> None:
        """Open (or keep open) the breaker: the server just failed."""
        if self._open_until is None:
            self.outages += 1
            log.warning("cache server unavailable (%s): skipping the caches, retrying every %.2f s",
                        reason, self._retry_seconds)
        self._open_until = self._clock() + self._retry_seconds
        self._probing = False

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation`` unless the breaker is open; its server errors open the breaker and propagate."""
        if self._open_until is not None:
            if self._probing or self._clock() < self._open_until:
                raise CacheSkipped
            self._probing = True
        try:
            result = await operation()
        except UNAVAILABLE as exc:
            self.trip(exc)
            raise
        except redis.RedisError:
            self._close()  # the server answered, with an error of the command
            raise
        except BaseException:
            self._probing = False  # a cancelled request: let the next call try instead
            raise
        self._close()
        return result

    def _close(self) -> None:
        if self._open_until is not None:
            log.warning("cache server answers again: caches back on")
        self._open_until = None
        self._probing = False


def connect_cache(config: AppConfig) -> redis.Redis:
    """A client for a separate cache server: short timeouts, no retries, a pool that never waits long.

    A failed call then costs a request at most ``cache_timeout_ms`` before the breaker takes over.
    """
    url = config.cache_server_url
    if url is None:
        raise ValueError("app config has no cache server: set 'cache_url' or 'keyvalue_url'")
    timeout = config.cache_timeout_ms / 1000
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max(8, 2 * config.pool_size),
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    return redis.Redis.from_pool(pool)  # closing the client closes its pool


@dataclass(frozen=True, slots=True)
class Lookup:
    """The outcome of a query-cache lookup: rows on a hit, and what a miss needs to store its rows."""

    key: str | None
    rows: list[Any] | None
    min_lsn: int = 0


# KEYS = tag keys. ARGV[1] = "qc:<hash>". Versions (missing = "0") are appended to form the key.
_LOOKUP = """
local parts = {}
if #KEYS > 0 then
  local versions = redis.call('MGET', unpack(KEYS))
  for i = 1, #KEYS do parts[i] = versions[i] or '0' end
end
local key = ARGV[1] .. ':' .. table.concat(parts, '.')
return {key, redis.call('GET', key), table.concat(parts, '.')}
"""

# KEYS = tag keys; ARGV[i] = the WAL position for KEYS[i], or "" to count. Positions only ever move forward.
_BUMP = """
for i = 1, #KEYS do
  local lsn = tonumber(ARGV[i])
  if lsn then
    local current = tonumber(redis.call('GET', KEYS[i]) or '0')
    if lsn > current then redis.call('SET', KEYS[i], ARGV[i]) end
  else
    redis.call('INCR', KEYS[i])
  end
end
return #KEYS
"""

# KEYS[1] = profile key. ARGV = as_of, data, ttl. Never replace a profile computed from newer data.
_PUT_PROFILE = """
local current = redis.call('HGET', KEYS[1], 'as_of')
if current and tonumber(current) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'as_of', ARGV[1], 'data', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


class QueryCache:
    """Rows of read statements, keyed by statement, parameters and tag versions."""

    def __init__(self, *, client: redis.Redis, ttl_seconds: int, versions_are_lsns: bool,
                 breaker: CacheBreaker) -> None:
        self._client = client
        self._ttl = ttl_seconds
        self._versions_are_lsns = versions_are_lsns
        self._breaker = breaker
        self._lookup = client.register_script(_LOOKUP)
        self._bump = client.register_script(_BUMP)
        self.counters = CacheCounters()
        # Bumps not yet taken by the server: tag -> (version argument, the order it was deferred in).
        self._deferred: dict[str, tuple[str, int]] = {}
        self._order = itertools.count()

    @staticmethod
    def base_key(statement: Statement, args: Sequence[Any]) -> str:
        material = statement.sql.encode("utf-8") + b"\x00" + dumps(list(args))
        return QUERY_PREFIX + hashlib.sha256(material).hexdigest()

    @property
    def deferred_bumps(self) -> int:
        return len(self._deferred)

    async def lookup(self, statement: Statement, args: Sequence[Any], tags: Sequence[str]) -> Lookup:
        # Bumps this process could not send go first: until they are in, its entries may be stale.
        if self._deferred and not await self._send({}):
            return Lookup(key=None, rows=None)
        try:
            key, value, versions = await self._breaker.call(
                lambda: self._lookup(keys=list(tags), args=[self.base_key(statement, args)])
            )
        except CacheSkipped:
            self.counters.skipped += 1
            return Lookup(key=None, rows=None)
        except redis.RedisError as exc:
            self.counters.errors += 1
            log.warning("query cache lookup failed, reading the database: %s", exc)
            return Lookup(key=None, rows=None)
        if value is not None:
            self.counters.hits += 1
            return Lookup(key=None, rows=_restore(loads(value), statement.date_columns))
        self.counters.misses += 1
        min_lsn = 0
        if self._versions_are_lsns and versions:
            min_lsn = max(int(v) for v in versions.split(b"."))
        return Lookup(key=key.decode("ascii"), rows=None, min_lsn=min_lsn)

    async def store(self, lookup: Lookup, rows: Sequence[Any]) -> None:
        if lookup.key is None:
            return
        key = lookup.key
        try:
            await self._breaker.call(lambda: self._client.set(key, dumps([tuple(row) for row in rows]), ex=self._ttl))
        except CacheSkipped:
            self.counters.skipped += 1
        except redis.RedisError as exc:
            self.counters.errors += 1
            log.warning("query cache store failed: %s", exc)

    async def invalidate(self, tags: Sequence[str], *, lsn: int) -> None:
        """Bump ``tags`` after a committed write (``lsn`` is its WAL position, 0 when not tracked).

        A bump the server does not take is kept and sent again before this process's next lookup.
        """
        version = str(lsn) if self._versions_are_lsns and lsn else ""
        if await self._send({tag: version for tag in tags}):
            return
        for tag in tags:
            previous = self._deferred.pop(tag, ("", 0))[0]  # re-inserted last: the dict keeps deferral order
            self._deferred[tag] = (_later(previous, version), next(self._order))
        while len(self._deferred) > MAX_DEFERRED_TAGS:
            dropped = next(iter(self._deferred))
            del self._deferred[dropped]
            log.error("query cache: too many bumps waiting for the cache server; entries of %s may be stale "
                      "until they expire", dropped)

    async def _send(self, bumps: dict[str, str]) -> bool:
        """Send ``bumps`` and every deferred bump in one script call; True when the server took them."""
        waiting = dict(self._deferred)
        for tag, (version, _) in waiting.items():
            bumps[tag] = _later(version, bumps.get(tag, ""))
        tags = list(bumps)
        versions = [bumps[tag] for tag in tags]
        try:
            await self._breaker.call(lambda: self._bump(keys=tags, args=versions))
        except CacheSkipped:
            self.counters.skipped += 1
            return False
        except redis.RedisError as exc:
            self.counters.errors += 1
            log.warning("query cache invalidation of %d tag(s) deferred until the cache server answers: %s",
                        len(tags), exc)
            return False
        for tag, entry in waiting.items():
            if self._deferred.get(tag) == entry:  # unless a newer write deferred it again meanwhile
                del self._deferred[tag]
        return True


class ProfileCache:
    """User profiles under ``profile:<user_id>``, each stamped with the write count it reflects."""

    def __init__(self, *, client: redis.Redis, ttl_seconds: int, breaker: CacheBreaker) -> None:
        self._client = client
        self._ttl = ttl_seconds
        self._breaker = breaker
        self._put = client.register_script(_PUT_PROFILE)
        self.counters = CacheCounters()

    async def get(self, user_id: int, *, min_as_of: int) -> dict[str, Any] | None:
        """The cached profile if it reflects at least ``min_as_of`` writes, else ``None`` (a miss)."""
        async def fetch() -> list[Any]:
            return await self._client.hmget(profile_key(user_id), ["as_of", "data"])  # type: ignore[misc]

        try:
            as_of, data = await self._breaker.call(fetch)
        except CacheSkipped:
            self.counters.skipped += 1
            return None
        except redis.RedisError as exc:
            self.counters.errors += 1
            log.warning("profile cache lookup failed, reading the database: %s", exc)
            return None
        if data is None or int(as_of) < min_as_of:
            self.counters.misses += 1
            return None
        self.counters.hits += 1
        profile: dict[str, Any] = loads(data)
        return profile

    async def put(self, user_id: int, profile: dict[str, Any], *, as_of: int) -> bool:
        """Store ``profile`` unless a profile reflecting more writes is already there."""
        try:
            stored = await self._breaker.call(
                lambda: self._put(keys=[profile_key(user_id)], args=[as_of, dumps(profile), self._ttl])
            )
        except CacheSkipped:
            self.counters.skipped += 1
            return False
        except redis.RedisError as exc:
            self.counters.errors += 1
            log.warning("profile cache store failed: %s", exc)
            return False
        return bool(stored)


def _later(first: str, second: str) -> str:
    """One bump that covers two: the larger WAL position ("" counts, and only when neither is a position)."""
    if first and second:
        return first if int(first) > int(second) else second
    return first or second


def _restore(rows: list[list[Any]], date_columns: tuple[int, ...]) -> list[list[Any]]:
    """Turn the ISO strings of DATE columns back into dates, so hits look like database rows."""
    if date_columns:
        for row in rows:
            for column in date_columns:
                value = row[column]
                if value is not None:
                    row[column] = date.fromisoformat(value)
    return rows
