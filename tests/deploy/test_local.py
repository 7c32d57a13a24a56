"""Local bring-up and teardown: every node starts, answers, and leaves nothing behind, even on failure."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import urllib.request
from pathlib import Path

import psutil
import pytest

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
