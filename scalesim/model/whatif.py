"""What-if questions: change the network, read the capacity curve, decide what to add next.

A calibrated network says how the deployment we measured behaves. The questions people then ask are
about deployments we did not measure: *what if we had 40 app servers and 6 replicas? where does it
break with 20,000 users? what should we buy first?* This module answers them with the exact solver:

``what_if(network, scale={"app": 40, "replicas": 6})``
    A changed copy of the network. ``scale`` sets each station's *scaling unit*: its copies if it is
    a replicated station (``copies > 1`` or ``scale_by: copies``), else its servers. ``servers`` and
    ``copies`` set those explicitly; ``speedup`` divides a station's service times (a faster CPU);
    ``think_time`` replaces the users' think time.
``capacity_curve(network, users)``
    Throughput, response time and the bottleneck (the busiest station) at each load.
``next_upgrade(network)``
    The station that saturates first (largest demand per server) and how many servers or copies it
    needs before another station becomes the bottleneck.
``plan_upgrades(network, users=..., max_response_time=...)``
    Applies ``next_upgrade`` until the objective holds at that load.
``what_if_from_run(results, users=..., app_servers=40, replicas=6)``
    The same questions about a *measured* stage: calibrate from its run (``scalesim.model.calibrate``),
    change the node counts (each node keeps its CPU budget), solve with the budget-aware curve.

Saturation is an asymptotic notion (``Dmax = max_k D_k / capacity_k``); the curve itself comes from
exact MVA, so a plan's last step is checked against the real response time, not only the bound.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from scalesim.model.mva import solve_mva
from scalesim.model.network import ModelError, Network, RequestClass, Visit
from scalesim.model.solution import Solution

if TYPE_CHECKING:  # calibrate imports mva and network only; imported lazily to keep this module light
    from scalesim.model.calibrate import CalibratedModel, CurvePoint

__all__ = ["CapacityPoint", "RunWhatIf", "Upgrade", "UpgradePlan", "bottlenecks", "capacity_curve",
           "next_upgrade", "plan_upgrades", "what_if", "what_if_from_run"]


def what_if(
    network: Network,
    *,
    scale: Mapping[str, int] | None = None,
    servers: Mapping[str, int] | None = None,
    copies: Mapping[str, int] | None = None,
    speedup: Mapping[str, float] | None = None,
    think_time: float | None = None,
) -> Network:
    """A copy of ``network`` with stations scaled, sped up, or a different think time."""
    changes: dict[str, dict[str, int]] = {}
    for name, count in (scale or {}).items():
        station = network.station(name)
        changes.setdefault(name, {})[station.scale_unit] = count
    for unit, mapping in (("servers", servers), ("copies", copies)):
        for name, count in (mapping or {}).items():
            network.station(name)
            changes.setdefault(name, {})[unit] = count
    stations = []
    for station in network.stations:
        if station.name in changes:
            if not station.is_queue:
                raise ModelError(f"scale.{station.name}: a delay station has no servers to add")
            change = changes[station.name]
            try:
                station = replace(station, servers=change.get("servers", station.servers),
                                  copies=change.get("copies", station.copies))
            except ModelError as exc:
                raise ModelError(f"scale.{station.name}.{exc}") from None
        stations.append(station)
    classes = network.classes
    if speedup:
        for name, factor in speedup.items():
            network.station(name)
            if not isinstance(factor, int | float) or not factor > 0 or not math.isfinite(factor):
                raise ModelError(f"speedup.{name}: must be a number > 0, got {factor!r}")
        classes = tuple(_sped_up(c, speedup) for c in classes)
    return replace(network, stations=tuple(stations), classes=classes,
                   think_time=network.think_time if think_time is None else think_time)


def _sped_up(request_class: RequestClass, speedup: Mapping[str, float]) -> RequestClass:
    route = tuple(Visit(station=v.station, service_time=v.service_time / speedup.get(v.station, 1.0),
                        count=v.count, probability=v.probability) for v in request_class.route)
    return replace(request_class, route=route)


# --------------------------------------------------------------------------------------------
# Capacity curve
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CapacityPoint:
    users: int
    throughput: float
    response_time: float
    bottleneck: str
    bottleneck_utilization: float


def capacity_curve(network: Network, users: Iterable[int]) -> list[CapacityPoint]:
    """Exact throughput, response time and bottleneck at each number of users."""
    return [_point(solution) for solution in solve_mva(network, users)]


def _point(solution: Solution) -> CapacityPoint:
    bottleneck = solution.bottleneck
    return CapacityPoint(users=solution.users, throughput=solution.throughput,
                         response_time=solution.response_time, bottleneck=bottleneck,
                         bottleneck_utilization=solution.station(bottleneck).utilization)


# --------------------------------------------------------------------------------------------
# What to add next
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Upgrade:
    """Add capacity to ``station`` (``unit`` from ``current`` to ``needed``) to move the bottleneck.

    ``next_bottleneck`` is the station that saturates first afterwards (None when the station is the
    only queue: more of it always helps, nothing else ever limits), and the max throughputs are the
    asymptotic bounds 1/Dmax before and after.
    """

    station: str
    unit: str
    current: int
    needed: int
    next_bottleneck: str | None
    max_throughput_before: float
    max_throughput_after: float

    def describe(self) -> str:
        after = (f"then {self.next_bottleneck} saturates first" if self.next_bottleneck
                 else "it stays the only queue")
        return (f"{self.station}: {self.unit} {self.current} -> {self.needed} "
                f"(max throughput {self.max_throughput_before:.4g} -> {self.max_throughput_after:.4g}/s; "
                f"{after})")


def _per_server_demands(network: Network) -> dict[str, float]:
    demands = network.demands()
    return {s.name: demands[s.name] / s.capacity for s in network.stations
            if s.is_queue and demands[s.name] > 0}


def next_upgrade(network: Network) -> Upgrade | None:
    """The station that saturates first and how much of it moves the bottleneck elsewhere."""
    per_server = _per_server_demands(network)
    if not per_server:
        return None
    ranked = sorted(per_server, key=lambda name: per_server[name], reverse=True)
    first = network.station(ranked[0])
    unit = first.scale_unit
    current = getattr(first, unit)
    other_units = first.capacity // current  # servers per copy, or copies
    demand = per_server[first.name] * first.capacity
    if len(ranked) == 1:
        return Upgrade(station=first.name, unit=unit, current=current, needed=current + 1,
                       next_bottleneck=None, max_throughput_before=1 / per_server[first.name],
                       max_throughput_after=(current + 1) * other_units / demand)
    runner_up = ranked[1]
    limit = per_server[runner_up]
    # Smallest count whose demand per server drops below the runner-up's.
    needed = max(current + 1, math.floor(demand / (other_units * limit)))
    while demand / (other_units * needed) >= limit:
        needed += 1
    while needed - 1 > current and demand / (other_units * (needed - 1)) < limit:
        needed -= 1
    return Upgrade(station=first.name, unit=unit, current=current, needed=needed,
                   next_bottleneck=runner_up, max_throughput_before=1 / per_server[first.name],
                   max_throughput_after=1 / max(limit, demand / (other_units * needed)))


@dataclass(frozen=True, kw_only=True)
class UpgradePlan:
    """Upgrades in the order to make them, the network after them, and how it then performs."""

    steps: tuple[Upgrade, ...]
    network: Network
    solution: Solution
    met: bool


def plan_upgrades(network: Network, *, users: int, max_response_time: float | None = None,
                  min_throughput: float | None = None, max_steps: int = 20) -> UpgradePlan:
    """Add capacity, bottleneck by bottleneck, until the objective holds with ``users`` users."""
    if max_response_time is None and min_throughput is None:
        raise ModelError("objective: give max_response_time and/or min_throughput")
    steps: list[Upgrade] = []
    current = network
    solution = solve_mva(current, [users])[0]
    while not _meets(solution, max_response_time, min_throughput) and len(steps) < max_steps:
        upgrade = next_upgrade(current)
        if upgrade is None:
            break
        steps.append(upgrade)
        current = what_if(current, scale={upgrade.station: upgrade.needed})
        solution = solve_mva(current, [users])[0]
    return UpgradePlan(steps=tuple(steps), network=current, solution=solution,
                       met=_meets(solution, max_response_time, min_throughput))


def _meets(solution: Solution, max_response_time: float | None, min_throughput: float | None) -> bool:
    if max_response_time is not None and solution.response_time > max_response_time:
        return False
    return min_throughput is None or solution.throughput >= min_throughput


def bottlenecks(points: Sequence[CapacityPoint]) -> list[tuple[int, str]]:
    """Where the bottleneck changes along a curve: (first users count, station)."""
    out: list[tuple[int, str]] = []
    for point in points:
        if not out or out[-1][1] != point.bottleneck:
            out.append((point.users, point.bottleneck))
    return out



# --------------------------------------------------------------------------------------------
# What if, from a measured run
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RunWhatIf:
    """A measured stage calibrated, changed, and solved: what ``scalesim model STAGE --from RUN`` shows.

    ``measured`` is the model of the deployment as it ran (on one machine); ``model`` the changed
    deployment as a cluster of hosts, each node keeping its CPU budget and demand per request.
    """

    measured: CalibratedModel
    model: CalibratedModel
    points: tuple[CurvePoint, ...]
    upgrade: Upgrade | None

    @property
    def bottlenecks(self) -> list[tuple[int, str]]:
        """Where the bottleneck changes along the curve: (first users count, station)."""
        out: list[tuple[int, str]] = []
        for point in self.points:
            if not out or out[-1][1] != point.bottleneck:
                out.append((point.users, point.bottleneck))
        return out


def what_if_from_run(results: Mapping[str, Any], *, users: Iterable[int], app_servers: int | None = None,
                     replicas: int | None = None) -> RunWhatIf:
    """Calibrate from a run's results, change the node counts, solve at each number of users.

    The answer's curve uses the budget-aware solution (full speed below the budgets, capped at
    them); "what to add next" comes from ``next_upgrade`` on the budget network, whose bottleneck
    order is the order of the caps.
    """
    from scalesim.model.calibrate import calibrate

    measured = calibrate(results)
    changed = measured.with_counts(app_servers=app_servers, replicas=replicas)
    points = tuple(changed.curve(users))
    return RunWhatIf(measured=measured, model=changed, points=points, upgrade=next_upgrade(changed.network()))
