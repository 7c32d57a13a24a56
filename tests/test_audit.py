"""The integrity audit against a real PostgreSQL primary with two streaming replicas and a real Valkey.

Each test seeds a small database of its own on the shared replicated cluster, writes acknowledgements
the way the load generator does (``AckLog``), breaks one promise (a lost rental, a return never
applied, a wrong stored total, a lagging or diverged replica) and checks that the audit names it in
one line -- and that a clean deployment passes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis

from reference_app.seed import seed_database
from scalesim.audit import audit_deployment, audit_lines
from scalesim.components.credentials import redact, write_private
from scalesim.components.postgres import PostgresCluster
from scalesim.deploy.local import SECRETS_FILE, STATE_FILE
from scalesim.loadgen.acks import AckLog
from tests.sql import fetch

SMALL = {"users": 40, "authors": 20, "books": 80, "rentals_per_user": 6, "seed": 11}
AUDIT_KEYVALUE_DB = 6  # the reference app's tests use database 5
_names = itertools.count(1)


@dataclass
class Seeded:
    name: str
    primary: str
    replicas: list[str]


def seeded_database(cluster: PostgresCluster, **sizes: int) -> Seeded:
    name = f"audit_{os.getpid()}_{next(_names)}"
    url = cluster.create_database(name)
    asyncio.run(seed_database(url, **{**SMALL, **sizes}))
    return Seeded(name=name, primary=url, replicas=[node.url_for(name) for node in cluster.replicas])


@pytest.fixture
def seeded(postgres_replicated: PostgresCluster) -> Seeded:
    return seeded_database(postgres_replicated)


@pytest.fixture
def audit_kv(keyvalue_url: str) -> str:
    """A key-value database of the audit's own, emptied first (the workers' queue lives there)."""
    parts = urlsplit(keyvalue_url)
    url = urlunsplit((parts.scheme, parts.netloc, f"/{AUDIT_KEYVALUE_DB}", "", ""))
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


def execute(url: str, sql: str, *args: Any) -> None:
    fetch(url, sql, *args)


def acknowledge(db: Seeded, folder: Path, *, extra_rentals: tuple[tuple[int, int, int], ...] = (),
                extra_returns: tuple[int, ...] = ()) -> dict[str, list[int]]:
    """Acknowledge the latest rentals of the seeded data (and their returns), as the locustfile would."""
    rows = fetch(db.primary, "SELECT id, user_id, book_id, returned_on FROM rentals ORDER BY id DESC LIMIT 60")
    log = AckLog(folder=folder, name="4242")
    for row in rows:
        log.rented(rental_id=row["id"], user_id=row["user_id"], book_id=row["book_id"])
        if row["returned_on"] is not None:
            log.returned(rental_id=row["id"])
    for rental, user, book in extra_rentals:
        log.rented(rental_id=rental, user_id=user, book_id=book)
    for rental in extra_returns:
        log.returned(rental_id=rental)
    log.flush()
    return {"returned": [row["id"] for row in rows if row["returned_on"] is not None],
            "open": [row["id"] for row in rows if row["returned_on"] is None]}


def test_a_clean_deployment_passes(seeded: Seeded, audit_kv: str, tmp_path: Path) -> None:
    acked = acknowledge(seeded, tmp_path / "acks")
    result = audit_deployment(primary_url=seeded.primary, replica_urls=seeded.replicas, acks_dir=tmp_path / "acks",
                              charges="precomputed", keyvalue_url=audit_kv, timeout_s=30)
    assert result["ok"] is True and result["problems"] == [], result["problems"]
    acks = result["acks"]
    assert acks["files"] == 1 and acks["rentals"] == 60 and acks["returns"] == len(acked["returned"]) > 0
    assert acks["rentals_missing"] == acks["rentals_mismatched"] == acks["returns_open"] == 0
    replication = result["replication"]
    assert replication["tables"]["rentals"]["rows"] == SMALL["users"] * SMALL["rentals_per_user"]
    assert [(r["name"], r["converged"], r["tables_differing"]) for r in replication["replicas"]] == [
        ("replica1", True, []), ("replica2", True, [])]
    assert result["queue"]["drained"] is True
    charges = result["charges"]
    assert charges["users_checked"] == SMALL["users"] and charges["users_wrong"] == 0 and charges["settled_rentals"]
    json.dumps(result)  # JSON-able as it is
    text = "\n".join(audit_lines(result))
    assert "60 rentals" in text and "2 of 2 caught up" in text and "audit ok" in text


def test_a_lost_or_altered_acknowledged_rental_fails(seeded: Seeded, tmp_path: Path) -> None:
    acked = acknowledge(seeded, tmp_path / "acks", extra_rentals=((999_999, 1, 1),))
    lost, altered = acked["open"][0], acked["returned"][0]
    execute(seeded.primary, "DELETE FROM rentals WHERE id = $1", lost)
    execute(seeded.primary, "UPDATE rentals SET book_id = CASE WHEN book_id = 1 THEN 2 ELSE 1 END WHERE id = $1",
            altered)
    result = audit_deployment(primary_url=seeded.primary, acks_dir=tmp_path / "acks")
    assert result["ok"] is False
    assert result["acks"]["rentals_missing_ids"] == sorted([lost, 999_999])
    assert result["problems"] == [
        f"2 of 61 acknowledged rentals are missing from the primary (ids {min(lost, 999_999)}, {max(lost, 999_999)})",
        f"1 acknowledged rentals have another user or book on the primary (ids {altered})",
    ]


def test_an_acknowledged_return_left_open_fails(seeded: Seeded, tmp_path: Path) -> None:
    open_rental = fetch(seeded.primary, "SELECT id FROM rentals WHERE returned_on IS NULL ORDER BY id LIMIT 1")[0]["id"]
    acked = acknowledge(seeded, tmp_path / "acks", extra_returns=(open_rental,))
    result = audit_deployment(primary_url=seeded.primary, acks_dir=tmp_path / "acks")
    returns = len(set(acked["returned"]) | {open_rental})
    assert result["ok"] is False and result["acks"]["returns_open_ids"] == [open_rental]
    assert result["problems"] == [f"1 of {returns} acknowledged returns left the rental open or missing on the primary "
                                  f"(ids {open_rental})"]


def test_wrong_precomputed_charges_and_a_stuck_job_queue_fail(seeded: Seeded, audit_kv: str) -> None:
    execute(seeded.primary, "UPDATE user_charges SET late_fee_cents = late_fee_cents + 1 WHERE user_id = 3")
    result = audit_deployment(primary_url=seeded.primary, charges="precomputed", keyvalue_url=audit_kv)
    assert result["ok"] is False and result["charges"]["users_wrong_ids"] == [3]
    assert result["problems"] == ["stored charges of 1 users differ from the charges of their settled rentals "
                                  "(user ids 3)"]
    # the same figures computed at read time are no business of the precomputed check
    assert audit_deployment(primary_url=seeded.primary, charges="computed")["ok"] is True
    client = redis.Redis.from_url(audit_kv)
    try:
        client.zadd("arq:queue", {"job-that-no-worker-takes": 1})
    finally:
        client.close()
    started = time.monotonic()
    stuck = audit_deployment(primary_url=seeded.primary, charges="precomputed", keyvalue_url=audit_kv, timeout_s=0.5)
    assert 0.5 <= time.monotonic() - started < 10
    assert stuck["queue"]["drained"] is False and stuck["queue"]["jobs_left"] == 1
    assert "the workers' job queue still held 1 jobs after" in stuck["problems"][0]


def wait_replicated(db: Seeded, timeout_s: float = 30.0) -> None:
    """Until every replica holds the seeded rentals (a fresh database reaches the replicas a moment later)."""
    expected = SMALL["users"] * SMALL["rentals_per_user"]
    deadline = time.monotonic() + timeout_s
    for url in db.replicas:
        while True:
            try:
                if fetch(url, "SELECT count(*) AS n FROM rentals")[0]["n"] == expected:
                    break
            except (asyncpg.InvalidCatalogNameError, asyncpg.UndefinedTableError):
                pass
            assert time.monotonic() < deadline, f"{url} did not replicate the seeded database"
            time.sleep(0.05)


def _set_replay(url: str, paused: bool) -> None:
    execute(url, "SELECT pg_wal_replay_pause()" if paused else "SELECT pg_wal_replay_resume()")


def test_convergence_is_awaited_and_a_replica_left_behind_fails(seeded: Seeded) -> None:
    lagging = seeded.replicas[0]
    results: list[dict[str, Any]] = []
    wait_replicated(seeded)
    try:
        _set_replay(lagging, paused=True)
        execute(seeded.primary, "UPDATE books SET title = title || ' (2nd edition)' WHERE id <= 10")
        auditing = threading.Thread(target=lambda: results.append(audit_deployment(
            primary_url=seeded.primary, replica_urls=seeded.replicas, timeout_s=30)))
        auditing.start()
        time.sleep(1.5)
        assert auditing.is_alive()  # waiting for replica1, whose replay is paused
        _set_replay(lagging, paused=False)
        auditing.join(timeout=60)
        [caught_up] = results
        assert caught_up["ok"] is True, caught_up["problems"]
        assert caught_up["replication"]["replicas"][0]["waited_s"] >= 0.5  # it waited for the resume

        _set_replay(lagging, paused=True)
        execute(seeded.primary, "UPDATE books SET title = title || '!' WHERE id <= 10")
        behind = audit_deployment(primary_url=seeded.primary, replica_urls=seeded.replicas, timeout_s=0.5)
    finally:
        _set_replay(lagging, paused=False)
    assert behind["ok"] is False and len(behind["problems"]) == 1
    assert behind["problems"][0].startswith("replica1 (") and "did not catch up with the primary within 0 s" in \
        behind["problems"][0] and "bytes of WAL behind" in behind["problems"][0]
    assert [r["converged"] for r in behind["replication"]["replicas"]] == [False, True]


def test_a_replica_with_other_data_fails(postgres_replicated: PostgresCluster, seeded: Seeded) -> None:
    other = seeded_database(postgres_replicated, seed=12)
    result = audit_deployment(primary_url=seeded.primary, replica_urls=[other.replicas[0], seeded.replicas[1]],
                              timeout_s=30)
    assert result["ok"] is False and len(result["problems"]) == 1
    problem = result["problems"][0]
    assert problem.startswith("replica1 (") and "differs from the primary after catching up: " in problem
    assert "books (80 rows on the primary)" in problem
    assert result["replication"]["replicas"][1]["tables_differing"] == []


def test_passwords_never_appear(seeded: Seeded, tmp_path: Path) -> None:
    password = urlsplit(seeded.primary).password

    def with_password(url: str) -> str:  # servers that trust local users let any password in
        parts = urlsplit(url)
        return urlunsplit((parts.scheme, f"{parts.username}:{password or 'sekret-pw'}@{parts.hostname}:{parts.port}",
                           parts.path, "", ""))

    acknowledge(seeded, tmp_path / "acks")
    result = audit_deployment(primary_url=with_password(seeded.primary),
                              replica_urls=[with_password(url) for url in seeded.replicas], acks_dir=tmp_path / "acks")
    assert result["ok"] is True, result["problems"]
    assert ":***@" in result["primary"] and (password or "sekret-pw") not in json.dumps(result)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    unreachable = audit_deployment(primary_url=f"postgresql://app:sekret-pw@127.0.0.1:{port}/books")
    assert unreachable["ok"] is False and "sekret-pw" not in json.dumps(unreachable)
    assert unreachable["problems"][0].startswith(f"cannot reach the primary (postgresql://app:***@127.0.0.1:{port}/books)")
    with pytest.raises(ValueError, match="charges must be one of"):
        audit_deployment(primary_url=seeded.primary, charges="sometimes")


def _scalesim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scalesim", *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_cli_audit_exits_1_on_a_lost_write(seeded: Seeded, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    nothing = _scalesim("audit", "--runs-dir", str(runs))
    assert nothing.returncode == 1 and "nothing is up" in nothing.stderr and "Traceback" not in nothing.stderr
    # the state `scalesim up` leaves behind, pointing at the test cluster: passwords only in the private file
    deployment = runs / "20260101-000000-stage4-abcd"
    deployment.mkdir(parents=True)
    app_config = {"database_url": seeded.primary, "replica_urls": seeded.replicas, "keyvalue_url": None,
                  "charges": "computed"}
    write_private(deployment / SECRETS_FILE, json.dumps({"node_urls": {}, "app_config": app_config}))
    (deployment / STATE_FILE).write_text(json.dumps({"run_id": deployment.name, "nodes": [],
                                                     "app_config": redact(app_config)}))
    (runs / "active").write_text(str(deployment.resolve()))
    run_dir = tmp_path / "a-run"
    acked = acknowledge(seeded, run_dir / "locust" / "acks")

    clean = _scalesim("audit", str(run_dir), "--runs-dir", str(runs))
    assert clean.returncode == 0, clean.stderr
    assert "acknowledged writes: 60 rentals" in clean.stdout and "audit ok" in clean.stdout and not clean.stderr

    lost = acked["returned"][0]
    execute(seeded.primary, "DELETE FROM rentals WHERE id = $1", lost)
    broken = _scalesim("audit", str(run_dir), "--runs-dir", str(runs))
    assert broken.returncode == 1
    assert broken.stderr.splitlines() == [
        f"problem: 1 of 60 acknowledged rentals are missing from the primary (ids {lost})",
        f"problem: 1 of {len(acked['returned'])} acknowledged returns left the rental open or missing on the primary "
        f"(ids {lost})",
    ]
    assert "audit 2 problem(s)" in broken.stdout

    neither = _scalesim("audit", str(tmp_path / "runs"), "--runs-dir", str(runs))
    assert neither.returncode == 1 and "is neither a run folder" in neither.stderr
    assert len(neither.stderr.strip().splitlines()) == 1


def test_a_run_whose_audit_failed_keeps_its_results_and_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from scalesim.audit import AuditFailed
    from scalesim.cli import _run_one, _settings
    from scalesim.results import load_results, save_results
    from scalesim.runner import Run
    from tests.report.sample import sample_results

    problems = ["1 of 9 acknowledged rentals are missing from the primary (ids 7)",
                "replica2 (postgresql://scalesim:***@127.0.0.1:5/bookrental) did not catch up with the primary"]

    def execute(self: Run) -> dict[str, Any]:  # what Run.execute does once the audit has failed
        results = {**sample_results("stage4"), "run_id": self.run_dir.name,
                   "audit": {"ok": False, "problems": problems, "acks": None, "seconds": 2.0}}
        save_results(results, self.run_dir)
        raise AuditFailed(results)

    monkeypatch.setattr(Run, "execute", execute)
    with pytest.raises(AuditFailed) as failed:
        _run_one("stage0", app_servers=None, replicas=None, settings=_settings("embedded", True), runs_dir=tmp_path,
                 quick=True, quiet=True)
    assert str(failed.value) == f"integrity audit failed: {problems[0]} (and 1 more, see results.json)"
    [run_dir] = list(tmp_path.iterdir())
    assert load_results(run_dir)["audit"]["problems"] == problems
    markdown = (run_dir / "report.md").read_text()
    assert "## Integrity audit" in markdown and "audit 2 problem(s)" in markdown
    assert all(problem in markdown for problem in problems)
    assert problems[0] in (run_dir / "report.html").read_text()
    summary = capsys.readouterr().out
    assert "integrity audit" in summary and f"PROBLEM {problems[0]}" in summary
