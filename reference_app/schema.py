"""The database schema, declared once with SQLAlchemy Core.

The normalized core is what stage0 reads with joins in SQL:

* ``users`` -- who can log in (email, name, salted password hash, member since);
* ``authors`` and ``books``, linked many-to-many through ``book_authors`` (with each author's
  position on the cover, so author lists come back in a stable order);
* ``rentals`` -- which user has which book since when, until when, at what daily price.

Stage2 (``joins: app``) must answer the same requests without a single SQL JOIN, so a few columns
copy data that the normalized tables already hold. They are written by every write path in every
stage, so that any stage can read them at any time:

* ``books.author_ids`` / ``books.author_names`` -- the book's authors in cover order (the catalog and
  the book detail read them instead of joining ``book_authors`` and ``authors``). Authors never
  change after seeding, so only the seed writes them.
* ``rentals.book_title`` / ``rentals.author_names`` -- copied from the book when it is rented, so
  "my rentals" is a single-table read.

``books.available`` counts the copies on the shelf. It is kept by the rent and return paths with a
guarded ``UPDATE`` (``available > 0``), which is what makes renting the last copy safe under
concurrency, so every stage uses it.

Stage5 (``charges: precomputed``) keeps per-user totals in ``user_charges``: the charges of every
*settled* rental (returned and folded into the total by a worker). ``rentals.settled`` marks the
rentals already folded in; the charges endpoint adds the few unsettled ones (open rentals, and
returns the worker has not processed yet) at read time, so its cost does not grow with the length of
a user's history and the figure is exact at every moment.

Every request path has an index: users by email (login), books by category then id (catalog pages),
rentals by user (history, newest first), a user's open rentals (the rental limit, profile counts),
a user's unsettled rentals (stage5 charges), rentals by book (foreign key checks on delete).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import AddConstraint, CreateIndex, CreateTable, DropTable

metadata = sa.MetaData()

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("member_since", sa.Date, nullable=False),
    sa.UniqueConstraint("email", name="uq_users_email"),
)

authors = sa.Table(
    "authors",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
)

books = sa.Table(
    "books",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("category", sa.Text, nullable=False),
    sa.Column("daily_price_cents", sa.Integer, nullable=False),
    sa.Column("copies", sa.Integer, nullable=False),
    sa.Column("available", sa.Integer, nullable=False),
    # Denormalized copies of book_authors + authors, in cover order (read when joins == "app").
    sa.Column("author_ids", postgresql.ARRAY(sa.Integer), nullable=False),
    sa.Column("author_names", postgresql.ARRAY(sa.Text), nullable=False),
    sa.CheckConstraint("daily_price_cents >= 0", name="ck_books_price"),
    sa.CheckConstraint("available >= 0 AND available <= copies", name="ck_books_available"),
)

book_authors = sa.Table(
    "book_authors",
    metadata,
    sa.Column("book_id", sa.Integer, sa.ForeignKey("books.id"), nullable=False),
    sa.Column("position", sa.SmallInteger, nullable=False),
    sa.Column("author_id", sa.Integer, sa.ForeignKey("authors.id"), nullable=False),
    sa.PrimaryKeyConstraint("book_id", "position", name="pk_book_authors"),
)

rentals = sa.Table(
    "rentals",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("book_id", sa.Integer, sa.ForeignKey("books.id"), nullable=False),
    sa.Column("rented_on", sa.Date, nullable=False),
    sa.Column("returned_on", sa.Date, nullable=True),
    sa.Column("daily_price_cents", sa.Integer, nullable=False),
    # Denormalized copies of the book at renting time (read when joins == "app").
    sa.Column("book_title", sa.Text, nullable=False),
    sa.Column("author_names", postgresql.ARRAY(sa.Text), nullable=False),
    # Folded into user_charges by a worker (stage5); only returned rentals are ever settled.
    sa.Column("settled", sa.Boolean, nullable=False, server_default=sa.false()),
    # The Idempotency-Key of the request that rented it and of the one that returned it: a request
    # retried on another app server after its first server died (the balancer does that) finds what
    # its first attempt did instead of renting or returning twice.
    sa.Column("rent_key", sa.Text, nullable=True),
    sa.Column("return_key", sa.Text, nullable=True),
    sa.CheckConstraint("returned_on IS NULL OR returned_on >= rented_on", name="ck_rentals_dates"),
    sa.CheckConstraint("NOT settled OR returned_on IS NOT NULL", name="ck_rentals_settled"),
)

user_charges = sa.Table(
    "user_charges",
    metadata,
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("rentals", sa.Integer, nullable=False),
    sa.Column("rental_cents", sa.BigInteger, nullable=False),
    sa.Column("late_fee_cents", sa.BigInteger, nullable=False),
)

# Secondary indexes, one per request path (the primary keys and uq_users_email cover the rest).
INDEXES = (
    sa.Index("ix_books_category_id", books.c.category, books.c.id),
    sa.Index("ix_book_authors_author", book_authors.c.author_id),
    sa.Index("ix_rentals_user_id", rentals.c.user_id, rentals.c.id),
    sa.Index(
        "ix_rentals_user_open",
        rentals.c.user_id,
        postgresql_where=rentals.c.returned_on.is_(None),
    ),
    sa.Index(
        "ix_rentals_user_unsettled",
        rentals.c.user_id,
        postgresql_where=sa.not_(rentals.c.settled),
    ),
    sa.Index("ix_rentals_book", rentals.c.book_id),
    sa.Index("ix_rentals_rent_key", rentals.c.user_id, rentals.c.rent_key, unique=True,
             postgresql_where=rentals.c.rent_key.isnot(None)),
)

# Load order: a table comes after every table it references.
TABLES_IN_LOAD_ORDER = (users, authors, books, book_authors, rentals, user_charges)

_DIALECT = postgresql.dialect()


def create_table_sql(*, foreign_keys: bool = True) -> list[str]:
    """``CREATE TABLE`` statements in load order (secondary indexes apart).

    Without ``foreign_keys`` the tables are created without their foreign keys, which
    :func:`add_foreign_key_sql` adds later: checking them once after a bulk load is several times
    faster than checking every row as it arrives.
    """
    return [
        str(
            CreateTable(table, include_foreign_key_constraints=None if foreign_keys else []).compile(dialect=_DIALECT)
        ).strip()
        for table in TABLES_IN_LOAD_ORDER
    ]


def add_foreign_key_sql() -> list[str]:
    """``ALTER TABLE ... ADD FOREIGN KEY`` statements for every foreign key, in load order."""
    return [
        str(AddConstraint(constraint).compile(dialect=_DIALECT)).strip()
        for table in TABLES_IN_LOAD_ORDER
        for constraint in sorted(table.foreign_key_constraints, key=lambda fk: tuple(fk.column_keys))
    ]


def create_index_sql() -> list[str]:
    """``CREATE INDEX`` statements; the seed runs them after loading, which is faster."""
    return [str(CreateIndex(index).compile(dialect=_DIALECT)).strip() for index in INDEXES]


def drop_table_sql() -> list[str]:
    """``DROP TABLE IF EXISTS ... CASCADE`` statements in reverse load order."""
    return [
        str(DropTable(table, if_exists=True).compile(dialect=_DIALECT)).strip() + " CASCADE"
        for table in reversed(TABLES_IN_LOAD_ORDER)
    ]
