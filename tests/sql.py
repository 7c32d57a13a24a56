"""Reading a test database straight with asyncpg, on a connection of its own per statement."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg


async def fetch_rows(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """The rows of one statement (from async test code)."""
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetch(sql, *args)
    finally:
        await connection.close()


async def fetch_value(url: str, sql: str, *args: Any) -> Any:
    """The first column of the first row of one statement (from async test code)."""
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetchval(sql, *args)
    finally:
        await connection.close()


def fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """The rows of one statement (from synchronous test code)."""
    return asyncio.run(fetch_rows(url, sql, *args))
