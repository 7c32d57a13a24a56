"""Scenario loading: the bundled stages, `extends`, overrides, and one-line validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from scalesim.errors import ScenarioError
from scalesim.topology import bundled_stages, load_scenario


def test_every_bundled_stage_loads_and_is_cumulative() -> None:
    assert bundled_stages() == [f"stage{n}" for n in range(6)]
    stages = [load_scenario(name) for name in bundled_stages()]
    assert stages[0].nodes.app.count == 1 and stages[0].nodes.balancer.count == 0
    assert stages[0].app.sessions == "memory" and stages[0].app.joins == "sql"
    assert stages[1].nodes.balancer.count == 1 and stages[1].nodes.app.count == 3
    assert stages[1].app.sessions == "keyvalue"
    assert stages[2].app.joins == "app" and stages[2].app.sessions == "keyvalue"
    assert stages[3].app.query_cache and stages[3].app.object_cache and stages[3].nodes.workers.count >= 1
    assert [stage.nodes.cache.count for stage in stages] == [0, 0, 0, 1, 1, 1]  # the caches' own server
    assert [stage.nodes.keyvalue.count for stage in stages] == [0, 1, 1, 1, 1, 1]
    assert stages[4].app.reads == "replicas" and stages[4].nodes.replicas.count == 2 and stages[4].app.query_cache
    assert stages[5].app.charges == "precomputed" and stages[5].app.reads == "replicas"
    for stage in stages:
        assert stage.quick.expected_seconds < stage.load.expected_seconds


def test_user_scenario_extends_a_stage(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("extends: stage3\nname: big\nnodes:\n  app: {count: 6}\n")
    scenario = load_scenario(str(path))
    assert scenario.name == "big"
    assert scenario.nodes.app.count == 6
    assert scenario.nodes.app.cpu == load_scenario("stage3").nodes.app.cpu  # merged key by key
    assert scenario.app.query_cache


def test_overrides() -> None:
    scenario = load_scenario("stage4").with_overrides(app_servers=5, replicas=3)
    assert scenario.nodes.app.count == 5 and scenario.nodes.replicas.count == 3
    with pytest.raises(ScenarioError, match="need a balancer"):
        load_scenario("stage0").with_overrides(app_servers=2)
    with pytest.raises(ScenarioError, match="at least 1"):
        load_scenario("stage4").with_overrides(replicas=0)


def test_unknown_stage_names_the_choices() -> None:
    with pytest.raises(ScenarioError, match="unknown stage 'stage9'.*stage0, stage1"):
        load_scenario("stage9")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nodes: [1, 2\n", "not valid YAML"),
        ("- a\n- b\n", "must be a mapping"),
        ("extends: stage0\nnodes: {app: {count: two}}\n", "field 'nodes.app.count' must be a number"),
        ("extends: stage0\nnodes: {app: {count: 0}}\n", "field 'nodes.app.count' must be at least 1"),
        ("extends: stage0\nnodes: {app: {cpu: -1}}\n", "field 'nodes.app.cpu' must be at least"),
        ("extends: stage0\nnodes: {queue: {count: 1}}\n", "field 'nodes.queue' is not a known field"),
        ("extends: stage3\nnodes: {cache: {count: 2}}\n", "field 'nodes.cache.count' must be 0 or 1"),
        ("extends: stage2\nnodes: {cache: {count: 1}}\n", "field 'nodes.cache' holds app.query_cache"),
        ("extends: stage0\napp: {joins: maybe}\n", "field 'app.joins' must be one of sql, app"),
        ("extends: stage0\nload: {steps: []}\n", "field 'load.steps' must be a non-empty list"),
        ("extends: stage0\nload: {steps: [10, -1]}\n", "field 'load.steps' must hold positive whole numbers"),
        ("extends: stage0\nworkload: {mix: {dance: 1}}\n", "field 'workload.mix.dance' is not a known field"),
        ("extends: stage0\nworkload: {think_time: {min: 2, max: 1}}\n", "think_time.max' must not be below"),
        ("extends: stage0\napp: {sessions: keyvalue}\n", "field 'nodes.keyvalue' is needed by app.sessions"),
        ("extends: stage0\nnodes: {app: {count: 3}}\n", "field 'nodes.balancer' is needed"),
        ("extends: stage3\napp: {reads: replicas}\n", "field 'nodes.replicas.count' must be at least 1"),
        ("extends: nowhere.yaml\n", "nowhere.yaml: no such scenario file"),
        ("name: x\n", "field 'load' is missing"),
    ],
)
def test_malformed_scenarios_get_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(str(path))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    if "no such scenario file" not in message:
        assert str(path) in str(caught.value)


def test_extends_cycle_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ScenarioError, match="cycle"):
        load_scenario(str(tmp_path / "a.yaml"))
