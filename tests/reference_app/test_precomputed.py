"""Stage5: charges from stored per-user totals, kept current by workers, equal to computed charges."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from reference_app.charges import rental_charge
from reference_app.config import AppConfig
from reference_app.queries import build_queries
from tests.sql import fetch_rows as fetch

from .conftest import REPO, api, login, make_config
from .test_cache import drain_jobs

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning"),
]


def stage5(database_url: str, keyvalue_url: str, **changes: Any) -> AppConfig:
    flags: dict[str, Any] = {
        "sessions": "keyvalue",
        "joins": "app",
        "charges": "precomputed",
        "keyvalue_url": keyvalue_url,
        "pool_size": 2,
    }
    return make_config(database_url, **{**flags, **changes})


async def charges_both_ways(url: str, kv: str, users: range) -> tuple[list[Any], list[Any]]:
    computed, precomputed = [], []
    async with api(make_config(url, pool_size=2)) as client:
        for user in users:
            computed.append((await client.get(f"/api/users/{user}/charges", headers=await login(client, user))).json())
    async with api(stage5(url, kv)) as client:
        for user in users:
            headers = await login(client, user)
            precomputed.append((await client.get(f"/api/users/{user}/charges", headers=headers)).json())
    return computed, precomputed


async def test_stored_totals_give_the_computed_charges(fresh_seeded_url: str, clean_kv: str) -> None:
    computed, precomputed = await charges_both_ways(fresh_seeded_url, clean_kv, range(1, 21))
    assert precomputed == computed
    assert any(c["late_fees_cents"] for c in computed)


async def test_the_charges_read_does_not_grow_with_history(fresh_seeded_url: str) -> None:
    statement = build_queries().charges_precomputed
    for user in (1, 2, 3):
        rows = await fetch(fresh_seeded_url, statement.sql, user)
        history = await fetch(
            fresh_seeded_url,
            "SELECT count(*) AS n, count(*) FILTER (WHERE NOT settled) AS u FROM rentals WHERE user_id = $1",
            user,
        )
        # One stored-totals row plus the unsettled (open) rentals, however long the history is.
        assert len(rows) == 1 + history[0]["u"] < history[0]["n"]
    plan = await fetch(fresh_seeded_url, "EXPLAIN " + statement.sql.replace("$1::INTEGER", "1"))
    assert "ix_rentals_user_unsettled" in "\n".join(row[0] for row in plan)


async def test_returns_are_exact_before_and_after_the_worker_folds_them(fresh_seeded_url: str, clean_kv: str) -> None:
    config = stage5(fresh_seeded_url, clean_kv)
    user = 7
    async with api(config) as client:
        headers = await login(client, user)
        rented = (await client.post("/api/rentals", json={"book_id": 30}, headers=headers)).json()
        assert (await client.post(f"/api/rentals/{rented['id']}/return", headers=headers)).status_code == 200
        stored_before = (await fetch(fresh_seeded_url, "SELECT * FROM user_charges WHERE user_id = $1", user))[0]
        before_worker = (await client.get(f"/api/users/{user}/charges", headers=headers)).json()

        completed, failed = await drain_jobs(config)
        assert (completed, failed) == (1, 0)

        settled = await fetch(fresh_seeded_url, "SELECT settled FROM rentals WHERE id = $1", rented["id"])
        assert settled[0]["settled"] is True
        stored_after = (await fetch(fresh_seeded_url, "SELECT * FROM user_charges WHERE user_id = $1", user))[0]
        rows = await fetch(fresh_seeded_url, "SELECT * FROM rentals WHERE id = $1", rented["id"])
        charge = rental_charge(
            rented_on=rows[0]["rented_on"],
            returned_on=rows[0]["returned_on"],
            daily_price_cents=rows[0]["daily_price_cents"],
            today=rows[0]["returned_on"],
        )
        assert stored_after["rentals"] == stored_before["rentals"] + 1
        assert stored_after["rental_cents"] == stored_before["rental_cents"] + charge.rental_cents
        assert stored_after["late_fee_cents"] == stored_before["late_fee_cents"] + charge.late_fee_cents
        after_worker = (await client.get(f"/api/users/{user}/charges", headers=headers)).json()
        assert after_worker == before_worker
    computed, precomputed = await charges_both_ways(fresh_seeded_url, clean_kv, range(user, user + 1))
    assert precomputed == computed


async def test_folding_twice_counts_once(fresh_seeded_url: str, clean_kv: str) -> None:
    config = stage5(fresh_seeded_url, clean_kv)
    async with api(config) as client:
        headers = await login(client, 9)
        rented = (await client.post("/api/rentals", json={"book_id": 31}, headers=headers)).json()
        await client.post(f"/api/rentals/{rented['id']}/return", headers=headers)
        service = client.app.service
        assert service is not None and service.jobs is not None
        jobs = service.jobs
        await jobs.enqueue_job("recompute_charges", 9)  # a duplicate event
        completed, failed = await drain_jobs(config)
        assert (completed, failed) == (2, 0)
    computed, precomputed = await charges_both_ways(fresh_seeded_url, clean_kv, range(9, 10))
    assert precomputed == computed


def worker_env(config: AppConfig) -> dict[str, str]:
    return {**os.environ, "SCALESIM_APP_CONFIG": config.to_json(), "PYTHONPATH": str(REPO)}


async def test_the_worker_process_keeps_totals_current(fresh_seeded_url: str, clean_kv: str, tmp_path: Path) -> None:
    config = stage5(fresh_seeded_url, clean_kv)
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "reference_app.workers"],
        env=worker_env(config),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        async with api(config) as client:
            headers = await login(client, 11)
            rented = (await client.post("/api/rentals", json={"book_id": 33}, headers=headers)).json()
            await client.post(f"/api/rentals/{rented['id']}/return", headers=headers)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            rows = await fetch(fresh_seeded_url, "SELECT settled FROM rentals WHERE id = $1", rented["id"])
            if rows[0]["settled"]:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail(f"the worker did not settle the rental: {(tmp_path / 'worker.log').read_text()[-2000:]}")
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            status = worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            status = worker.wait()
        log.close()
    assert status == 0, (tmp_path / "worker.log").read_text()[-2000:]


@pytest.mark.parametrize(
    ("config_json", "message"),
    [
        (None, "SCALESIM_APP_CONFIG is not set"),
        ('{"database_url": "postgresql://x@127.0.0.1:1/db"}', "workers need 'keyvalue_url'"),
        ('{"database_url": 5}', "must be a string"),
    ],
)
def test_worker_entry_point_reports_bad_config_in_one_line(config_json: str | None, message: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SCALESIM_APP_CONFIG"}
    if config_json is not None:
        env["SCALESIM_APP_CONFIG"] = config_json
    done = subprocess.run(
        [sys.executable, "-m", "reference_app.workers"], env=env, capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
