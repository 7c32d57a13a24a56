"""The integrity audit: did the deployment keep every promise it made during the run?

Throughput and latency say how fast the app answered; they do not say whether the answers were
true. A stage that loses an acknowledged rental when a server dies, a replica that silently
drifts from its primary, or precomputed charges that no longer add up would all pass a load test.
So after every run (and on demand, ``scalesim audit``) the deployment is audited while it is still
up, against three invariants:

Acknowledged writes are durable
    The load generator recorded every write the app acknowledged (a rent answered 201 with its
    rental id, a return answered 200; see :mod:`scalesim.loadgen.acks`). Every acknowledged
    rental must be in the primary with the same user and book, and every acknowledged return must
    have closed its rental (``returned_on`` set). Requests that never got an answer were not
    recorded, since their write may or may not have happened; nothing is demanded of them.

Replicas converge to the primary
    Once the load has stopped, every streaming replica must replay the primary's WAL up to the
    primary's current position (waited for, within a bound) and then hold exactly the primary's
    data: per table, the same row count and the same md5 over the rows in primary-key order. A
    table is summed in one snapshot; if the primary moved while it was summed (something still
    writes), the comparison is taken again before a difference counts.

Precomputed charges add up (``charges: precomputed``, stage5)
    The workers' job queue (arq's, in the key-value server) is waited for until it is empty, then
    every user's stored totals (``user_charges``) must equal the charges computed, with
    :mod:`reference_app.charges`, from the rentals marked settled -- the rentals the workers
    folded in. Both are read in one snapshot, and a worker settles rentals and adds them to the
    totals in one transaction, so this holds at every moment, not only once the queue is empty.
    Returned rentals left unsettled (a job the app could not enqueue while the key-value server
    was down) are counted but are no error: the charges endpoint adds them at read time.

:func:`audit_deployment` returns a JSON-able dict: ``ok``, ``problems`` (one line each) and the
counts behind every check. It never raises for what it finds or cannot reach: an unreachable
server is a problem line too. URLs may carry passwords; every URL and message it returns has the
password replaced by ``***``::

    audit = audit_deployment(primary_url=primary, replica_urls=replicas, acks_dir=run_dir / "locust" / "acks",
                             charges="precomputed", keyvalue_url=keyvalue)
    if not audit["ok"]:
        print("\\n".join(audit["problems"]))
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg

from reference_app.charges import DEFAULT_LATE_AFTER_DAYS, DEFAULT_LATE_FEE_PERCENT, total_charges
from reference_app.schema import TABLES_IN_LOAD_ORDER
from scalesim.components.credentials import MASK, redact_url
from scalesim.errors import ScalesimError
from scalesim.loadgen.acks import AckSet, read_acks

__all__ = ["AuditFailed", "AuditSettings", "audit_deployment", "audit_from_app_config", "audit_lines"]

#: arq's queue (a sorted set in the key-value server): a job stays in it until it has finished
ARQ_QUEUE = "arq:queue"
CHARGE_MODES = ("computed", "precomputed")


@dataclass(frozen=True, kw_only=True)
class AuditSettings:
    """How long the audit waits, how often it polls, how much it lists."""

    #: bound on each wait: the job queue to drain, the replicas to catch up
    timeout_s: float = 60.0
    poll_s: float = 0.1
    connect_timeout_s: float = 10.0
    #: ids listed per problem (the counts are always complete)
    listed_ids: int = 20
    #: acknowledged rental ids looked up per query
    lookup_batch: int = 10_000
    #: checksum comparisons taken again while the primary is still moving
    checksum_attempts: int = 3


class AuditFailed(ScalesimError):
    """A run whose audit found a problem, raised once its results are saved; ``results`` holds them."""

    def __init__(self, results: dict[str, Any]) -> None:
        problems = list((results.get("audit") or {}).get("problems") or ["(no problem recorded)"])
        more = f" (and {len(problems) - 1} more, see results.json)" if len(problems) > 1 else ""
        super().__init__(f"integrity audit failed: {problems[0]}{more}")
        self.results = results


# -- problem lines: passwords masked, ids listed -----------------------------------------------------


def _redact_text(text: str, urls: Sequence[str | None]) -> str:
    """*text* with the password of any of *urls* masked, should a message ever quote one."""
    for url in urls:
        if not url:
            continue
        try:
            password = urlsplit(url).password
        except ValueError:
            continue
        if password:
            for form in {password, unquote(password)}:
                text = text.replace(form, MASK)
    return text


def _listed(ids: Sequence[int] | set[int], limit: int) -> list[int]:
    return sorted(ids)[:limit]


def _ids_text(ids: list[int], total: int) -> str:
    more = f", ... {total - len(ids)} more" if total > len(ids) else ""
    return f"ids {', '.join(map(str, ids))}{more}"


# -- the audit --------------------------------------------------------------------------------------


@dataclass
class _Audit:
    settings: AuditSettings
    secrets: list[str | None]
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(_redact_text(text, self.secrets))

    async def connect(self, url: str, what: str, *, replica: bool = False) -> asyncpg.Connection | None:
        """A connection, or ``None`` and a problem line. A server still starting up (restarted by a
        fault) is retried for up to ``timeout_s``, and so is a *replica* that has not yet replayed the
        creation of the database; a server that refuses connections is not."""
        waiting = (asyncpg.CannotConnectNowError, asyncpg.InvalidCatalogNameError) if replica \
            else (asyncpg.CannotConnectNowError,)
        wait_until = time.monotonic() + self.settings.timeout_s
        while True:
            try:
                return await asyncpg.connect(url, timeout=self.settings.connect_timeout_s)
            except waiting as exc:
                if time.monotonic() < wait_until:
                    await asyncio.sleep(self.settings.poll_s)
                    continue
                failure: Exception = exc
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                failure = exc
            self.problem(f"cannot reach the {what} ({redact_url(url)}): {type(failure).__name__}: {failure}")
            return None


async def _current_lsn(connection: asyncpg.Connection) -> int:
    return int(await connection.fetchval("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint"))


async def _replay_lsn(connection: asyncpg.Connection) -> int:
    value = await connection.fetchval("SELECT COALESCE((pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint, 0)")
    return int(value)


async def _checksums(connection: asyncpg.Connection) -> dict[str, dict[str, Any]]:
    """Per app table, in one snapshot: row count and an md5 over the rows in primary-key order."""
    sums: dict[str, dict[str, Any]] = {}
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        for table in TABLES_IN_LOAD_ORDER:
            order = ", ".join(f't."{column.name}"' for column in table.primary_key.columns)
            row = await connection.fetchrow(
                f"SELECT count(*) AS rows, md5(string_agg(md5(t::text), '' ORDER BY {order})) AS md5 "
                f'FROM "{table.name}" AS t'
            )
            assert row is not None  # an aggregate always returns a row
            sums[table.name] = {"rows": int(row["rows"]), "md5": row["md5"]}
    return sums


async def _check_acks(audit: _Audit, primary: asyncpg.Connection, acks: AckSet) -> dict[str, Any]:
    """Every acknowledged rental in the primary with its user and book; every acknowledged return closed."""
    settings = audit.settings
    found: dict[int, tuple[int, int, bool]] = {}
    wanted = sorted(set(acks.rentals) | acks.returns)
    for start in range(0, len(wanted), settings.lookup_batch):
        rows = await primary.fetch(
            "SELECT id, user_id, book_id, returned_on IS NOT NULL AS returned FROM rentals "
            "WHERE id = ANY($1::integer[])",
            wanted[start:start + settings.lookup_batch],
        )
        found.update({row["id"]: (row["user_id"], row["book_id"], row["returned"]) for row in rows})
    missing = [rental for rental in acks.rentals if rental not in found]
    mismatched = [rental for rental, (user, book) in acks.rentals.items()
                  if rental in found and found[rental][:2] != (user, book)]
    still_open = [rental for rental in acks.returns if not (rental in found and found[rental][2])]
    limit = settings.listed_ids
    if missing:
        audit.problem(f"{len(missing)} of {len(acks.rentals)} acknowledged rentals are missing from the primary "
                      f"({_ids_text(_listed(missing, limit), len(missing))})")
    if mismatched:
        audit.problem(f"{len(mismatched)} acknowledged rentals have another user or book on the primary "
                      f"({_ids_text(_listed(mismatched, limit), len(mismatched))})")
    if still_open:
        audit.problem(f"{len(still_open)} of {len(acks.returns)} acknowledged returns left the rental open or "
                      f"missing on the primary ({_ids_text(_listed(still_open, limit), len(still_open))})")
    return {
        "files": acks.files,
        "unreadable_lines": acks.unreadable_lines,
        "rentals": len(acks.rentals),
        "returns": len(acks.returns),
        "rentals_missing": len(missing),
        "rentals_missing_ids": _listed(missing, limit),
        "rentals_mismatched": len(mismatched),
        "rentals_mismatched_ids": _listed(mismatched, limit),
        "returns_open": len(still_open),
        "returns_open_ids": _listed(still_open, limit),
    }


async def _drain_queue(audit: _Audit, keyvalue_url: str) -> dict[str, Any]:
    """Wait (bounded) until the workers' job queue is empty."""
    import redis.asyncio as redis

    settings = audit.settings
    started = time.monotonic()
    left: int | None = None
    client = redis.Redis.from_url(keyvalue_url, socket_timeout=settings.connect_timeout_s,
                                  socket_connect_timeout=settings.connect_timeout_s)
    try:
        while True:
            left = int(await client.zcard(ARQ_QUEUE))
            if left == 0 or time.monotonic() - started > settings.timeout_s:
                break
            await asyncio.sleep(settings.poll_s)
    except (OSError, redis.RedisError) as exc:
        audit.problem(f"cannot reach the key-value server ({redact_url(keyvalue_url)}) to see the job queue: "
                      f"{type(exc).__name__}: {exc}")
    finally:
        await client.aclose()
    waited = round(time.monotonic() - started, 3)
    if left:
        audit.problem(f"the workers' job queue still held {left} jobs after {waited:.0f} s")
    return {"drained": left == 0, "jobs_left": left, "waited_s": waited}


async def _check_charges(audit: _Audit, primary: asyncpg.Connection, *, late_after_days: int,
                         late_fee_percent: int) -> dict[str, Any]:
    """Stored per-user totals against the charges of the rentals they say they hold (the settled ones)."""
    async with primary.transaction(isolation="repeatable_read", readonly=True):
        stored_rows = await primary.fetch("SELECT user_id, rentals, rental_cents, late_fee_cents FROM user_charges")
        settled_rows = await primary.fetch(
            "SELECT user_id, rented_on, returned_on, daily_price_cents FROM rentals WHERE settled ORDER BY user_id"
        )
        unfolded = await primary.fetchval("SELECT count(*) FROM rentals WHERE returned_on IS NOT NULL AND NOT settled")
    stored = {row["user_id"]: (row["rentals"], row["rental_cents"], row["late_fee_cents"]) for row in stored_rows}
    settled: dict[int, list[tuple[date, date | None, int]]] = {}
    for row in settled_rows:
        settled.setdefault(row["user_id"], []).append((row["rented_on"], row["returned_on"], row["daily_price_cents"]))
    today = date.today()  # settled rentals are returned: their charges do not depend on it
    wrong = []
    for user in set(stored) | set(settled):
        totals = total_charges(settled.get(user, []), today=today, late_after_days=late_after_days,
                               late_fee_percent=late_fee_percent)
        if stored.get(user, (0, 0, 0)) != (totals.rentals, totals.rental_cents, totals.late_fee_cents):
            wrong.append(user)
    limit = audit.settings.listed_ids
    if wrong:
        audit.problem(f"stored charges of {len(wrong)} users differ from the charges of their settled rentals "
                      f"(user {_ids_text(_listed(wrong, limit), len(wrong))})")
    return {
        "users_checked": len(set(stored) | set(settled)),
        "users_wrong": len(wrong),
        "users_wrong_ids": _listed(wrong, limit),
        "settled_rentals": len(settled_rows),
        "returns_not_folded": int(unfolded),
    }


async def _wait_replayed(replica: asyncpg.Connection, target: int, deadline: float, poll_s: float) -> int:
    while True:
        replayed = await _replay_lsn(replica)
        if replayed >= target or time.monotonic() > deadline:
            return replayed
        await asyncio.sleep(poll_s)


async def _check_replicas(audit: _Audit, primary: asyncpg.Connection,
                          replicas: list[tuple[str, str, asyncpg.Connection | None]]) -> dict[str, Any]:
    """Wait for each replica to replay the primary's WAL, then compare per-table checksums."""
    settings = audit.settings
    started = time.monotonic()
    deadline = started + settings.timeout_s
    reports: dict[str, dict[str, Any]] = {
        name: {"name": name, "url": redact_url(url), "reachable": connection is not None, "converged": False,
               "waited_s": None, "behind_bytes": None, "tables_differing": []}
        for name, url, connection in replicas
    }
    target = primary_sums = None
    for attempt in range(1, settings.checksum_attempts + 1):
        before = await _current_lsn(primary)
        primary_sums = await _checksums(primary)
        target = await _current_lsn(primary)
        differing: dict[str, list[str]] = {}
        for name, _url, connection in replicas:
            if connection is None:
                continue
            report = reports[name]
            replayed = await _wait_replayed(connection, target, deadline, settings.poll_s)
            report.update(converged=replayed >= target, behind_bytes=max(0, target - replayed),
                          waited_s=round(time.monotonic() - started, 3))
            if not report["converged"]:
                continue
            sums = await _checksums(connection)
            differing[name] = [table for table in primary_sums if sums.get(table) != primary_sums[table]]
            report["tables_differing"] = differing[name]
        moved = before != target or await _current_lsn(primary) != target
        if not any(differing.values()) or not moved or attempt == settings.checksum_attempts \
                or time.monotonic() > deadline:
            break  # agreed, or disagreed while nothing was writing (or out of attempts)
    for name, url, connection in replicas:
        report = reports[name]
        if connection is None:
            continue  # already a problem line: unreachable
        if not report["converged"]:
            audit.problem(f"{name} ({redact_url(url)}) did not catch up with the primary within "
                          f"{settings.timeout_s:.0f} s: {report['behind_bytes']} bytes of WAL behind")
        elif report["tables_differing"]:
            tables = ", ".join(f"{table} ({primary_sums[table]['rows'] if primary_sums else '?'} rows on the primary)"
                               for table in report["tables_differing"])
            audit.problem(f"{name} ({redact_url(url)}) differs from the primary after catching up: {tables}")
    return {
        "primary_lsn": target,
        "tables": {table: {"rows": sums["rows"]} for table, sums in (primary_sums or {}).items()},
        "replicas": list(reports.values()),
    }


async def _audit(*, primary_url: str, replica_urls: Sequence[str], acks_dir: Path | None, charges: str,
                 keyvalue_url: str | None, late_after_days: int, late_fee_percent: int,
                 settings: AuditSettings) -> dict[str, Any]:
    audit = _Audit(settings=settings, secrets=[primary_url, keyvalue_url, *replica_urls])
    result: dict[str, Any] = {
        "ok": False,
        "checked": {
            "acknowledged_writes": acks_dir is not None,
            "replicas": len(replica_urls),
            "precomputed_charges": charges == "precomputed",
        },
        "primary": redact_url(primary_url),
        "acks": None,
        "queue": None,
        "replication": None,
        "charges": None,
    }
    primary = await audit.connect(primary_url, "primary")
    replicas: list[tuple[str, str, asyncpg.Connection | None]] = []
    try:
        if primary is None:
            return result | {"problems": audit.problems}
        if acks_dir is not None:
            result["acks"] = await _check_acks(audit, primary, read_acks(acks_dir))
        if charges == "precomputed":
            # first: the workers' last writes must be in before the replicas are compared
            if keyvalue_url:
                result["queue"] = await _drain_queue(audit, keyvalue_url)
            result["charges"] = await _check_charges(audit, primary, late_after_days=late_after_days,
                                                     late_fee_percent=late_fee_percent)
        if replica_urls:
            for index, url in enumerate(replica_urls, start=1):
                replicas.append((f"replica{index}", url, await audit.connect(url, f"replica{index}", replica=True)))
            result["replication"] = await _check_replicas(audit, primary, replicas)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        audit.problem(f"the audit could not finish: {type(exc).__name__}: {exc}")
    finally:
        for _name, _url, connection in replicas:
            if connection is not None:
                await connection.close()
        if primary is not None:
            await primary.close()
    result["problems"] = audit.problems
    result["ok"] = not audit.problems
    return result


def audit_deployment(
    *,
    primary_url: str,
    replica_urls: Sequence[str] = (),
    acks_dir: Path | str | None = None,
    charges: str = "computed",
    keyvalue_url: str | None = None,
    late_after_days: int = DEFAULT_LATE_AFTER_DAYS,
    late_fee_percent: int = DEFAULT_LATE_FEE_PERCENT,
    timeout_s: float | None = None,
    settings: AuditSettings | None = None,
) -> dict[str, Any]:
    """Audit a deployment after its load stopped; see the module docstring for what is checked.

    *acks_dir* is the folder of acknowledged writes (``None``: not checked), *charges* the app's
    ``charges`` mode, *keyvalue_url* where the workers' job queue lives; *late_after_days* and
    *late_fee_percent* are the app's charge rules. *timeout_s* bounds each wait (default from
    *settings*). Returns ``{"ok", "problems", "checked", "acks", "queue", "replication",
    "charges", "seconds", ...}``, JSON-able, with every URL redacted.
    """
    if charges not in CHARGE_MODES:
        raise ValueError(f"charges must be one of {', '.join(CHARGE_MODES)}, not {charges!r}")
    chosen = settings or AuditSettings()
    if timeout_s is not None:
        chosen = AuditSettings(**{**asdict(chosen), "timeout_s": float(timeout_s)})
    started = time.monotonic()
    result = asyncio.run(_audit(
        primary_url=primary_url, replica_urls=list(replica_urls), acks_dir=Path(acks_dir) if acks_dir else None,
        charges=charges, keyvalue_url=keyvalue_url, late_after_days=late_after_days,
        late_fee_percent=late_fee_percent, settings=chosen))
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def audit_from_app_config(app_config: Mapping[str, Any], *, acks_dir: Path | str | None,
                          timeout_s: float | None = None) -> dict[str, Any]:
    """Audit the deployment an app configuration (``SCALESIM_APP_CONFIG``, as a mapping) points at."""
    return audit_deployment(
        primary_url=str(app_config["database_url"]),
        replica_urls=[str(url) for url in app_config.get("replica_urls") or ()],
        acks_dir=acks_dir,
        charges=str(app_config.get("charges", "computed")),
        keyvalue_url=app_config.get("keyvalue_url"),
        late_after_days=int(app_config.get("late_after_days", DEFAULT_LATE_AFTER_DAYS)),
        late_fee_percent=int(app_config.get("late_fee_percent", DEFAULT_LATE_FEE_PERCENT)),
        timeout_s=timeout_s,
    )


def audit_lines(audit: Mapping[str, Any]) -> list[str]:
    """What was checked and what was found, in a few lines (the report and the command line)."""
    lines = []
    acks = audit.get("acks")
    if acks is not None:
        lines.append(f"acknowledged writes: {acks['rentals']} rentals, {acks['returns']} returns checked "
                     f"against the primary; {acks['rentals_missing']} missing, {acks['rentals_mismatched']} "
                     f"altered, {acks['returns_open']} returns not applied")
    replication = audit.get("replication")
    if replication is not None:
        replicas = replication.get("replicas", [])
        converged = sum(1 for replica in replicas if replica.get("converged"))
        same = sum(1 for replica in replicas if replica.get("converged") and not replica.get("tables_differing"))
        lines.append(f"replicas: {converged} of {len(replicas)} caught up with the primary, {same} identical to it "
                     f"in all {len(replication.get('tables', {}))} tables")
    charges = audit.get("charges")
    if charges is not None:
        queue = audit.get("queue") or {}
        drained = "job queue drained" if queue.get("drained") else "job queue not drained"
        lines.append(f"precomputed charges: {drained}; {charges['users_checked']} users checked, "
                     f"{charges['users_wrong']} wrong ({charges['returns_not_folded']} returns not folded in yet)")
    verdict = "ok" if audit.get("ok") else f"{len(audit.get('problems', []))} problem(s)"
    lines.append(f"audit {verdict} in {audit.get('seconds', 0.0):.1f} s")
    return lines
