"""What a solver says about a network at one number of users.

Both solvers, exact MVA and the simulation, answer with the same ``Solution`` so that the command
line, the plots and the what-if helpers treat them alike. The simulation fills in what MVA cannot
know: response time percentiles, 95% confidence half-widths (``ci``) and how the run went (``info``).

Units: seconds for times, requests per second for throughput, requests for queue lengths, and
utilization as the busy fraction of one server (0..1), averaged over a station's servers and copies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ClassMetrics", "Solution", "StationMetrics"]


@dataclass(frozen=True, kw_only=True)
class StationMetrics:
    """One station at one load."""

    name: str
    kind: str
    utilization: float
    queue_length: float
    residence_time: float
    ci: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "utilization": self.utilization,
                               "queue_length": self.queue_length, "residence_time": self.residence_time}
        if self.ci:
            out["ci"] = dict(self.ci)
        return out


@dataclass(frozen=True, kw_only=True)
class ClassMetrics:
    """One request class at one load (``users`` is fractional in mix mode: the expected share).

    ``residence`` is the time a request of this class spends at each station it visits (MVA only).
    """

    name: str
    users: float
    throughput: float
    response_time: float
    residence: Mapping[str, float] = field(default_factory=dict)
    percentiles: Mapping[str, float] = field(default_factory=dict)
    ci: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "users": self.users, "throughput": self.throughput,
                               "response_time": self.response_time}
        if self.residence:
            out["residence"] = dict(self.residence)
        if self.percentiles:
            out["percentiles"] = dict(self.percentiles)
        if self.ci:
            out["ci"] = dict(self.ci)
        return out


@dataclass(frozen=True, kw_only=True)
class Solution:
    """The network at ``users`` users, as solved by ``method`` (``mva`` or ``simulate``)."""

    method: str
    users: int
    throughput: float
    response_time: float
    stations: tuple[StationMetrics, ...]
    classes: tuple[ClassMetrics, ...] = ()
    percentiles: Mapping[str, float] = field(default_factory=dict)
    ci: Mapping[str, float] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)

    def station(self, name: str) -> StationMetrics:
        for station in self.stations:
            if station.name == name:
                return station
        raise KeyError(name)

    @property
    def bottleneck(self) -> str:
        """The queueing station with the highest utilization at this load."""
        queues = [s for s in self.stations if s.kind == "queue"] or list(self.stations)
        return max(queues, key=lambda s: s.utilization).name

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "users": self.users,
            "method": self.method,
            "throughput": self.throughput,
            "response_time": self.response_time,
        }
        if self.percentiles:
            out["percentiles"] = dict(self.percentiles)
        if self.ci:
            out["ci"] = dict(self.ci)
        out["bottleneck"] = self.bottleneck
        out["stations"] = [station.to_dict() for station in self.stations]
        if self.classes:
            out["classes"] = [request_class.to_dict() for request_class in self.classes]
        if self.info:
            out["info"] = dict(self.info)
        return out
