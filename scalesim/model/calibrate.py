"""Calibration: from a measured run to a capacity model of the stage that was measured.

A run's results document says, step by step, how many requests completed and how many CPU seconds
every node spent meanwhile. The *utilization law* turns that into what the model needs: the service
demand of a node is the CPU it spends per completed request, D = busy CPU seconds / requests.

Background CPU
    A node also burns CPU that no request causes: PostgreSQL's WAL writer and autovacuum, the
    balancer's health checks, the app's replica-lag probes, Locust's own idle loop. Dividing all of
    it by the requests overstates the demand, most at light load. With several steps we fit a line
    per node, ``cores_used = background + D × throughput`` (least squares weighted by each step's
    requests, so the better-measured busy steps count more): the slope is the demand per request,
    the intercept the background. Steps where some budgeted node was at 90% of its budget or more
    are left out of this light-load fit when at least two other steps remain: throttled and
    overloaded servers batch their work and get cheaper per request (or dearer), which the saturated
    demand below describes. The throughput is counted over Locust's window and the CPU over the
    snapshot window (they differ by up to a few percent under load). A fit that makes no physical
    sense (a negative slope, or a negative background) falls back to the plain ratio over the steps
    used. With ``step=i`` only that step is used, with the plain ratio (background included, so
    demands are upper bounds).

Stations
    One station per role on the request path: ``balancer``; ``app`` with one server per app node
    (each node is its own host: requests spread over them); ``keyvalue`` (sessions, write marks);
    ``cache`` (the caches' own server, stage3+: cached reads visit it as they visit ``keyvalue``, its
    demand per request averaging hits and misses); ``primary``; ``replicas`` with one copy per
    replica (a read picks one uniformly). Background workers are not on the
    request path: their CPU is reported, not modelled as a station. A station's demand is the CPU of
    all its nodes per request (each request is served by one of them).

CPU budgets, and why a budgeted node is not a slower processor
    A node with a budget of b cores runs under a CFS quota: in every 100 ms period it may use
    b × 100 ms of CPU, *at full speed*, and is throttled for the rest of the period once that is
    spent. Requests here cost a fraction of a millisecond, far less than the 25 ms a 0.25-core app
    server may use per period, so below its budget a request runs at full speed and hardly waits:
    the measured response time stays flat (stage0: about 1.5 ms from 10 to 500 users) where a
    processor-sharing server slowed down to b cores would predict 4x more and a steady climb. Only
    when the work offered per period approaches the quota do periods get throttled; then the node
    delivers exactly b cores, and throughput stops at ``b × nodes / D``. So the model has two parts
    (``CalibratedModel.curve``):

    * below the budgets, an exact MVA of the network at *full speed* (demands in CPU seconds), plus
      a fixed ``latency`` (see below);
    * the throughput can never exceed the smallest *cap*: what a station's budget buys, ``nodes × b
      / D(q)`` with D(q) its CPU per request when q requests per node are queued at it (see
      "Load-dependent demand"), the load generator's core (one Locust process: ``1 / L``), and the
      machine's cores shared by everything (``(cores - background) / (Σ D + L)``). At the cap the
      response time follows from the response time law, R = N / X − Z: the users queue at the
      bottleneck.

    The network written for ``network.py`` (``CalibratedModel.network()``) states the budgets the
    classic way, each station's demand in seconds of its budget (``D / b``): its bounds, knee and
    "what to add next" are exactly the caps above, but an MVA of it overstates the response time
    below the knee (it has no bursts). Use ``curve`` for response times.

Load-dependent demand
    A saturated server does not cost what it cost at light load. An asyncio app server woken up with
    many requests ready serves them in one loop iteration (one epoll_wait, fewer syscalls per
    request, batched writes) and a node that never idles stops paying its background: stage3's
    three app servers spent 1.14 ms per request below 80% of their budgets and 0.72 ms at 100% with
    a deep queue, carrying 408 req/s where a constant demand said 263. PostgreSQL can get dearer
    (more backends contending in a throttled group). Per station,
    ``D(q) = D_sat + (D_b - D_sat) / (1 + q)``, q the requests per node at the station: ``D_b =
    D × nb / (nb - background)`` is the cost at the budget before a queue forms (background still
    paid), and the per-wake-up part beyond ``D_sat`` is shared by the 1 + q requests a wake-up finds.
    ``D_sat`` is fitted (least squares, linear in it) on the steps where a node of the station was
    the busiest on the request path at 90% of its budget or more, each giving d = cores / X and q by
    Little's law, ``X × (R - latency - Σ_other D) / nodes``. A station never saturated keeps its
    constant light-load demand (pessimistic for app servers). The model then solves
    ``X = nb / D(q(X))`` with ``q(X) = (N - X (Z + latency + Σ_other D)) / nodes`` (everyone not
    thinking or elsewhere waits at the saturated station): the saturated regime of the
    load-dependent MVA with service rate ``μ(j) = nb / D(j / nodes)``.

Think time
    Locust's users think ``between(min, max)`` after each *task*; most tasks send one request, but
    rent-and-return sends two (the return needs no thought) and a user's first catalog visit also
    fetches the categories. The think time per request is Z = mean think / (requests per task),
    counted from the endpoints of the measured steps. (Measured N/X − R agrees with it to 1%.)

Latency
    A request also spends time that is on no node's CPU: loopback round trips, the event loops'
    scheduling, the load generator reading the answer. ``latency`` is a delay station calibrated
    from the light steps (below 50% of every budget, where nothing queues): the request-weighted
    mean of measured R minus the model's full-speed residence times; the lightest step when no step
    is that light. It is clamped at zero.

Without budgets (``machine.budgets_enforced`` false) the nodes share the machine's cores freely: a
single-process node (app server, key-value server) is then capped at one core, the others only by
the machine constraint.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from scalesim.model.mva import mva_curve
from scalesim.model.network import ModelError, Network, RequestClass, Station, Visit

__all__ = [
    "CalibratedModel",
    "Cap",
    "CurvePoint",
    "LoadGenerator",
    "NodeDemand",
    "StationCalibration",
    "calibrate",
]

#: Stations on the request path, in route order, with the node role each is made of.
STATION_ROLES: tuple[tuple[str, str], ...] = (
    ("balancer", "balancer"),
    ("app", "app"),
    ("keyvalue", "keyvalue"),
    ("cache", "cache"),
    ("primary", "primary"),
    ("replicas", "replica"),
)
#: Node roles that are not on the request path.
BACKGROUND_ROLES = ("worker",)
#: Roles served by one single-threaded process per node (at most one core each without budgets).
SINGLE_PROCESS_ROLES = ("app", "keyvalue", "cache")
#: CFS period used for the budgets (scalesim.measure.budgets.PERIOD_US).
QUOTA_PERIOD_S = 0.1

#: A budgeted node at this share of its budget or more is saturated (left out of the demand fit).
SATURATED_UTILIZATION = 0.9
#: Steps whose busiest node is below this share of its budget calibrate the latency.
LIGHT_UTILIZATION = 0.5

# Requests a Locust task sends without thinking in between, beyond its first (locustfile.py):
# the return after a rent, the categories before a user's first catalog page, the login.
_EXTRA_REQUEST_ENDPOINTS = ("/api/rentals/{id}/return", "/api/categories", "/api/login")


# --------------------------------------------------------------------------------------------
# What calibration produces
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NodeDemand:
    """One node's CPU, split into per-request demand and background (cores used regardless)."""

    name: str
    role: str
    cpu_budget: float | None
    demand: float  # CPU seconds per completed request (all requests, not only those it served)
    background: float  # cores
    cpu_seconds: float  # over the steps used
    method: str  # "regression" or "ratio"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "cpu_budget": self.cpu_budget, "demand": self.demand,
                "background": self.background, "cpu_seconds": self.cpu_seconds, "method": self.method}


@dataclass(frozen=True, kw_only=True)
class StationCalibration:
    """A station of the model: the nodes of one role, their demand per request and their budget.

    ``budget`` is the cores each node may use (None: no limit of its own); ``servers`` × ``copies``
    is the number of nodes.
    """

    name: str
    role: str
    nodes: tuple[str, ...]
    servers: int
    copies: int
    demand: float  # CPU seconds per request, all nodes together, at light load (no queue)
    budget: float | None
    background: float  # cores, all nodes together
    # CPU seconds per request deep in saturation (queue -> infinity), fitted on the steps where this
    # station was the saturated bottleneck; None: no such step, the demand is taken as constant.
    saturated_demand: float | None = None
    saturation_points: tuple[tuple[float, float], ...] = ()  # (requests per node, CPU s per request)
    # CPU seconds per request added by each request present per node (contention), and the largest
    # queue per node measured: D(q) is held constant beyond it (no extrapolation past the evidence).
    queue_cost: float = 0.0
    queue_limit: float = math.inf

    @property
    def node_count(self) -> int:
        return self.servers * self.copies

    @property
    def deep_demand(self) -> float:
        """CPU seconds per request with a deep queue: ``saturated_demand``, else the light-load demand."""
        return self.demand if self.saturated_demand is None else self.saturated_demand

    @property
    def onset_demand(self) -> float:
        """CPU seconds per request of a node that just reaches its budget, before any queue forms.

        Its budget then pays for the requests *and* the background: ``D_b = D_0 × nb / (nb - bg)``
        (nb the station's cores, bg its background), i.e. the budget binds at ``(nb - bg) / D_0``.
        Without a saturated step to say how the cost moves from there, the demand stays the
        constant light-load ``D_0`` (background shed, no batching: the earlier calibration).
        """
        if self.saturated_demand is None or self.budget is None:
            return self.demand
        budget = self.node_count * self.budget
        return self.demand * budget / (budget - self.background) if self.background < budget else self.demand

    def demand_at(self, queue: float) -> float:
        """CPU seconds per request of the budget with ``queue`` requests per node present (waiting or in service).

        ``D(q) = D_sat + (D_b - D_sat) / (1 + q) + e q`` (q at most ``queue_limit``): a node that
        wakes up to find 1 + q requests shares the per-wake-up cost (epoll, syscalls, scheduling, the
        flush of its writes) among them, and a node that never idles stops paying its idle
        background, so what the light-load
        cost ``D_b`` (``onset_demand``) has beyond ``D_sat`` is divided by the batch; ``D_sat`` is
        what a request costs on its own. ``D_sat > D_b`` (a server that gets *dearer* with load,
        like PostgreSQL with many backends in a throttled group) uses the same form with the sign
        reversed; ``e q`` (``queue_cost``, fitted with three saturated steps or more) is contention
        that grows with the queue, and makes the throughput fall past a peak.
        """
        if self.saturated_demand is None:
            return self.demand
        onset = self.onset_demand
        q = min(max(queue, 0.0), self.queue_limit)
        contention = self.queue_cost * q if self.queue_cost > 0 else 0.0
        return self.saturated_demand + (onset - self.saturated_demand) / (1.0 + q) + contention

    def best_queue(self) -> float:
        """The queue per node at which D(q) is smallest (within the measured range)."""
        if self.saturated_demand is None:
            return 0.0
        excess = self.onset_demand - self.saturated_demand
        if excess <= 0:
            return 0.0
        if self.queue_cost <= 0:
            return self.queue_limit
        return min(max(math.sqrt(excess / self.queue_cost) - 1.0, 0.0), self.queue_limit)

    def cap_at(self, queue: float) -> float:
        """Requests per second the budgets allow with ``queue`` requests per node: ``nodes × b / D(q)``."""
        demand = self.demand_at(queue)
        if self.budget is None or demand <= 0:
            return math.inf
        return self.node_count * self.budget / demand

    @property
    def cap(self) -> float:
        """Requests per second the station's budgets allow at most: ``nodes × b / min_q D(q)`` (inf without budget).

        Without contention that is ``nodes × b / D_sat``, with ``D_sat`` the CPU per request deep in
        saturation (``deep_demand``; the light-load demand when the run never saturated this
        station): what the station carries with a long queue; with contention, at its best queue.
        The fitted background is left out on purpose: it is mostly the cost of an idle
        server (waking up for each request, polling), which a saturated server no longer pays.
        """
        return self.cap_at(self.best_queue())

    @property
    def onset_cap(self) -> float:
        """``nodes × b / D_0``: where the budget starts to bind (no queue yet)."""
        return self.cap_at(0.0)

    def budget_utilization(self, throughput: float) -> float:
        """Share of the station's budget busy at this throughput, background included, at most 1."""
        if self.budget is None:
            return 0.0
        return min((self.background + throughput * self.demand) / (self.node_count * self.budget), 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "nodes": list(self.nodes), "servers": self.servers,
                "copies": self.copies, "demand": self.demand, "budget": self.budget,
                "background": self.background, "saturated_demand": self.saturated_demand,
                "saturation_points": [list(p) for p in self.saturation_points],
                "max_throughput": _finite(self.cap), "onset_throughput": _finite(self.onset_cap)}


@dataclass(frozen=True, kw_only=True)
class LoadGenerator:
    """Locust's own CPU: per request and in the background; ``processes`` Locust processes."""

    demand: float
    background: float
    processes: int = 1

    @property
    def cap(self) -> float:
        """A Locust process is one Python thread: at most one core each."""
        return math.inf if self.demand <= 0 else self.processes / self.demand


@dataclass(frozen=True, kw_only=True)
class Cap:
    """One limit on throughput: a station's budget, the load generator, or the machine."""

    name: str
    throughput: float
    why: str


@dataclass(frozen=True, kw_only=True)
class CurvePoint:
    """The model at one number of users."""

    users: int
    throughput: float  # requests per second
    response_time: float  # seconds, mean
    bottleneck: str
    bottleneck_utilization: float  # of its budget (or of the cap that binds)
    capped: bool  # True when the throughput is at a cap (above the knee)
    utilization: Mapping[str, float] = field(default_factory=dict)  # per station, of its budget

    def to_dict(self) -> dict[str, Any]:
        return {"users": self.users, "throughput": self.throughput, "response_time": self.response_time,
                "bottleneck": self.bottleneck, "bottleneck_utilization": self.bottleneck_utilization,
                "capped": self.capped, "utilization": dict(self.utilization)}


@dataclass(frozen=True, kw_only=True)
class CalibratedModel:
    """The calibrated stage: stations, think time, latency, and the limits of the measuring machine.

    ``on_one_machine`` says whether every node shares ``cores`` cores with the load generator (a
    measured run); a what-if deployment (``with_counts``) is a cluster of hosts instead, without
    the machine and load generator caps.
    """

    name: str
    stations: tuple[StationCalibration, ...]
    think_time: float  # seconds per request (Z)
    think_time_per_task: float
    requests_per_task: float
    latency: float  # seconds per request on no node's CPU
    budgets_enforced: bool
    cores: int
    load_generator: LoadGenerator | None
    on_one_machine: bool = True
    nodes: tuple[NodeDemand, ...] = ()
    background_nodes: tuple[NodeDemand, ...] = ()  # workers: reported, not on the request path
    cache_hit_ratio: float | None = None
    steps_used: tuple[int, ...] = ()  # users of the steps the demands were fitted on
    saturation_steps: tuple[int, ...] = ()  # users of the steps the saturated demands were fitted on
    latency_steps: tuple[int, ...] = ()  # users of the steps the latency was calibrated on
    notes: tuple[str, ...] = ()

    # -- reading ------------------------------------------------------------------------------

    def station(self, name: str) -> StationCalibration:
        for station in self.stations:
            if station.name == name:
                return station
        raise ModelError(f"station: unknown station {name!r} (stations: {', '.join(s.name for s in self.stations)})")

    @property
    def total_demand(self) -> float:
        return sum(s.demand for s in self.stations)

    def caps(self) -> list[Cap]:
        """Every limit on throughput, smallest first."""
        caps = [Cap(name=s.name, throughput=s.cap,
                    why=f"{s.node_count} x {s.budget:g} core / {s.deep_demand * 1000:.3f} ms per request"
                        + ("" if s.saturated_demand is None else " when saturated"))
                for s in self.stations if s.budget is not None and s.demand > 0]
        if self.on_one_machine:
            loadgen = self.load_generator
            if loadgen is not None and loadgen.demand > 0:
                caps.append(Cap(name="load generator", throughput=loadgen.cap,
                                why=f"{loadgen.processes} Locust process(es) / {loadgen.demand * 1000:.3f} ms"))
            background = sum(s.background for s in self.stations) + sum(n.background for n in self.background_nodes)
            demand = self.total_demand + sum(n.demand for n in self.background_nodes)
            if loadgen is not None:
                background += loadgen.background
                demand += loadgen.demand
            if demand > 0:
                free = max(self.cores - background, 0.0)
                caps.append(Cap(name="machine", throughput=free / demand,
                                why=f"{self.cores} cores shared by every node and Locust"))
        return sorted(caps, key=lambda cap: cap.throughput)

    @property
    def max_throughput(self) -> float:
        caps = self.caps()
        return caps[0].throughput if caps else math.inf

    @property
    def knee_users(self) -> float:
        """Where the light-load line N / (Z + R₀) meets the cap: N* = X_max × (Z + R₀)."""
        light = self.think_time + self.latency + self.total_demand
        return self.max_throughput * light

    # -- the network, for network.py and the what-if helpers ------------------------------------

    def network(self) -> Network:
        """The classic network: each station's demand in seconds of its budget (D / b), plus latency.

        Its asymptotic bounds and ``next_upgrade`` are the budget caps; its MVA response times
        assume processor sharing at b cores, which overstates them below the knee (see the module
        docstring). The machine and load generator caps are not in it: they belong to the
        measuring machine, not to the deployment.
        """
        stations = []
        route = []
        for s in self.stations:
            # Replicas grow by copies even when there is one of them; app servers by servers.
            scale_by: Literal["servers", "copies"] = "copies" if s.name == "replicas" else "servers"
            stations.append(Station(name=s.name, servers=s.servers, copies=s.copies, scale_by=scale_by))
            per_visit = s.deep_demand / s.budget if s.budget else s.deep_demand
            route.append(Visit(station=s.name, service_time=per_visit))
        if self.latency > 0:
            stations.append(Station(name="latency", kind="delay"))
            route.append(Visit(station="latency", service_time=self.latency))
        return Network(stations=tuple(stations), classes=(RequestClass(name="all", route=tuple(route)),),
                       think_time=self.think_time, name=self.name)

    def network_dict(self) -> dict[str, Any]:
        """``network().to_dict()`` with the calibration in ``meta`` (``network_from_dict`` reads it)."""
        out = self.network().to_dict()
        out["description"] = ("Calibrated from a measured run: station demands are seconds of the node's CPU "
                              "budget per request (CPU seconds / budget).")
        out["meta"] = self.to_dict()
        return out

    def full_speed_network(self) -> Network:
        """Demands in CPU seconds at full speed: what a request sees while its nodes have quota left."""
        stations = [Station(name=s.name, servers=s.servers, copies=s.copies) for s in self.stations if s.demand > 0]
        route = [Visit(station=s.name, service_time=s.demand) for s in self.stations if s.demand > 0]
        stations.append(Station(name="latency", kind="delay"))
        route.append(Visit(station="latency", service_time=self.latency))
        return Network(stations=tuple(stations), classes=(RequestClass(name="all", route=tuple(route)),),
                       think_time=self.think_time, name=self.name)

    # -- solving --------------------------------------------------------------------------------

    def curve(self, users: Iterable[int]) -> list[CurvePoint]:
        """Throughput, response time and bottleneck at each number of users (see the module docstring)."""
        wanted = [int(n) for n in users]
        if not wanted:
            return []
        if any(n < 1 for n in wanted):
            raise ModelError("users: every user count must be at least 1")
        full_speed = mva_curve(self.full_speed_network(), max(wanted))
        fixed = [c for c in self.caps() if c.name in ("load generator", "machine")]
        budgeted = [s for s in self.stations if s.budget is not None and s.demand > 0]
        points = []
        for n in wanted:
            throughput = float(full_speed.throughput[n])
            response = float(full_speed.response_time[n])
            limits = [(c.throughput, c.name) for c in fixed]
            limits += [(self.station_throughput(s, n), s.name) for s in budgeted]
            limit = min(limits) if limits else None
            capped = limit is not None and throughput >= limit[0]
            if capped and limit is not None:
                throughput = limit[0]
                response = n / throughput - self.think_time
            utilization = {s.name: s.budget_utilization(throughput) for s in self.stations if s.budget is not None}
            if limit is not None:
                bottleneck, share = limit[1], throughput / limit[0]
            else:  # no budget, no machine: the busiest station at full speed
                busiest = max(self.stations, key=lambda s: s.demand / s.node_count)
                bottleneck, share = busiest.name, throughput * busiest.demand / busiest.node_count
            points.append(CurvePoint(users=n, throughput=throughput, response_time=response, bottleneck=bottleneck,
                                     bottleneck_utilization=share, capped=capped, utilization=utilization))
        return points

    def station_throughput(self, station: StationCalibration, users: int) -> float:
        """The most ``station``'s budgets carry at ``users`` users if the queue builds there.

        With the station saturated, every user who is neither thinking nor in the latency or at
        another station (at full speed) waits at it: ``q(X) = (N - X (Z + latency + Σ_other D)) /
        nodes`` requests per node, and the station completes ``X = nodes × b / D(q(X))``. This is
        the saturated limit of the load-dependent MVA with service rate ``μ(j) = nodes × b / D(j /
        nodes)``, whose queue at the bottleneck is ``N - X (Z + R_rest)`` up to O(1); the root is
        found by bisection. Without a queue-dependent demand it is the constant ``nodes × b / D``.
        When even ``q = 0`` leaves the budget unused (light load) the answer is ``onset_cap``: not
        binding.
        """
        if station.saturated_demand is None:
            return station.onset_cap
        elsewhere = self.think_time + self.latency + sum(s.demand for s in self.stations if s is not station)
        top = users / elsewhere  # the throughput at which nobody is left to queue here
        if station.onset_cap >= top:
            return station.onset_cap
        low, high = 0.0, top
        for _ in range(80):
            middle = (low + high) / 2
            queue = max(users - middle * elsewhere, 0.0) / station.node_count
            if station.cap_at(queue) > middle:
                low = middle
            else:
                high = middle
            if high - low <= 1e-9 * high:
                break
        return (low + high) / 2

    # -- what if ------------------------------------------------------------------------------

    def with_counts(self, *, app_servers: int | None = None, replicas: int | None = None,
                    on_one_machine: bool = False) -> CalibratedModel:
        """The same stage with other node counts, each node keeping its budget and demand per request.

        A what-if deployment is a cluster (each node its own host), so by default the measuring
        machine's caps (its cores, the load generator) are dropped.
        """
        counts = {"app": app_servers, "replicas": replicas}
        stations = []
        for s in self.stations:
            count = counts.get(s.name)
            if count is not None:
                if count < 1:
                    raise ModelError(f"--{'app-servers' if s.name == 'app' else s.name}: must be at least 1, "
                                     f"got {count}")
                per_node_background = s.background / s.node_count
                if s.copies > 1 or s.name == "replicas":
                    s = replace(s, copies=count, background=per_node_background * count)
                else:
                    s = replace(s, servers=count, background=per_node_background * count)
            stations.append(s)
        for name, count in counts.items():
            if count is not None and not any(s.name == name for s in self.stations):
                option = "--app-servers" if name == "app" else "--replicas"
                raise ModelError(f"{option}: the measured stage has no {name} station to scale")
        return replace(self, stations=tuple(stations), on_one_machine=on_one_machine)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "think_time": self.think_time,
            "think_time_per_task": self.think_time_per_task,
            "requests_per_task": self.requests_per_task,
            "latency": self.latency,
            "budgets_enforced": self.budgets_enforced,
            "cores": self.cores,
            "on_one_machine": self.on_one_machine,
            "stations": [s.to_dict() for s in self.stations],
            "nodes": [n.to_dict() for n in self.nodes],
            "background_nodes": [n.to_dict() for n in self.background_nodes],
            "load_generator": None if self.load_generator is None else {
                "demand": self.load_generator.demand, "background": self.load_generator.background,
                "processes": self.load_generator.processes},
            "caps": [{"name": c.name, "max_throughput": _finite(c.throughput), "why": c.why} for c in self.caps()],
            "cache_hit_ratio": self.cache_hit_ratio,
            "steps_used": list(self.steps_used),
            "saturation_steps": list(self.saturation_steps),
            "latency_steps": list(self.latency_steps),
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------


def calibrate(results: Mapping[str, Any], *, step: int | None = None,
              use_saturated: bool = True) -> CalibratedModel:
    """Calibrate the stage measured in ``results`` (a results document; see the module docstring).

    ``step`` (an index into ``results["steps"]``) calibrates from that step alone; by default every
    unsaturated step is used with a per-node regression that separates background CPU, and the
    steps where a station was the saturated bottleneck give its CPU per request with a queue
    (``saturated_demand``). ``use_saturated=False`` ignores every step at 90% of a budget or more,
    as if the run had stopped before saturating: a *prediction* of the saturation (constant demands).
    """
    steps = _measured_steps(results)
    if not use_saturated:
        below = [s for s in steps if _step_max_utilization(s) < SATURATED_UTILIZATION]
        steps = below or steps
    if step is not None:
        if not -len(steps) <= step < len(steps):
            raise ModelError(f"step: the run has {len(steps)} measured steps, no step {step}")
        chosen = [steps[step]]
    else:
        chosen = _unsaturated(steps)
    machine = results.get("machine", {}) or {}
    enforced = bool(machine.get("budgets_enforced"))
    cores = int(machine.get("cores") or 2)
    notes: list[str] = []
    if not enforced:
        notes.append(f"CPU budgets were not enforced ({machine.get('budgets_note') or 'unknown reason'}): nodes "
                     "shared the machine's cores; single-process nodes are capped at one core each")

    nodes = _node_demands(chosen)
    stations = _stations(nodes, enforced=enforced)
    if not stations:
        raise ModelError("results: no node on the request path (app, balancer, ...) was measured")
    background_nodes = tuple(n for n in nodes.values() if n.role in BACKGROUND_ROLES)

    think_per_task = _think_time_per_task(results)
    per_task = _requests_per_task(chosen)
    model = CalibratedModel(
        name=str((results.get("scenario") or {}).get("name") or "measured"),
        stations=stations,
        think_time=think_per_task / per_task,
        think_time_per_task=think_per_task,
        requests_per_task=per_task,
        latency=0.0,
        budgets_enforced=enforced,
        cores=cores,
        load_generator=_load_generator(chosen),
        nodes=tuple(n for n in nodes.values() if n.role not in BACKGROUND_ROLES),
        background_nodes=background_nodes,
        cache_hit_ratio=_cache_hit_ratio(chosen),
        steps_used=tuple(int(s.get("users", 0)) for s in chosen),
        notes=tuple(notes),
    )
    latency, latency_steps = _latency(model, steps if step is None else chosen)
    model = replace(model, latency=latency, latency_steps=latency_steps)
    if step is None and use_saturated:
        model = _fit_saturation(model, steps)
    return model


def _fit_saturation(model: CalibratedModel, steps: Sequence[Mapping[str, Any]]) -> CalibratedModel:
    """Each station's CPU per request deep in saturation, from the steps where it was the bottleneck.

    A step counts for station k when the busiest node on the request path is one of k's and used
    ``SATURATED_UTILIZATION`` of its budget or more. Its point is (q, d): d = k's cores / X (all its
    CPU: the background is shed at saturation), and q the requests per node at k by Little's law,
    ``X × (R - latency - Σ_other D) / nodes`` (measured X and R, the model's own residence
    elsewhere). ``D(q) = D_sat + (D_0 - D_sat) / (1 + q)`` is then linear in D_sat, fitted by
    request-weighted least squares with ``D_0`` the light-load demand.
    """
    stations = []
    used: set[int] = set()
    for station in model.stations:
        if station.budget is None or station.demand <= 0:
            stations.append(station)
            continue
        elsewhere = model.latency + sum(s.demand for s in model.stations if s is not station)
        points: list[tuple[float, float, float]] = []
        for step in steps:
            node, share = _step_bottleneck(step)
            if node is None or share < SATURATED_UTILIZATION or node not in station.nodes:
                continue
            throughput = _throughput(step)
            response = float(step["total"].get("mean_ms") or 0.0) / 1000
            if throughput <= 0 or response <= 0:
                continue
            cores = sum(float(step["nodes"][n]["cpu_seconds"]) for n in station.nodes
                        if n in step["nodes"]) / float(step["measured_window_s"])
            queue = max(throughput * (response - elsewhere), 0.0) / station.node_count
            points.append((queue, cores / throughput, float(step["total"]["requests"])))
            used.add(int(step.get("users") or 0))
        onset = replace(station, saturated_demand=0.0).onset_demand
        saturated, queue_cost = fit_load_dependence(onset, points)
        stations.append(replace(station, saturated_demand=saturated, queue_cost=queue_cost,
                                queue_limit=max(q for q, _, _ in points) if queue_cost else math.inf,
                                saturation_points=tuple((q, d) for q, d, _ in points) if saturated else ()))
    return replace(model, stations=tuple(stations), saturation_steps=tuple(sorted(used)))


def fit_saturated_demand(light_demand: float, points: Sequence[tuple[float, float, float]]) -> float | None:
    """(requests per node q, CPU s per request d, weight) → D_sat of ``D(q) = D_sat + (D_0 - D_sat)/(1 + q)``.

    Least squares on ``d - D_0/(1+q) = D_sat · q/(1+q)``; None without points (or an unphysical,
    non-positive answer).
    """
    numerator = denominator = 0.0
    for queue, demand, weight in points:
        share = queue / (1.0 + queue)
        numerator += weight * share * (demand - light_demand / (1.0 + queue))
        denominator += weight * share * share
    if denominator <= 1e-12:
        return None
    saturated = numerator / denominator
    return saturated if saturated > 0 else None


def fit_load_dependence(onset: float, points: Sequence[tuple[float, float, float]]) -> tuple[float | None, float]:
    """D_sat and the contention cost e of ``D(q) = D_sat + (D_b - D_sat)/(1 + q) + e q``.

    Linear least squares in (D_sat, e), weighted by requests, with three points or more; e is kept
    only when positive (else the one-parameter fit, ``fit_saturated_demand``). ``e q`` is the
    contention a long queue adds per request: PostgreSQL's snapshot and lock work grows with the
    number of active backends, a Python server's garbage collection with the objects of the
    requests in flight. It makes the saturated throughput peak and then fall (stage1: 321 req/s
    at 400 users, 235 at 650), so the model holds D(q) constant beyond the largest measured queue.
    """
    if len(points) >= 3:
        rows = np.array([[q / (1 + q), q] for q, _, _ in points])
        target = np.array([d - onset / (1 + q) for q, d, _ in points])
        weights = np.sqrt(np.array([w for _, _, w in points]))
        solution, *_ = np.linalg.lstsq(rows * weights[:, None], target * weights, rcond=None)
        saturated, cost = float(solution[0]), float(solution[1])
        if cost > 0 and saturated > 0:
            return saturated, cost
    return fit_saturated_demand(onset, points), 0.0


def _step_bottleneck(step: Mapping[str, Any]) -> tuple[str | None, float]:
    shares = {name: float(node["utilization"]) for name, node in step["nodes"].items()
              if node.get("utilization") is not None and node.get("role") not in BACKGROUND_ROLES}
    if not shares:
        return None, 0.0
    name = max(shares, key=lambda n: shares[n])
    return name, shares[name]


def _throughput(step: Mapping[str, Any]) -> float:
    """Completed requests per second: Locust counts them over its step window (``window_s``)."""
    window = step.get("window_s") or step["measured_window_s"]
    return float(step["total"]["requests"]) / float(window)


def _requests_in_cpu_window(step: Mapping[str, Any]) -> float:
    """The requests scaled to the CPU snapshot window (``measured_window_s``), for the utilization law.

    Locust counts requests over its own window; the node CPU is read over ``measured_window_s``,
    which can be a few percent shorter under load (stage3, 450 users: 19.46 s against 20 s).
    D = cores / X needs both over the same time.
    """
    return _throughput(step) * float(step["measured_window_s"])


def _measured_steps(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    steps = [s for s in results.get("steps") or []
             if (s.get("total") or {}).get("requests") and s.get("nodes") and s.get("measured_window_s")]
    if not steps:
        raise ModelError("results: no step with completed requests and node CPU to calibrate from")
    return steps


def _step_max_utilization(step: Mapping[str, Any]) -> float:
    """The busiest node's share of its budget (0 when no node has one)."""
    shares = [node["utilization"] for node in step["nodes"].values()
              if node.get("utilization") is not None and node.get("role") not in BACKGROUND_ROLES]
    return max(shares, default=0.0)


def _unsaturated(steps: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    below = [s for s in steps if _step_max_utilization(s) < SATURATED_UTILIZATION]
    return below if len(below) >= 2 else list(steps)


def _node_demands(steps: Sequence[Mapping[str, Any]]) -> dict[str, NodeDemand]:
    names: dict[str, Mapping[str, Any]] = {}
    for step in steps:
        for name, node in step["nodes"].items():
            names.setdefault(name, node)
    out = {}
    for name, first in names.items():
        points = [(_requests_in_cpu_window(s), float(s["measured_window_s"]),
                   float(s["nodes"][name]["cpu_seconds"])) for s in steps if name in s["nodes"]]
        demand, background, method = fit_demand(points)
        out[name] = NodeDemand(name=name, role=str(first.get("role")), cpu_budget=first.get("cpu_budget"),
                               demand=demand, background=background,
                               cpu_seconds=sum(cpu for _, _, cpu in points), method=method)
    return out


def fit_demand(points: Sequence[tuple[float, float, float]]) -> tuple[float, float, str]:
    """(requests, window seconds, CPU seconds) per step → (demand per request, background cores, method).

    A request-weighted least-squares line of cores used against throughput; the plain ratio
    Σ CPU / Σ requests when there is one step, no spread in throughput, or the line is unphysical.
    """
    requests = np.array([p[0] for p in points], dtype=float)
    windows = np.array([p[1] for p in points], dtype=float)
    cpu = np.array([p[2] for p in points], dtype=float)
    total_requests = float(requests.sum())
    ratio = float(cpu.sum() / total_requests) if total_requests > 0 else 0.0
    if len(points) < 2:
        return ratio, 0.0, "ratio"
    throughput = requests / windows
    cores = cpu / windows
    weights = requests / total_requests
    mean_x = float(np.sum(weights * throughput))
    mean_y = float(np.sum(weights * cores))
    spread = float(np.sum(weights * (throughput - mean_x) ** 2))
    if spread <= 1e-12 * max(mean_x, 1.0) ** 2:
        return ratio, 0.0, "ratio"
    slope = float(np.sum(weights * (throughput - mean_x) * (cores - mean_y))) / spread
    intercept = mean_y - slope * mean_x
    if slope <= 0 or intercept < 0:
        return ratio, 0.0, "ratio"
    return slope, intercept, "regression"


def _stations(nodes: Mapping[str, NodeDemand], *, enforced: bool) -> tuple[StationCalibration, ...]:
    stations = []
    for station_name, role in STATION_ROLES:
        members = [n for n in nodes.values() if n.role == role]
        if not members:
            continue
        budgets = {n.cpu_budget for n in members}
        budget = members[0].cpu_budget if len(budgets) == 1 else min(b for b in budgets if b is not None)
        if not enforced:
            # Without quotas a node uses what the machine gives it; a single Python/Valkey process
            # still runs on one core at a time.
            budget = 1.0 if role in SINGLE_PROCESS_ROLES else None
        count = len(members)
        servers, copies = (1, count) if station_name == "replicas" else (count, 1)
        stations.append(StationCalibration(
            name=station_name, role=role, nodes=tuple(n.name for n in members), servers=servers, copies=copies,
            demand=sum(n.demand for n in members), budget=budget, background=sum(n.background for n in members)))
    return tuple(stations)


def _think_time_per_task(results: Mapping[str, Any]) -> float:
    think = ((results.get("scenario") or {}).get("workload") or {}).get("think_time") or {}
    low, high = think.get("min"), think.get("max")
    if not isinstance(low, int | float) or not isinstance(high, int | float):
        raise ModelError("scenario.workload.think_time: min and max are needed to calibrate the think time")
    return (float(low) + float(high)) / 2


def _requests_per_task(steps: Sequence[Mapping[str, Any]]) -> float:
    """Requests per Locust task: all requests over those that follow a think time."""
    total = extra = 0
    for step in steps:
        endpoints = step.get("endpoints") or []
        total += int(step["total"]["requests"])
        extra += sum(int(e.get("requests", 0)) for e in endpoints if e.get("name") in _EXTRA_REQUEST_ENDPOINTS)
    tasks = total - extra
    return total / tasks if tasks > 0 else 1.0


def _load_generator(steps: Sequence[Mapping[str, Any]]) -> LoadGenerator | None:
    points = [(_requests_in_cpu_window(s), float(s["measured_window_s"]), float(s["loadgen_cpu_seconds"]))
              for s in steps if isinstance(s.get("loadgen_cpu_seconds"), int | float)]
    if not points:
        return None
    demand, background, _ = fit_demand(points)
    processes = max(int(s.get("workers_reporting") or 1) for s in steps)
    return LoadGenerator(demand=demand, background=background, processes=processes)


def _cache_hit_ratio(steps: Sequence[Mapping[str, Any]]) -> float | None:
    hits = sum(int(((s.get("app_counters") or {}).get("cache") or {}).get("hits", 0)) for s in steps)
    misses = sum(int(((s.get("app_counters") or {}).get("cache") or {}).get("misses", 0)) for s in steps)
    return hits / (hits + misses) if hits + misses else None


def _latency(model: CalibratedModel, steps: Sequence[Mapping[str, Any]]) -> tuple[float, tuple[int, ...]]:
    """Measured R minus the model's full-speed residence, request-weighted over the light steps."""
    light = [s for s in steps if _step_max_utilization(s) < LIGHT_UTILIZATION]
    if not light:
        light = [min(steps, key=lambda s: s["total"]["requests"] / s["measured_window_s"])]
    users = [max(int(s.get("users") or 1), 1) for s in light]
    points = model.curve(users)  # latency 0 here: pure CPU residence
    gap = weight = 0.0
    for step, point in zip(light, points, strict=True):
        requests = float(step["total"]["requests"])
        gap += requests * (float(step["total"]["mean_ms"]) / 1000 - point.response_time)
        weight += requests
    return (max(gap / weight, 0.0) if weight else 0.0), tuple(users)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
