"""Writes with an Idempotency-Key: a retried rent or return answers with what the first attempt did.

The balancer retries a write on another app server when the first one died with the request in
hand, but only when the request carries an ``Idempotency-Key``: the key is what makes a second
delivery safe. These tests deliver the same write twice and check that it took effect once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.sql import fetch_value as scalar

from .conftest import api, login, make_config

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(fresh_seeded_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with api(make_config(fresh_seeded_url, pool_size=2)) as client:
        yield client


async def test_a_repeated_rent_rents_once(client: httpx.AsyncClient, fresh_seeded_url: str) -> None:
    headers = {**await login(client, 2), "Idempotency-Key": "rent-0001"}
    available = await scalar(fresh_seeded_url, "SELECT available FROM books WHERE id = 11")
    first = await client.post("/api/rentals", json={"book_id": 11}, headers=headers)
    again = await client.post("/api/rentals", json={"book_id": 11}, headers=headers)
    assert first.status_code == again.status_code == 201, (first.text, again.text)
    assert first.json() == again.json()
    assert await scalar(fresh_seeded_url, "SELECT count(*) FROM rentals WHERE rent_key = 'rent-0001'") == 1
    assert await scalar(fresh_seeded_url, "SELECT available FROM books WHERE id = 11") == available - 1
    # the same key for another book is the client's mistake, not a retry
    other = await client.post("/api/rentals", json={"book_id": 12}, headers=headers)
    assert other.status_code == 409 and "another book" in other.json()["error"]
    # keys belong to their user: another user's identical key is another request
    stranger = {**await login(client, 3), "Idempotency-Key": "rent-0001"}
    theirs = await client.post("/api/rentals", json={"book_id": 11}, headers=stranger)
    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]


async def test_a_repeated_return_answers_200_and_returns_once(client: httpx.AsyncClient,
                                                              fresh_seeded_url: str) -> None:
    auth = await login(client, 4)
    rental = (await client.post("/api/rentals", json={"book_id": 20}, headers=auth)).json()
    available = await scalar(fresh_seeded_url, "SELECT available FROM books WHERE id = 20")
    keyed = {**auth, "Idempotency-Key": "return-7"}
    first = await client.post(f"/api/rentals/{rental['id']}/return", headers=keyed)
    again = await client.post(f"/api/rentals/{rental['id']}/return", headers=keyed)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json() and first.json()["returned_on"] is not None
    assert await scalar(fresh_seeded_url, "SELECT available FROM books WHERE id = 20") == available + 1
    # without the key (or with another one) a second return is what it always was: a conflict
    assert (await client.post(f"/api/rentals/{rental['id']}/return", headers=auth)).status_code == 409
    other_key = {**auth, "Idempotency-Key": "return-8"}
    assert (await client.post(f"/api/rentals/{rental['id']}/return", headers=other_key)).status_code == 409


@pytest.mark.parametrize("key", ["", "has space", "x" * 65, "semi;colon", "dot.ted"])
async def test_a_malformed_key_is_a_400(client: httpx.AsyncClient, key: str) -> None:
    headers = {**await login(client, 5), "Idempotency-Key": key}
    answer = await client.post("/api/rentals", json={"book_id": 30}, headers=headers)
    assert answer.status_code == 400 and "Idempotency-Key" in answer.json()["error"]
