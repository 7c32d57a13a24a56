"""Independent reference solutions for the model tests.

Nothing here imports scalesim's solvers: these are the slow, obviously-correct ways to get the same
numbers, used to check the fast ones.

``ctmc``
    Builds the continuous-time Markov chain of a small closed network (every class cycles
    think -> its stations in order -> think; processor-sharing stations with ``min(n, c)`` servers'
    worth of capacity) and solves the global balance equations with numpy.
``exact_convolution``
    Buzen's convolution with Python fractions: normalizing constants, throughput and queue lengths
    of a single-class network as exact rationals.
``erlang_c_response``
    The mean response time of an open M/M/c queue.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np


@dataclass
class CtmcResult:
    throughput: list[float]  # per class
    queue_length: list[list[float]]  # [class][station], time-average customers


def _compositions(total: int, parts: int) -> list[tuple[int, ...]]:
    out = []
    for bars in itertools.combinations(range(total + parts - 1), parts - 1):
        previous, counts = -1, []
        for bar in bars:
            counts.append(bar - previous - 1)
            previous = bar
        counts.append(total + parts - 1 - previous - 1)
        out.append(tuple(counts))
    return out


def ctmc(*, demands: Sequence[Sequence[float]], servers: Sequence[int], think: Sequence[float],
         populations: Sequence[int]) -> CtmcResult:
    """Exact solution of a closed multi-class PS network by its Markov chain.

    ``demands[c][k]`` is the mean service of class c at station k per cycle (one visit; 0 = the
    class skips the station), ``servers[k]`` the station's servers, ``think[c]`` the class's think
    time (0 = none), ``populations[c]`` its users.
    """
    n_classes, n_stations = len(demands), len(servers)
    # Node 0 is think (infinite server), nodes 1..K the stations; each class's cyclic route.
    routes = []
    for c in range(n_classes):
        route = ([0] if think[c] > 0 else []) + [k + 1 for k in range(n_stations) if demands[c][k] > 0]
        routes.append(route)
    # Customers of a class are only ever on its route: other nodes stay at zero for it.
    per_class_states = []
    for c in range(n_classes):
        states_c = []
        for counts in _compositions(populations[c], len(routes[c])):
            full = [0] * (n_stations + 1)
            for node, count in zip(routes[c], counts, strict=True):
                full[node] = count
            states_c.append(tuple(full))
        per_class_states.append(states_c)
    states = list(itertools.product(*per_class_states))
    index = {s: i for i, s in enumerate(states)}
    size = len(states)
    generator = np.zeros((size, size))
    for i, state in enumerate(states):
        totals = [sum(state[c][node] for c in range(n_classes)) for node in range(n_stations + 1)]
        for c in range(n_classes):
            route = routes[c]
            for position, node in enumerate(route):
                count = state[c][node]
                if count == 0:
                    continue
                if node == 0:
                    rate = count / think[c]
                else:
                    k = node - 1
                    # processor sharing over min(n, c) servers' worth of capacity
                    rate = min(totals[node], servers[k]) * count / totals[node] / demands[c][k]
                target_node = route[(position + 1) % len(route)]
                if target_node == node:
                    continue
                moved = [list(s) for s in state]
                moved[c][node] -= 1
                moved[c][target_node] += 1
                j = index[tuple(tuple(s) for s in moved)]
                generator[i, j] += rate
                generator[i, i] -= rate
    # pi Q = 0, sum pi = 1: replace one balance equation by the normalization.
    system = generator.T.copy()
    system[-1, :] = 1.0
    rhs = np.zeros(size)
    rhs[-1] = 1.0
    pi = np.linalg.solve(system, rhs)

    throughput, queue_length = [], []
    for c in range(n_classes):
        first = routes[c][0]
        flow = 0.0  # completions of the first node of the route = cycles per second
        for i, state in enumerate(states):
            count = state[c][first]
            if count == 0:
                continue
            if first == 0:
                flow += pi[i] * count / think[c]
            else:
                k = first - 1
                total = sum(state[cc][first] for cc in range(n_classes))
                flow += pi[i] * min(total, servers[k]) * count / total / demands[c][k]
        throughput.append(flow)
        queue_length.append([sum(pi[i] * states[i][c][k + 1] for i in range(size))
                             for k in range(n_stations)])
    return CtmcResult(throughput=throughput, queue_length=queue_length)


@dataclass
class ExactResult:
    throughput: list[Fraction]  # index n = users
    queue_length: list[list[Fraction]]  # [n][station]


def exact_convolution(*, demands: Sequence[Fraction], servers: Sequence[int], think: Fraction,
                      max_users: int) -> ExactResult:
    """Single-class throughput and queue lengths for n = 0..max_users as exact fractions."""
    size = max_users + 1

    def station_factor(demand: Fraction, c: int) -> list[Fraction]:
        factor = [Fraction(1)]
        for j in range(1, size):
            factor.append(factor[-1] * demand / min(j, c))
        return factor

    def convolve(a: list[Fraction], b: list[Fraction]) -> list[Fraction]:
        return [sum((a[j] * b[n - j] for j in range(n + 1)), Fraction(0)) for n in range(size)]

    think_factor = [Fraction(1)]
    for n in range(1, size):
        think_factor.append(think_factor[-1] * think / n)
    factors = [station_factor(d, c) for d, c in zip(demands, servers, strict=True)]
    complements = []
    for k in range(len(factors)):
        g = think_factor
        for other, factor in enumerate(factors):
            if other != k:
                g = convolve(g, factor)
        complements.append(g)
    full = convolve(complements[0], factors[0])
    throughput = [Fraction(0)] + [full[n - 1] / full[n] for n in range(1, size)]
    queue_length = []
    for n in range(size):
        row = []
        for k, factor in enumerate(factors):
            row.append(sum((j * factor[j] * complements[k][n - j] for j in range(1, n + 1)),
                           Fraction(0)) / full[n])
        queue_length.append(row)
    return ExactResult(throughput=throughput, queue_length=queue_length)


def erlang_c_response(*, arrival_rate: float, service_time: float, servers: int) -> float:
    """Mean response time (wait + service) of an open M/M/c queue."""
    offered = arrival_rate * service_time
    rho = offered / servers
    assert rho < 1
    # Erlang B by the stable recursion, then Erlang C from it.
    erlang_b = 1.0
    for k in range(1, servers + 1):
        erlang_b = offered * erlang_b / (k + offered * erlang_b)
    erlang_c = erlang_b / (1 - rho * (1 - erlang_b))
    return service_time + erlang_c * service_time / (servers - offered)


def approx_equal(a: float, b: float, *, rel: float) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=rel * 1e-3)
