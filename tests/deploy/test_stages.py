"""Every stage, deployed for real, answers like stage0, and shows the property its step promises.

Each stage is brought up on its real topology (balancer, several app servers, Valkey, workers,
streaming replicas) with a small deterministic data set, and one scripted session is replayed
through its entry point: reads by three users, then a rent, a read of it, a return and the charges.
Every answer must equal stage0's. Allowance for eventual consistency: none for reads of a user's
own writes; reads right after a write may be retried for up to 3 seconds (the stage3 profile object
and stage5 charges are refreshed by background workers), and must then match exactly.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scalesim.deploy.local import LocalDeployment
from scalesim.topology import Scenario, load_scenario

EVENTUAL_SECONDS = 3.0


def _small(stage: str) -> Scenario:
    scenario = load_scenario(stage)
    return dataclasses.replace(scenario, data=dataclasses.replace(scenario.data, users=40, books=120, authors=30,
                                                                      rentals_per_user=4))


def call(base: str, method: str, path: str, *, token: str | None = None, body: Any = None) -> tuple[int, Any, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None, response.headers.get("X-Served-By", "")
    except urllib.error.HTTPError as error:
        raw = error.read()
        return error.code, json.loads(raw) if raw else None, error.headers.get("X-Served-By", "")


def login(base: str, user: int) -> str:
    status, body, _ = call(base, "POST", "/api/login", body={"email": f"user{user}@example.com",
                                                             "password": f"password{user}"})
    assert status == 200, body
    token: str = body["token"]
    return token


def scripted_session(base: str, *, expected: dict[str, Any] | None = None) -> dict[str, Any]:
    """The same requests in the same order; with `expected`, post-write reads may retry until equal."""
    answers: dict[str, Any] = {}

    def record(key: str, method: str, path: str, *, token: str | None = None, body: Any = None,
               eventually: bool = False) -> Any:
        deadline = time.monotonic() + (EVENTUAL_SECONDS if eventually and expected else 0)
        while True:
            status, payload, _ = call(base, method, path, token=token, body=body)
            if expected is None or not eventually or [status, payload] == expected.get(key) \
                    or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        answers[key] = [status, payload]
        return payload

    tokens = {user: login(base, user) for user in (1, 2, 3)}
    for user, token in tokens.items():
        record(f"profile {user}", "GET", "/api/profile", token=token)
        record(f"rentals {user}", "GET", f"/api/users/{user}/rentals", token=token)
        record(f"charges {user}", "GET", f"/api/users/{user}/charges", token=token)
        record(f"others' rentals {user}", "GET", f"/api/users/{user % 3 + 1}/rentals", token=token)
    record("categories", "GET", "/api/categories")
    record("catalog", "GET", "/api/books?page=2&per_page=10")
    record("catalog category", "GET", "/api/books?category=history")
    for book in (1, 7, 33):
        record(f"book {book}", "GET", f"/api/books/{book}")
    rental = record("rent", "POST", "/api/rentals", token=tokens[1], body={"book_id": 7})
    record("book 7 after rent", "GET", "/api/books/7")
    record("open rentals after rent", "GET", "/api/users/1/rentals?status=open", token=tokens[1])
    record("profile after rent", "GET", "/api/profile", token=tokens[1], eventually=True)
    record("return", "POST", f"/api/rentals/{rental['id']}/return", token=tokens[1])
    record("return again", "POST", f"/api/rentals/{rental['id']}/return", token=tokens[1])
    record("rentals after return", "GET", "/api/users/1/rentals", token=tokens[1])
    record("charges after return", "GET", "/api/users/1/charges", token=tokens[1], eventually=True)
    record("profile after return", "GET", "/api/profile", token=tokens[1], eventually=True)
    record("bad payload", "POST", "/api/rentals", token=tokens[2], body={"book_id": "seven"})
    return answers


@pytest.fixture(scope="module")
def stage0_answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    deployment = LocalDeployment(scenario=_small("stage0"), run_dir=tmp_path_factory.mktemp("stage0"))
    deployment.up()
    try:
        return scripted_session(deployment.entry_url)
    finally:
        deployment.down()


@pytest.fixture
def deployed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalDeployment]:
    deployment = LocalDeployment(scenario=_small(request.param), run_dir=tmp_path / request.param)
    deployment.up()
    try:
        yield deployment
    finally:
        deployment.down()


def app_stats(deployment: LocalDeployment) -> list[dict[str, Any]]:
    token = deployment.app_config["stats_token"]
    return [call(node.url or "", "GET", "/api/_stats", token=token)[1]
            for node in deployment.nodes if node.role == "app"]


@pytest.mark.parametrize("deployed", ["stage1", "stage2", "stage3", "stage4", "stage5"], indirect=True)
def test_stage_answers_like_stage0(deployed: LocalDeployment, stage0_answers: dict[str, Any]) -> None:
    answers = scripted_session(deployed.entry_url, expected=stage0_answers)
    mismatches = [key for key in stage0_answers if answers.get(key) != stage0_answers[key]]
    assert mismatches == [], {key: (answers.get(key), stage0_answers[key]) for key in mismatches}
    stats = app_stats(deployed)
    stage = deployed.scenario.name
    if stage in ("stage3", "stage4", "stage5"):
        assert sum(s["cache"]["hits"] for s in stats) > 0
    if stage in ("stage4", "stage5"):
        replica_queries = sum(count for s in stats for db, count in s["queries"].items() if db.startswith("replica"))
        assert replica_queries > 0
    if stage == "stage1":
        assert all(sum(s["queries"].values()) > 0 for s in stats)  # every server took part


@pytest.mark.parametrize("deployed", ["stage1"], indirect=True)
def test_stage1_spreads_requests_shares_sessions_and_survives_a_dead_server(deployed: LocalDeployment) -> None:
    base = deployed.entry_url
    served = collections.Counter(call(base, "GET", "/api/books/1")[2] for _ in range(30))
    assert served == {"app1": 10, "app2": 10, "app3": 10}
    apps = [node for node in deployed.nodes if node.role == "app"]
    token = login(apps[0].url or "", 5)  # a session made on app1 ...
    for app in apps[1:]:  # ... is valid on every other server
        status, profile, served_by = call(app.url or "", "GET", "/api/profile", token=token)
        assert (status, profile["id"], served_by) == (200, 5, app.name)
    assert apps[1].process.pid is not None
    os.killpg(apps[1].process.pid, signal.SIGKILL)
    statuses = collections.Counter(call(base, "GET", "/api/profile", token=token)[0] for _ in range(60))
    assert statuses == {200: 60}
