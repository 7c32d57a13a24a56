"""What the book-rental service does, independent of HTTP.

The HTTP layer (``app.py``) validates input and turns answers into JSON; this module decides what
the answers are. Each operation reads or writes through ``db.py`` and, when the stage enables them,
the caches of ``cache.py``, so one code path serves every stage and the stage flags only choose
which statement runs, where it runs and whether a cache sits in front of it:

* ``joins: sql`` reads the normalized tables with joins; ``joins: app`` reads the denormalized
  columns and composes the answer here (e.g. zipping a book's author ids and names).
* ``query_cache`` puts the key-value server in front of every read except login, tagging each read
  with the user or book whose writes invalidate it.
* ``object_cache`` serves a user's profile from ``profile:<id>`` while it reflects every write the
  user has made, and asks the workers to recompute it after each write.
* ``reads: replicas`` sends reads to replicas at least as fresh as the caller's last write.
* ``charges: precomputed`` reads the stored totals of settled rentals plus the few unsettled ones.

Writes (rent, return) run in one transaction on the primary. After the commit they invalidate the
query-cache tags they touched, then record the user's write mark, then enqueue the workers' jobs --
in that order, so that anyone who sees the new mark also sees the invalidation (see ``cache.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from arq.connections import ArqRedis

from reference_app.cache import ProfileCache, QueryCache, book_tag, user_tag
from reference_app.charges import ChargeTotals, total_charges
from reference_app.config import AppConfig
from reference_app.db import Database
from reference_app.passwords import hash_password, verify_password
from reference_app.queries import Queries, Statement
from reference_app.sessions import Caller, WriteMarks

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer to an invalid request: a 4xx status and a one-line message."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


def utc_today() -> date:
    return datetime.now(UTC).date()


# Logins for unknown emails still verify a password, so that timing does not reveal which emails
# exist. The hash is made once per process, at the configured cost.
_DUMMY_SALT = b"scalesim-no-user"


@dataclass(slots=True)
class RentalService:
    """The operations of the API; one instance per app process (workers build their own)."""

    config: AppConfig
    queries: Queries
    db: Database
    marks: WriteMarks
    query_cache: QueryCache | None = None
    profile_cache: ProfileCache | None = None
    jobs: ArqRedis | None = None
    today: Callable[[], date] = utc_today
    _dummy_hash: str = field(default="", init=False)

    def __post_init__(self) -> None:
        self._dummy_hash = hash_password("", salt=_DUMMY_SALT, iterations=self.config.password_iterations)

    # -- reads ---------------------------------------------------------------------------------------

    async def _read(
        self, statement: Statement, args: Sequence[Any], *, tags: Sequence[str] = (), min_lsn: int = 0
    ) -> list[Any]:
        """A read through the query cache when it is on (tags name the writes that invalidate it)."""
        if self.query_cache is None:
            return await self.db.read(statement, args, min_lsn=min_lsn)
        found = await self.query_cache.lookup(statement, args, tags)
        if found.rows is not None:
            return found.rows
        rows = await self.db.read(statement, args, min_lsn=max(min_lsn, found.min_lsn))
        await self.query_cache.store(found, rows)
        return rows

    async def authenticate(self, *, email: str, password: str) -> int:
        """The id of the user with these credentials (login reads are never cached)."""
        rows = await self.db.read(self.queries.login_lookup, (email,))
        if not rows:
            verify_password(password, self._dummy_hash)
            raise Unauthorized("wrong email or password")
        user_id, stored_hash = rows[0]
        if not verify_password(password, stored_hash):
            raise Unauthorized("wrong email or password")
        return int(user_id)

    async def load_profile(self, user_id: int, *, min_lsn: int = 0) -> dict[str, Any]:
        rows = await self._read(self.queries.profile, (user_id,), tags=(user_tag(user_id),), min_lsn=min_lsn)
        if not rows:
            raise NotFound(f"no user {user_id}")
        return profile_from_row(rows[0])

    async def profile_at_login(self, user_id: int) -> dict[str, Any]:
        """The profile for a login answer; with the object cache on, also (re)load the cached one."""
        if self.profile_cache is None:
            return await self.load_profile(user_id)
        mark = await self.marks.get(user_id)  # read before the profile: as_of must not overstate it
        profile = await self.load_profile(user_id, min_lsn=mark.lsn)
        await self.profile_cache.put(user_id, profile, as_of=mark.seq)
        return profile

    async def profile(self, caller: Caller) -> dict[str, Any]:
        if self.profile_cache is None:
            return await self.load_profile(caller.user_id, min_lsn=caller.mark.lsn)
        cached = await self.profile_cache.get(caller.user_id, min_as_of=caller.mark.seq)
        if cached is not None:
            return cached
        profile = await self.load_profile(caller.user_id, min_lsn=caller.mark.lsn)
        await self.profile_cache.put(caller.user_id, profile, as_of=caller.mark.seq)
        return profile

    async def categories(self) -> dict[str, Any]:
        rows = await self._read(self.queries.categories, ())
        return {"items": [row[0] for row in rows]}

    async def catalog(self, *, category: str | None, page: int, per_page: int) -> dict[str, Any]:
        """One page of book summaries (``id, title, category, daily_price_cents, authors``)."""
        flat = self.config.joins == "app"
        offset = (page - 1) * per_page
        if category is None:
            statement = self.queries.catalog_flat if flat else self.queries.catalog_joined
            args: tuple[Any, ...] = (per_page, offset)
        else:
            statement = self.queries.catalog_flat_by_category if flat else self.queries.catalog_joined_by_category
            args = (category, per_page, offset)
        # Summaries carry no availability, so no write ever invalidates a catalog page.
        rows = await self._read(statement, args)
        if not rows and page > 1:
            raise NotFound(f"page {page} is past the last page of results")
        items = [
            {"id": r[0], "title": r[1], "category": r[2], "daily_price_cents": r[3], "authors": list(r[4])}
            for r in rows
        ]
        return {"items": items, "page": page, "per_page": per_page, "total": rows[0][5] if rows else 0}

    async def book(self, book_id: int, *, min_lsn: int = 0) -> dict[str, Any]:
        if self.config.joins == "app":
            rows = await self._read(self.queries.book_flat, (book_id,), tags=(book_tag(book_id),), min_lsn=min_lsn)
            if not rows:
                raise NotFound(f"no book {book_id}")
            r = rows[0]
            authors = [{"id": i, "name": n} for i, n in zip(r[6], r[7], strict=True)]
        else:
            rows = await self._read(self.queries.book_joined, (book_id,), tags=(book_tag(book_id),), min_lsn=min_lsn)
            if not rows:
                raise NotFound(f"no book {book_id}")
            r = rows[0]
            authors = [{"id": a[6], "name": a[7]} for a in rows if a[6] is not None]
        return {
            "id": r[0],
            "title": r[1],
            "category": r[2],
            "daily_price_cents": r[3],
            "copies": r[4],
            "available": r[5],
            "authors": authors,
        }

    async def rentals(self, caller: Caller, *, status: str) -> dict[str, Any]:
        statements = self.queries.rentals_flat if self.config.joins == "app" else self.queries.rentals_joined
        rows = await self._read(
            statements[status], (caller.user_id,), tags=(user_tag(caller.user_id),), min_lsn=caller.mark.lsn
        )
        return {"items": [rental_from_row(row) for row in rows]}

    async def charges(self, caller: Caller) -> dict[str, Any]:
        user_id = caller.user_id
        tags = (user_tag(user_id),)
        rules = {"late_after_days": self.config.late_after_days, "late_fee_percent": self.config.late_fee_percent}
        today = self.today()
        if self.config.charges == "precomputed":
            rows = await self._read(self.queries.charges_precomputed, (user_id,), tags=tags, min_lsn=caller.mark.lsn)
            stored = ChargeTotals()
            unsettled = []
            for kind, a, b, c, rented_on, returned_on in rows:
                if kind == 0:
                    stored = ChargeTotals(rentals=a, rental_cents=b, late_fee_cents=c)
                else:
                    unsettled.append((rented_on, returned_on, a))
            totals = stored.plus(total_charges(unsettled, today=today, **rules))
        else:
            rows = await self._read(self.queries.charge_rows, (user_id,), tags=tags, min_lsn=caller.mark.lsn)
            totals = total_charges(((r[0], r[1], r[2]) for r in rows), today=today, **rules)
        return {
            "user_id": user_id,
            "total_cents": totals.total_cents,
            "rental_charges_cents": totals.rental_cents,
            "late_fees_cents": totals.late_fee_cents,
            "rentals": totals.rentals,
        }

    # -- writes --------------------------------------------------------------------------------------

    async def rent(self, caller: Caller, *, book_id: int, key: str | None = None) -> dict[str, Any]:
        """Rent a copy of `book_id`. With an idempotency `key`, a second request with the same key
        (a retry) answers with the rental the first one made instead of renting again."""
        q = self.queries
        user_id = caller.user_id
        async with self.db.write() as tx:
            # Lock the user first: two concurrent rents by one user must not both pass the limit (and a
            # retry waits here until its first attempt has committed or rolled back).
            if await tx.fetchrow(q.lock_user, user_id) is None:
                raise NotFound(f"no user {user_id}")
            done = await tx.fetchrow(q.rental_by_rent_key, user_id, key) if key is not None else None
            if done is None:
                open_rentals = (await tx.fetch(q.count_open_rentals, user_id))[0][0]
                if open_rentals >= self.config.max_open_rentals:
                    raise Conflict(f"you already have {open_rentals} open rentals (the limit)")
                taken = await tx.fetchrow(q.take_copy, book_id)
                if taken is None:
                    if await tx.fetchrow(q.book_exists, book_id) is None:
                        raise NotFound(f"no book {book_id}")
                    raise Conflict(f"no copy of book {book_id} is available")
                title, daily_price_cents, author_names = taken
                row = await tx.fetchrow(
                    q.insert_rental, user_id, book_id, self.today(), daily_price_cents, title, author_names, key
                )
            elif done[1] != book_id:
                raise Conflict(f"idempotency key {key!r} was used for a rental of another book")
            else:
                row = done
        assert row is not None  # INSERT ... RETURNING always returns the row
        # Also for a retry: its first attempt may have died before invalidating caches and marks.
        await self._after_write(user_id, book_id, returned=False)
        return rental_from_row(row)

    async def return_rental(self, caller: Caller, *, rental_id: int, key: str | None = None) -> dict[str, Any]:
        """Return a rental. With an idempotency `key`, repeating a return made with that key answers
        with the returned rental (200) instead of "already returned" (409)."""
        q = self.queries
        user_id = caller.user_id
        async with self.db.write() as tx:
            row = await tx.fetchrow(q.return_rental, self.today(), key, rental_id, user_id)
            if row is None:
                owner = await tx.fetchrow(q.rental_owner, rental_id)
                if owner is None or owner[0] != user_id:
                    raise NotFound(f"you have no rental {rental_id}")
                if key is None or owner[2] != key:
                    raise Conflict(f"rental {rental_id} was already returned on {owner[1].isoformat()}")
                row = await tx.fetchrow(q.rental_by_id, rental_id)  # this very return, retried
                assert row is not None
            else:
                await tx.execute(q.put_back_copy, row[1])
        await self._after_write(user_id, row[1], returned=True)
        return rental_from_row(row)

    async def _after_write(self, user_id: int, book_id: int, *, returned: bool) -> None:
        lsn = await self.db.commit_position()
        if self.query_cache is not None:
            await self.query_cache.invalidate((user_tag(user_id), book_tag(book_id)), lsn=lsn)
        await self.marks.record(user_id, lsn)
        if self.jobs is None:
            return
        try:
            if self.config.object_cache:
                await self.jobs.enqueue_job("refresh_profile", user_id)
            if returned and self.config.charges == "precomputed":
                await self.jobs.enqueue_job("recompute_charges", user_id)
        except Exception as exc:  # noqa: BLE001 -- the write is committed; answers stay exact anyway
            log.error("could not enqueue the refresh jobs of user %d: %s", user_id, exc)


def profile_from_row(row: Sequence[Any]) -> dict[str, Any]:
    return {
        "id": row[0],
        "email": row[1],
        "name": row[2],
        "member_since": row[3],
        "open_rentals": row[4],
        "total_rentals": row[5],
    }


def rental_from_row(row: Sequence[Any]) -> dict[str, Any]:
    """A rental as the API shows it, from ``(id, book_id, title, authors, rented_on, returned_on, price)``."""
    return {
        "id": row[0],
        "book_id": row[1],
        "title": row[2],
        "authors": list(row[3]),
        "rented_on": row[4],
        "returned_on": row[5],
        "daily_price_cents": row[6],
    }
