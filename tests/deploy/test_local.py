"""Local bring-up and teardown: every node starts, answers, and leaves nothing behind, even on failure."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import redis

from scalesim.deploy.local import DeploymentSettings, LocalDeployment, read_state, stop_from_state
from scalesim.errors import ComponentError
from scalesim.topology import load_scenario


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _tree(pids: list[int]) -> list[int]:
    found = list(pids)
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            found += [child.pid for child in psutil.Process(pid).children(recursive=True)]
    return found


def _small(stage: str, **overrides: int) -> object:
    scenario = load_scenario(stage).with_overrides(**overrides)
    return dataclasses.replace(scenario, data=dataclasses.replace(scenario.data, users=50, books=100, authors=30,
                                                                      rentals_per_user=3))


def test_stage1_up_serves_through_the_balancer_and_down_leaves_nothing(tmp_path: Path) -> None:
    deployment = LocalDeployment(scenario=_small("stage1", app_servers=2), run_dir=tmp_path / "run")  # type: ignore[arg-type]
    deployment.up()
    try:
        roles = sorted(node.role for node in deployment.nodes)
        assert roles == ["app", "app", "balancer", "keyvalue", "primary"]
        assert all(node.healthy() for node in deployment.nodes)
        served_by = set()
        for _ in range(6):
            with urllib.request.urlopen(f"{deployment.entry_url}/healthz", timeout=5) as response:
                served_by.add(json.loads(response.read())["server"])
        assert served_by == {"app1", "app2"}
        state = read_state(tmp_path / "run")
        assert state["entry_url"] == deployment.entry_url and len(state["nodes"]) == 5
        pids = _tree([node.process.pid for node in deployment.nodes if node.process.pid])
        data_dirs = [Path(d) for d in state["data_dirs"]]
    finally:
        deployment.down()
    assert _alive(pids) == []
    assert not any(d.exists() for d in data_dirs)
    assert all(not group.paths[0].exists() for group in deployment.budgets.groups.values())
    assert (tmp_path / "run" / "logs" / "primary.log").exists()  # logs are kept


def test_failure_halfway_stops_what_was_started(tmp_path: Path) -> None:
    # pool_size 0 is refused by the app: app servers exit during start-up, after PostgreSQL is up.
    settings = DeploymentSettings(pool_size=0)
    deployment = LocalDeployment(scenario=_small("stage0"), run_dir=tmp_path / "run", settings=settings)  # type: ignore[arg-type]
    with pytest.raises(ComponentError, match="app1 exited during start-up"):
        deployment.up()
    pids = [node.process.pid for node in deployment.nodes if node.process.pid]
    assert pids and _alive(pids) == []
    assert not (tmp_path / "run" / "deployment.json").exists()


def test_stop_from_state_works_from_another_process(tmp_path: Path) -> None:
    deployment = LocalDeployment(scenario=_small("stage0"), run_dir=tmp_path / "run")  # type: ignore[arg-type]
    deployment.up()
    try:
        state = read_state(tmp_path / "run")
        pids = _tree([node["pid"] for node in state["nodes"]])
        stopped = stop_from_state(state)  # only the state file, as `scalesim down` in another shell has
        assert sorted(stopped) == ["app1", "primary"]
        assert _alive(pids) == []
    finally:
        deployment.down()


def _call(base: str, method: str, path: str, *, token: str | None = None, body: object = None) -> object:
    request = urllib.request.Request(base + path, data=json.dumps(body).encode() if body is not None else None,
                                     method=method, headers={"Content-Type": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read()
        return json.loads(raw) if raw else None


def _keys(client: redis.Redis) -> set[str]:
    return {key.decode().split(":", 1)[0] for key in client.scan_iter(count=1000)}


def test_stage3_keeps_sessions_and_caches_on_different_servers(tmp_path: Path) -> None:
    deployment = LocalDeployment(scenario=_small("stage3", app_servers=1), run_dir=tmp_path / "run")  # type: ignore[arg-type]
    deployment.up()
    try:
        by_role = {node.role: node for node in deployment.nodes}
        assert sorted(node.role for node in deployment.nodes) == ["app", "balancer", "cache", "keyvalue", "primary",
                                                                  "worker"]
        assert deployment.app_config["keyvalue_url"] == by_role["keyvalue"].url
        assert deployment.app_config["cache_url"] == by_role["cache"].url != by_role["keyvalue"].url
        base = deployment.entry_url
        login = _call(base, "POST", "/api/login", body={"email": "user3@example.com", "password": "password3"})
        token = login["token"]  # type: ignore[index]
        for _ in range(2):
            _call(base, "GET", "/api/books/4")
            _call(base, "GET", "/api/users/3/rentals", token=token)
        book = next(book for book in range(5, 60) if _call(base, "GET", f"/api/books/{book}")["available"])  # type: ignore[index]
        rental = _call(base, "POST", "/api/rentals", token=token, body={"book_id": book})
        _call(base, "POST", f"/api/rentals/{rental['id']}/return", token=token)  # type: ignore[index]
        sessions = redis.Redis.from_url(by_role["keyvalue"].url or "")
        caches = redis.Redis.from_url(by_role["cache"].url or "")
        try:
            deadline = time.monotonic() + 5  # the worker's profile refresh lands on the cache server
            while time.monotonic() < deadline and caches.hget("profile:3", "as_of") != b"2":
                time.sleep(0.05)
            assert caches.hget("profile:3", "as_of") == b"2"
            session_keys, cache_keys = _keys(sessions), _keys(caches)
            assert {"session", "uw"} <= session_keys  # sessions and write marks
            assert any(key.startswith("arq") for key in session_keys)  # the job queue
            assert {"qc", "qv", "profile"} <= cache_keys
            assert not session_keys & {"qc", "qv", "profile"}
            assert not cache_keys & {"session", "uw"} and not any(key.startswith("arq") for key in cache_keys)
            assert sessions.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
            assert caches.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"
        finally:
            sessions.close()
            caches.close()
        stats = _call(by_role["app"].url or "", "GET", "/api/_stats",
                      token=deployment.app_config.get("stats_token"))
        assert stats["cache"]["hits"] > 0 and stats["cache_server"]["available"]  # type: ignore[index]
    finally:
        deployment.down()
