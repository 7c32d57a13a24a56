"""Benchmarks of the capacity model; prints figures (run: ``python bench/bench_model.py``).

1. Exact MVA: a sweep of 1..10,000 users over a 10-station network (single-server only, and with
   multi-server and replicated stations), and 20,000 users with a 40-server station.
2. Simulation speed against Ciw on the same closed networks, in one run, one process each:
   a single exponential queue with think time (the closed M/M/1, "machine repairman") and a small
   network (balancer, 3-server app, database). Ciw has no closed-network mode: its model injects N
   customers at time ~0 into an infinite-server think node and routes them round forever.
3. Wall time for one million simulated requests through a stage4-like network (balancer, 3 app
   servers, key-value, primary, 2 replicas; cache hits skip the replicas) with the default settings
   (parallel replications on 2 worker processes).

Ciw is needed for part 2 only (``pip install ciw``); without it that part is skipped.
"""

from __future__ import annotations

import argparse
import time

from scalesim.model import Network, mva_curve, network_from_dict, solve_mva
from scalesim.model.simulate import SimulationSettings, simulate

STAGE4 = {
    "name": "stage4",
    "think_time": 1.0,
    "stations": [
        {"name": "lb"},
        {"name": "app", "servers": 3},
        {"name": "kv"},
        {"name": "primary"},
        {"name": "replicas", "copies": 2},
    ],
    "classes": [
        {"name": "read", "weight": 0.8, "route": [
            {"station": "lb", "service_time": 0.0002},
            {"station": "app", "service_time": 0.004},
            {"station": "kv", "service_time": 0.0003},
            {"station": "replicas", "service_time": 0.003, "probability": 0.3},
        ]},
        {"name": "write", "weight": 0.2, "route": [
            {"station": "lb", "service_time": 0.0002},
            {"station": "app", "service_time": 0.005},
            {"station": "kv", "service_time": 0.0003},
            {"station": "primary", "service_time": 0.002, "count": 2},
        ]},
    ],
}


def _best_of(repeats: int, work) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def bench_mva() -> None:
    print("== exact MVA ==")
    names = [f"s{i}" for i in range(10)]
    demands = {name: 0.0005 + 0.0004 * i for i, name in enumerate(names)}
    plain = Network.from_demands(demands, think_time=1.0)
    seconds = _best_of(3, lambda: mva_curve(plain, 10_000))
    print(f"10 single-server stations, users 1..10,000:            {seconds * 1000:8.1f} ms")
    mixed = Network.from_demands({**demands, "s9": 0.16, "s8": 0.02, "s7": 0.006},
                                 servers={"s9": 40, "s8": 8, "s7": 2}, copies={"s6": 3}, think_time=1.0)
    seconds = _best_of(3, lambda: mva_curve(mixed, 10_000))
    print(f"10 stations incl. 40/8/2 servers and 3 copies, 1..10,000: {seconds * 1000:6.1f} ms")
    big = Network.from_demands({"lb": 0.0002, "app": 0.155, "db": 0.004}, servers={"app": 40}, think_time=2.0)
    seconds = _best_of(3, lambda: mva_curve(big, 20_000))
    print(f"40-server app + lb + db, users 1..20,000:              {seconds * 1000:8.1f} ms")
    three = network_from_dict(STAGE4)
    seconds = _best_of(3, lambda: solve_mva(three, [20_000]))
    print(f"stage4 model at 20,000 users (one solve):              {seconds * 1000:8.1f} ms")


def _ours(network: Network, users: int, requests: int) -> tuple[float, float, float]:
    """Requests per wall second of our simulator in one process, and its throughput estimate."""
    settings = SimulationSettings(replications=1, requests=requests, warmup=0.0, workers=1, seed=11)
    started = time.perf_counter()
    solution = simulate(network, [users], settings)[0]
    wall = time.perf_counter() - started
    return solution.info["requests"] / wall, solution.throughput, wall


def _ciw(stations: list[tuple[float, int]], think: float, users: int, horizon: float,
         ) -> tuple[float, float, float, int]:
    """The same closed network in Ciw: requests per wall second, throughput, wall, requests."""
    import ciw

    class Inject(ciw.dists.Distribution):
        """N arrivals right at the start, then none: the closed population."""

        def __init__(self, count: int) -> None:
            self.left = count

        def sample(self, t=None, ind=None):
            if self.left > 0:
                self.left -= 1
                return 1e-9
            return float("inf")

    nodes = len(stations) + 1  # node 1 is the think time
    routing = [[0.0] * nodes for _ in range(nodes)]
    for i in range(nodes):
        routing[i][(i + 1) % nodes] = 1.0
    network = ciw.create_network(
        arrival_distributions=[Inject(users)] + [None] * len(stations),
        service_distributions=[ciw.dists.Exponential(rate=1 / think)]
        + [ciw.dists.Exponential(rate=1 / demand) for demand, _ in stations],
        number_of_servers=[float("inf")] + [servers for _, servers in stations],
        routing=routing,
    )
    ciw.seed(11)
    simulation = ciw.Simulation(network)
    started = time.perf_counter()
    simulation.simulate_until_max_time(horizon)
    wall = time.perf_counter() - started
    last = nodes  # a request completes when it leaves the last station
    completed = sum(1 for record in simulation.get_all_records() if record.node == last)
    return completed / wall, completed / horizon, wall, completed


def bench_against_ciw(requests: int) -> None:
    print("\n== simulation speed: scalesim (SimPy) vs Ciw, same closed networks, one process each ==")
    try:
        import ciw  # noqa: F401
    except ImportError:
        print("ciw is not installed (pip install ciw): skipped")
        return
    cases = [
        ("closed M/M/1 (N=10, Z=9 s, D=1 s)", [(1.0, 1)], 9.0, 10),
        ("lb + 3-server app + db (N=50, Z=0.1 s)", [(0.0002, 1), (0.009, 3), (0.002, 1)], 0.1, 50),
    ]
    for label, stations, think, users in cases:
        names = [f"s{i}" for i in range(len(stations))]
        network = Network.from_demands({n: d for n, (d, _) in zip(names, stations, strict=True)},
                                       servers={n: c for n, (_, c) in zip(names, stations, strict=True)},
                                       think_time=think)
        exact = solve_mva(network, [users])[0].throughput
        ours_rate, ours_x, ours_wall = _ours(network, users, requests)
        horizon = requests / exact
        ciw_rate, ciw_x, ciw_wall, ciw_done = _ciw(stations, think, users, horizon)
        print(f"{label}")
        print(f"  scalesim: {ours_rate:10,.0f} requests/s ({requests:,} requests in {ours_wall:.2f} s; "
              f"X = {ours_x:.4g}/s)")
        print(f"  ciw:      {ciw_rate:10,.0f} requests/s ({ciw_done:,} requests in {ciw_wall:.2f} s; "
              f"X = {ciw_x:.4g}/s)")
        print(f"  exact MVA X = {exact:.4g}/s;  speed ratio scalesim / ciw = {ours_rate / ciw_rate:.1f}x")


def bench_million(requests: int, replications: int) -> None:
    print("\n== one million simulated requests through a stage4-like network ==")
    network = network_from_dict(STAGE4)
    per_replication = requests // replications
    settings = SimulationSettings(replications=replications, requests=per_replication, seed=5)
    started = time.perf_counter()
    solution = simulate(network, [300], settings)[0]
    wall = time.perf_counter() - started
    exact = solve_mva(network, [300])[0]
    print(f"{solution.info['requests']:,} measured requests (+ warm-up), {replications} replications on "
          f"{solution.info['workers']} workers: {wall:.2f} s wall, "
          f"{solution.info['requests'] / wall:,.0f} requests/s")
    print(f"  X = {solution.throughput:.2f} ± {solution.ci['throughput']:.2f}/s (MVA {exact.throughput:.2f}), "
          f"R = {solution.response_time * 1000:.3f} ± {solution.ci['response_time'] * 1000:.3f} ms "
          f"(MVA {exact.response_time * 1000:.3f}; MVA is approximate here: the app's service time "
          f"differs by class), p95 = {solution.percentiles['p95'] * 1000:.2f} ms, "
          f"p99 = {solution.percentiles['p99'] * 1000:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ciw-requests", type=int, default=100_000, help="requests per Ciw comparison")
    parser.add_argument("--million", type=int, default=1_000_000, help="requests for part 3")
    parser.add_argument("--replications", type=int, default=10, help="replications for part 3")
    args = parser.parse_args()
    bench_mva()
    bench_against_ciw(args.ciw_requests)
    bench_million(args.million, args.replications)


if __name__ == "__main__":
    main()
