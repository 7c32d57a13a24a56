"""Where session tokens live, and where each user's last write is remembered.

A login creates a session: a random token (``secrets.token_urlsafe(32)``, 256 bits) that maps to a
user id until it expires ``session_ttl_seconds`` later (a fixed lifetime; using the session does not
extend it). Two stores implement the same small interface:

* :class:`MemorySessions` (stage0) keeps a dict in the app process. Nothing is shared, so a token is
  only valid on the server that issued it -- which is exactly why stage1 cannot keep it.
* :class:`KeyValueSessions` (stage1+) keeps ``session:<token>`` keys with a TTL in the key-value
  server, so every app server behind the balancer sees every session.

The same layer remembers each user's *write mark*: how many writes the user has made (``seq``) and
the primary's WAL position after the latest one (``lsn``). Read routing uses the position to give the
user their own writes back from replicas (see ``db.py``), and the profile cache uses the count to
never serve a profile computed before the user's latest write (see ``cache.py``). The marks live in
the key-value server whenever there is one (workers read them too) -- a hash ``uw:<user_id>`` -- and
in process memory otherwise. With both sessions and marks in the key-value server, one Lua script
resolves a token and fetches the user's mark in a single round trip.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as redis

SESSION_PREFIX = "session:"
MARK_PREFIX = "uw:"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def mark_key(user_id: int) -> str:
    return f"{MARK_PREFIX}{user_id}"


@dataclass(frozen=True, slots=True)
class WriteMark:
    """What the app remembers about a user's writes (zeros: none seen)."""

    seq: int = 0
    lsn: int = 0


NO_MARK = WriteMark()


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated user of a request, with their write mark when the request needs it."""

    user_id: int
    token: str
    mark: WriteMark = NO_MARK


class SessionStore(Protocol):
    async def create(self, user_id: int) -> str: ...

    async def resolve(self, token: str, *, with_mark: bool) -> Caller | None: ...

    async def delete(self, token: str) -> None: ...


class WriteMarks(Protocol):
    async def record(self, user_id: int, lsn: int) -> WriteMark: ...

    async def get(self, user_id: int) -> WriteMark: ...


# -- process memory -----------------------------------------------------------------------------------


class MemoryWriteMarks:
    """Write marks in a dict: enough for a single app process with no key-value server."""

    def __init__(self) -> None:
        self._marks: dict[int, WriteMark] = {}

    async def record(self, user_id: int, lsn: int) -> WriteMark:
        old = self._marks.get(user_id, NO_MARK)
        mark = WriteMark(seq=old.seq + 1, lsn=max(old.lsn, lsn))
        self._marks[user_id] = mark
        return mark

    async def get(self, user_id: int) -> WriteMark:
        return self._marks.get(user_id, NO_MARK)


class MemorySessions:
    """Sessions in a dict of ``token -> (user_id, expires_at)``; expired entries are swept lazily."""

    def __init__(self, *, ttl_seconds: int, marks: WriteMarks) -> None:
        self._ttl = ttl_seconds
        self._marks = marks
        self._sessions: dict[str, tuple[int, float]] = {}
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._sessions)

    async def create(self, user_id: int) -> str:
        now = time.monotonic()
        if now >= self._next_sweep:
            # Sweep at most once per TTL: logins must not pay for a scan of every session each time.
            self._sessions = {t: v for t, v in self._sessions.items() if v[1] > now}
            self._next_sweep = now + self._ttl
        token = new_token()
        self._sessions[token] = (user_id, now + self._ttl)
        return token

    async def resolve(self, token: str, *, with_mark: bool) -> Caller | None:
        entry = self._sessions.get(token)
        if entry is None:
            return None
        user_id, expires_at = entry
        if expires_at <= time.monotonic():
            self._sessions.pop(token, None)
            return None
        if not with_mark:
            return Caller(user_id=user_id, token=token)
        return Caller(user_id=user_id, token=token, mark=await self._marks.get(user_id))

    async def delete(self, token: str) -> None:
        self._sessions.pop(token, None)


# -- key-value server ---------------------------------------------------------------------------------

# KEYS[1] = mark key. ARGV[1] = lsn. Count the write, keep the largest position, return both.
_RECORD_MARK = """
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local lsn = tonumber(ARGV[1])
local current = tonumber(redis.call('HGET', KEYS[1], 'lsn') or '0')
if lsn > current then
  redis.call('HSET', KEYS[1], 'lsn', ARGV[1])
  current = lsn
end
return {seq, tostring(current)}
"""

# KEYS[1] = session key. ARGV[1] = mark key prefix. The user id, then the mark's seq and lsn.
# (The mark key is derived from the session's value, which a cluster would not allow; this app
# talks to a single key-value server.)
_RESOLVE_WITH_MARK = """
local user_id = redis.call('GET', KEYS[1])
if not user_id then return nil end
local mark = redis.call('HMGET', ARGV[1] .. user_id, 'seq', 'lsn')
return {user_id, mark[1] or '0', mark[2] or '0'}
"""


class KeyValueWriteMarks:
    """Write marks as ``uw:<user_id>`` hashes (no TTL: one small hash per user who ever wrote)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._record = client.register_script(_RECORD_MARK)

    async def record(self, user_id: int, lsn: int) -> WriteMark:
        seq, position = await self._record(keys=[mark_key(user_id)], args=[lsn])
        return WriteMark(seq=int(seq), lsn=int(position))

    async def get(self, user_id: int) -> WriteMark:
        seq, lsn = await self._client.hmget(mark_key(user_id), ["seq", "lsn"])  # type: ignore[misc]
        return WriteMark(seq=int(seq or 0), lsn=int(lsn or 0))


class KeyValueSessions:
    """Sessions as ``session:<token>`` keys holding the user id, expiring with the key's TTL."""

    def __init__(self, *, client: redis.Redis, ttl_seconds: int, marks: WriteMarks) -> None:
        self._client = client
        self._ttl = ttl_seconds
        self._marks = marks
        # The one-round-trip lookup only works when the marks live next to the sessions.
        self._resolve_with_mark = (
            client.register_script(_RESOLVE_WITH_MARK) if isinstance(marks, KeyValueWriteMarks) else None
        )

    async def create(self, user_id: int) -> str:
        token = new_token()
        await self._client.set(SESSION_PREFIX + token, user_id, ex=self._ttl)
        return token

    async def resolve(self, token: str, *, with_mark: bool) -> Caller | None:
        key = SESSION_PREFIX + token
        if not with_mark:
            value = await self._client.get(key)
            return None if value is None else Caller(user_id=int(value), token=token)
        if self._resolve_with_mark is None:
            value = await self._client.get(key)
            if value is None:
                return None
            user_id = int(value)
            return Caller(user_id=user_id, token=token, mark=await self._marks.get(user_id))
        found = await self._resolve_with_mark(keys=[key], args=[MARK_PREFIX])
        if found is None:
            return None
        user_id, seq, lsn = found
        return Caller(user_id=int(user_id), token=token, mark=WriteMark(seq=int(seq), lsn=int(lsn)))

    async def delete(self, token: str) -> None:
        await self._client.delete(SESSION_PREFIX + token)
