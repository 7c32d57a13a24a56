"""Exact mean value analysis (MVA) of the closed network, multi-server stations included.

MVA rests on one observation (Reiser & Lavenberg, 1980): in a product-form closed network, a request
arriving at a station sees the station as it is in the same network with one user fewer. So the
residence time at a single-server station with demand ``D`` is ``R(n) = D · (1 + Q(n-1))``; with
``R`` for every station, ``X(n) = n / (Z + Σ R(n))`` (the response time law) and ``Q(n) = X(n)·R(n)``
(Little's law) give the next step. Starting from an empty network the recursion climbs to ``N``
users in ``O(N·K)`` operations and yields the whole capacity curve on the way.

Multi-server stations
    A station with ``c`` servers is *load dependent*: it serves ``min(j, c)`` requests at once when
    ``j`` are present. Its exact residence time needs the marginal probabilities ``p(j | n-1)`` of
    finding ``j`` requests there (Bolch et al., *Queueing Networks and Markov Chains*, §8.2)::

        R(n) = D/c · (1 + Q(n-1) + Σ_{j=0}^{c-2} (c-1-j) · p(j | n-1))

    The textbook recursion for those probabilities obtains ``p(0 | n)`` as ``1 - Σ_{j≥1} p(j | n)``.
    That subtraction is the numerical weak spot of load-dependent MVA: once the station is busy,
    ``p(0 | n)`` is far smaller than the rounding error of the sum, and the error is then multiplied
    by up to ``c^c/c!`` on its way to ``p(c-1 | n)`` — with 40 servers the results turn to noise
    within a few hundred users. We follow Reiser's remedy instead (Reiser, 1981): the marginal
    probabilities come from the normalizing constant ``G₋ₖ`` of the *complement* network (the
    network without one copy of station k)::

        p_k(j | n) = g_k(j) · G₋ₖ(n - j) / G(n),    g_k(j) = D^j / j!  for j < c

    Every term is a product of positive numbers, so nothing cancels. The constants are kept as
    logarithms (they overflow any float long before 20,000 users) and are computed by convolution,
    each queue in ``O(N)`` (single server: a geometric series) or ``O(N·c)`` (multi-server: ``c``
    head terms plus a geometric tail), vectorized with numpy. Several multi-server stations cost one
    complement each, not one per subset of them.

Replicated stations (``copies``)
    ``m`` copies of a station each take ``1/m`` of its demand (a visit picks one copy uniformly);
    by symmetry they share one set of equations, multiplied by ``m``.

Classes
    In ``mix`` mode every user draws the class of each request, which makes one closed chain whose
    demands are the weight-averaged class demands: the single-chain recursion above is exact for it
    and per-class residence times follow by proportion. In ``populations`` mode each class is its
    own chain with its own users and think time; the multi-class recursion (Reiser & Lavenberg)
    walks the lattice of population vectors ``n ≤ N`` — ``Π (N_c + 1)`` points, so it is meant for
    modest populations. Its multi-server marginals use the same complement trick, with
    ``p_k(0 | n) = p_k(0 | n - e_c) · X_c(n) / X_c⁻ᵏ(n)`` where ``X⁻ᵏ`` is the throughput of the
    complement network, solved by the same routine (memoized).

Asymptotic bounds (``asymptotic_bounds``)
    ``X(N) ≤ min(N / (D + Z), 1 / Dmax)`` and ``R(N) ≥ max(D, N·Dmax - Z)``, where ``D`` is the total
    demand, ``Dmax`` the largest demand *per server* (``D_k / (servers × copies)``) and the knee is
    ``N* = (D + Z) / Dmax``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from scalesim.model.network import ModelError, Network
from scalesim.model.solution import ClassMetrics, Solution, StationMetrics

__all__ = [
    "MAX_LATTICE_POINTS",
    "MAX_USERS",
    "Bounds",
    "MvaCurve",
    "asymptotic_bounds",
    "mva_curve",
    "solve_mva",
]

# Guard rails, not limits of the method: the single-chain recursion is linear in N.
MAX_USERS = 1_000_000
# The multi-class recursion visits Π(N_c + 1) population vectors (for every complement network).
MAX_LATTICE_POINTS = 400_000


# --------------------------------------------------------------------------------------------
# Asymptotic bounds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Bounds:
    """Asymptotic bounds of the single-chain network (mix mode)."""

    total_demand: float
    think_time: float
    bottleneck: str | None
    bottleneck_demand: float  # the largest demand per server, D_k / (servers × copies)

    @property
    def max_throughput(self) -> float:
        return math.inf if self.bottleneck_demand <= 0 else 1.0 / self.bottleneck_demand

    @property
    def knee_users(self) -> float:
        """N* = (D + Z) / Dmax: below it users mostly think, above it they mostly queue."""
        if self.bottleneck_demand <= 0:
            return math.inf
        return (self.total_demand + self.think_time) / self.bottleneck_demand

    def throughput(self, users: float) -> float:
        """Upper bound on throughput with ``users`` users."""
        light = users / (self.total_demand + self.think_time)
        return min(light, self.max_throughput)

    def response_time(self, users: float) -> float:
        """Lower bound on the mean response time with ``users`` users."""
        return max(self.total_demand, users * self.bottleneck_demand - self.think_time)

    def to_dict(self) -> dict[str, float | str | None]:
        return {"total_demand": self.total_demand, "think_time": self.think_time,
                "bottleneck": self.bottleneck, "bottleneck_demand": self.bottleneck_demand,
                "max_throughput": self.max_throughput, "knee_users": self.knee_users}


def asymptotic_bounds(network: Network) -> Bounds:
    """Bounds on throughput and response time, with multi-server capacity ``servers / D``."""
    if network.class_mode != "mix":
        raise ModelError("class_mode: asymptotic bounds are defined here for mix mode (one chain of "
                         "users); solve populations networks with MVA or simulation")
    demands = network.demands()
    bottleneck, per_server = None, 0.0
    for station in network.stations:
        if station.is_queue and demands[station.name] / station.capacity > per_server:
            bottleneck, per_server = station.name, demands[station.name] / station.capacity
    return Bounds(total_demand=sum(demands.values()), think_time=network.mean_think_time(),
                  bottleneck=bottleneck, bottleneck_demand=per_server)


# --------------------------------------------------------------------------------------------
# The capacity curve of one chain
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, eq=False)
class MvaCurve:
    """Exact MVA for every population 0..max_users; row ``n`` of each array is ``n`` users."""

    network: Network
    throughput: np.ndarray  # (N+1,)
    response_time: np.ndarray  # (N+1,)
    residence_time: np.ndarray  # (N+1, K) seconds per request at each station
    queue_length: np.ndarray  # (N+1, K) requests at each station (all copies)
    utilization: np.ndarray  # (N+1, K) busy fraction of one server

    @property
    def max_users(self) -> int:
        return len(self.throughput) - 1

    def at(self, users: int) -> Solution:
        """The solution at ``users`` users, as a ``Solution``."""
        if not 0 <= users <= self.max_users:
            raise ModelError(f"users: {users} is outside the solved range 0..{self.max_users}")
        network = self.network
        stations = tuple(
            StationMetrics(name=station.name, kind=station.kind,
                           utilization=float(self.utilization[users, k]),
                           queue_length=float(self.queue_length[users, k]),
                           residence_time=float(self.residence_time[users, k]))
            for k, station in enumerate(network.stations))
        throughput = float(self.throughput[users])
        # Per class: each visit to a station costs in proportion to its demand there.
        demands = list(network.demands().values())
        residence = self.residence_time[users]
        classes = []
        for request_class, weight, row in zip(network.classes, network.class_weights(),
                                              network.class_demands(), strict=True):
            per_station = {network.stations[k].name: float(residence[k]) * row[k] / demands[k]
                           for k in range(len(row)) if row[k] > 0}
            classes.append(ClassMetrics(name=request_class.name, users=users * weight,
                                        throughput=throughput * weight,
                                        response_time=sum(per_station.values()), residence=per_station))
        return Solution(method="mva", users=users, throughput=throughput,
                        response_time=float(self.response_time[users]), stations=stations,
                        classes=tuple(classes))


def mva_curve(network: Network, max_users: int) -> MvaCurve:
    """Solve a mix-mode network exactly for 0..max_users users in one sweep."""
    if network.class_mode != "mix":
        raise ModelError("class_mode: the single-chain sweep needs mix mode; use solve_mva for "
                         "populations networks")
    _check_users(max_users)
    demands = network.demands()
    stations = network.stations
    throughput, residence = _single_chain(
        demands=[demands[s.name] for s in stations],
        servers=[s.servers for s in stations],
        copies=[s.copies for s in stations],
        is_queue=[s.is_queue for s in stations],
        think_time=network.mean_think_time(),
        max_users=max_users,
    )
    queue_length = residence * throughput[:, None]
    capacity = np.array([s.capacity for s in stations], dtype=float)
    demand_row = np.array([demands[s.name] for s in stations])
    utilization = throughput[:, None] * demand_row[None, :] / capacity[None, :]
    for k, station in enumerate(stations):
        if not station.is_queue:
            utilization[:, k] = 0.0  # a delay never makes anyone wait
    return MvaCurve(network=network, throughput=throughput, response_time=residence.sum(axis=1),
                    residence_time=residence, queue_length=queue_length, utilization=utilization)


def solve_mva(network: Network, users: Iterable[int]) -> list[Solution]:
    """Exact MVA at each of ``users`` (any order; answers come back in the same order)."""
    wanted = [_check_users(n) for n in users]
    if not wanted:
        return []
    if network.class_mode == "mix":
        curve = mva_curve(network, max(wanted))
        return [curve.at(n) for n in wanted]
    return _solve_populations(network, wanted)


def _check_users(users: int) -> int:
    if isinstance(users, bool) or not isinstance(users, int | np.integer) or not 0 <= users <= MAX_USERS:
        raise ModelError(f"users: must be an integer in 0..{MAX_USERS:,}, got {users!r}")
    return int(users)


def _single_chain(*, demands: Sequence[float], servers: Sequence[int], copies: Sequence[int],
                  is_queue: Sequence[bool], think_time: float,
                  max_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact MVA of one chain: throughput (N+1,) and residence time per request (N+1, K)."""
    n_stations = len(demands)
    delay = think_time + sum(d for d, q in zip(demands, is_queue, strict=True) if not q)
    # Queues with work to do, split by whether their residence time needs marginal probabilities.
    single = [k for k in range(n_stations) if is_queue[k] and demands[k] > 0 and servers[k] == 1]
    multi = [k for k in range(n_stations) if is_queue[k] and demands[k] > 0 and servers[k] > 1]
    waiting = _multi_server_waiting_terms(demands, servers, copies, single, multi, delay, max_users)

    single_terms = [(demands[k] / copies[k], copies[k]) for k in single]
    multi_terms = [(demands[k] / copies[k] / servers[k], copies[k], waiting[k]) for k in multi]
    q_single = [0.0] * len(single)  # queue length of one copy at n-1 users
    q_multi = [0.0] * len(multi)
    throughputs = [0.0]
    rows_single: list[list[float]] = [[0.0] * len(single)]
    rows_multi: list[list[float]] = [[0.0] * len(multi)]
    # The recursion itself: plain floats, as this loop runs N times.
    for n in range(1, max_users + 1):
        r_single = [d * (1.0 + q) for (d, _), q in zip(single_terms, q_single, strict=True)]
        r_multi = [d_per_server * (1.0 + q + w[n - 1])
                   for (d_per_server, _, w), q in zip(multi_terms, q_multi, strict=True)]
        total = delay
        for (_, m), r in zip(single_terms, r_single, strict=True):
            total += m * r
        for (_, m, _), r in zip(multi_terms, r_multi, strict=True):
            total += m * r
        x = n / total
        q_single = [x * r for r in r_single]
        q_multi = [x * r for r in r_multi]
        throughputs.append(x)
        rows_single.append(r_single)
        rows_multi.append(r_multi)

    throughput = np.array(throughputs)
    residence = np.zeros((max_users + 1, n_stations))
    if single:
        residence[:, single] = np.array(rows_single) * np.array([m for _, m in single_terms])
    if multi:
        residence[:, multi] = np.array(rows_multi) * np.array([m for _, m, _ in multi_terms])
    for k in range(n_stations):
        if not is_queue[k]:
            residence[1:, k] = demands[k]
    return throughput, residence


# --------------------------------------------------------------------------------------------
# Marginal probabilities of multi-server stations from log normalizing constants
# --------------------------------------------------------------------------------------------


def _multi_server_waiting_terms(demands: Sequence[float], servers: Sequence[int], copies: Sequence[int],
                                single: list[int], multi: list[int], delay: float,
                                max_users: int) -> dict[int, list[float]]:
    """For each multi-server station k: ``w[n] = Σ_{j<c-1} (c-1-j) p_k(j | n)`` for n in 0..N-1."""
    if max_users == 0:
        return {k: [] for k in multi}
    if not multi:
        return {}
    # Scale time so that the busiest server has demand 1: it keeps the logarithms small, which is
    # where their absolute rounding error (and so the relative error of G) comes from.
    scale = max(demands[k] / copies[k] / servers[k] for k in single + multi)
    factors: list[tuple[int, float, int]] = []  # (station, demand of one copy, servers) per copy
    for k in single + multi:
        factors += [(k, demands[k] / copies[k] / scale, servers[k])] * copies[k]
    size = max_users  # p(j | n) is needed for n = 0..N-1 only
    start = _log_delay_factor(delay / scale, size)
    log_g_full: np.ndarray | None = None
    out: dict[int, list[float]] = {}
    for k in multi:
        d, c = demands[k] / copies[k] / scale, servers[k]
        # The complement drops one copy of k; its other copies stay.
        complement = list(factors)
        del complement[next(i for i, factor in enumerate(factors) if factor[0] == k)]
        log_g_minus = start
        for _, factor_d, factor_c in complement:
            log_g_minus = _log_convolve_queue(log_g_minus, factor_d, factor_c)
        if log_g_full is None:
            log_g_full = _log_convolve_queue(log_g_minus, d, c)
        waiting = np.zeros(size)
        log_d = math.log(d)
        for j in range(min(c - 1, size)):
            log_gj = j * log_d - math.lgamma(j + 1)
            p_j = np.exp(log_gj + log_g_minus[: size - j] - log_g_full[j:])
            waiting[j:] += (c - 1 - j) * p_j
        out[k] = waiting.tolist()
    return out


def _log_delay_factor(delay: float, size: int) -> np.ndarray:
    """log of Z^n / n!, the normalizing constant of the delay (think time) alone."""
    n = np.arange(size)
    if delay <= 0:
        out = np.full(size, -np.inf)
        out[0] = 0.0
        return out
    return n * math.log(delay) - np.array([math.lgamma(i + 1) for i in range(size)])


def _log_convolve_queue(log_f: np.ndarray, demand: float, servers: int) -> np.ndarray:
    """Convolve log constants with one queue of ``servers`` servers and demand ``demand``."""
    size = len(log_f)
    log_d = math.log(demand)
    if servers == 1:
        return _log_convolve_geometric(log_f, log_d)
    # g(j) = d^j / j! for j < c, then a geometric tail g(c)·(d/c)^(j-c).
    out = np.full(size, -np.inf)
    for j in range(min(servers, size)):
        np.logaddexp(out[j:], log_f[: size - j] + (j * log_d - math.lgamma(j + 1)), out=out[j:])
    if servers < size:
        log_gc = servers * log_d - math.lgamma(servers + 1)
        tail = _log_convolve_geometric(log_f[: size - servers], log_d - math.log(servers))
        np.logaddexp(out[servers:], tail + log_gc, out=out[servers:])
    return out


def _log_convolve_geometric(log_f: np.ndarray, log_ratio: float) -> np.ndarray:
    """log of H(n) = Σ_i r^i F(n-i), as r^n · cumsum(F(m) / r^m) done in log space."""
    n = np.arange(len(log_f))
    return n * log_ratio + np.logaddexp.accumulate(log_f - n * log_ratio)


# --------------------------------------------------------------------------------------------
# Populations mode: exact multi-class MVA on the lattice of population vectors
# --------------------------------------------------------------------------------------------


def _solve_populations(network: Network, wanted: list[int]) -> list[Solution]:
    populations = [network.populations(n) for n in wanted]
    top = tuple(max(p[c] for p in populations) for c in range(len(network.classes)))
    lattice = _Lattice(top)
    if lattice.size > MAX_LATTICE_POINTS:
        raise ModelError(f"users: exact multi-class MVA for populations {top} needs {lattice.size:,} "
                         f"population vectors (limit {MAX_LATTICE_POINTS:,}); use --method simulate, "
                         "or class_mode: mix")
    stations = network.stations
    demand_matrix = network.class_demands()  # [class][station]
    think = [z + sum(row[k] for k, s in enumerate(stations) if not s.is_queue)
             for z, row in zip(network.class_think_times(), demand_matrix, strict=True)]
    queues = [k for k, s in enumerate(stations) if s.is_queue and any(row[k] > 0 for row in demand_matrix)]
    solver = _MultiClassSolver(
        lattice=lattice, think=think,
        per_copy=[[row[k] / stations[k].copies for row in demand_matrix] for k in queues],
        servers=[stations[k].servers for k in queues],
    )
    full = solver.solve(tuple(stations[k].copies for k in queues),
                        keep=frozenset(lattice.index(p) for p in populations))
    out = []
    for n, population in zip(wanted, populations, strict=True):
        index = lattice.index(population)
        x = full.throughput[index]
        per_copy_residence = full.residence.get(index)  # absent only for the empty network
        classes = []
        station_residence = [0.0] * len(stations)
        station_queue = [0.0] * len(stations)
        station_busy = [0.0] * len(stations)
        for c, request_class in enumerate(network.classes):
            per_station: dict[str, float] = {}
            for k, station in enumerate(stations):
                if station.is_queue:
                    if k not in queues:
                        continue
                    if per_copy_residence is None:
                        continue
                    r = per_copy_residence[c][queues.index(k)] * station.copies
                else:
                    r = demand_matrix[c][k]
                if demand_matrix[c][k] > 0:
                    per_station[station.name] = r
                station_queue[k] += x[c] * r
                station_busy[k] += x[c] * demand_matrix[c][k]
            classes.append(ClassMetrics(name=request_class.name, users=population[c], throughput=x[c],
                                        response_time=sum(per_station.values()), residence=per_station))
        total_x = sum(x)
        for k in range(len(stations)):
            # Residence per request of the whole mix: what an average request spends there.
            station_residence[k] = station_queue[k] / total_x if total_x > 0 else 0.0
        metrics = tuple(
            StationMetrics(name=s.name, kind=s.kind,
                           utilization=station_busy[k] / s.capacity if s.is_queue else 0.0,
                           queue_length=station_queue[k], residence_time=station_residence[k])
            for k, s in enumerate(stations))
        # The mean over requests of all classes: each class weighs by its throughput.
        response_time = (sum(c.throughput * c.response_time for c in classes) / total_x
                         if total_x > 0 else 0.0)
        out.append(Solution(method="mva", users=n, throughput=total_x, response_time=response_time,
                            stations=metrics, classes=tuple(classes),
                            info={"populations": list(population)}))
    return out


class _Lattice:
    """Population vectors n ≤ top in mixed-radix order (n - e_c always comes before n)."""

    def __init__(self, top: tuple[int, ...]) -> None:
        self.top = top
        self.strides = []
        size = 1
        for limit in top:
            self.strides.append(size)
            size *= limit + 1
        self.size = size

    def index(self, population: Sequence[int]) -> int:
        return sum(n * s for n, s in zip(population, self.strides, strict=True))

    def vectors(self) -> Iterable[list[int]]:
        current = [0] * len(self.top)
        for _ in range(self.size):
            yield current
            for c, limit in enumerate(self.top):  # increment the mixed-radix counter
                if current[c] < limit:
                    current[c] += 1
                    break
                current[c] = 0


@dataclass
class _LatticeSolution:
    throughput: list[list[float]]  # [index][class]
    residence: dict[int, list[list[float]]]  # index -> [class][queue] per copy, where asked


class _MultiClassSolver:
    """Reiser–Lavenberg multi-class MVA; multi-server marginals from complement networks."""

    def __init__(self, *, lattice: _Lattice, think: list[float], per_copy: list[list[float]],
                 servers: list[int]) -> None:
        self.lattice = lattice
        self.think = think
        self.per_copy = per_copy  # [queue][class] demand of one copy
        self.servers = servers
        self.memo: dict[tuple[int, ...], _LatticeSolution] = {}

    def solve(self, copies: tuple[int, ...], *, keep: frozenset[int] = frozenset()) -> _LatticeSolution:
        """Throughputs at every population vector; residence times only at ``keep``."""
        if copies in self.memo and not keep:
            return self.memo[copies]
        lattice, think, per_copy, servers = self.lattice, self.think, self.per_copy, self.servers
        n_classes = len(think)
        present = [q for q in range(len(copies)) if copies[q] > 0]
        multi = [q for q in present if servers[q] > 1]
        # Throughput of each complement network (one copy of q removed), solved first.
        complements = {q: self.solve(copies[:q] + (copies[q] - 1,) + copies[q + 1:]).throughput
                       for q in multi}
        size = lattice.size
        queue_length = [[0.0] * len(copies) for _ in range(size)]  # per copy
        marginal = {q: [[0.0] * servers[q] for _ in range(size)] for q in multi}
        for q in multi:
            marginal[q][0][0] = 1.0
        throughput = [[0.0] * n_classes for _ in range(size)]
        residence: dict[int, list[list[float]]] = {}

        for index, population in enumerate(lattice.vectors()):
            if index == 0:
                continue
            r_all = [[0.0] * len(copies) for _ in range(n_classes)]
            x = [0.0] * n_classes
            for c in range(n_classes):
                n_c = population[c]
                if n_c == 0:
                    continue
                previous = index - lattice.strides[c]
                q_prev = queue_length[previous]
                total = think[c]
                row = r_all[c]
                for q in present:
                    d = per_copy[q][c]
                    if d == 0.0:
                        continue
                    if servers[q] == 1:
                        r = d * (1.0 + q_prev[q])
                    else:
                        cs = servers[q]
                        p_prev = marginal[q][previous]
                        waiting = sum((cs - 1 - j) * p_prev[j] for j in range(cs - 1))
                        r = d / cs * (1.0 + q_prev[q] + waiting)
                    row[q] = r
                    total += copies[q] * r
                # A class with no think time and no demand left cannot exist in this network:
                # its throughput is unbounded, which makes p(0) of the parent network zero.
                x[c] = n_c / total if total > 0 else math.inf
            throughput[index] = x
            q_now = queue_length[index]
            for q in present:
                q_now[q] = sum(x[c] * r_all[c][q] for c in range(n_classes) if r_all[c][q] > 0)
            for q in multi:
                p_now = marginal[q][index]
                cs = servers[q]
                for j in range(1, cs):
                    acc = 0.0
                    for c in range(n_classes):
                        if population[c] > 0 and per_copy[q][c] > 0:
                            acc += x[c] * per_copy[q][c] * marginal[q][index - lattice.strides[c]][j - 1]
                    p_now[j] = acc / j
                c_first = next(c for c in range(n_classes) if population[c] > 0)
                x_minus = complements[q][index][c_first]
                ratio = 0.0 if math.isinf(x_minus) else x[c_first] / x_minus
                p_now[0] = marginal[q][index - lattice.strides[c_first]][0] * ratio
            if index in keep:
                residence[index] = r_all
        solution = _LatticeSolution(throughput=throughput, residence=residence)
        if copies not in self.memo:
            self.memo[copies] = solution
        return solution
