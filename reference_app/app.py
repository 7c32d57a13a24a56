"""The HTTP face of the book-rental app: Starlette routes on uvicorn.

uvicorn starts it as ``reference_app.app:create_app --factory``. The factory reads the config from
``SCALESIM_APP_CONFIG`` and returns a :class:`ReferenceApp`, a thin ASGI wrapper around a Starlette
router that runs its own lifespan: at startup it opens the database pools, the key-value client, the
cache server's client and the job queue the config asks for; at shutdown it closes them. (Running
the lifespan itself lets a failed startup -- an unreachable database, say -- end the server with one
line in the log instead of a traceback.) Tests drive the same steps in-process with ``async with app.running(): ...``.

Every handler does three things: validate the request (anything malformed is a 4xx with
``{"error": "one line"}``, never a 5xx), call :class:`~reference_app.service.RentalService`, and
encode the answer. Every response, errors included, carries ``X-Served-By: <server_name>`` so that a
load test can see how the balancer spreads requests.

The per-request path is kept short on purpose: the project measures this app's CPU cost per
request against a bare Starlette+asyncpg handler, so the app adds no middleware to Starlette's own,
statements are compiled once (``queries.py``), and JSON is encoded with orjson when installed.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import re
import sys
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as redis
from arq.connections import ArqRedis, RedisSettings, create_pool
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from reference_app.cache import CacheBreaker, ProfileCache, QueryCache, connect_cache
from reference_app.config import AppConfig
from reference_app.db import EVERY_WRITE, Database, DatabaseUnavailable, _redact
from reference_app.encoding import dumps, loads
from reference_app.openapi import (
    IDEMPOTENCY_KEY_PATTERN,
    MAX_BODY_BYTES,
    MAX_ID,
    MAX_TEXT_CHARS,
    openapi_document,
)
from reference_app.queries import build_queries
from reference_app.service import (
    ApiError,
    BadRequest,
    Forbidden,
    NotFound,
    RentalService,
    Unauthorized,
)
from reference_app.sessions import (
    Caller,
    KeyValueSessions,
    KeyValueWriteMarks,
    MemorySessions,
    MemoryWriteMarks,
    SessionStore,
    WriteMarks,
)

log = logging.getLogger("reference_app")

_DIGITS = re.compile(r"[0-9]{1,10}")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
_RENTAL_STATUSES = ("open", "returned", "all")


class PayloadTooLarge(ApiError):
    status = 413


# -- input validation ---------------------------------------------------------------------------------


def parse_id(text: str, what: str) -> int:
    """A positive 32-bit id from a path segment or query value, else a 400."""
    if _DIGITS.fullmatch(text) is None or not 1 <= (value := int(text)) <= MAX_ID:
        raise BadRequest(f"{what} must be an integer between 1 and {MAX_ID}, not {text[:40]!r}")
    return value


def parse_positive(text: str | None, what: str, *, default: int, maximum: int) -> int:
    if text is None:
        return default
    if _DIGITS.fullmatch(text) is None or not 1 <= (value := int(text)) <= maximum:
        raise BadRequest(f"{what} must be an integer between 1 and {maximum}, not {text[:40]!r}")
    return value


def clean_text(value: Any, what: str) -> str:
    """A string PostgreSQL can store: no NUL, valid UTF-8 (no lone surrogates), bounded length."""
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a string")
    if len(value) > MAX_TEXT_CHARS:
        raise BadRequest(f"{what} is longer than {MAX_TEXT_CHARS} characters")
    if "\x00" in value:
        raise BadRequest(f"{what} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{what} is not valid Unicode text") from None
    return value


def idempotency_key(request: Request) -> str | None:
    """The request's ``Idempotency-Key`` header: absent, or 1 to 64 characters of A-Z a-z 0-9 _ -."""
    key = request.headers.get("idempotency-key")
    if key is not None and _IDEMPOTENCY_KEY.fullmatch(key) is None:
        raise BadRequest(f"the Idempotency-Key header must match {IDEMPOTENCY_KEY_PATTERN}")
    return key


async def json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object (bounded in size), else a 4xx."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"request body is larger than {MAX_BODY_BYTES} bytes")
    try:
        value = loads(bytes(body))
    except ValueError:
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("request body must be a JSON object")
    return value


# -- the app ------------------------------------------------------------------------------------------


class ReferenceApp:
    """An ASGI app: the API's Starlette router plus a lifespan that owns the connections."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self._served_by = (b"x-served-by", config.server_name.encode("latin-1", "replace"))
        # Reads carry the caller's write mark when replicas may serve them or the profile cache
        # needs the caller's write count; other stages skip that lookup.
        self._replica_reads = config.reads == "replicas"
        self._needs_mark = self._replica_reads or config.object_cache
        self._stack: contextlib.AsyncExitStack | None = None
        # Encoded once: the document depends on the config only.
        self._openapi_body = dumps(openapi_document(config))
        self._stats_token = config.stats_token.encode("ascii") if config.stats_token else None
        # Set by startup(); `service` is public for tests and tools, the handlers use the private
        # names, typed as always present (no handler runs before startup).
        self.service: RentalService | None = None
        self._svc: RentalService
        self._sessions: SessionStore
        self._cache_breaker = CacheBreaker(retry_seconds=config.cache_retry_ms / 1000)
        self.router = Starlette(
            routes=[
                Route("/healthz", self.healthz, methods=["GET"]),
                Route("/api/login", self.login, methods=["POST"]),
                Route("/api/logout", self.logout, methods=["POST"]),
                Route("/api/profile", self.profile, methods=["GET"]),
                Route("/api/books", self.catalog, methods=["GET"]),
                Route("/api/categories", self.categories, methods=["GET"]),
                Route("/api/books/{book_id}", self.book, methods=["GET"]),
                Route("/api/users/{user_id}/rentals", self.rentals, methods=["GET"]),
                Route("/api/rentals", self.rent, methods=["POST"]),
                Route("/api/rentals/{rental_id}/return", self.return_rental, methods=["POST"]),
                Route("/api/users/{user_id}/charges", self.charges, methods=["GET"]),
                Route("/api/_stats", self.stats, methods=["GET"]),
                Route("/openapi.json", self.openapi, methods=["GET"]),
            ],
            exception_handlers={
                ApiError: self._api_error,
                HTTPException: self._http_error,
                DatabaseUnavailable: self._unavailable,
                redis.ConnectionError: self._unavailable,
                redis.TimeoutError: self._unavailable,
                Exception: self._internal_error,
            },
        )
        # A JSON API answers "/api/profile/" with a clear 404, not a redirect without our headers.
        self.router.router.redirect_slashes = False

    # -- ASGI and lifespan ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.router(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # noqa: BLE001 -- reported to uvicorn as one line
                    await send({"type": "lifespan.startup.failed", "message": f"reference_app: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        """Open pools and clients; on failure, close what was opened and raise."""
        config = self.config
        stack = contextlib.AsyncExitStack()
        try:
            queries = build_queries()
            database = Database(config=config, queries=queries)
            stack.push_async_callback(database.close)
            await database.open()
            client: redis.Redis | None = None
            jobs: ArqRedis | None = None
            if config.keyvalue_url:
                pool = redis.BlockingConnectionPool.from_url(
                    config.keyvalue_url, max_connections=max(8, 2 * config.pool_size), timeout=5,
                    socket_timeout=config.keyvalue_timeout_ms / 1000,
                    socket_connect_timeout=config.keyvalue_timeout_ms / 1000,
                )
                client = redis.Redis(connection_pool=pool)
                stack.push_async_callback(client.aclose)
                stack.push_async_callback(pool.aclose)
                try:
                    await client.ping()
                except redis.RedisError as exc:
                    where = _redact(config.keyvalue_url)
                    raise RuntimeError(f"cannot reach the key-value server at {where}: {exc}") from exc
                if config.object_cache or config.charges == "precomputed":
                    jobs = await create_pool(RedisSettings.from_dsn(config.keyvalue_url))
                    stack.push_async_callback(jobs.aclose)
            marks: WriteMarks = KeyValueWriteMarks(client) if client is not None else MemoryWriteMarks()
            if config.sessions == "keyvalue":
                assert client is not None  # AppConfig guarantees a keyvalue_url
                sessions: SessionStore = KeyValueSessions(
                    client=client, ttl_seconds=config.session_ttl_seconds, marks=marks
                )
            else:
                sessions = MemorySessions(ttl_seconds=config.session_ttl_seconds, marks=marks)
            query_cache = profile_cache = None
            if client is not None and (config.query_cache or config.object_cache):
                cache_client = await self._open_cache_client(client, stack)
                if config.query_cache:
                    query_cache = QueryCache(
                        client=cache_client,
                        ttl_seconds=config.query_cache_ttl_seconds,
                        versions_are_lsns=database.tracks_lsn,
                        breaker=self._cache_breaker,
                    )
                if config.object_cache:
                    profile_cache = ProfileCache(
                        client=cache_client, ttl_seconds=config.profile_cache_ttl_seconds, breaker=self._cache_breaker
                    )
            service = RentalService(
                config=config,
                queries=queries,
                db=database,
                marks=marks,
                query_cache=query_cache,
                profile_cache=profile_cache,
                jobs=jobs,
            )
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        self.service = self._svc = service
        self._sessions = sessions

    async def _open_cache_client(self, session_client: redis.Redis, stack: contextlib.AsyncExitStack) -> redis.Redis:
        """The caches' client: the session store's, or one for a separate cache server.

        A separate cache server need not answer at startup (the session store must): the caches then
        start off, and the breaker lets them on once it answers.
        """
        config = self.config
        if not config.separate_cache_server:
            return session_client
        client = connect_cache(config)
        stack.push_async_callback(client.aclose)
        try:
            await client.ping()
        except redis.RedisError as exc:
            self._cache_breaker.trip(f"no answer at startup from {_redact(config.cache_server_url or '')}: {exc}")
        return client

    async def shutdown(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ReferenceApp]:
        """Startup, then shutdown on exit (for in-process use, e.g. with httpx.ASGITransport)."""
        await self.startup()
        try:
            yield self
        finally:
            await self.shutdown()

    # -- responses -----------------------------------------------------------------------------------

    def respond(self, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        response = Response(dumps(data), status_code=status, headers=headers, media_type="application/json")
        response.raw_headers.append(self._served_by)
        return response

    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        return self.respond({"error": message}, status, headers)

    async def _api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return self.error(exc.status, exc.message)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return self.error(exc.status_code, message, dict(exc.headers) if exc.headers else None)

    async def _unavailable(self, request: Request, exc: Exception) -> Response:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        what = "database" if isinstance(exc, DatabaseUnavailable) else "key-value server"
        return self.error(503, f"the {what} is unavailable, try again")

    async def _internal_error(self, request: Request, exc: Exception) -> Response:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return self.error(500, "internal error")

    # -- authentication ------------------------------------------------------------------------------

    def _token(self, request: Request) -> str | None:
        header = request.headers.get("authorization")
        if header is None:
            return None
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or _TOKEN.fullmatch(token) is None:
            raise Unauthorized("the Authorization header must read 'Bearer <token>'")
        return token

    async def _caller(self, request: Request) -> Caller:
        token = self._token(request)
        if token is None:
            raise Unauthorized("log in first: send 'Authorization: Bearer <token>'")
        caller = await self._sessions.resolve(token, with_mark=self._needs_mark)
        if caller is None:
            raise Unauthorized("the session is unknown or has expired, log in again")
        return caller

    async def _min_lsn_of_optional_caller(self, request: Request) -> int:
        """For public reads with replicas: a logged-in caller still gets their own writes back."""
        if not self._replica_reads:
            return 0
        try:
            token = self._token(request)
        except Unauthorized:
            return 0
        if token is None:
            return 0
        try:
            caller = await self._sessions.resolve(token, with_mark=True)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # Without the session store this public read cannot know the caller's last write:
            # the primary has it, whatever it was.
            log.warning("%s %s: %s; reading from the primary", request.method, request.url.path, exc)
            return EVERY_WRITE
        return 0 if caller is None else caller.mark.lsn

    # -- endpoints -----------------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return self.respond({"status": "ok", "server": self.config.server_name})

    async def login(self, request: Request) -> Response:
        body = await json_object(request)
        for name in ("email", "password"):
            if name not in body:
                raise BadRequest(f"missing field {name!r}")
        email = clean_text(body["email"], "email")
        password = clean_text(body["password"], "password")
        user_id = await self._svc.authenticate(email=email, password=password)
        token = await self._sessions.create(user_id)
        profile = await self._svc.profile_at_login(user_id)
        return self.respond({"token": token, "expires_in": self.config.session_ttl_seconds, "user": profile})

    async def logout(self, request: Request) -> Response:
        caller = await self._caller(request)
        await self._sessions.delete(caller.token)
        response = Response(status_code=204)
        response.raw_headers.append(self._served_by)
        return response

    async def profile(self, request: Request) -> Response:
        caller = await self._caller(request)
        return self.respond(await self._svc.profile(caller))

    async def categories(self, request: Request) -> Response:
        return self.respond(await self._svc.categories())

    async def catalog(self, request: Request) -> Response:
        params = request.query_params
        page = parse_positive(params.get("page"), "page", default=1, maximum=MAX_ID)
        per_page = parse_positive(
            params.get("per_page"),
            "per_page",
            default=self.config.default_per_page,
            maximum=self.config.max_per_page,
        )
        if (page - 1) * per_page > MAX_ID:
            # The offset would not fit the statement's integer parameter, and no catalog has that
            # many books (ids are integers too): certainly past the last page.
            raise NotFound(f"page {page} is past the last page of results")
        category = params.get("category") or None
        if category is not None:
            category = clean_text(category, "category")
        return self.respond(await self._svc.catalog(category=category, page=page, per_page=per_page))

    async def book(self, request: Request) -> Response:
        book_id = parse_id(request.path_params["book_id"], "book id")
        min_lsn = await self._min_lsn_of_optional_caller(request)
        return self.respond(await self._svc.book(book_id, min_lsn=min_lsn))

    # User endpoints authenticate before they look at their parameters: without a session, every
    # request is a 401, whatever else is wrong with it.

    async def rentals(self, request: Request) -> Response:
        caller = await self._caller(request)
        user_id = parse_id(request.path_params["user_id"], "user id")
        status = request.query_params.get("status", "all")
        if status not in _RENTAL_STATUSES:
            raise BadRequest(f"status must be one of {', '.join(_RENTAL_STATUSES)}, not {status[:40]!r}")
        if caller.user_id != user_id:
            raise Forbidden("you may only read your own rentals")
        return self.respond(await self._svc.rentals(caller, status=status))

    async def charges(self, request: Request) -> Response:
        caller = await self._caller(request)
        user_id = parse_id(request.path_params["user_id"], "user id")
        if caller.user_id != user_id:
            raise Forbidden("you may only read your own charges")
        return self.respond(await self._svc.charges(caller))

    async def rent(self, request: Request) -> Response:
        caller = await self._caller(request)
        body = await json_object(request)
        if "book_id" not in body:
            raise BadRequest("missing field 'book_id'")
        book_id = body["book_id"]
        if isinstance(book_id, bool) or not isinstance(book_id, int) or not 1 <= book_id <= MAX_ID:
            raise BadRequest(f"book_id must be an integer between 1 and {MAX_ID}")
        key = idempotency_key(request)
        return self.respond(await self._svc.rent(caller, book_id=book_id, key=key), 201)

    async def return_rental(self, request: Request) -> Response:
        caller = await self._caller(request)
        rental_id = parse_id(request.path_params["rental_id"], "rental id")
        key = idempotency_key(request)
        return self.respond(await self._svc.return_rental(caller, rental_id=rental_id, key=key))

    async def openapi(self, request: Request) -> Response:
        response = Response(self._openapi_body, media_type="application/json")
        response.raw_headers.append(self._served_by)
        return response

    def _check_stats_token(self, request: Request) -> None:
        """The counters reveal internals: with a ``stats_token`` configured, only its holder reads them."""
        scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
        # Compared in constant time, as bytes (compare_digest refuses non-ASCII str).
        presented = token.strip().encode("utf-8", "surrogateescape")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented, self._stats_token or b""):
            raise Unauthorized("the stats need 'Authorization: Bearer <stats token>'")

    async def stats(self, request: Request) -> Response:
        if self._stats_token is not None:
            self._check_stats_token(request)
        service = self._svc
        data: dict[str, Any] = {"server": self.config.server_name, "pid": os.getpid()}
        data.update(service.db.stats.as_dict())
        caches = [c.counters for c in (service.query_cache, service.profile_cache) if c is not None]
        # Both caches together (what a run's report turns into a hit ratio), then each on its own.
        data["cache"] = {"hits": sum(c.hits for c in caches), "misses": sum(c.misses for c in caches)}
        data["query_cache"] = service.query_cache.counters.as_dict() if service.query_cache else None
        data["object_cache"] = service.profile_cache.counters.as_dict() if service.profile_cache else None
        if service.query_cache or service.profile_cache:
            data["cache_server"] = {
                **self._cache_breaker.as_dict(),
                "deferred_bumps": service.query_cache.deferred_bumps if service.query_cache else 0,
            }
        if isinstance(self._sessions, MemorySessions):
            data["sessions_in_memory"] = len(self._sessions)
        return self.respond(data)


def create_app(config: AppConfig | None = None) -> ReferenceApp:
    """The uvicorn factory: the app for ``config``, or for ``SCALESIM_APP_CONFIG`` when omitted.

    A bad config ends the process with one line on stderr and exit status 2, not a traceback.
    """
    if config is None:
        try:
            config = AppConfig.from_env()
        except ValueError as exc:
            print(f"reference_app: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    return ReferenceApp(config)
