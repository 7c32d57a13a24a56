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
    are left out of the fit when at least two other steps remain: throttled and overloaded servers
    batch their work and get cheaper per request, and the point of the model is to *predict* the
    saturation from the steps below it. A fit that makes no physical sense (a negative slope, or a
    negative background) falls back to the plain ratio over the steps used. With ``step=i`` only
    that step is used, with the plain ratio (background included, so demands are upper bounds).

Stations
    One station per role on the request path: ``balancer``; ``app`` with one server per app node
    (each node is its own host: requests spread over them); ``keyvalue``; ``primary``; ``replicas``
    with one copy per replica (a read picks one uniformly). Background workers are not on the
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
    * the throughput can never exceed the smallest *cap*: a station's budget ``nodes × b / D`` (the
      background is an idle server's overhead, shed once it is saturated: see ``cap``), the
      load generator's core (one Locust process: ``1 / L``), and the machine's cores shared by
      everything (``(cores - background) / (Σ D + L)``). Above the cap, X = cap and the response
      time follows from the response time law, R = N / X − Z: the users queue at the bottleneck.

    The network written for ``network.py`` (``CalibratedModel.network()``) states the budgets the
    classic way, each station's demand in seconds of its budget (``D / b``): its bounds, knee and
    "what to add next" are exactly the caps above, but an MVA of it overstates the response time
    below the knee (it has no bursts). Use ``curve`` for response times.

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
    ("primary", "primary"),
    ("replicas", "replica"),
)
#: Node roles that are not on the request path.
BACKGROUND_ROLES = ("worker",)
#: Roles served by one single-threaded process per node (at most one core each without budgets).
SINGLE_PROCESS_ROLES = ("app", "keyvalue")
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
    demand: float  # CPU seconds per request, all nodes together
    budget: float | None
    background: float  # cores, all nodes together

    @property
    def node_count(self) -> int:
        return self.servers * self.copies

    @property
    def cap(self) -> float:
        """Requests per second the station's budgets allow at most: ``nodes × b / D`` (inf without budget).

        The fitted background is left out on purpose: it is mostly the cost of an idle server
        (waking up for each request, polling), which a saturated server no longer pays. Measured:
        stage0's app server and stage4's three, pushed past their budgets, carried 790 and 563 req/s
        against caps of 797 and 560 predicted from the steps below 80%, where ``(nodes × b -
        background) / D`` said 722 and 452.
        """
        if self.budget is None or self.demand <= 0:
            return math.inf
        return self.node_count * self.budget / self.demand

    def budget_utilization(self, throughput: float) -> float:
        """Share of the station's budget busy at this throughput, background included, at most 1."""
        if self.budget is None:
            return 0.0
        return min((self.background + throughput * self.demand) / (self.node_count * self.budget), 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "nodes": list(self.nodes), "servers": self.servers,
                "copies": self.copies, "demand": self.demand, "budget": self.budget,
                "background": self.background, "max_throughput": _finite(self.cap)}


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
                    why=f"{s.node_count} x {s.budget:g} core / {s.demand * 1000:.3f} ms per request")
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
            per_visit = s.demand / s.budget if s.budget else s.demand
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
        caps = self.caps()
        cap = caps[0] if caps else None
        points = []
        for n in wanted:
            throughput = float(full_speed.throughput[n])
            response = float(full_speed.response_time[n])
            capped = cap is not None and throughput >= cap.throughput
            if capped and cap is not None:
                throughput = cap.throughput
                response = n / throughput - self.think_time
            utilization = {s.name: s.budget_utilization(throughput) for s in self.stations if s.budget is not None}
            if cap is not None:
                bottleneck, share = cap.name, throughput / cap.throughput
            else:  # no budget, no machine: the busiest station at full speed
                busiest = max(self.stations, key=lambda s: s.demand / s.node_count)
                bottleneck, share = busiest.name, throughput * busiest.demand / busiest.node_count
            points.append(CurvePoint(users=n, throughput=throughput, response_time=response, bottleneck=bottleneck,
                                     bottleneck_utilization=share, capped=capped, utilization=utilization))
        return points

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
            "latency_steps": list(self.latency_steps),
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------


def calibrate(results: Mapping[str, Any], *, step: int | None = None) -> CalibratedModel:
    """Calibrate the stage measured in ``results`` (a results document; see the module docstring).

    ``step`` (an index into ``results["steps"]``) calibrates from that step alone; by default every
    unsaturated step is used with a per-node regression that separates background CPU.
    """
    steps = _measured_steps(results)
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
    return replace(model, latency=latency, latency_steps=latency_steps)


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
        points = [(float(s["total"]["requests"]), float(s["measured_window_s"]),
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
    points = [(float(s["total"]["requests"]), float(s["measured_window_s"]), float(s["loadgen_cpu_seconds"]))
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
