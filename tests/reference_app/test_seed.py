"""Seed data: deterministic, consistent with itself, fast, and a CLI with one-line errors."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest

from reference_app.charges import total_charges
from reference_app.passwords import verify_password
from reference_app.seed import BASE_DATE, generate, seed_database
from tests.sql import fetch

from .conftest import REPO, SMALL_DATA, DatabaseServer, seed, unique_name

TABLES = ("users", "authors", "books", "book_authors", "rentals", "user_charges")


def digests(url: str) -> dict[str, str]:
    """One md5 per table over every row's text form, in a stable order."""
    parts = [f"SELECT '{t}', md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {t} t" for t in TABLES]
    return {row[0]: row[1] for row in fetch(url, " UNION ALL ".join(parts))}


def test_same_seed_and_size_give_identical_tables(pg_server: DatabaseServer) -> None:
    first = seed(pg_server.create_database(unique_name("seed_a")))
    second = seed(pg_server.create_database(unique_name("seed_b")))
    other = seed(pg_server.create_database(unique_name("seed_c")), seed=8)
    assert digests(first) == digests(second)
    assert all(digest is not None for digest in digests(first).values())
    changed = digests(other)
    assert {t for t in TABLES if changed[t] != digests(first)[t]} >= {"users", "books", "rentals"}


def test_generation_is_pure_and_repeatable() -> None:
    a = generate(users=5, authors=3, books=7, rentals_per_user=4, seed=1, password_iterations=2)
    b = generate(users=5, authors=3, books=7, rentals_per_user=4, seed=1, password_iterations=2)
    assert a == b


@pytest.fixture(scope="module")
def seeded(seeded_url: str) -> str:
    return seeded_url


def test_users_log_in_with_their_seed_passwords(seeded: str) -> None:
    rows = fetch(seeded, "SELECT id, email, password_hash FROM users ORDER BY id")
    assert len(rows) == SMALL_DATA["users"]
    for user_id, email, stored in rows[:5]:
        assert email == f"user{user_id}@example.com"
        assert verify_password(f"password{user_id}", stored)
        assert not verify_password(f"password{user_id + 1}", stored)
    assert len({row["password_hash"] for row in rows}) == len(rows)  # per-user salts


def test_availability_counts_the_open_rentals(seeded: str) -> None:
    wrong = fetch(
        seeded,
        """SELECT b.id FROM books b
           LEFT JOIN (SELECT book_id, count(*) AS n FROM rentals WHERE returned_on IS NULL GROUP BY book_id) o
             ON o.book_id = b.id
           WHERE b.available <> b.copies - COALESCE(o.n, 0) OR b.available < 0""",
    )
    assert wrong == []


def test_open_rentals_respect_the_limit_and_most_are_returned(seeded: str) -> None:
    rows = fetch(
        seeded,
        "SELECT user_id, count(*) FILTER (WHERE returned_on IS NULL) AS open, count(*) AS total "
        "FROM rentals GROUP BY user_id",
    )
    assert len(rows) == SMALL_DATA["users"]
    assert all(row["total"] == SMALL_DATA["rentals_per_user"] for row in rows)
    assert max(row["open"] for row in rows) <= 5
    assert sum(row["open"] for row in rows) < sum(row["total"] for row in rows) / 4
    assert any(row["open"] > 0 for row in rows)
    dates = fetch(seeded, "SELECT max(rented_on) AS last, max(returned_on) AS back FROM rentals")[0]
    assert dates["last"] <= BASE_DATE and dates["back"] <= BASE_DATE


def test_denormalized_columns_match_the_normalized_tables(seeded: str) -> None:
    books = fetch(
        seeded,
        """SELECT b.id FROM books b
           JOIN LATERAL (
             SELECT array_agg(a.id ORDER BY ba.position) AS ids, array_agg(a.name ORDER BY ba.position) AS names
             FROM book_authors ba JOIN authors a ON a.id = ba.author_id WHERE ba.book_id = b.id) j ON true
           WHERE b.author_ids IS DISTINCT FROM j.ids OR b.author_names IS DISTINCT FROM j.names""",
    )
    assert books == []
    rentals = fetch(
        seeded,
        """SELECT r.id FROM rentals r JOIN books b ON b.id = r.book_id
           WHERE r.book_title <> b.title OR r.author_names <> b.author_names
              OR r.daily_price_cents <> b.daily_price_cents
              OR r.settled <> (r.returned_on IS NOT NULL)""",
    )
    assert rentals == []


def test_stored_totals_equal_the_settled_rentals_charges(seeded: str) -> None:
    stored = {row["user_id"]: row for row in fetch(seeded, "SELECT * FROM user_charges")}
    rentals = fetch(seeded, "SELECT user_id, rented_on, returned_on, daily_price_cents FROM rentals WHERE settled")
    by_user: dict[int, list[Any]] = {}
    for row in rentals:
        by_user.setdefault(row["user_id"], []).append((row["rented_on"], row["returned_on"], row["daily_price_cents"]))
    assert set(stored) == set(by_user)
    for user_id, rows in by_user.items():
        totals = total_charges(rows, today=BASE_DATE)
        row = stored[user_id]
        assert (row["rentals"], row["rental_cents"], row["late_fee_cents"]) == (
            totals.rentals,
            totals.rental_cents,
            totals.late_fee_cents,
        )
    assert sum(row["late_fee_cents"] for row in stored.values()) > 0  # late returns exist


def test_id_sequences_continue_after_the_loaded_rows(seeded: str) -> None:
    row = fetch(seeded, "SELECT nextval(pg_get_serial_sequence('rentals', 'id')) AS next, max(id) AS top FROM rentals")
    assert row[0]["next"] > row[0]["top"]


def test_stage0_size_seeds_in_well_under_two_seconds(pg_server: DatabaseServer) -> None:
    url = pg_server.create_database(unique_name("seed_big"))
    summary = asyncio.run(seed_database(url, users=1000, authors=400, books=2000, rentals_per_user=20, seed=42))
    assert (summary.users, summary.books, summary.rentals) == (1000, 2000, 20000)
    assert summary.seconds < 2.0, f"seeding took {summary.seconds:.2f} s"


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="users must be an integer >= 1"):
        generate(users=0, authors=1, books=1, rentals_per_user=1, seed=1)
    with pytest.raises(ValueError, match="rentals_per_user must be an integer >= 0"):
        generate(users=1, authors=1, books=1, rentals_per_user=-1, seed=1)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reference_app.seed", *args], capture_output=True, text=True, cwd=REPO, timeout=60
    )


SIZES = ["--users", "3", "--authors", "2", "--books", "4", "--rentals-per-user", "2", "--seed", "1"]


def test_cli_seeds_and_reports(pg_server: DatabaseServer) -> None:
    url = pg_server.create_database(unique_name("seed_cli"))
    done = run_cli("--database-url", url, *SIZES)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("seeded 3 users, 2 authors, 4 books, 6 rentals")
    assert len(fetch(url, "SELECT id FROM users")) == 3


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--users", "3"], 2, "required"),
        (["--database-url", "postgresql://x@127.0.0.1:1/db", *SIZES[:-1], "x"], 2, "invalid int value"),
        (["--database-url", "mysql://x", *SIZES], 2, "must be a postgresql:// URL"),
        (["--database-url", "postgresql://x@127.0.0.1:1/db", "--users", "0", *SIZES[2:]], 2, "users must be"),
        (["--database-url", "postgresql://x@127.0.0.1:1/db", *SIZES], 1, "cannot seed"),
    ],
)
def test_cli_errors_are_one_line(args: list[str], status: int, message: str) -> None:
    done = run_cli(*args)
    assert done.returncode == status
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
