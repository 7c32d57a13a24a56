"""A SimPy simulation of the closed network: percentiles, confidence intervals, routing rules.

MVA gives exact means for product-form networks. The simulation answers what it cannot: response
time percentiles (p50/p95/p99), non-exponential service (deterministic, lognormal, uniform), and the
per-request routing rules of request classes (a cache hit skips the database; a read picks one of R
replicas) with their real variability rather than their averages. On a product-form network both
must agree, which is how each checks the other.

How a run goes
    Each user is one SimPy process that loops forever: draw the class of the next request, think,
    then walk the class's route. A replication discards a warm-up (the network starts with every
    user thinking and every queue empty), then measures either a number of completed requests or a
    stretch of simulated time. Replications are independent (each has its own ``random.Random``
    seeded from the run seed) and run in parallel worker processes; the answer is the mean over
    replications with a Student-t 95% confidence half-width.

Why stations are not SimPy resources
    Queues here are FIFO and a request's service time does not depend on the state of the queue, so
    the moment a request arrives we already know when it will leave: it starts when the earliest of
    the station's servers frees up (or now) and leaves a service time later — Lindley's recursion,
    with a heap of server-free times for several servers. So every visit costs exactly one
    ``timeout`` event and no queue bookkeeping, where a ``simpy.Resource`` needs a request event, a
    release event and two hand-offs per visit. Arrivals are still processed in time order, which is
    all FIFO needs. (Processor sharing would need the real thing; MVA's means are the same for it.)

Statistics
    Throughput is completions in the measured window divided by its length; station queue length is
    the time-average number present (sum of residence times over the window), utilization the busy
    time over servers × window. Boundary effects at the window edges balance out in steady state.
"""

from __future__ import annotations

import math
import random
import time
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from heapq import heapreplace
from typing import Any

import numpy as np
import simpy

from scalesim.model.network import Distribution, ModelError, Network
from scalesim.model.solution import ClassMetrics, Solution, StationMetrics

__all__ = ["PERCENTILES", "SimulationSettings", "simulate"]

PERCENTILES = (50, 95, 99)

# Sampling codes, checked in this order in the hot loop (exponential is by far the most common).
_EXPONENTIAL, _DETERMINISTIC, _LOGNORMAL, _UNIFORM = 0, 1, 2, 3


@dataclass(frozen=True, kw_only=True)
class SimulationSettings:
    """How long and how often to simulate.

    Give ``requests`` (measured completions per replication) or ``duration`` (measured simulated
    seconds per replication); with neither, 20,000 requests. ``warmup`` is simulated seconds thrown
    away first; by default a replication discards its first max(2 × users, requests / 10)
    completions, or in duration mode max(2 cycles at the asymptotic bound, 10% of the duration).
    ``service`` replaces every station's service distribution (the means stay).
    """

    replications: int = 10
    seed: int = 1
    requests: int | None = None
    duration: float | None = None
    warmup: float | None = None
    workers: int = 2
    service: Distribution | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.replications) or self.replications < 1:
            raise ModelError(f"replications: must be an integer >= 1, got {self.replications!r}")
        if not _is_int(self.seed):
            raise ModelError(f"seed: must be an integer, got {self.seed!r}")
        if self.requests is not None and self.duration is not None:
            raise ModelError("requests: give either requests or duration, not both")
        if self.requests is not None and (not _is_int(self.requests) or self.requests < 1):
            raise ModelError(f"requests: must be an integer >= 1, got {self.requests!r}")
        if self.duration is not None and not (_is_number(self.duration) and self.duration > 0):
            raise ModelError(f"duration: must be a number of seconds > 0, got {self.duration!r}")
        if self.warmup is not None and not (_is_number(self.warmup) and self.warmup >= 0):
            raise ModelError(f"warmup: must be a number of seconds >= 0, got {self.warmup!r}")
        if not _is_int(self.workers) or self.workers < 1:
            raise ModelError(f"workers: must be an integer >= 1, got {self.workers!r}")

    @property
    def measured_requests(self) -> int | None:
        if self.duration is not None:
            return None
        return 20_000 if self.requests is None else self.requests


def simulate(network: Network, users: Iterable[int], settings: SimulationSettings | None = None,
             ) -> list[Solution]:
    """Simulate ``network`` at each number of users; one ``Solution`` per entry of ``users``."""
    settings = settings or SimulationSettings()
    wanted = list(users)
    for n in wanted:
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ModelError(f"users: the simulation needs an integer >= 1, got {n!r}")
    jobs = [_job(network, int(n), settings, replication)
            for n in wanted for replication in range(settings.replications)]
    started = time.perf_counter()
    workers = min(settings.workers, len(jobs))
    if workers <= 1:
        results = [_run_replication(job) for job in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_run_replication, jobs))
    elapsed = time.perf_counter() - started
    # Spread the wall time over the user counts by their share of the simulated work.
    total_visits = sum(r.visits for r in results) or 1
    out = []
    for i, n in enumerate(wanted):
        batch = results[i * settings.replications:(i + 1) * settings.replications]
        share = elapsed * sum(r.visits for r in batch) / total_visits
        out.append(_summarize(network, n, batch, wall_seconds=share, workers=workers))
    return out


# --------------------------------------------------------------------------------------------
# One replication (runs in a worker process: everything it gets must pickle)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    users: int
    seed: str
    classes_of_users: tuple[int, ...] | None  # populations mode: each user's class
    cumulative_weights: tuple[float, ...]  # mix mode: for drawing a class per request
    thinks: tuple[tuple[int, float, float], ...]  # per class: sampling code and parameters
    # per class, per step: (probability, visits); a visit is
    # (station, first slot, copies, servers, sampling code, parameter a, parameter b)
    routes: tuple[Any, ...]
    slots: tuple[tuple[int, int, int], ...]  # per station: first slot, copies, servers (0: delay)
    n_slots: int
    warmup_time: float | None
    warmup_requests: int
    measured_requests: int | None
    measured_time: float | None


@dataclass
class _Replication:
    users: int
    window: float
    completions: int
    visits: int
    wall_seconds: float
    class_counts: list[int]
    class_means: list[float]
    class_percentiles: list[list[float]]
    percentiles: list[float]
    mean_response: float
    busy: list[float]
    residence: list[float]


def _job(network: Network, users: int, settings: SimulationSettings, replication: int) -> _Job:
    stations = network.stations
    index = {s.name: k for k, s in enumerate(stations)}
    override = settings.service
    slots, next_slot = [], 0
    for station in stations:
        if station.is_queue:
            slots.append((next_slot, station.copies, station.servers))
            next_slot += station.copies
        else:
            slots.append((-1, 1, 0))
    routes = []
    for request_class in network.classes:
        steps = []
        for visit in request_class.route:
            k = index[visit.station]
            station = stations[k]
            code, a, b = _sampler(override or station.service, visit.service_time)
            first, copies, servers = slots[k]
            one = (k, first, copies, servers, code, a, b)
            steps.append((visit.probability, (one,) * visit.count))
        routes.append(tuple(steps))
    thinks = tuple(_sampler(network.think, z) for z in network.class_think_times())
    weights = network.class_weights()
    cumulative = tuple(float(x) for x in np.cumsum(weights))
    classes_of_users = None
    if network.class_mode == "populations":
        populations = network.populations(users)
        classes_of_users = tuple(c for c, count in enumerate(populations) for _ in range(count))

    measured_requests = settings.measured_requests
    warmup_time = settings.warmup
    warmup_requests = 0
    if warmup_time is None:
        if measured_requests is not None:
            warmup_requests = max(2 * users, measured_requests // 10)
        else:
            assert settings.duration is not None
            warmup_time = max(2 * _cycle_bound(network, users), 0.1 * settings.duration)
    return _Job(users=users, seed=f"scalesim:{settings.seed}:{users}:{replication}",
                classes_of_users=classes_of_users, cumulative_weights=cumulative, thinks=thinks,
                routes=tuple(routes), slots=tuple(slots), n_slots=next_slot,
                warmup_time=warmup_time, warmup_requests=warmup_requests,
                measured_requests=measured_requests, measured_time=settings.duration)


def _cycle_bound(network: Network, users: int) -> float:
    """A user's cycle time at the asymptotic bound: max(D + Z, N · Dmax)."""
    demands = network.demands()
    d_max = max((demands[s.name] / s.capacity for s in network.stations if s.is_queue), default=0.0)
    return max(sum(demands.values()) + network.mean_think_time(), users * d_max)


def _sampler(distribution: Distribution, mean: float) -> tuple[int, float, float]:
    """Sampling code and parameters for a duration with this shape and mean."""
    if mean <= 0 or distribution.kind == "deterministic" or distribution.effective_cv == 0:
        return _DETERMINISTIC, max(mean, 0.0), 0.0
    if distribution.kind == "exponential":
        return _EXPONENTIAL, mean, 0.0
    cv = distribution.effective_cv
    if distribution.kind == "lognormal":
        sigma2 = math.log1p(cv * cv)
        return _LOGNORMAL, math.log(mean) - sigma2 / 2, math.sqrt(sigma2)
    half_width = mean * cv * math.sqrt(3)  # uniform on mean ± half_width
    return _UNIFORM, mean - half_width, mean + half_width


def _run_replication(job: _Job) -> _Replication:
    started = time.perf_counter()
    rng = random.Random(job.seed)
    rand = rng.random
    lognormal = rng.lognormvariate
    log = math.log
    env = simpy.Environment()
    timeout = env.timeout

    free_at = [0.0] * job.n_slots  # single-server slots: when the server frees up
    heaps: list[list[float]] = [[] for _ in range(job.n_slots)]  # multi-server slots
    for first, copies, servers in job.slots:
        if servers > 1:
            for slot in range(first, first + copies):
                heaps[slot] = [0.0] * servers
    n_stations = len(job.slots)
    busy = [0.0] * n_stations
    residence = [0.0] * n_stations
    n_classes = len(job.routes)
    samples = [array("d") for _ in range(n_classes)]
    routes, thinks, cumulative = job.routes, job.thinks, job.cumulative_weights
    mixed = job.classes_of_users is None and n_classes > 1

    measure_from = math.inf if job.warmup_time is None else job.warmup_time
    warmup_left = job.warmup_requests
    measured_left = -1 if job.measured_requests is None else job.measured_requests
    visits = 0
    stop = env.event()

    def user(request_class: int) -> Any:
        nonlocal measure_from, warmup_left, measured_left, visits
        while True:
            if mixed:
                request_class = bisect_right(cumulative, rand() * cumulative[-1])
            code, a, b = thinks[request_class]
            if code == _EXPONENTIAL:
                yield timeout(-log(1.0 - rand()) * a)
            elif code != _DETERMINISTIC or a > 0:
                yield timeout(_draw(code, a, b, rand, lognormal))
            began = env.now
            for probability, step_visits in routes[request_class]:
                if probability < 1.0 and rand() >= probability:
                    continue
                for k, first, copies, servers, code, a, b in step_visits:
                    if code == _EXPONENTIAL:
                        service = -log(1.0 - rand()) * a
                    elif code == _DETERMINISTIC:
                        service = a
                    else:
                        service = _draw(code, a, b, rand, lognormal)
                    now = env.now
                    if servers == 1:
                        slot = first if copies == 1 else first + int(rand() * copies)
                        start = free_at[slot]
                        if start < now:
                            start = now
                        end = start + service
                        free_at[slot] = end
                    elif servers == 0:  # a delay: no waiting
                        end = now + service
                    else:
                        heap = heaps[first if copies == 1 else first + int(rand() * copies)]
                        start = heap[0]  # the server that frees up first
                        if start < now:
                            start = now
                        end = start + service
                        heapreplace(heap, end)
                    if now >= measure_from:
                        residence[k] += end - now
                        busy[k] += service
                        visits += 1
                    yield timeout(end - now)
            finished = env.now
            if finished >= measure_from:
                samples[request_class].append(finished - began)
                measured_left -= 1
                if measured_left == 0:
                    stop.succeed()
            elif warmup_left > 0:
                warmup_left -= 1
                if warmup_left == 0:
                    measure_from = finished

    if job.classes_of_users is None:
        for _ in range(job.users):
            env.process(user(0))
    else:
        for request_class in job.classes_of_users:
            env.process(user(request_class))

    if job.measured_requests is not None:
        env.run(until=stop)
        window = env.now - measure_from
    else:
        assert job.measured_time is not None and job.warmup_time is not None
        env.run(until=job.warmup_time + job.measured_time)
        window = job.measured_time

    per_class = [np.frombuffer(s, dtype=float) if len(s) else np.zeros(0) for s in samples]
    every = np.concatenate(per_class) if n_classes > 1 else per_class[0]
    completions = int(every.size)
    return _Replication(
        users=job.users, window=window, completions=completions, visits=visits,
        wall_seconds=time.perf_counter() - started,
        class_counts=[int(s.size) for s in per_class],
        class_means=[float(s.mean()) if s.size else math.nan for s in per_class],
        class_percentiles=[_percentiles(s) for s in per_class],
        percentiles=_percentiles(every),
        mean_response=float(every.mean()) if completions else math.nan,
        busy=busy, residence=residence)


def _draw(code: int, a: float, b: float, rand: Any, lognormal: Any) -> float:
    if code == _DETERMINISTIC:
        return a
    if code == _LOGNORMAL:
        return float(lognormal(a, b))
    if code == _UNIFORM:
        return float(a + (b - a) * rand())
    return float(-math.log(1.0 - rand()) * a)


def _percentiles(values: np.ndarray) -> list[float]:
    if values.size == 0:
        return [math.nan] * len(PERCENTILES)
    return [float(v) for v in np.percentile(values, PERCENTILES)]


# --------------------------------------------------------------------------------------------
# Replications → one Solution with confidence intervals
# --------------------------------------------------------------------------------------------

# Two-sided 95% Student-t quantiles by degrees of freedom; between entries we use the smaller
# degrees of freedom, which errs on the wide side.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
        18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060,
        26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t_quantile_95(degrees_of_freedom: int) -> float:
    """The 97.5% quantile of Student's t (two-sided 95%)."""
    if degrees_of_freedom < 1:
        return math.inf
    usable = [df for df in _T95 if df <= degrees_of_freedom]
    return 1.960 if degrees_of_freedom > 120 else _T95[max(usable)]


@dataclass
class _Estimate:
    mean: float
    half_width: float


def _estimate(values: Sequence[float]) -> _Estimate:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return _Estimate(math.nan, math.nan)
    mean = sum(finite) / len(finite)
    if len(finite) < 2:
        return _Estimate(mean, math.inf)
    variance = sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)
    return _Estimate(mean, t_quantile_95(len(finite) - 1) * math.sqrt(variance / len(finite)))


@dataclass
class _Collector:
    """Means and CI half-widths keyed by metric name."""

    values: dict[str, float] = field(default_factory=dict)
    ci: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, samples: Sequence[float]) -> float:
        estimate = _estimate(samples)
        self.values[key] = estimate.mean
        self.ci[key] = estimate.half_width
        return estimate.mean


def _summarize(network: Network, users: int, batch: list[_Replication], *, wall_seconds: float,
               workers: int) -> Solution:
    top = _Collector()
    throughput = top.add("throughput", [r.completions / r.window for r in batch])
    response_time = top.add("response_time", [r.mean_response for r in batch])
    percentiles = {f"p{p}": top.add(f"p{p}", [r.percentiles[i] for r in batch])
                   for i, p in enumerate(PERCENTILES)}

    stations = []
    for k, station in enumerate(network.stations):
        metrics = _Collector()
        capacity = station.capacity if station.is_queue else 0
        utilization = metrics.add("utilization", [
            r.busy[k] / (r.window * capacity) if capacity else 0.0 for r in batch])
        queue_length = metrics.add("queue_length", [r.residence[k] / r.window for r in batch])
        residence_time = metrics.add("residence_time", [
            r.residence[k] / r.completions if r.completions else math.nan for r in batch])
        stations.append(StationMetrics(name=station.name, kind=station.kind, utilization=utilization,
                                       queue_length=queue_length, residence_time=residence_time,
                                       ci=metrics.ci))
    classes = []
    for c, request_class in enumerate(network.classes):
        metrics = _Collector()
        class_throughput = metrics.add("throughput", [r.class_counts[c] / r.window for r in batch])
        class_response = metrics.add("response_time", [r.class_means[c] for r in batch])
        class_percentiles = {f"p{p}": metrics.add(f"p{p}", [r.class_percentiles[c][i] for r in batch])
                             for i, p in enumerate(PERCENTILES)}
        # Little's law for the class as a whole: users = throughput × (response + think).
        think = network.class_think_times()[c]
        classes.append(ClassMetrics(name=request_class.name,
                                    users=class_throughput * (class_response + think),
                                    throughput=class_throughput, response_time=class_response,
                                    percentiles=class_percentiles, ci=metrics.ci))
    completed = sum(r.completions for r in batch)
    info = {
        "replications": len(batch),
        "requests": completed,
        "simulated_seconds": sum(r.window for r in batch),
        "wall_seconds": wall_seconds,
        "workers": workers,
        "requests_per_second": completed / wall_seconds if wall_seconds > 0 else math.nan,
    }
    return Solution(method="simulate", users=users, throughput=throughput, response_time=response_time,
                    stations=tuple(stations), classes=tuple(classes), percentiles=percentiles,
                    ci=top.ci, info=info)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
