"""The SimPy simulation against exact MVA on product-form networks, and what only it can do."""

from __future__ import annotations

import math

import pytest

from scalesim.model import Distribution, ModelError, Network, asymptotic_bounds, network_from_dict, solve_mva
from scalesim.model.simulate import SimulationSettings, simulate, t_quantile_95

# Product form: FIFO queues whose service time is exponential with the same mean for every class
# at a station; routing (cache-hit skips, uniform replica choice, repeated visits) is free.
STAGE4_PRODUCT_FORM = {
    "name": "stage4-product-form",
    "think_time": 0.2,
    "stations": [
        {"name": "lb"},
        {"name": "app", "servers": 3},
        {"name": "kv"},
        {"name": "primary"},
        {"name": "replicas", "servers": 2, "copies": 2},
        {"name": "net", "kind": "delay"},
    ],
    "classes": [
        {"name": "read", "weight": 0.8, "route": [
            {"station": "net", "service_time": 0.001},
            {"station": "lb", "service_time": 0.0004},
            {"station": "app", "service_time": 0.006},
            {"station": "kv", "service_time": 0.0008},
            {"station": "replicas", "service_time": 0.004, "probability": 0.4},
        ]},
        {"name": "write", "weight": 0.2, "route": [
            {"station": "net", "service_time": 0.001},
            {"station": "lb", "service_time": 0.0004},
            {"station": "app", "service_time": 0.006, "count": 2},
            {"station": "kv", "service_time": 0.0008},
            {"station": "primary", "service_time": 0.003, "count": 2},
        ]},
    ],
}


def _settings(**changes) -> SimulationSettings:
    base = {"replications": 10, "requests": 6000, "seed": 7, "workers": 2}
    base.update(changes)
    return SimulationSettings(**base)


@pytest.fixture(scope="module")
def stage4_runs():
    network = network_from_dict(STAGE4_PRODUCT_FORM)
    users = [5, 60, 400]
    return network, simulate(network, users, _settings()), solve_mva(network, users)


def test_throughput_agrees_with_mva_within_the_confidence_interval(stage4_runs):
    _, simulated, exact = stage4_runs
    for sim, mva in zip(simulated, exact, strict=True):
        assert abs(sim.throughput - mva.throughput) <= sim.ci["throughput"], sim.users
        assert abs(sim.response_time - mva.response_time) <= 2 * sim.ci["response_time"], sim.users
        for s, m in zip(sim.stations, mva.stations, strict=True):
            assert s.utilization == pytest.approx(m.utilization, abs=max(2 * s.ci["utilization"], 1e-3))
            assert s.queue_length == pytest.approx(m.queue_length, rel=0.1, abs=2e-3), (sim.users, s.name)


def test_routing_rules_show_up_in_station_loads(stage4_runs):
    """Reads skip the replicas on a cache hit (60%) and pick one of two copies; writes make two
    primary statements: the utilization law gives each station's load from the throughput."""
    _, simulated, _ = stage4_runs
    sim = simulated[1]
    x = sim.throughput
    read_x, write_x = (c.throughput for c in sim.classes)
    assert read_x / x == pytest.approx(0.8, abs=0.01)
    assert sim.station("replicas").utilization == pytest.approx(0.8 * x * 0.4 * 0.004 / 4, rel=0.06)
    assert sim.station("primary").utilization == pytest.approx(0.2 * x * 2 * 0.003, rel=0.06)
    assert sim.station("app").utilization == pytest.approx(x * (0.8 + 0.4) * 0.006 / 3, rel=0.04)


def test_bounds_and_littles_law_hold(stage4_runs):
    network, simulated, _ = stage4_runs
    bounds = asymptotic_bounds(network)
    for sim in simulated:
        assert sim.throughput <= bounds.throughput(sim.users) * 1.01
        assert sim.response_time >= bounds.response_time(sim.users) * 0.99
        # N = X (R + Z): the interactive response time law, within the estimates' uncertainty
        assert sim.throughput * (sim.response_time + network.think_time) == pytest.approx(sim.users, rel=0.02)
        # per station: Q = X x residence per request
        for station in sim.stations:
            assert station.queue_length == pytest.approx(sim.throughput * station.residence_time, rel=0.02)
        p50, p95, p99 = (sim.percentiles[f"p{p}"] for p in (50, 95, 99))
        assert p50 < p95 < p99
        assert all(sim.ci[key] > 0 for key in ("throughput", "response_time", "p95", "p99"))


def test_percentiles_of_one_user_are_the_service_distribution():
    """One user never queues: the response time is one exponential service, whose quantiles are
    known exactly (p = 1 - exp(-t/D))."""
    network = Network.from_demands({"server": 0.01}, think_time=0.05)
    sim = simulate(network, [1], _settings(requests=20_000))[0]
    for p in (50, 95, 99):
        exact = -0.01 * math.log(1 - p / 100)
        assert sim.percentiles[f"p{p}"] == pytest.approx(exact, rel=0.03)
        assert abs(sim.percentiles[f"p{p}"] - exact) <= 2 * sim.ci[f"p{p}"]


def test_other_service_distributions_keep_the_means_and_change_the_tails():
    network = Network.from_demands({"app": 0.004, "db": 0.003}, servers={"app": 2}, think_time=0.05)
    users = [20]
    exponential = simulate(network, users, _settings())[0]
    deterministic = simulate(network, users, _settings(service=Distribution(kind="deterministic")))[0]
    heavy = simulate(network, users, _settings(service=Distribution(kind="lognormal", cv=3.0)))[0]
    uniform = simulate(network, users, _settings(service=Distribution(kind="uniform", cv=0.5)))[0]
    for sim in (exponential, deterministic, heavy, uniform):
        # the utilization law does not care about the distribution
        assert sim.station("db").utilization == pytest.approx(sim.throughput * 0.003, rel=0.03)
    assert deterministic.percentiles["p99"] < exponential.percentiles["p99"] < heavy.percentiles["p99"]
    assert deterministic.response_time < exponential.response_time < heavy.response_time


def test_populations_mode_simulates_fixed_user_classes():
    """Two user populations that differ in visits, not in service times (FIFO product form)."""
    network = network_from_dict({
        "class_mode": "populations",
        "stations": [{"name": "cpu"}, {"name": "disk"}],
        "classes": [
            {"name": "batch", "weight": 2, "think_time": 0, "route": [
                {"station": "cpu", "service_time": 0.004, "count": 3},
                {"station": "disk", "service_time": 0.005}]},
            {"name": "interactive", "weight": 6, "think_time": 0.1, "route": [
                {"station": "cpu", "service_time": 0.004},
                {"station": "disk", "service_time": 0.005, "count": 2}]},
        ],
    })
    sim = simulate(network, [8], _settings())[0]
    exact = solve_mva(network, [8])[0]
    for s, m in zip(sim.classes, exact.classes, strict=True):
        assert abs(s.throughput - m.throughput) <= 2 * s.ci["throughput"], s.name
    assert sim.classes[0].users == pytest.approx(2, rel=0.03)


def test_fixed_seed_gives_the_same_answer_with_any_number_of_workers():
    network = Network.from_demands({"a": 0.01, "b": 0.02}, servers={"b": 2}, think_time=0.1)
    one = simulate(network, [7], _settings(replications=3, requests=2000, workers=1))[0]
    two = simulate(network, [7], _settings(replications=3, requests=2000, workers=2))[0]
    other_seed = simulate(network, [7], _settings(replications=3, requests=2000, workers=1, seed=8))[0]
    assert one.throughput == two.throughput and one.percentiles == two.percentiles
    assert one.throughput != other_seed.throughput
    assert one.info["requests"] == 3 * 2000


def test_duration_mode_measures_simulated_time():
    network = Network.from_demands({"a": 0.01}, think_time=0.09)
    sim = simulate(network, [10], _settings(requests=None, duration=200.0, replications=4))[0]
    assert sim.info["simulated_seconds"] == pytest.approx(4 * 200.0)
    exact = solve_mva(network, [10])[0]
    assert abs(sim.throughput - exact.throughput) <= 2 * sim.ci["throughput"]


def test_settings_are_checked():
    with pytest.raises(ModelError, match="requests"):
        SimulationSettings(requests=10, duration=5.0)
    with pytest.raises(ModelError, match="replications"):
        SimulationSettings(replications=0)
    with pytest.raises(ModelError, match="users"):
        simulate(Network.from_demands({"a": 0.1}, think_time=1), [0])
    assert t_quantile_95(1) == pytest.approx(12.706)
    assert t_quantile_95(9) == pytest.approx(2.262)
    assert t_quantile_95(1000) == pytest.approx(1.96)
