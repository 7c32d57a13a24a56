"""What-if helpers: scaling, capacity curves, what to add next."""

from __future__ import annotations

from pathlib import Path

import pytest

from scalesim.model import ModelError, Network, asymptotic_bounds, load_network
from scalesim.model.whatif import bottlenecks, capacity_curve, next_upgrade, plan_upgrades, what_if

DATA = Path(__file__).parent / "data"


def test_scale_changes_servers_or_copies_by_station():
    network = load_network(DATA / "stage4.yaml")
    bigger = what_if(network, scale={"app": 40, "replicas": 6})
    assert bigger.station("app").servers == 40 and bigger.station("app").copies == 1
    assert bigger.station("replicas").copies == 6 and bigger.station("replicas").servers == 1
    explicit = what_if(network, servers={"replicas": 4}, copies={"app": 2}, think_time=3.0)
    assert explicit.station("replicas").servers == 4 and explicit.station("app").copies == 2
    assert explicit.think_time == 3.0
    assert network.station("app").servers == 3  # the original is untouched
    faster = what_if(network, speedup={"app": 2})
    assert faster.demands()["app"] == pytest.approx(network.demands()["app"] / 2)
    with pytest.raises(ModelError, match="unknown station 'cache'"):
        what_if(network, scale={"cache": 2})
    with pytest.raises(ModelError, match=r"scale\.app\.servers: must be an integer >= 1"):
        what_if(network, scale={"app": 0})
    with pytest.raises(ModelError, match="speedup.app"):
        what_if(network, speedup={"app": -1})


def test_capacity_curve_names_the_bottleneck_at_each_load():
    network = Network.from_demands({"lb": 0.0002, "app": 0.012, "db": 0.0035}, servers={"app": 3},
                                   think_time=1.0)
    points = capacity_curve(network, [1, 50, 200, 1000])
    assert [p.bottleneck for p in points] == ["app"] * 4
    assert points[-1].bottleneck_utilization == pytest.approx(1.0, abs=1e-6)
    assert points[-1].throughput == pytest.approx(250.0, rel=1e-6)
    assert bottlenecks(points) == [(1, "app")]


def test_next_upgrade_moves_the_bottleneck_to_the_runner_up():
    network = Network.from_demands({"lb": 0.0002, "app": 0.012, "db": 0.0035}, servers={"app": 3},
                                   think_time=1.0)
    upgrade = next_upgrade(network)
    assert upgrade is not None
    # app: 0.012 / servers must drop below db's 0.0035 -> 4 servers give 0.003
    assert (upgrade.station, upgrade.unit, upgrade.current, upgrade.needed) == ("app", "servers", 3, 4)
    assert upgrade.next_bottleneck == "db"
    assert upgrade.max_throughput_before == pytest.approx(250.0)
    assert upgrade.max_throughput_after == pytest.approx(1 / 0.0035)
    after = what_if(network, scale={"app": upgrade.needed})
    assert asymptotic_bounds(after).bottleneck == "db"
    assert "app: servers 3 -> 4" in upgrade.describe()


def test_next_upgrade_adds_copies_to_a_replicated_station_and_handles_ties():
    network = Network.from_demands({"app": 0.002, "replicas": 0.012}, copies={"replicas": 2},
                                   think_time=1.0)
    upgrade = next_upgrade(network)
    assert upgrade is not None
    # 0.012 / copies < 0.002 needs 7 copies (6 copies would tie with app, which does not move it)
    assert (upgrade.unit, upgrade.current, upgrade.needed) == ("copies", 2, 7)
    alone = Network.from_demands({"app": 0.01}, servers={"app": 2}, think_time=1.0)
    single = next_upgrade(alone)
    assert single is not None and single.next_bottleneck is None and single.needed == 3


def test_plan_upgrades_reaches_the_objective():
    network = Network.from_demands({"lb": 0.0001, "app": 0.012, "db": 0.0035}, servers={"app": 3},
                                   think_time=1.0)
    plan = plan_upgrades(network, users=1000, max_response_time=0.05)
    assert plan.met
    assert plan.solution.response_time <= 0.05
    assert [step.station for step in plan.steps][:2] == ["app", "db"]
    with pytest.raises(ModelError, match="objective"):
        plan_upgrades(network, users=10)
