"""Every SQL statement the app and its workers issue, built with SQLAlchemy Core and compiled once.

Requests never touch SQLAlchemy: :func:`build_queries` compiles each Core statement for PostgreSQL's
asyncpg dialect (``$1``-style positional parameters) when an app or worker starts, and the request
handlers pass the resulting SQL text and positional arguments straight to asyncpg, which prepares
each text once per connection and reuses the plan. That keeps the expressiveness of Core (tables
declared once, no hand-concatenated SQL) without paying for statement compilation per request.

Each :class:`Statement` records the order of its parameters -- checked at compile time against the
order the call sites use -- and which result columns are dates, so rows restored from the JSON query
cache come back with the same types as rows read from the database.

Statements come in pairs where stage2 differs: ``*_joined`` reads the normalized tables with SQL
joins (stages 0-1); ``*_flat`` reads the denormalized columns of a single table (``joins: app``).
The tests assert that no statement a request issues in ``joins: app`` mode contains ``JOIN``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.dialects.postgresql import insert as pg_insert

from reference_app.schema import authors, book_authors, books, rentals, user_charges, users

_DIALECT = asyncpg_dialect.dialect()
# Constants rendered inline (a plain Python 1 would become a bind parameter).
_ZERO = sa.literal_column("0", sa.Integer)
_ONE = sa.literal_column("1", sa.Integer)


@dataclass(frozen=True, slots=True)
class Statement:
    """One compiled statement: SQL text for asyncpg plus what callers need to know about it."""

    name: str
    sql: str
    params: tuple[str, ...]
    # Positions of DATE result columns (restored from ISO strings on a query-cache hit).
    date_columns: tuple[int, ...] = ()


def compile_statement(name: str, statement: sa.sql.expression.ClauseElement, *params: str) -> Statement:
    """Compile ``statement`` and check that its ``$n`` parameters come in the order ``params`` says."""
    compiled = statement.compile(dialect=_DIALECT)
    order = tuple(dict.fromkeys(getattr(compiled, "positiontup", None) or ()))
    if order != params:
        raise AssertionError(f"statement {name}: parameters are {order}, call sites assume {params}")
    date_columns: tuple[int, ...] = ()
    if isinstance(statement, sa.sql.expression.SelectBase | sa.sql.dml.UpdateBase):
        # The result columns: a SELECT's columns, or an INSERT/UPDATE's RETURNING columns.
        columns: list[Any] = list(statement.exported_columns)
        date_columns = tuple(i for i, column in enumerate(columns) if isinstance(column.type, sa.Date))
    return Statement(name=name, sql=str(compiled), params=params, date_columns=date_columns)


def _param(name: str, type_: sa.types.TypeEngine | type[sa.types.TypeEngine]) -> sa.BindParameter:
    return sa.bindparam(name, type_=type_)


@dataclass(frozen=True, slots=True)
class Queries:
    """The app's statements, one attribute each (see :func:`build_queries`)."""

    login_lookup: Statement
    profile: Statement
    categories: Statement
    catalog_joined: Statement
    catalog_joined_by_category: Statement
    catalog_flat: Statement
    catalog_flat_by_category: Statement
    book_joined: Statement
    book_flat: Statement
    rentals_joined: dict[str, Statement]
    rentals_flat: dict[str, Statement]
    charge_rows: Statement
    charges_precomputed: Statement
    lock_user: Statement
    count_open_rentals: Statement
    take_copy: Statement
    book_exists: Statement
    insert_rental: Statement
    rental_by_rent_key: Statement
    return_rental: Statement
    rental_owner: Statement
    rental_by_id: Statement
    put_back_copy: Statement
    settle_returned: Statement
    add_user_charges: Statement
    current_lsn: Statement
    replay_lsn: Statement


@functools.cache
def build_queries() -> Queries:
    """Compile every statement (once per process; the result is cached)."""
    user_id = _param("user_id", sa.Integer)
    book_id = _param("book_id", sa.Integer)
    rental_id = _param("rental_id", sa.Integer)
    category = _param("category", sa.Text)
    limit = _param("limit", sa.Integer)
    offset = _param("offset", sa.Integer)

    open_count = (
        sa.select(sa.func.count())
        .where(rentals.c.user_id == users.c.id, rentals.c.returned_on.is_(None))
        .scalar_subquery()
    )
    total_count = sa.select(sa.func.count()).where(rentals.c.user_id == users.c.id).scalar_subquery()
    profile = sa.select(
        users.c.id,
        users.c.email,
        users.c.name,
        users.c.member_since,
        open_count.label("open_rentals"),
        total_count.label("total_rentals"),
    ).where(users.c.id == user_id)

    # Catalog: one page of book summaries plus the number of matching books (a window count, so a
    # page costs one statement). Ordered by id so that pages are stable.
    def catalog_flat(by_category: bool) -> sa.Select:
        statement = sa.select(
            books.c.id,
            books.c.title,
            books.c.category,
            books.c.daily_price_cents,
            books.c.author_names,
            sa.func.count().over().label("total"),
        )
        if by_category:
            statement = statement.where(books.c.category == category)
        return statement.order_by(books.c.id).limit(limit).offset(offset)

    def catalog_joined(by_category: bool) -> sa.Select:
        page = sa.select(
            books.c.id,
            books.c.title,
            books.c.category,
            books.c.daily_price_cents,
            sa.func.count().over().label("total"),
        )
        if by_category:
            page = page.where(books.c.category == category)
        page_sq = page.order_by(books.c.id).limit(limit).offset(offset).subquery("page")
        names = sa.func.array_agg(aggregate_order_by(authors.c.name, book_authors.c.position))
        return (
            sa.select(
                page_sq.c.id,
                page_sq.c.title,
                page_sq.c.category,
                page_sq.c.daily_price_cents,
                sa.func.array_remove(names, None).label("author_names"),
                page_sq.c.total,
            )
            .select_from(
                page_sq.outerjoin(book_authors, book_authors.c.book_id == page_sq.c.id).outerjoin(
                    authors, authors.c.id == book_authors.c.author_id
                )
            )
            .group_by(page_sq.c.id, page_sq.c.title, page_sq.c.category, page_sq.c.daily_price_cents, page_sq.c.total)
            .order_by(page_sq.c.id)
        )

    book_joined = (
        sa.select(
            books.c.id,
            books.c.title,
            books.c.category,
            books.c.daily_price_cents,
            books.c.copies,
            books.c.available,
            authors.c.id.label("author_id"),
            authors.c.name.label("author_name"),
        )
        .select_from(
            books.outerjoin(book_authors, book_authors.c.book_id == books.c.id).outerjoin(
                authors, authors.c.id == book_authors.c.author_id
            )
        )
        .where(books.c.id == book_id)
        .order_by(book_authors.c.position)
    )
    book_flat = sa.select(
        books.c.id,
        books.c.title,
        books.c.category,
        books.c.daily_price_cents,
        books.c.copies,
        books.c.available,
        books.c.author_ids,
        books.c.author_names,
    ).where(books.c.id == book_id)

    status_filters = {
        "all": sa.true(),
        "open": rentals.c.returned_on.is_(None),
        "returned": rentals.c.returned_on.is_not(None),
    }

    def rentals_joined(status: str) -> sa.Select:
        names = sa.func.array_agg(aggregate_order_by(authors.c.name, book_authors.c.position))
        return (
            sa.select(
                rentals.c.id,
                rentals.c.book_id,
                books.c.title,
                sa.func.array_remove(names, None).label("authors"),
                rentals.c.rented_on,
                rentals.c.returned_on,
                rentals.c.daily_price_cents,
            )
            .select_from(
                rentals.join(books, books.c.id == rentals.c.book_id)
                .outerjoin(book_authors, book_authors.c.book_id == books.c.id)
                .outerjoin(authors, authors.c.id == book_authors.c.author_id)
            )
            .where(rentals.c.user_id == user_id, status_filters[status])
            .group_by(rentals.c.id, books.c.title)
            .order_by(rentals.c.id.desc())
        )

    def rentals_flat(status: str) -> sa.Select:
        return (
            sa.select(
                rentals.c.id,
                rentals.c.book_id,
                rentals.c.book_title,
                rentals.c.author_names,
                rentals.c.rented_on,
                rentals.c.returned_on,
                rentals.c.daily_price_cents,
            )
            .where(rentals.c.user_id == user_id, status_filters[status])
            .order_by(rentals.c.id.desc())
        )

    charge_rows = sa.select(rentals.c.rented_on, rentals.c.returned_on, rentals.c.daily_price_cents).where(
        rentals.c.user_id == user_id
    )
    # Stage5: the stored totals (kind 0) and the unsettled rentals (kind 1) in one statement, hence
    # one snapshot: a worker folding rentals in between two statements could otherwise be counted
    # twice or not at all.
    null_date = sa.cast(sa.null(), sa.Date)
    charges_precomputed = sa.union_all(
        sa.select(
            sa.literal_column("0").label("kind"),
            user_charges.c.rentals.label("a"),
            user_charges.c.rental_cents.label("b"),
            user_charges.c.late_fee_cents.label("c"),
            null_date.label("rented_on"),
            null_date.label("returned_on"),
        ).where(user_charges.c.user_id == user_id),
        sa.select(
            sa.literal_column("1"),
            sa.cast(rentals.c.daily_price_cents, sa.BigInteger),
            sa.literal_column("0::bigint"),
            sa.literal_column("0::bigint"),
            rentals.c.rented_on,
            rentals.c.returned_on,
        ).where(rentals.c.user_id == user_id, sa.not_(rentals.c.settled)),
    )

    rental_columns = (
        rentals.c.id,
        rentals.c.book_id,
        rentals.c.book_title,
        rentals.c.author_names,
        rentals.c.rented_on,
        rentals.c.returned_on,
        rentals.c.daily_price_cents,
    )
    insert_rental = (
        sa.insert(rentals)
        .values(
            user_id=user_id,
            book_id=book_id,
            rented_on=_param("rented_on", sa.Date),
            daily_price_cents=_param("daily_price_cents", sa.Integer),
            book_title=_param("book_title", sa.Text),
            author_names=_param("author_names", sa.ARRAY(sa.Text)),
            settled=sa.false(),
            rent_key=_param("rent_key", sa.Text),
        )
        .returning(*rental_columns)
    )
    return_rental = (
        sa.update(rentals)
        .where(rentals.c.id == rental_id, rentals.c.user_id == user_id, rentals.c.returned_on.is_(None))
        # GREATEST: a rental returned "before" it was rented (clock skew) must not break a CHECK.
        .values(returned_on=sa.func.greatest(_param("returned_on", sa.Date), rentals.c.rented_on),
                return_key=_param("return_key", sa.Text))
        .returning(*rental_columns)
    )
    add_charges = pg_insert(user_charges).values(
        user_id=user_id,
        rentals=_param("rentals", sa.Integer),
        rental_cents=_param("rental_cents", sa.BigInteger),
        late_fee_cents=_param("late_fee_cents", sa.BigInteger),
    )
    add_charges = add_charges.on_conflict_do_update(
        index_elements=[user_charges.c.user_id],
        set_={
            "rentals": user_charges.c.rentals + add_charges.excluded.rentals,
            "rental_cents": user_charges.c.rental_cents + add_charges.excluded.rental_cents,
            "late_fee_cents": user_charges.c.late_fee_cents + add_charges.excluded.late_fee_cents,
        },
    )

    return Queries(
        login_lookup=compile_statement(
            "login_lookup",
            sa.select(users.c.id, users.c.password_hash).where(users.c.email == _param("email", sa.Text)),
            "email",
        ),
        profile=compile_statement("profile", profile, "user_id"),
        categories=compile_statement("categories", sa.select(books.c.category).distinct().order_by(books.c.category)),
        catalog_joined=compile_statement("catalog_joined", catalog_joined(False), "limit", "offset"),
        catalog_joined_by_category=compile_statement(
            "catalog_joined_by_category", catalog_joined(True), "category", "limit", "offset"
        ),
        catalog_flat=compile_statement("catalog_flat", catalog_flat(False), "limit", "offset"),
        catalog_flat_by_category=compile_statement(
            "catalog_flat_by_category", catalog_flat(True), "category", "limit", "offset"
        ),
        book_joined=compile_statement("book_joined", book_joined, "book_id"),
        book_flat=compile_statement("book_flat", book_flat, "book_id"),
        rentals_joined={
            status: compile_statement(f"rentals_joined_{status}", rentals_joined(status), "user_id")
            for status in status_filters
        },
        rentals_flat={
            status: compile_statement(f"rentals_flat_{status}", rentals_flat(status), "user_id")
            for status in status_filters
        },
        charge_rows=compile_statement("charge_rows", charge_rows, "user_id"),
        charges_precomputed=compile_statement("charges_precomputed", charges_precomputed, "user_id"),
        lock_user=compile_statement(
            "lock_user", sa.select(users.c.id).where(users.c.id == user_id).with_for_update(), "user_id"
        ),
        count_open_rentals=compile_statement(
            "count_open_rentals",
            sa.select(sa.func.count()).where(rentals.c.user_id == user_id, rentals.c.returned_on.is_(None)),
            "user_id",
        ),
        take_copy=compile_statement(
            "take_copy",
            sa.update(books)
            .where(books.c.id == book_id, books.c.available > _ZERO)
            .values(available=books.c.available - _ONE)
            .returning(books.c.title, books.c.daily_price_cents, books.c.author_names),
            "book_id",
        ),
        book_exists=compile_statement("book_exists", sa.select(books.c.id).where(books.c.id == book_id), "book_id"),
        insert_rental=compile_statement(
            "insert_rental",
            insert_rental,
            "user_id",
            "book_id",
            "rented_on",
            "daily_price_cents",
            "book_title",
            "author_names",
            "rent_key",
        ),
        rental_by_rent_key=compile_statement(
            "rental_by_rent_key",
            sa.select(*rental_columns).where(rentals.c.user_id == user_id,
                                             rentals.c.rent_key == _param("rent_key", sa.Text)),
            "user_id",
            "rent_key",
        ),
        return_rental=compile_statement("return_rental", return_rental, "returned_on", "return_key", "rental_id",
                                        "user_id"),
        rental_owner=compile_statement(
            "rental_owner",
            sa.select(rentals.c.user_id, rentals.c.returned_on, rentals.c.return_key).where(rentals.c.id == rental_id),
            "rental_id",
        ),
        rental_by_id=compile_statement("rental_by_id", sa.select(*rental_columns).where(rentals.c.id == rental_id),
                                       "rental_id"),
        put_back_copy=compile_statement(
            "put_back_copy",
            sa.update(books).where(books.c.id == book_id).values(available=books.c.available + _ONE),
            "book_id",
        ),
        settle_returned=compile_statement(
            "settle_returned",
            sa.update(rentals)
            .where(rentals.c.user_id == user_id, sa.not_(rentals.c.settled), rentals.c.returned_on.is_not(None))
            .values(settled=sa.true())
            .returning(rentals.c.rented_on, rentals.c.returned_on, rentals.c.daily_price_cents),
            "user_id",
        ),
        add_user_charges=compile_statement(
            "add_user_charges", add_charges, "user_id", "rentals", "rental_cents", "late_fee_cents"
        ),
        # LSNs as plain integers (bytes since 0/0), so they compare and serialize trivially. The
        # insert position is read after COMMIT, so it lies at or beyond the commit record.
        current_lsn=compile_statement(
            "current_lsn", sa.select(sa.text("(pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint"))
        ),
        replay_lsn=compile_statement(
            "replay_lsn",
            sa.select(sa.text("COALESCE((pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint, 0)")),
        ),
    )
