"""Exact MVA against published examples and against independent exact solutions."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from scalesim.model import ModelError, Network, asymptotic_bounds, mva_curve, network_from_dict, solve_mva

from .reference import ctmc, erlang_c_response, exact_convolution


def _two_class(batch: dict[str, float], interactive: dict[str, float], *, stations: list[dict],
               populations: tuple[int, int], thinks: tuple[float, float]) -> Network:
    return network_from_dict({
        "class_mode": "populations",
        "stations": stations,
        "classes": [
            {"name": "a", "weight": populations[0], "think_time": thinks[0], "demands": batch},
            {"name": "b", "weight": populations[1], "think_time": thinks[1], "demands": interactive},
        ],
    })


# --------------------------------------------------------------------------------------------
# Published examples
# --------------------------------------------------------------------------------------------


def test_jain_example_34_2_central_server_model():
    """R. Jain, *The Art of Computer Systems Performance Analysis* (1991), Example 34.2, Table 34.1.

    Timesharing system, central server model: think time Z = 4 s; CPU S = 0.125 s x 16 visits,
    disk A S = 0.3 s x 10 visits, disk B S = 0.2 s x 5 visits (demands 2, 3 and 1 s). Published
    (system response time, throughput, queue lengths CPU/A/B) for N = 1..5, 17..20:

        N=1   6.000  0.100   0.200  0.300  0.100
        N=2   7.400  0.175   0.421  0.684  0.193
        N=3   9.088  0.229   0.651  1.158  0.273
        N=4  11.051  0.266   0.878  1.721  0.338
        N=5  13.256  0.290   1.088  2.365  0.388
        N=17 47.045  0.333   1.974 13.195  0.499
        N=18 50.032  0.333   1.981 14.187  0.499
        N=19 53.022  0.333   1.987 15.181  0.500
        N=20 56.016  0.333   1.991 16.177  0.500
    """
    table = {
        1: (6.000, 0.100, 0.200, 0.300, 0.100),
        2: (7.400, 0.175, 0.421, 0.684, 0.193),
        3: (9.088, 0.229, 0.651, 1.158, 0.273),
        4: (11.051, 0.266, 0.878, 1.721, 0.338),
        5: (13.256, 0.290, 1.088, 2.365, 0.388),
        17: (47.045, 0.333, 1.974, 13.195, 0.499),
        18: (50.032, 0.333, 1.981, 14.187, 0.499),
        19: (53.022, 0.333, 1.987, 15.181, 0.500),
        20: (56.016, 0.333, 1.991, 16.177, 0.500),
    }
    network = Network.from_demands({"cpu": 0.125 * 16, "disk_a": 0.3 * 10, "disk_b": 0.2 * 5}, think_time=4)
    for solution in solve_mva(network, list(table)):
        response, throughput, *queues = table[solution.users]
        assert solution.response_time == pytest.approx(response, abs=0.0015)
        assert solution.throughput == pytest.approx(throughput, abs=0.0015)
        assert [s.queue_length for s in solution.stations] == pytest.approx(queues, abs=0.0015)


def test_lazowska_chapter_6_single_class_example():
    """Lazowska, Zahorjan, Graham, Sevcik, *Quantitative System Performance* (1984), ch. 6, p. 117.

    N = 3 users, Z = 15 s; CPU 0.005 s x 121 visits, disk 1 0.03 s x 70, disk 2 0.027 s x 50.
    Published exact MVA queue lengths at N = 3 (as reproduced in the LQNS libmva regression test
    test0.cc): CPU 0.0976, disk 1 0.3947, disk 2 0.2350.
    """
    network = Network.from_demands({"cpu": 0.005 * 121, "disk1": 0.03 * 70, "disk2": 0.027 * 50},
                                   think_time=15)
    solution = solve_mva(network, [3])[0]
    assert [s.queue_length for s in solution.stations] == pytest.approx([0.0976, 0.3947, 0.2350], abs=6e-5)


def test_lazowska_chapter_7_two_class_example():
    """QSP ch. 7, p. 131: a batch class (10 jobs, no think time; CPU 1.0 s, disk 0.09 s) and an
    interactive class (25 users, Z = 30 s; CPU 0.1 s, disk 0.9 s). Published exact MVA queue
    lengths (LQNS libmva test2.cc): CPU batch 9.717, interactive 0.8496; disk batch 0.2827,
    interactive 2.0900.
    """
    network = _two_class({"cpu": 1.0, "disk": 0.09}, {"cpu": 0.1, "disk": 0.9},
                         stations=[{"name": "cpu"}, {"name": "disk"}], populations=(10, 25),
                         thinks=(0.0, 30.0))
    solution = solve_mva(network, [35])[0]
    assert solution.info["populations"] == [10, 25]
    batch, interactive = solution.classes
    queue = {(c.name, k): c.throughput * c.residence[k] for c in solution.classes for k in ("cpu", "disk")}
    assert queue["a", "cpu"] == pytest.approx(9.717, abs=6e-4)
    assert queue["b", "cpu"] == pytest.approx(0.8496, abs=6e-5)
    assert queue["a", "disk"] == pytest.approx(0.2827, abs=6e-5)
    assert queue["b", "disk"] == pytest.approx(2.090, abs=6e-4)  # published to 3 decimals
    assert solution.station("cpu").queue_length == pytest.approx(9.717 + 0.8496, abs=1e-3)
    assert batch.users == 10 and interactive.users == 25


@pytest.mark.parametrize(("visits", "expected"), [
    (1, (4.141, 1.429, 0.8593, 0.571)),
    (2, (4.065, 1.089, 0.9352, 0.9105)),
    (5, (3.947, 0.6209, 1.053, 1.379)),
    (11, (3.865, 0.3286, 1.135, 1.671)),
    (20, (3.825, 0.1917, 1.175, 1.808)),
])
def test_two_server_station_with_two_classes_matches_lqns(visits, expected):
    """LQNS libmva regression test9.cc (exact multi-server MVA): a delay (class 1: 6 s, class 2:
    3 s) and a 2-server station (service 1 s; class 1 visits once, class 2 ``visits`` times);
    populations 5 and 2. Expected queue lengths: delay class 1, class 2; station class 1, class 2.
    """
    network = _two_class({"ms": 1.0}, {"ms": 1.0 * visits}, stations=[{"name": "ms", "servers": 2}],
                         populations=(5, 2), thinks=(6.0, 3.0))
    a, b = solve_mva(network, [7])[0].classes
    got = (a.throughput * 6.0, b.throughput * 3.0, a.throughput * a.residence["ms"],
           b.throughput * b.residence["ms"])
    assert got == pytest.approx(expected, abs=6e-4)


# --------------------------------------------------------------------------------------------
# Independent exact solutions
# --------------------------------------------------------------------------------------------


def test_single_class_multi_server_equals_exact_rational_convolution():
    """Buzen's convolution in exact fractions vs the float solver, 40 servers, up to 120 users."""
    demands = {"lb": Fraction("0.0002"), "app": Fraction("0.152"), "db": Fraction("0.0036"),
               "kv": Fraction("0.0011")}
    servers = {"lb": 1, "app": 40, "db": 1, "kv": 3}
    think = Fraction("0.5")
    exact = exact_convolution(demands=list(demands.values()), servers=list(servers.values()), think=think,
                              max_users=120)
    network = Network.from_demands({k: float(v) for k, v in demands.items()}, servers=servers,
                                   think_time=float(think))
    curve = mva_curve(network, 120)
    for n in range(1, 121):
        assert curve.throughput[n] == pytest.approx(float(exact.throughput[n]), rel=1e-12)
        assert curve.queue_length[n] == pytest.approx([float(q) for q in exact.queue_length[n]], rel=1e-10)


@pytest.mark.parametrize(("servers", "copies", "think", "users"), [
    ((1, 2, 1), (1, 1, 1), 1.0, 6),
    ((3, 1, 2), (1, 2, 1), 0.5, 5),
    ((2, 3, 1), (1, 1, 3), 0.0, 4),
])
def test_single_class_equals_markov_chain(servers, copies, think, users):
    demands = (0.3, 0.5, 0.2)
    names = ("a", "b", "c")
    network = Network.from_demands(dict(zip(names, demands, strict=True)), think_time=think,
                                   servers=dict(zip(names, servers, strict=True)),
                                   copies=dict(zip(names, copies, strict=True)))
    # The chain has one station per copy, each with its share of the demand.
    chain_demands, chain_servers, owner = [], [], []
    for k, (d, c, m) in enumerate(zip(demands, servers, copies, strict=True)):
        for _ in range(m):
            chain_demands.append(d / m)
            chain_servers.append(c)
            owner.append(k)
    reference = ctmc(demands=[chain_demands], servers=chain_servers, think=[think], populations=[users])
    solution = solve_mva(network, [users])[0]
    assert solution.throughput == pytest.approx(reference.throughput[0], rel=1e-9)
    for k, station in enumerate(solution.stations):
        expected = sum(q for q, o in zip(reference.queue_length[0], owner, strict=True) if o == k)
        assert station.queue_length == pytest.approx(expected, rel=1e-9)


def test_lone_multi_server_station_without_think_time():
    """The complement network is empty: all n requests are at the station, min(n, c) in service."""
    network = Network.from_demands({"pool": 1.0}, servers={"pool": 3}, think_time=0.0)
    curve = mva_curve(network, 6)
    assert curve.throughput.tolist() == pytest.approx([0, 1, 2, 3, 3, 3, 3])
    assert curve.response_time.tolist() == pytest.approx([0, 1, 1, 1, 4 / 3, 5 / 3, 2])


def test_multi_class_multi_server_equals_markov_chain():
    demands = [[0.4, 0.3, 0.0], [0.1, 0.6, 0.5]]
    servers = [2, 3, 1]
    thinks = [1.0, 0.0]
    network = network_from_dict({
        "class_mode": "populations",
        "stations": [{"name": "a", "servers": 2}, {"name": "b", "servers": 3}, {"name": "c"}],
        "classes": [
            {"name": "x", "weight": 3, "think_time": 1.0, "demands": {"a": 0.4, "b": 0.3}},
            {"name": "y", "weight": 2, "think_time": 0.0, "demands": {"a": 0.1, "b": 0.6, "c": 0.5}},
        ],
    })
    reference = ctmc(demands=demands, servers=servers, think=thinks, populations=[3, 2])
    solution = solve_mva(network, [5])[0]
    for c, request_class in enumerate(solution.classes):
        assert request_class.throughput == pytest.approx(reference.throughput[c], rel=1e-9)
        for k, name in enumerate("abc"):
            mva_queue = request_class.throughput * request_class.residence.get(name, 0.0)
            assert mva_queue == pytest.approx(reference.queue_length[c][k], rel=1e-9, abs=1e-12)


def test_mix_mode_equals_one_chain_with_weighted_demands():
    """A request mix is one chain: same answer as a single class with the averaged demands."""
    mixed = network_from_dict({
        "think_time": 0.5,
        "stations": [{"name": "app", "servers": 4}, {"name": "db"}],
        "classes": [
            {"name": "read", "weight": 3, "demands": {"app": 0.02, "db": 0.001}},
            {"name": "write", "weight": 1, "demands": {"app": 0.03, "db": 0.009}},
        ],
    })
    single = Network.from_demands({"app": 0.0225, "db": 0.003}, servers={"app": 4}, think_time=0.5)
    for a, b in zip(solve_mva(mixed, [1, 50, 400]), solve_mva(single, [1, 50, 400]), strict=True):
        assert a.throughput == pytest.approx(b.throughput, rel=1e-12)
        assert a.response_time == pytest.approx(b.response_time, rel=1e-12)
        read, write = a.classes
        assert read.throughput == pytest.approx(0.75 * a.throughput)
        # per-class response times average back to the overall one
        assert 0.75 * read.response_time + 0.25 * write.response_time == pytest.approx(a.response_time)
        assert write.response_time > read.response_time


# --------------------------------------------------------------------------------------------
# Large populations, many servers, limits
# --------------------------------------------------------------------------------------------


def test_twenty_thousand_users_and_forty_servers_stay_exact():
    """N = 20,000 with a 40-server station that is busy but not the bottleneck: the textbook
    recursion (p0 = 1 - sum) is off by more than 100% here; compare against 60-digit arithmetic."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    users = 20_000
    spec = [(0.0002, 1), (0.155, 40), (0.004, 1)]  # (demand, servers): app at 97% of db's rate
    network = Network.from_demands({"lb": 0.0002, "app": 0.155, "db": 0.004}, servers={"app": 40},
                                   think_time=2.0)
    curve = mva_curve(network, users)

    g = [mpmath.mpf(2) ** n / mpmath.factorial(n) for n in range(users + 1)]
    for demand, c in spec:
        d = mpmath.mpf(demand)
        head = [mpmath.mpf(1)]
        for j in range(1, c + 1):
            head.append(head[-1] * d / j)
        tail = [g[0]]  # convolution with the geometric tail (d/c)^i
        for m in range(1, users + 1):
            tail.append(g[m] + d / c * tail[m - 1])
        g = [sum((head[j] * g[n - j] for j in range(min(c, n + 1))), mpmath.mpf(0))
             + (head[c] * tail[n - c] if n >= c else 0) for n in range(users + 1)]
    for n in (1, 100, 400, 480, 500, 520, 600, 1000, 5000, 20_000):
        assert curve.throughput[n] == pytest.approx(float(g[n - 1] / g[n]), rel=1e-12)
    assert np.all(np.diff(curve.throughput) >= -1e-9)
    assert np.all(curve.utilization <= 1 + 1e-12)
    # Why the marginal probabilities come from normalizing constants: the textbook recursion
    # has gone wrong (negative throughput) long before the knee of this very curve.
    textbook = _textbook_load_dependent_mva(spec, think=2.0, users=600)
    assert abs(textbook[600] - curve.throughput[600]) > 0.5 * curve.throughput[600]


def _textbook_load_dependent_mva(spec: list[tuple[float, int]], *, think: float, users: int) -> list[float]:
    """Load-dependent MVA with p(0 | n) = 1 - (X D + Σ (c - j) p(j | n)) / c, as usually printed."""
    queue = [0.0] * len(spec)
    marginal = [[1.0] + [0.0] * (c - 1) for _, c in spec]
    throughput = [0.0]
    for n in range(1, users + 1):
        residence = []
        for i, (d, c) in enumerate(spec):
            waiting = sum((c - 1 - j) * marginal[i][j] for j in range(c - 1))
            residence.append(d / c * (1 + queue[i] + waiting))
        x = n / (think + sum(residence))
        queue = [x * r for r in residence]
        for i, (d, c) in enumerate(spec):
            if c > 1:
                p = [0.0] * c
                for j in range(1, c):
                    p[j] = x * d / j * marginal[i][j - 1]
                p[0] = 1 - (x * d + sum((c - j) * p[j] for j in range(1, c))) / c
                marginal[i] = p
        throughput.append(x)
    return throughput


def test_multi_server_station_approaches_erlang_c():
    """Many users with a long think time offer nearly Poisson arrivals: the 40-server station's
    residence time tends to the open M/M/40 (Erlang C) value at the same throughput, with a gap
    that shrinks like 1/N (the finite-source effect)."""
    gaps = []
    for users in (20_000, 80_000):
        network = Network.from_demands({"app": 1.0}, servers={"app": 40}, think_time=users / 36.0)
        solution = solve_mva(network, [users])[0]
        open_queue = erlang_c_response(arrival_rate=solution.throughput, service_time=1.0, servers=40)
        assert solution.throughput == pytest.approx(36.0, rel=2e-3)
        assert solution.response_time > 1.09  # it does queue: a 40-server delay would say 1.0
        gaps.append(abs(solution.response_time - open_queue) / open_queue)
    assert gaps[0] < 1e-3
    assert gaps[1] < 3e-4
    assert 3.5 < gaps[0] / gaps[1] < 4.5


def test_bounds_hold_along_the_whole_curve():
    network = Network.from_demands({"lb": 0.0002, "app": 0.012, "db": 0.003, "kv": 0.0004},
                                   servers={"app": 3}, copies={"db": 2}, delays={"net": 0.001},
                                   think_time=1.0)
    bounds = asymptotic_bounds(network)
    assert bounds.bottleneck == "app"
    assert bounds.max_throughput == pytest.approx(3 / 0.012)
    assert bounds.knee_users == pytest.approx((0.0166 + 1.0) / 0.004)
    curve = mva_curve(network, 3000)
    n = np.arange(1, 3001)
    assert np.all(curve.throughput[1:] <= np.minimum(n / (0.0166 + 1.0), 250.0) * (1 + 1e-12))
    assert np.all(curve.response_time[1:] >= np.maximum(0.0166, n * 0.004 - 1.0) * (1 - 1e-12))
    # Little's law for the whole population, and the utilization law per station
    assert curve.throughput[1:] * (curve.response_time[1:] + 1.0) == pytest.approx(n, rel=1e-10)
    assert curve.utilization[3000, 1] == pytest.approx(curve.throughput[3000] * 0.012 / 3)
    assert curve.throughput[3000] == pytest.approx(250.0, rel=1e-9)


def test_mva_input_errors():
    network = Network.from_demands({"a": 0.1}, think_time=1.0)
    with pytest.raises(ModelError, match="users"):
        solve_mva(network, [-1])
    with pytest.raises(ModelError, match="users"):
        solve_mva(network, [2.5])  # type: ignore[list-item]
    big = _two_class({"cpu": 1.0}, {"cpu": 0.5}, stations=[{"name": "cpu"}], populations=(1, 1),
                     thinks=(1.0, 1.0))
    with pytest.raises(ModelError, match="population vectors"):
        solve_mva(big, [4000])
    with pytest.raises(ModelError, match="mix mode"):
        asymptotic_bounds(big)
    assert solve_mva(network, []) == []
    assert solve_mva(network, [0])[0].throughput == 0.0
