"""Stage3's caches in the key-value server: a query cache and a profile object cache.

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
    If the key-value server fails during a bump, entries may stay stale for at most that TTL.

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

Both caches count their hits and misses per process; ``/api/_stats`` shows the counters.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import redis.asyncio as redis

from reference_app.encoding import dumps, loads
from reference_app.queries import Statement

log = logging.getLogger(__name__)

QUERY_PREFIX = "qc:"
TAG_PREFIX = "qv:"
PROFILE_PREFIX = "profile:"


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

    def as_dict(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "errors": self.errors}


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

# KEYS = tag keys. ARGV[1] = WAL position, or "" to count. Positions only ever move forward.
_BUMP = """
local lsn = tonumber(ARGV[1])
for i = 1, #KEYS do
  if lsn then
    local current = tonumber(redis.call('GET', KEYS[i]) or '0')
    if lsn > current then redis.call('SET', KEYS[i], ARGV[1]) end
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

    def __init__(self, *, client: redis.Redis, ttl_seconds: int, versions_are_lsns: bool) -> None:
        self._client = client
        self._ttl = ttl_seconds
        self._versions_are_lsns = versions_are_lsns
        self._lookup = client.register_script(_LOOKUP)
        self._bump = client.register_script(_BUMP)
        self.counters = CacheCounters()

    @staticmethod
    def base_key(statement: Statement, args: Sequence[Any]) -> str:
        material = statement.sql.encode("utf-8") + b"\x00" + dumps(list(args))
        return QUERY_PREFIX + hashlib.sha256(material).hexdigest()

    async def lookup(self, statement: Statement, args: Sequence[Any], tags: Sequence[str]) -> Lookup:
        try:
            key, value, versions = await self._lookup(keys=list(tags), args=[self.base_key(statement, args)])
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
        try:
            await self._client.set(lookup.key, dumps([tuple(row) for row in rows]), ex=self._ttl)
        except redis.RedisError as exc:
            self.counters.errors += 1
            log.warning("query cache store failed: %s", exc)

    async def invalidate(self, tags: Sequence[str], *, lsn: int) -> None:
        """Bump ``tags`` after a committed write (``lsn`` is its WAL position, 0 when not tracked)."""
        try:
            await self._bump(keys=list(tags), args=[lsn if self._versions_are_lsns and lsn else ""])
        except redis.RedisError as exc:
            self.counters.errors += 1
            log.error("query cache invalidation failed; entries may be stale until they expire: %s", exc)


class ProfileCache:
    """User profiles under ``profile:<user_id>``, each stamped with the write count it reflects."""

    def __init__(self, *, client: redis.Redis, ttl_seconds: int) -> None:
        self._client = client
        self._ttl = ttl_seconds
        self._put = client.register_script(_PUT_PROFILE)
        self.counters = CacheCounters()

    async def get(self, user_id: int, *, min_as_of: int) -> dict[str, Any] | None:
        """The cached profile if it reflects at least ``min_as_of`` writes, else ``None`` (a miss)."""
        try:
            as_of, data = await self._client.hmget(profile_key(user_id), ["as_of", "data"])  # type: ignore[misc]
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
            stored = await self._put(keys=[profile_key(user_id)], args=[as_of, dumps(profile), self._ttl])
        except redis.RedisError as exc:
            self.counters.errors += 1
            log.warning("profile cache store failed: %s", exc)
            return False
        return bool(stored)


def _restore(rows: list[list[Any]], date_columns: tuple[int, ...]) -> list[list[Any]]:
    """Turn the ISO strings of DATE columns back into dates, so hits look like database rows."""
    if date_columns:
        for row in rows:
            for column in date_columns:
                value = row[column]
                if value is not None:
                    row[column] = date.fromisoformat(value)
    return rows
