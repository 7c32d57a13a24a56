"""Security properties of the HTTP API, each tried against the real app on a real seeded database.

* every user endpoint refuses a request without a valid session with a 401 (the public ones answer);
* one user can neither read nor change another's rentals or charges;
* session tokens are random, expire on time in both session stores, and die at logout everywhere;
* SQL-injection strings in the category filter, the login and the path are just data;
* ``/api/_stats`` answers only to the deployment's ops token, and the runner's client sends it.

Most tests run twice: with stage0's configuration (sessions in memory, joins in SQL) and with the
last stage's flags (sessions in the key-value server, joins in the app, both caches, precomputed
charges), so the session stores, the statements and the query cache are all exercised.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest
import redis.asyncio as redis

from reference_app.config import AppConfig
from scalesim.measure.counters import app_stats
from tests.sql import fetch_value as db_value

from .conftest import AppClient, Server, api, login, make_config, start_server

STATS_TOKEN = secrets.token_urlsafe(32)
STAGES = ("stage0", "stage5")


def stage_config(stage: str, database_url: str, keyvalue_url: str, **changes: Any) -> AppConfig:
    if stage == "stage0":
        return make_config(database_url, pool_size=2, **changes)
    return make_config(
        database_url,
        pool_size=2,
        sessions="keyvalue",
        keyvalue_url=keyvalue_url,
        joins="app",
        query_cache=True,
        object_cache=True,
        charges="precomputed",
        **changes,
    )


@pytest.fixture(params=STAGES)
async def client(request: pytest.FixtureRequest, seeded_url: str, clean_kv: str) -> AsyncIterator[AppClient]:
    async with api(stage_config(request.param, seeded_url, clean_kv)) as client:
        yield client


def assert_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.request.method, response.request.url, response.text)
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    assert "\n" not in body["error"]
    return str(body["error"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- 1. authentication on every user endpoint ------------------------------------------------------------

USER = 21  # the caller of the authentication tests
USER_ENDPOINTS = [
    ("POST", "/api/logout", None),
    ("GET", "/api/profile", None),
    ("GET", f"/api/users/{USER}/rentals", None),
    ("GET", f"/api/users/{USER}/rentals?status=open", None),
    ("POST", "/api/rentals", {"book_id": 1}),
    ("POST", "/api/rentals/1/return", None),
    ("GET", f"/api/users/{USER}/charges", None),
    # Bad parameters do not get past authentication either: without a session, everything is a 401.
    ("GET", "/api/users/0/rentals?status=nonsense", None),
    ("POST", "/api/rentals", {"book_id": "x"}),
    ("POST", "/api/rentals/not-an-id/return", None),
]
PUBLIC_ENDPOINTS = ["/healthz", "/api/books", "/api/books?category=fiction", "/api/categories", "/api/books/1",
                    "/openapi.json"]  # fmt: skip


def bad_authorizations(valid: str) -> list[dict[str, str]]:
    """Every way a request can lack a valid session, given a valid token to spoil."""
    return [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Basic {base64.b64encode(f'user{USER}@example.com:password{USER}'.encode()).decode()}"},
        {"Authorization": f"Token {valid}"},
        {"Authorization": f"{valid}"},
        {"Authorization": f"Bearer {valid} {valid}"},
        {"Authorization": f"Bearer {valid[:-1]}"},
        {"Authorization": f"Bearer {valid}x"},
        {"Authorization": f"Bearer {valid.swapcase()}"},
        {"Authorization": f"Bearer {secrets.token_urlsafe(32)}"},  # well formed, never issued
        {"Authorization": "Bearer ' OR '1'='1"},
        {"Authorization": f"Bearer {STATS_TOKEN}"},  # the ops token is no session
    ]


@pytest.mark.anyio
async def test_user_endpoints_refuse_requests_without_a_valid_session(client: AppClient, seeded_url: str) -> None:
    valid = (await login(client, USER))["Authorization"].removeprefix("Bearer ")
    rentals_before = await db_value(seeded_url, "SELECT count(*) FROM rentals")
    returned_before = await db_value(seeded_url, "SELECT count(*) FROM rentals WHERE returned_on IS NOT NULL")
    refused = 0
    for method, path, body in USER_ENDPOINTS:
        for headers in bad_authorizations(valid):
            response = await client.request(method, path, json=body, headers=headers)
            assert_error(response, 401)
            refused += 1
    assert refused == len(USER_ENDPOINTS) * len(bad_authorizations(valid))
    # Nothing was rented or returned, and the valid session still works (no bad request ended it).
    assert await db_value(seeded_url, "SELECT count(*) FROM rentals") == rentals_before
    assert await db_value(seeded_url, "SELECT count(*) FROM rentals WHERE returned_on IS NOT NULL") == returned_before
    assert (await client.get("/api/profile", headers=bearer(valid))).json()["id"] == USER


@pytest.mark.anyio
async def test_public_endpoints_answer_without_a_session(client: AppClient) -> None:
    for path in PUBLIC_ENDPOINTS:
        for headers in ({}, {"Authorization": "Bearer nonsense"}, {"Authorization": "Basic xyz"}):
            response = await client.get(path, headers=headers)
            assert response.status_code == 200, (path, headers, response.text)


# -- 2. one user never reads or changes another's rentals or charges ----------------------------------------


@pytest.mark.anyio
async def test_a_user_cannot_read_another_users_rentals_or_charges(client: AppClient) -> None:
    alice, bob = 22, 23
    alice_headers, bob_headers = await login(client, alice), await login(client, bob)
    for path in (f"/api/users/{bob}/rentals", f"/api/users/{bob}/rentals?status=open", f"/api/users/{bob}/charges"):
        assert_error(await client.get(path, headers=alice_headers), 403)
        assert (await client.get(path, headers=bob_headers)).status_code == 200
    # Other ids alike (existing or not): only the caller's own id is readable.
    for other in (1, alice + 100, 2**31 - 1):
        assert_error(await client.get(f"/api/users/{other}/charges", headers=alice_headers), 403)
    own = await client.get(f"/api/users/{alice}/rentals", headers=alice_headers)
    assert own.status_code == 200 and own.json()["items"]


@pytest.mark.anyio
async def test_a_user_cannot_return_another_users_rental(client: AppClient, seeded_url: str) -> None:
    alice, bob = 24, 25
    alice_headers, bob_headers = await login(client, alice), await login(client, bob)
    book = await db_value(seeded_url, "SELECT id FROM books WHERE available > 1 ORDER BY id LIMIT 1")
    rented = await client.post("/api/rentals", json={"book_id": book}, headers=bob_headers)
    assert rented.status_code == 201, rented.text
    rental = rented.json()["id"]
    available = await db_value(seeded_url, "SELECT available FROM books WHERE id = $1", book)

    message = assert_error(await client.post(f"/api/rentals/{rental}/return", headers=alice_headers), 404)
    # Indistinguishable from a rental that does not exist: another user's ids are not revealed.
    missing = 2**31 - 2
    absent = assert_error(await client.post(f"/api/rentals/{missing}/return", headers=alice_headers), 404)
    assert message.replace(str(rental), "N") == absent.replace(str(missing), "N")

    # The rental is still open, in the database and in Bob's answers; the copy is still out.
    assert await db_value(seeded_url, "SELECT returned_on FROM rentals WHERE id = $1", rental) is None
    assert await db_value(seeded_url, "SELECT user_id FROM rentals WHERE id = $1", rental) == bob
    assert await db_value(seeded_url, "SELECT available FROM books WHERE id = $1", book) == available
    open_rentals = (await client.get(f"/api/users/{bob}/rentals?status=open", headers=bob_headers)).json()["items"]
    assert rental in [item["id"] for item in open_rentals]

    # A returned rental of Bob's is a 404 for Alice too (a 409 would reveal that it exists).
    returned = await db_value(
        seeded_url, "SELECT id FROM rentals WHERE user_id = $1 AND returned_on IS NOT NULL LIMIT 1", bob
    )
    assert_error(await client.post(f"/api/rentals/{returned}/return", headers=alice_headers), 404)
    assert (await client.post(f"/api/rentals/{rental}/return", headers=bob_headers)).status_code == 200


@pytest.mark.anyio
async def test_a_rent_cannot_be_made_in_another_users_name(client: AppClient, seeded_url: str) -> None:
    alice, bob = 26, 27
    headers = await login(client, alice)
    book = await db_value(seeded_url, "SELECT id FROM books WHERE available > 1 ORDER BY id DESC LIMIT 1")
    bob_before = await db_value(seeded_url, "SELECT count(*) FROM rentals WHERE user_id = $1", bob)
    response = await client.post("/api/rentals", json={"book_id": book, "user_id": bob}, headers=headers)
    assert response.status_code == 201, response.text
    owner = await db_value(seeded_url, "SELECT user_id FROM rentals WHERE id = $1", response.json()["id"])
    assert owner == alice
    assert await db_value(seeded_url, "SELECT count(*) FROM rentals WHERE user_id = $1", bob) == bob_before


# -- 3. session tokens: random, expiring, revoked at logout ------------------------------------------------


def token_bytes(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


@pytest.mark.anyio
async def test_session_tokens_are_long_random_and_distinct(seeded_url: str) -> None:
    logins = 200
    async with api(make_config(seeded_url, pool_size=4)) as client:
        users = [1 + n % 10 for n in range(logins)]
        answers = await asyncio.gather(*(login(client, user) for user in users))
    tokens = [headers["Authorization"].removeprefix("Bearer ") for headers in answers]
    assert len(set(tokens)) == logins
    raw = [token_bytes(token) for token in tokens]
    assert min(len(value) for value in raw) >= 32  # 256 bits
    # Every bit position is set in about half of the tokens: no counter, clock or fixed prefix.
    # (Binomial(200, 1/2) stays within 100 +- 40 with probability 1 - 1e-8 per bit.)
    bits = 8 * min(len(value) for value in raw)
    for position in range(bits):
        ones = sum((value[position // 8] >> (position % 8)) & 1 for value in raw)
        assert 60 <= ones <= 140, (position, ones)


@pytest.mark.anyio
async def test_sessions_expire_after_their_lifetime_in_both_stores(seeded_url: str, clean_kv: str) -> None:
    ttl = 1

    async def lifetime(config: AppConfig) -> None:
        async with api(config) as client:
            answer = await client.post("/api/login", json={"email": "user28@example.com", "password": "password28"})
            assert answer.json()["expires_in"] == ttl
            headers = bearer(answer.json()["token"])
            started = time.monotonic()
            assert (await client.get("/api/profile", headers=headers)).status_code == 200
            await asyncio.sleep(0.6)
            # Using a session does not extend it: the lifetime is fixed at login.
            assert (await client.get("/api/profile", headers=headers)).status_code == 200
            await asyncio.sleep(ttl + 0.3 - (time.monotonic() - started))
            assert_error(await client.get("/api/profile", headers=headers), 401)
            assert_error(await client.get("/api/users/28/charges", headers=headers), 401)
            assert_error(await client.post("/api/logout", headers=headers), 401)

    await asyncio.gather(
        lifetime(make_config(seeded_url, pool_size=2, session_ttl_seconds=ttl)),
        lifetime(
            make_config(seeded_url, pool_size=2, session_ttl_seconds=ttl, sessions="keyvalue", keyvalue_url=clean_kv)
        ),
    )


@pytest.mark.anyio
async def test_logout_revokes_the_token_on_every_server_sharing_the_store(seeded_url: str, clean_kv: str) -> None:
    configs = [
        make_config(seeded_url, server_name=name, pool_size=2, sessions="keyvalue", keyvalue_url=clean_kv)
        for name in ("app-a", "app-b", "app-c")
    ]
    async with api(configs[0]) as a, api(configs[1]) as b, api(configs[2]) as c:
        headers = await login(a, 29)
        other = await login(c, 29)  # a second session of the same user, which must survive
        for server in (a, b, c):
            assert (await server.get("/api/profile", headers=headers)).status_code == 200
        assert (await b.post("/api/logout", headers=headers)).status_code == 204
        for server in (a, b, c):
            assert_error(await server.get("/api/profile", headers=headers), 401)
            assert_error(await server.post("/api/logout", headers=headers), 401)
            assert (await server.get("/api/profile", headers=other)).status_code == 200
    client = redis.Redis.from_url(clean_kv)
    try:
        assert await client.exists(f"session:{headers['Authorization'].removeprefix('Bearer ')}") == 0
    finally:
        await client.aclose()


# -- 4. parameters are bound, never spliced into SQL --------------------------------------------------------

INJECTIONS = [
    "' OR '1'='1",
    "' OR 1=1 --",
    "1; DROP TABLE books; --",
    "'; DROP TABLE users; --",
    "x' UNION SELECT email, password_hash, 1, 1, '{}', 1 FROM users --",
    '" OR ""="',
    "%' OR title LIKE '%",
    "'); SELECT pg_sleep(10); --",
    "1 OR 1=1",
    "\\'; TRUNCATE rentals; --",
]


async def table_sizes(url: str) -> dict[str, int]:
    connection = await asyncpg.connect(url)
    try:
        return {
            table: await connection.fetchval(f"SELECT count(*) FROM {table}")
            for table in ("users", "books", "authors", "book_authors", "rentals")
        }
    finally:
        await connection.close()


@pytest.mark.anyio
async def test_injection_strings_are_just_data(client: AppClient, seeded_url: str) -> None:
    sizes = await table_sizes(seeded_url)
    categories = (await client.get("/api/categories")).json()
    headers = await login(client, 30)
    started = time.monotonic()
    for text in INJECTIONS:
        # The category filter: no book has this category, so the page is empty (no rows leaked).
        page = await client.get("/api/books", params={"category": text})
        assert page.status_code == 200, page.text
        assert page.json()["items"] == [] and page.json()["total"] == 0
        assert_error(await client.get("/api/books", params={"category": text, "page": 2}), 404)
        # The login: neither field opens a session.
        for email, password in ((text, text), (text, "password30"), ("user30@example.com", text),
                                (f"user30@example.com{text}", "x"), (f"user30@example.com'--{text}", "")):  # fmt: skip
            assert_error(await client.post("/api/login", json={"email": email, "password": password}), 401)
        # Path segments and other parameters: a 400 (not an id) or a 404 (no such route), never a 5xx.
        segment = quote(text, safe="")
        for method, path in (("GET", f"/api/books/{segment}"), ("GET", f"/api/users/{segment}/rentals"),
                             ("GET", f"/api/users/{segment}/charges"), ("POST", f"/api/rentals/{segment}/return"),
                             ("GET", f"/api/users/30/rentals?status={segment}"), ("GET", f"/api/books?page={segment}"),
                             ("GET", f"/api/books?per_page={segment}")):  # fmt: skip
            response = await client.request(method, path, headers=headers)
            assert response.status_code in (400, 404), (path, response.status_code, response.text)
            assert_error(response, response.status_code)
        assert_error(await client.post("/api/rentals", json={"book_id": text}, headers=headers), 400)
    # Nothing slept, nothing was dropped or emptied, and the app still answers as before.
    assert time.monotonic() - started < 10
    assert await table_sizes(seeded_url) == sizes
    assert (await client.get("/api/categories")).json() == categories
    assert (await client.get("/api/profile", headers=headers)).json()["id"] == 30


# -- 5. /api/_stats needs the ops token ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_stats_need_the_ops_token_when_one_is_configured(seeded_url: str, clean_kv: str) -> None:
    config = stage_config("stage5", seeded_url, clean_kv, stats_token=STATS_TOKEN, server_name="app-ops")
    async with api(config) as client:
        session = await login(client, 31)
        for headers in (
            {},
            {"Authorization": "Bearer"},
            {"Authorization": "Bearer wrong-token-of-some-length"},
            {"Authorization": f"Bearer {STATS_TOKEN[:-1]}"},
            {"Authorization": f"Bearer {STATS_TOKEN}x"},
            {"Authorization": f"Bearer {STATS_TOKEN.swapcase()}"},
            {"Authorization": f"Basic {STATS_TOKEN}"},
            {"Authorization": STATS_TOKEN},
            {"Authorization": "Bearer \u00e9t\u00e9".encode()},  # not ASCII
            session,  # a user's session is no ops token
        ):
            assert_error(await client.get("/api/_stats", headers=headers), 401)
        answer = await client.get("/api/_stats", headers=bearer(STATS_TOKEN))
        assert answer.status_code == 200 and answer.json()["server"] == "app-ops"
        assert answer.headers["x-served-by"] == "app-ops"
        # The ops token opens nothing else.
        assert_error(await client.get("/api/profile", headers=bearer(STATS_TOKEN)), 401)


@pytest.mark.anyio
async def test_stats_stay_open_without_an_ops_token(seeded_url: str) -> None:
    async with api(make_config(seeded_url, pool_size=1)) as client:
        assert (await client.get("/api/_stats")).status_code == 200


def test_the_runners_client_sends_the_ops_token(seeded_url: str, servers: list[Server], tmp_path: Path) -> None:
    config = make_config(seeded_url, server_name="app-stats", stats_token=STATS_TOKEN, pool_size=1)
    servers.append(start_server(config, tmp_path))
    url = servers[0].url
    assert app_stats(url) == {}  # refused: a snapshot without the token gets nothing
    assert app_stats(url, token="not-the-token-at-all") == {}
    stats = app_stats(url, token=STATS_TOKEN)
    assert stats["server"] == "app-stats" and "queries" in stats
