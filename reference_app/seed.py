"""Schema and seed data: deterministic from a seed and a size, loaded in well under a second.

``seed_database(url, users=..., authors=..., books=..., rentals_per_user=..., seed=...)`` drops the
app's tables, creates them from ``schema.py`` and fills them. Everything is drawn from one
``random.Random(seed)`` in a fixed order, and dates count back from a fixed day
(:data:`BASE_DATE`), never from today, so the same seed and size give byte-identical tables on any
machine on any day -- which is what lets two stages, or two runs, be compared row for row.

The data, in brief:

* user ``i`` (1-based) is ``user{i}@example.com`` with password ``password{i}``, hashed with a
  per-user salt drawn from the seeded generator (see ``passwords.py`` for the scheme and its cost);
* authors and books get names and titles from small word lists; each book has one to three authors,
  a category, a daily price between 25 and 400 cents (odd prices exercise the late-fee rounding) and
  one to five copies;
* each user has ``rentals_per_user`` rentals spread over the year before the base date: most are
  returned (some late, to exercise late fees), and the latest zero to two are still open -- never
  more than ``max_open_rentals``, and never more open rentals of a book than it has copies;
* the denormalized columns (``books.author_*``, ``rentals.book_title``/``author_names``) and the
  stage5 totals (``user_charges``, with every returned rental ``settled``) are filled consistently,
  so any stage can start from the same database.

Speed: rows go in with COPY (``copy_records_to_table``) inside one transaction, and secondary
indexes and foreign keys are added after the load (one check per key instead of one per row).
Hashing passwords is the largest part; above a few thousand users it is spread over a process
pool. 1000 users, 2000 books and 20000 rentals take about 0.6 seconds.

Command line (one-line errors, exit status 2 for bad arguments, 1 when the database fails)::

    python -m reference_app.seed --database-url URL --users N --authors N --books N \\
        --rentals-per-user N --seed S
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import asyncpg

from reference_app import schema
from reference_app.charges import DEFAULT_LATE_AFTER_DAYS, DEFAULT_LATE_FEE_PERCENT, total_charges
from reference_app.config import AppConfig
from reference_app.passwords import hash_password

BASE_DATE = date(2025, 1, 1)
CATEGORIES = (
    "biography",
    "children",
    "classics",
    "fantasy",
    "history",
    "mystery",
    "philosophy",
    "poetry",
    "romance",
    "science",
    "thriller",
    "travel",
)
FIRST_NAMES = (
    "Ada", "Alan", "Anna", "Bruno", "Carla", "Chen", "Dara", "Elena", "Femi", "Grace", "Hugo", "Ines",
    "Jonas", "Kira", "Lars", "Maya", "Nadia", "Omar", "Paula", "Quinn", "Rosa", "Sami", "Tara", "Uma",
    "Viktor", "Wen", "Ximena", "Yusuf", "Zoe",
)  # fmt: skip
LAST_NAMES = (
    "Abbott", "Bauer", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Horvat", "Ivanova", "Jensen",
    "Kowalski", "Lindqvist", "Moreau", "Nakamura", "Okafor", "Petrov", "Quintero", "Rossi", "Sato",
    "Tanaka", "Ueda", "Varga", "Wagner", "Xu", "Yilmaz", "Zielinski",
)  # fmt: skip
TITLE_ADJECTIVES = (
    "Silent", "Hidden", "Last", "Golden", "Broken", "Distant", "Quiet", "Burning", "Lost", "Secret",
    "Winter", "Crimson", "Endless", "Forgotten", "Northern", "Paper", "Glass", "Iron", "Wild", "Little",
)  # fmt: skip
TITLE_NOUNS = (
    "River", "Garden", "Empire", "Harbor", "Letters", "Mountain", "Orchard", "Station", "Library", "Map",
    "Voyage", "Kingdom", "Archive", "Lighthouse", "Forest", "Machine", "Island", "Bridge", "City", "Sea",
)  # fmt: skip

# Above this many users, password hashing is spread over a process pool.
PARALLEL_HASHING_FROM = 4000


@dataclass(slots=True)
class SeedData:
    """Rows for every table, as tuples in the column order of :data:`COLUMNS`."""

    users: list[tuple[Any, ...]] = field(default_factory=list)
    authors: list[tuple[Any, ...]] = field(default_factory=list)
    books: list[tuple[Any, ...]] = field(default_factory=list)
    book_authors: list[tuple[Any, ...]] = field(default_factory=list)
    rentals: list[tuple[Any, ...]] = field(default_factory=list)
    user_charges: list[tuple[Any, ...]] = field(default_factory=list)


COLUMNS: dict[str, tuple[str, ...]] = {
    "users": ("id", "email", "name", "password_hash", "member_since"),
    "authors": ("id", "name"),
    "books": ("id", "title", "category", "daily_price_cents", "copies", "available", "author_ids", "author_names"),
    "book_authors": ("book_id", "position", "author_id"),
    "rentals": (
        "id", "user_id", "book_id", "rented_on", "returned_on", "daily_price_cents", "book_title",
        "author_names", "settled",
    ),
    "user_charges": ("user_id", "rentals", "rental_cents", "late_fee_cents"),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class SeedSummary:
    users: int
    authors: int
    books: int
    rentals: int
    open_rentals: int
    seconds: float


def _check_sizes(*, users: int, authors: int, books: int, rentals_per_user: int, max_open_rentals: int) -> None:
    for name, value, minimum in (
        ("users", users, 1),
        ("authors", authors, 1),
        ("books", books, 1),
        ("rentals_per_user", rentals_per_user, 0),
        ("max_open_rentals", max_open_rentals, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, not {value!r}")


def _hash_all(passwords: Sequence[str], salts: Sequence[bytes], iterations: int) -> list[str]:
    if len(passwords) < PARALLEL_HASHING_FROM:
        return [hash_password(p, salt=s, iterations=iterations) for p, s in zip(passwords, salts, strict=True)]
    with concurrent.futures.ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(
            pool.map(_hash_one, passwords, salts, [iterations] * len(passwords), chunksize=max(1, len(passwords) // 64))
        )


def _hash_one(password: str, salt: bytes, iterations: int) -> str:
    return hash_password(password, salt=salt, iterations=iterations)


def generate(
    *,
    users: int,
    authors: int,
    books: int,
    rentals_per_user: int,
    seed: int,
    max_open_rentals: int = 5,
    password_iterations: int = 1000,
    late_after_days: int = DEFAULT_LATE_AFTER_DAYS,
    late_fee_percent: int = DEFAULT_LATE_FEE_PERCENT,
) -> SeedData:
    """All rows, drawn from ``random.Random(seed)`` in a fixed order (no I/O)."""
    _check_sizes(
        users=users, authors=authors, books=books, rentals_per_user=rentals_per_user, max_open_rentals=max_open_rentals
    )
    rng = random.Random(seed)
    data = SeedData()

    author_names = [f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}" for _ in range(authors)]
    data.authors = [(i + 1, name) for i, name in enumerate(author_names)]

    titles: list[str] = []
    prices: list[int] = []
    copies: list[int] = []
    book_author_ids: list[list[int]] = []
    categories: list[str] = []
    for book_id in range(1, books + 1):
        title = f"The {rng.choice(TITLE_ADJECTIVES)} {rng.choice(TITLE_NOUNS)}"
        titles.append(title if rng.random() < 0.7 else f"{title}, Vol. {rng.randint(2, 9)}")
        categories.append(rng.choice(CATEGORIES))
        prices.append(rng.randint(25, 400))
        copies.append(rng.randint(1, 5))
        count = min(authors, rng.choices((1, 2, 3), weights=(70, 25, 5))[0])
        ids = rng.sample(range(1, authors + 1), count)
        book_author_ids.append(ids)
        data.book_authors.extend((book_id, position, author_id) for position, author_id in enumerate(ids))
    available = list(copies)

    salts = [rng.randbytes(16) for _ in range(users)]
    names = [f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}" for _ in range(users)]
    member_since = [BASE_DATE - timedelta(days=rng.randint(401, 3000)) for _ in range(users)]
    hashes = _hash_all([f"password{i}" for i in range(1, users + 1)], salts, password_iterations)
    data.users = [
        (i, f"user{i}@example.com", names[i - 1], hashes[i - 1], member_since[i - 1]) for i in range(1, users + 1)
    ]

    rental_id = 0
    for user_id in range(1, users + 1):
        wanted_open = min(rng.choices((0, 1, 2), weights=(50, 30, 20))[0], max_open_rentals, rentals_per_user)
        history: list[tuple[date, date | None, int]] = []
        for _ in range(rentals_per_user - wanted_open):
            rented_on = BASE_DATE - timedelta(days=rng.randint(31, 400))
            days = rng.randint(1, 14) if rng.random() < 0.85 else rng.randint(15, 30)
            history.append((rented_on, rented_on + timedelta(days=days), rng.randint(1, books)))
        history.sort(key=lambda rental: rental[0])
        opened: list[tuple[date, date | None, int]] = []
        for _ in range(wanted_open):
            rented_on = BASE_DATE - timedelta(days=rng.randint(0, 30))
            book_id = rng.randint(1, books)
            for _attempt in range(20):  # find a copy on the shelf; give up quietly in a tiny catalog
                if available[book_id - 1] > 0:
                    break
                book_id = rng.randint(1, books)
            if available[book_id - 1] > 0:
                available[book_id - 1] -= 1
                opened.append((rented_on, None, book_id))
        opened.sort(key=lambda rental: rental[0])
        for rented_on, returned_on, book_id in history + opened:
            rental_id += 1
            data.rentals.append(
                (
                    rental_id,
                    user_id,
                    book_id,
                    rented_on,
                    returned_on,
                    prices[book_id - 1],
                    titles[book_id - 1],
                    [author_names[a - 1] for a in book_author_ids[book_id - 1]],
                    returned_on is not None,
                )
            )
        settled = [(r, d, prices[b - 1]) for r, d, b in history]
        if settled:
            totals = total_charges(
                settled, today=BASE_DATE, late_after_days=late_after_days, late_fee_percent=late_fee_percent
            )
            data.user_charges.append((user_id, totals.rentals, totals.rental_cents, totals.late_fee_cents))

    data.books = [
        (
            i + 1,
            titles[i],
            categories[i],
            prices[i],
            copies[i],
            available[i],
            book_author_ids[i],
            [author_names[a - 1] for a in book_author_ids[i]],
        )
        for i in range(books)
    ]
    return data


async def load(connection: asyncpg.Connection, data: SeedData) -> None:
    """Replace the app's tables with ``data`` in one transaction."""
    async with connection.transaction():
        for statement in schema.drop_table_sql():
            await connection.execute(statement)
        for statement in schema.create_table_sql(foreign_keys=False):
            await connection.execute(statement)
        for table in schema.TABLES_IN_LOAD_ORDER:
            rows = getattr(data, table.name)
            if rows:
                await connection.copy_records_to_table(table.name, records=rows, columns=COLUMNS[table.name])
        for name in ("users", "authors", "books", "rentals"):
            # COPY bypasses the id sequences: move them past the loaded ids.
            await connection.execute(
                f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), COALESCE(max(id), 0) + 1, false) FROM {name}"
            )
        for statement in [*schema.create_index_sql(), *schema.add_foreign_key_sql()]:
            await connection.execute(statement)
    await connection.execute("ANALYZE " + ", ".join(t.name for t in schema.TABLES_IN_LOAD_ORDER))


async def seed_database(
    database_url: str,
    *,
    users: int,
    authors: int,
    books: int,
    rentals_per_user: int,
    seed: int,
    max_open_rentals: int | None = None,
    password_iterations: int | None = None,
) -> SeedSummary:
    """Create the schema in ``database_url`` (a primary) and load the seed data; returns a summary.

    ``max_open_rentals`` and ``password_iterations`` default to :class:`AppConfig`'s defaults.
    """
    defaults = AppConfig(database_url="postgresql://defaults")
    started = time.perf_counter()
    data = generate(
        users=users,
        authors=authors,
        books=books,
        rentals_per_user=rentals_per_user,
        seed=seed,
        max_open_rentals=defaults.max_open_rentals if max_open_rentals is None else max_open_rentals,
        password_iterations=defaults.password_iterations if password_iterations is None else password_iterations,
        late_after_days=defaults.late_after_days,
        late_fee_percent=defaults.late_fee_percent,
    )
    connection = await asyncpg.connect(database_url, timeout=10)
    try:
        await load(connection, data)
    finally:
        await connection.close()
    return SeedSummary(
        users=len(data.users),
        authors=len(data.authors),
        books=len(data.books),
        rentals=len(data.rentals),
        open_rentals=sum(1 for row in data.rentals if row[4] is None),
        seconds=time.perf_counter() - started,
    )


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's default prints the whole usage first
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _OneLineParser(prog="python -m reference_app.seed", description="Create the schema and load seed data.")
    parser.add_argument("--database-url", required=True, help="primary, postgresql://USER@HOST:PORT/DB")
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--authors", type=int, required=True)
    parser.add_argument("--books", type=int, required=True)
    parser.add_argument("--rentals-per-user", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--max-open-rentals", type=int, default=None)
    parser.add_argument("--password-iterations", type=int, default=None)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    prog = "python -m reference_app.seed"
    if not args.database_url.startswith(("postgresql://", "postgres://")):
        print(f"{prog}: --database-url must be a postgresql:// URL, not {args.database_url!r}", file=sys.stderr)
        return 2
    if args.password_iterations is not None and args.password_iterations < 1:
        print(f"{prog}: --password-iterations must be at least 1", file=sys.stderr)
        return 2
    try:
        summary = asyncio.run(
            seed_database(
                args.database_url,
                users=args.users,
                authors=args.authors,
                books=args.books,
                rentals_per_user=args.rentals_per_user,
                seed=args.seed,
                max_open_rentals=args.max_open_rentals,
                password_iterations=args.password_iterations,
            )
        )
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"{prog}: cannot seed {args.database_url}: {message}", file=sys.stderr)
        return 1
    print(
        f"seeded {summary.users} users, {summary.authors} authors, {summary.books} books, "
        f"{summary.rentals} rentals ({summary.open_rentals} open) in {summary.seconds:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
