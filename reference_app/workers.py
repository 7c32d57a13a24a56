"""Background workers (stage3+): arq jobs that keep derived data fresh after writes.

The app never waits for derived data. After a rent or a return commits, it enqueues jobs in the
key-value server and answers; an arq worker (``python -m reference_app.workers``, configured by the
same ``SCALESIM_APP_CONFIG`` as the app) picks them up:

``refresh_profile(user_id)`` (``object_cache``)
    Recompute the user's PROFILE from the primary and store it in ``profile:<user_id>`` on the
    cache server, stamped with the user's write count (from the key-value server) read *before* the
    query, so the stamp never overstates what the profile reflects (see ``cache.py`` for how the app
    uses the stamp). With the cache server down the store is skipped, as the app's are; the app
    then reads profiles from the database until the server answers again.

``recompute_charges(user_id)`` (``charges: precomputed``)
    Fold the user's returned-but-unsettled rentals into ``user_charges`` and mark them settled, in
    one transaction. The work per job is proportional to the rentals returned since the last job,
    not to the user's history, and so is the charges endpoint, which adds the still-unsettled
    rentals (at most ``max_open_rentals`` open ones plus returns not yet folded) at read time.
    Concurrent jobs for one user cannot fold a rental twice: the ``UPDATE ... WHERE NOT settled``
    row locks make the second job skip what the first one settled.

arq is used because it is asyncio-native like the app (the same asyncpg statements, no thread
pool) and queues jobs in the same Redis-compatible server the app already talks to. Workers poll
the queue every ``worker_poll_ms`` (arq's default of half a second would make refreshes lag) and
keep no job results, since nothing reads them.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any, ClassVar

import redis.asyncio as redis
from arq.connections import RedisSettings
from arq.worker import Worker

from reference_app.cache import CacheBreaker, ProfileCache, connect_cache
from reference_app.charges import total_charges
from reference_app.config import AppConfig
from reference_app.db import Database, DatabaseUnavailable
from reference_app.queries import build_queries
from reference_app.service import profile_from_row
from reference_app.sessions import KeyValueWriteMarks

log = logging.getLogger("reference_app.workers")


async def startup(ctx: dict[str, Any]) -> None:
    # build_worker puts the config in ctx; arq's own CLI (``arq reference_app.workers.WorkerSettings``)
    # does not, so fall back to the environment.
    if "config" not in ctx:
        ctx["config"] = AppConfig.from_env()
    config: AppConfig = ctx["config"]
    # Workers read and write the primary only: they compute what replicas will later serve.
    database = Database(config=config.replace(reads="primary"), queries=build_queries())
    await database.open()
    # The job queue and the write marks are on the key-value server; profiles go to the cache server.
    client = redis.Redis.from_url(config.keyvalue_url or "")
    cache_client = connect_cache(config) if config.separate_cache_server else client
    ctx["db"] = database
    ctx["client"] = client
    ctx["cache_client"] = cache_client
    ctx["marks"] = KeyValueWriteMarks(client)
    breaker = CacheBreaker(retry_seconds=config.cache_retry_ms / 1000)
    ctx["profiles"] = ProfileCache(client=cache_client, ttl_seconds=config.profile_cache_ttl_seconds, breaker=breaker)


async def shutdown(ctx: dict[str, Any]) -> None:
    if "db" in ctx:
        await ctx["db"].close()
    if ctx.get("cache_client") is not None and ctx["cache_client"] is not ctx.get("client"):
        await ctx["cache_client"].aclose()
    if "client" in ctx:
        await ctx["client"].aclose()


async def refresh_profile(ctx: dict[str, Any], user_id: int) -> bool:
    """Recompute and store one user's profile; returns whether the store replaced the cached one."""
    database: Database = ctx["db"]
    mark = await ctx["marks"].get(user_id)
    rows = await database.read_primary(build_queries().profile, (user_id,))
    if not rows:
        return False
    profile = profile_from_row(rows[0])
    stored: bool = await ctx["profiles"].put(user_id, profile, as_of=mark.seq)
    return stored


async def recompute_charges(ctx: dict[str, Any], user_id: int) -> int:
    """Fold the user's newly returned rentals into ``user_charges``; returns how many were folded."""
    config: AppConfig = ctx["config"]
    database: Database = ctx["db"]
    queries = build_queries()
    async with database.write() as tx:
        rows = await tx.fetch(queries.settle_returned, user_id)
        if not rows:
            return 0
        # Returned rentals have fixed charges: "today" does not enter the sum.
        totals = total_charges(
            ((r[0], r[1], r[2]) for r in rows),
            today=rows[0][1],
            late_after_days=config.late_after_days,
            late_fee_percent=config.late_fee_percent,
        )
        await tx.execute(queries.add_user_charges, user_id, totals.rentals, totals.rental_cents, totals.late_fee_cents)
    return totals.rentals


class WorkerSettings:
    """arq's settings class; :func:`worker_settings` fills in the parts that come from the config."""

    functions: ClassVar[list[Any]] = [refresh_profile, recompute_charges]
    on_startup = startup
    on_shutdown = shutdown
    keep_result = 0
    max_tries = 3
    job_timeout = 30
    reconnect_delay_s = 1.0


def build_worker(config: AppConfig, **overrides: Any) -> Worker:
    """An arq worker for ``config`` (tests pass ``burst=True`` to drain the queue and stop)."""
    if not config.keyvalue_url:
        raise ValueError("workers need 'keyvalue_url' in the app config (their job queue lives there)")
    options: dict[str, Any] = {
        "functions": WorkerSettings.functions,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "redis_settings": RedisSettings.from_dsn(config.keyvalue_url),
        "ctx": {"config": config},
        "keep_result": WorkerSettings.keep_result,
        "max_tries": WorkerSettings.max_tries,
        "job_timeout": WorkerSettings.job_timeout,
        "poll_delay": config.worker_poll_ms / 1000,
        "max_jobs": max(1, config.pool_size),
    }
    options.update(overrides)
    return Worker(**options)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = AppConfig.from_env()
        worker = build_worker(config)
    except ValueError as exc:
        print(f"reference_app.workers: {exc}", file=sys.stderr)
        return 2
    while True:
        try:
            worker.run()  # returns when SIGTERM or SIGINT stops it
            return 0
        except (OSError, redis.ConnectionError, redis.TimeoutError, DatabaseUnavailable) as exc:
            # The key-value server or the database went away (a crash, a restart): a worker waits for
            # them to come back rather than leaving the job queue unattended for good.
            print(f"reference_app.workers: {exc}; reconnecting in {WorkerSettings.reconnect_delay_s:g} s",
                  file=sys.stderr, flush=True)
        time.sleep(WorkerSettings.reconnect_delay_s)
        asyncio.set_event_loop(asyncio.new_event_loop())  # arq ran (and may have closed) the old one
        worker = build_worker(config)


if __name__ == "__main__":
    sys.exit(main())
