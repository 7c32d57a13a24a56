"""Reading a test database straight with asyncpg, from synchronous test code."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg


async def _fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetch(sql, *args)
    finally:
        await connection.close()


def fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """The rows of one statement, on a connection of its own."""
    return asyncio.run(_fetch(url, sql, *args))
