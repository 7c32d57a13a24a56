"""The closed queueing network that scalesim's capacity model solves.

A network is a population of users who alternate between *thinking* (an average of ``think_time``
seconds away from the system) and issuing one *request*. A request travels a *route* through
*stations* and comes back to its user, who then thinks again: a closed network, the same thing a
Locust run with a fixed number of users and wait times measures.

Stations come in two kinds:

``queue``
    One or several identical servers in front of one FIFO queue (a balancer, a pool of app server
    processes, a database). ``servers`` is how many requests it serves at once. ``copies`` makes
    independent replicas of the station, each with its own queue and servers; a visit goes to one
    copy picked uniformly at random (reads spread over database replicas).
``delay``
    No queue at all: every request is served at once (network latency, an external API). Think time
    is a delay too, kept apart because it is what separates one request from the next.

What a request does is described by *request classes*. Each class has a route: a list of visits,
each to one station with a mean service time, a number of visits and a probability that the visit
happens at all (a cache hit skips the database). A network without explicit classes has a single
class that visits every station once with the station's ``demand``.

Classes are combined in one of two ways (``class_mode``):

``mix`` (default)
    Every user draws the class of each request by ``weight``: Locust's task mix. This is a single
    closed chain; the analytic solvers use the weight-averaged demands, which is exact for
    product-form networks.
``populations``
    ``weight`` is the share of users who *belong* to a class for good (batch jobs vs interactive
    users), each class with its own think time: a multi-class closed network.

Everything here is plain frozen dataclasses with keyword-only arguments, so a network can be built in
code (``Network.from_demands`` for the common case) or loaded from YAML/JSON with
``load_network``. Problems raise ``ModelError`` with a one-line message naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "EXPONENTIAL",
    "ClassMode",
    "Distribution",
    "ModelError",
    "Network",
    "RequestClass",
    "Station",
    "StationKind",
    "Visit",
    "load_network",
    "network_from_dict",
]

StationKind = Literal["queue", "delay"]
ClassMode = Literal["mix", "populations"]
DistributionKind = Literal["exponential", "deterministic", "lognormal", "uniform"]

_STATION_KINDS: tuple[str, ...] = ("queue", "delay")
_CLASS_MODES: tuple[str, ...] = ("mix", "populations")
_DISTRIBUTION_KINDS: tuple[str, ...] = ("exponential", "deterministic", "lognormal", "uniform")
_SCALE_UNITS: tuple[str, ...] = ("servers", "copies")
_UNIFORM_MAX_CV = 1 / math.sqrt(3)


class ModelError(ValueError):
    """A network description or a model request that cannot be used; the message is one line."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Distribution:
    """The shape of a random duration whose mean is given elsewhere.

    ``cv`` (coefficient of variation, standard deviation / mean) matters only for ``lognormal``
    (default 1) and ``uniform`` (default 1/√3, the widest: 0 to twice the mean); exponential has
    cv 1 and deterministic cv 0 by definition. A uniform distribution with mean m and cv spans
    m(1 ± cv·√3), so its cv is at most 1/√3.
    """

    kind: DistributionKind = "exponential"
    cv: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in _DISTRIBUTION_KINDS:
            raise ModelError(f"kind: unknown distribution {self.kind!r} (expected one of: "
                             f"{', '.join(_DISTRIBUTION_KINDS)})")
        if self.cv is not None and (not _is_number(self.cv) or self.cv < 0):
            raise ModelError(f"cv: must be a number >= 0, got {self.cv!r}")
        if self.kind == "uniform" and self.effective_cv > _UNIFORM_MAX_CV + 1e-12:
            raise ModelError(f"cv: a uniform distribution has cv <= 0.577, got {self.cv!r}")

    @property
    def effective_cv(self) -> float:
        """The coefficient of variation this distribution actually has."""
        if self.kind == "exponential":
            return 1.0
        if self.kind == "deterministic":
            return 0.0
        if self.cv is not None:
            return float(self.cv)
        return _UNIFORM_MAX_CV if self.kind == "uniform" else 1.0

    def to_dict(self) -> dict[str, Any]:
        if self.cv is None or self.kind in ("exponential", "deterministic"):
            return {"kind": self.kind}
        return {"kind": self.kind, "cv": self.cv}


EXPONENTIAL = Distribution()


@dataclass(frozen=True, kw_only=True)
class Station:
    """One service centre: a queue with ``servers`` servers (times ``copies``), or a delay."""

    name: str
    kind: StationKind = "queue"
    servers: int = 1
    copies: int = 1
    service: Distribution = EXPONENTIAL
    # What `what_if(scale=...)` changes; by default copies for a replicated station, else servers.
    scale_by: Literal["servers", "copies"] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ModelError(f"name: must be a non-empty string, got {self.name!r}")
        if self.kind not in _STATION_KINDS:
            raise ModelError(f"kind: unknown station kind {self.kind!r} (expected one of: "
                             f"{', '.join(_STATION_KINDS)})")
        if not _is_int(self.servers) or self.servers < 1:
            raise ModelError(f"servers: must be an integer >= 1, got {self.servers!r}")
        if not _is_int(self.copies) or self.copies < 1:
            raise ModelError(f"copies: must be an integer >= 1, got {self.copies!r}")
        if self.kind == "delay" and (self.servers != 1 or self.copies != 1):
            raise ModelError("servers: a delay station serves every request at once; "
                             "it has no servers or copies")
        if self.scale_by is not None and self.scale_by not in _SCALE_UNITS:
            raise ModelError(f"scale_by: must be 'servers' or 'copies', got {self.scale_by!r}")
        if not isinstance(self.service, Distribution):
            raise ModelError(f"service: must be a Distribution, got {self.service!r}")

    @property
    def is_queue(self) -> bool:
        return self.kind == "queue"

    @property
    def capacity(self) -> int:
        """Requests served at once across all copies (servers × copies)."""
        return self.servers * self.copies

    @property
    def scale_unit(self) -> Literal["servers", "copies"]:
        """What adding capacity to this station means: more servers, or more copies."""
        if self.scale_by is not None:
            return self.scale_by
        return "copies" if self.copies > 1 else "servers"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "queue":
            out["servers"] = self.servers
            if self.copies != 1:
                out["copies"] = self.copies
        if self.service != EXPONENTIAL:
            out["service"] = self.service.to_dict()
        if self.scale_by is not None:
            out["scale_by"] = self.scale_by
        return out


@dataclass(frozen=True, kw_only=True)
class Visit:
    """One step of a route: ``count`` visits to ``station``, taken with ``probability``.

    ``service_time`` is the mean service of each visit in seconds. The expected demand this step
    places on the station is ``probability × count × service_time``.
    """

    station: str
    service_time: float
    count: int = 1
    probability: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.station, str) or not self.station:
            raise ModelError(f"station: must be a station name, got {self.station!r}")
        if not _is_number(self.service_time) or self.service_time < 0:
            raise ModelError(f"service_time: must be a number >= 0, got {self.service_time!r}")
        if not _is_int(self.count) or self.count < 1:
            raise ModelError(f"count: must be an integer >= 1, got {self.count!r}")
        if not _is_number(self.probability) or not 0 <= self.probability <= 1:
            raise ModelError(f"probability: must be a number in [0, 1], got {self.probability!r}")

    @property
    def demand(self) -> float:
        return self.probability * self.count * self.service_time

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"station": self.station, "service_time": self.service_time}
        if self.count != 1:
            out["count"] = self.count
        if self.probability != 1:
            out["probability"] = self.probability
        return out


@dataclass(frozen=True, kw_only=True)
class RequestClass:
    """A kind of request: its route, its weight and (optionally) its own think time."""

    name: str
    route: tuple[Visit, ...]
    weight: float = 1.0
    think_time: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ModelError(f"name: must be a non-empty string, got {self.name!r}")
        object.__setattr__(self, "route", tuple(self.route))
        if not _is_number(self.weight) or self.weight <= 0:
            raise ModelError(f"weight: must be a number > 0, got {self.weight!r}")
        if self.think_time is not None and (not _is_number(self.think_time) or self.think_time < 0):
            raise ModelError(f"think_time: must be a number >= 0, got {self.think_time!r}")
        for index, visit in enumerate(self.route):
            if not isinstance(visit, Visit):
                raise ModelError(f"route[{index}]: must be a Visit, got {visit!r}")

    def demands(self) -> dict[str, float]:
        """Expected seconds of service per request of this class, by station."""
        out: dict[str, float] = {}
        for visit in self.route:
            out[visit.station] = out.get(visit.station, 0.0) + visit.demand
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "weight": self.weight,
                               "route": [visit.to_dict() for visit in self.route]}
        if self.think_time is not None:
            out["think_time"] = self.think_time
        return out


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Network:
    """Stations, request classes and the users' think time: everything the solvers need."""

    stations: tuple[Station, ...]
    classes: tuple[RequestClass, ...]
    think_time: float = 0.0
    think: Distribution = EXPONENTIAL
    class_mode: ClassMode = "mix"
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "stations", tuple(self.stations))
        object.__setattr__(self, "classes", tuple(self.classes))
        if not _is_number(self.think_time) or self.think_time < 0:
            raise ModelError(f"think_time: must be a number >= 0, got {self.think_time!r}")
        if self.class_mode not in _CLASS_MODES:
            raise ModelError(f"class_mode: must be one of {', '.join(_CLASS_MODES)}, "
                             f"got {self.class_mode!r}")
        if not self.stations:
            raise ModelError("stations: a network needs at least one station")
        if not self.classes:
            raise ModelError("classes: a network needs at least one request class")
        seen: set[str] = set()
        for index, station in enumerate(self.stations):
            if not isinstance(station, Station):
                raise ModelError(f"stations[{index}]: must be a Station, got {station!r}")
            if station.name in seen:
                raise ModelError(f"stations[{index}].name: duplicate station name {station.name!r}")
            seen.add(station.name)
        class_names: set[str] = set()
        for index, request_class in enumerate(self.classes):
            if not isinstance(request_class, RequestClass):
                raise ModelError(f"classes[{index}]: must be a RequestClass, got {request_class!r}")
            if request_class.name in class_names:
                raise ModelError(f"classes[{index}].name: duplicate class name {request_class.name!r}")
            class_names.add(request_class.name)
            for step, visit in enumerate(request_class.route):
                if visit.station not in seen:
                    raise ModelError(f"classes[{index}].route[{step}].station: unknown station "
                                     f"{visit.station!r} (stations: {', '.join(self.station_names)})")
        if self.total_demand() <= 0 and self.think_time <= 0 and all(
                (c.think_time or 0) <= 0 for c in self.classes):
            raise ModelError("demand: every demand and think time is zero; nothing to model")

    # -- construction helpers -----------------------------------------------------------------

    @classmethod
    def from_demands(
        cls,
        demands: Mapping[str, float],
        *,
        think_time: float,
        servers: Mapping[str, int] | None = None,
        copies: Mapping[str, int] | None = None,
        delays: Mapping[str, float] | None = None,
        name: str = "",
    ) -> Network:
        """Build a single-class network from per-station demands (seconds per request).

        ``demands`` lists the queueing stations in route order; ``servers`` and ``copies`` give
        multi-server and replicated stations (default 1); ``delays`` adds delay stations with their
        demand. This is the shape a calibration produces: D = busy seconds / completed requests.
        """
        servers = dict(servers or {})
        copies = dict(copies or {})
        delays = dict(delays or {})
        unknown = (set(servers) | set(copies)) - set(demands)
        if unknown:
            raise ModelError(f"servers: no demand given for station(s) {', '.join(sorted(unknown))}")
        overlap = set(delays) & set(demands)
        if overlap:
            raise ModelError(f"delays: station(s) {', '.join(sorted(overlap))} given as both "
                             "queue and delay")
        stations = [Station(name=n, servers=servers.get(n, 1), copies=copies.get(n, 1))
                    for n in demands]
        stations += [Station(name=n, kind="delay") for n in delays]
        route = [Visit(station=n, service_time=_checked_demand(n, d)) for n, d in demands.items()]
        route += [Visit(station=n, service_time=_checked_demand(n, d)) for n, d in delays.items()]
        return cls(stations=tuple(stations), classes=(RequestClass(name="all", route=tuple(route)),),
                   think_time=think_time, name=name)

    # -- reading ------------------------------------------------------------------------------

    @property
    def station_names(self) -> tuple[str, ...]:
        return tuple(station.name for station in self.stations)

    def station(self, name: str) -> Station:
        for station in self.stations:
            if station.name == name:
                return station
        raise ModelError(f"station: unknown station {name!r} (stations: {', '.join(self.station_names)})")

    def class_weights(self) -> tuple[float, ...]:
        """Class weights normalized to sum to 1 (request mix, or user shares)."""
        total = sum(c.weight for c in self.classes)
        return tuple(c.weight / total for c in self.classes)

    def class_think_times(self) -> tuple[float, ...]:
        return tuple(self.think_time if c.think_time is None else c.think_time for c in self.classes)

    def mean_think_time(self) -> float:
        """Think time averaged over the class weights (what one chain of users sees)."""
        return sum(w * z for w, z in zip(self.class_weights(), self.class_think_times(), strict=True))

    def class_demands(self) -> tuple[tuple[float, ...], ...]:
        """Demand matrix: ``[class][station]`` seconds of service per request."""
        rows = []
        for request_class in self.classes:
            per_station = request_class.demands()
            rows.append(tuple(per_station.get(name, 0.0) for name in self.station_names))
        return tuple(rows)

    def demands(self) -> dict[str, float]:
        """Mean demand per request at each station, averaged over the class weights."""
        weights = self.class_weights()
        matrix = self.class_demands()
        return {name: sum(w * row[k] for w, row in zip(weights, matrix, strict=True))
                for k, name in enumerate(self.station_names)}

    def total_demand(self) -> float:
        return sum(self.demands().values())

    def populations(self, users: int) -> tuple[int, ...]:
        """Split ``users`` over the classes by weight (largest remainder) in populations mode."""
        if not _is_int(users) or users < 0:
            raise ModelError(f"users: must be an integer >= 0, got {users!r}")
        weights = self.class_weights()
        exact = [users * w for w in weights]
        counts = [math.floor(x) for x in exact]
        by_remainder = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
        for i in by_remainder[: users - sum(counts)]:
            counts[i] += 1
        return tuple(counts)

    # -- writing ------------------------------------------------------------------------------

    def with_station(self, name: str, **changes: Any) -> Network:
        """A copy of this network with one station changed (``servers=40``, ``copies=6``, ...)."""
        self.station(name)  # an unknown name raises, listing the known ones
        stations = tuple(replace(s, **changes) if s.name == name else s for s in self.stations)
        return replace(self, stations=stations)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict in the file format (``network_from_dict`` reads it back)."""
        out: dict[str, Any] = {}
        if self.name:
            out["name"] = self.name
        out["think_time"] = self.think_time
        if self.think != EXPONENTIAL:
            out["think"] = self.think.to_dict()
        if self.class_mode != "mix":
            out["class_mode"] = self.class_mode
        out["stations"] = [station.to_dict() for station in self.stations]
        out["classes"] = [request_class.to_dict() for request_class in self.classes]
        return out


# --------------------------------------------------------------------------------------------
# Loading from YAML / JSON
# --------------------------------------------------------------------------------------------

_TOP_FIELDS = ("name", "description", "meta", "think_time", "think", "class_mode", "stations", "classes")
_STATION_FIELDS = ("name", "kind", "servers", "copies", "demand", "service", "scale_by", "description")
_CLASS_FIELDS = ("name", "weight", "think_time", "demands", "route", "description")
_VISIT_FIELDS = ("station", "service_time", "count", "probability")
_DISTRIBUTION_FIELDS = ("kind", "cv")


def load_network(path: str | Path) -> Network:
    """Read a network from a YAML or JSON file; errors name the file and the field."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        from scalesim.yamlfile import YamlFileError, read_yaml_file

        try:  # plain data only, bounded in size, nesting and alias expansion
            data = read_yaml_file(path)
        except YamlFileError as exc:
            raise ModelError(str(exc)) from None
        return network_from_dict(data, source=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        raise ModelError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}): "
                         f"{exc.msg}") from None
    return network_from_dict(data, source=str(path))


def network_from_dict(data: Any, *, source: str = "network") -> Network:
    """Build a network from the file format; ``source`` prefixes every error message."""
    try:
        return _parse_network(data)
    except ModelError as exc:
        raise ModelError(f"{source}: {_one_line(str(exc))}") from None


def _parse_network(data: Any) -> Network:
    if not isinstance(data, Mapping):
        raise ModelError(f"expected a mapping with 'stations' at the top level, got {_kind(data)}")
    _reject_unknown(data, _TOP_FIELDS, "")
    if "stations" not in data:
        raise ModelError("stations: missing field")
    raw_stations = data["stations"]
    if not isinstance(raw_stations, list) or not raw_stations:
        raise ModelError(f"stations: must be a non-empty list, got {_kind(raw_stations)}")
    think_time = _number(data, "think_time", "", default=0.0, minimum=0.0) or 0.0
    think = _parse_distribution(data.get("think"), "think") if "think" in data else EXPONENTIAL
    class_mode = data.get("class_mode", "mix")
    if class_mode not in _CLASS_MODES:
        raise ModelError(f"class_mode: must be one of {', '.join(_CLASS_MODES)}, got {class_mode!r}")
    name = data.get("name", "")
    if not isinstance(name, str):
        raise ModelError(f"name: must be a string, got {_kind(name)}")

    stations: list[Station] = []
    station_demands: dict[str, float] = {}
    for index, raw in enumerate(raw_stations):
        where = f"stations[{index}]"
        station, demand = _parse_station(raw, where)
        stations.append(station)
        if demand is not None:
            station_demands[station.name] = demand
    names = [s.name for s in stations]
    for index, station_name in enumerate(names):
        if station_name in names[:index]:
            raise ModelError(f"stations[{index}].name: duplicate station name {station_name!r}")

    raw_classes = data.get("classes")
    if raw_classes is None:
        missing = [i for i, s in enumerate(stations) if s.name not in station_demands]
        if missing:
            raise ModelError(f"stations[{missing[0]}].demand: missing field (give each station a "
                             "demand, or describe requests under 'classes')")
        route = tuple(Visit(station=s.name, service_time=station_demands[s.name]) for s in stations)
        classes: tuple[RequestClass, ...] = (RequestClass(name="all", route=route),)
    else:
        if station_demands:
            first = next(i for i, s in enumerate(stations) if s.name in station_demands)
            raise ModelError(f"stations[{first}].demand: give demands either on stations or in "
                             "classes, not both")
        if not isinstance(raw_classes, list) or not raw_classes:
            raise ModelError(f"classes: must be a non-empty list, got {_kind(raw_classes)}")
        classes = tuple(_parse_class(raw, f"classes[{i}]", names) for i, raw in enumerate(raw_classes))
    return Network(stations=tuple(stations), classes=classes, think_time=think_time, think=think,
                   class_mode=class_mode, name=name)


def _required_name(raw: Mapping[str, Any], where: str) -> str:
    if "name" not in raw:
        raise ModelError(f"{where}.name: missing field")
    name = raw["name"]
    if not isinstance(name, str) or not name.strip():
        raise ModelError(f"{where}.name: must be a non-empty string, got {name!r}")
    return name


def _parse_station(raw: Any, where: str) -> tuple[Station, float | None]:
    if not isinstance(raw, Mapping):
        raise ModelError(f"{where}: must be a mapping, got {_kind(raw)}")
    _reject_unknown(raw, _STATION_FIELDS, where)
    name = _required_name(raw, where)
    kind = raw.get("kind", "queue")
    if kind not in _STATION_KINDS:
        raise ModelError(f"{where}.kind: unknown station kind {kind!r} (expected one of: "
                         f"{', '.join(_STATION_KINDS)})")
    if kind == "delay":
        for forbidden in ("servers", "copies"):
            if forbidden in raw:
                raise ModelError(f"{where}.{forbidden}: a delay station serves every request at "
                                 "once; remove this field")
    servers = _integer(raw, "servers", where, default=1, minimum=1)
    copies = _integer(raw, "copies", where, default=1, minimum=1)
    demand = _number(raw, "demand", where, default=None, minimum=0.0)
    service = _parse_distribution(raw["service"], f"{where}.service") if "service" in raw else EXPONENTIAL
    scale_by = raw.get("scale_by")
    if scale_by is not None and scale_by not in _SCALE_UNITS:
        raise ModelError(f"{where}.scale_by: must be 'servers' or 'copies', got {scale_by!r}")
    station = _wrap(where, lambda: Station(name=name, kind=kind, servers=servers, copies=copies,
                                           service=service, scale_by=scale_by))
    return station, demand


def _parse_class(raw: Any, where: str, station_names: list[str]) -> RequestClass:
    if not isinstance(raw, Mapping):
        raise ModelError(f"{where}: must be a mapping, got {_kind(raw)}")
    _reject_unknown(raw, _CLASS_FIELDS, where)
    name = _required_name(raw, where)
    weight = _number(raw, "weight", where, default=1.0, minimum=0.0)
    if weight is not None and weight <= 0:
        raise ModelError(f"{where}.weight: must be a number > 0, got {weight!r}")
    think_time = _number(raw, "think_time", where, default=None, minimum=0.0)
    has_route, has_demands = "route" in raw, "demands" in raw
    if has_route == has_demands:
        raise ModelError(f"{where}: give exactly one of 'route' (visits in order) or 'demands' "
                         "(station: seconds)")
    visits: list[Visit] = []
    if has_demands:
        demands = raw["demands"]
        if not isinstance(demands, Mapping) or not demands:
            raise ModelError(f"{where}.demands: must be a non-empty mapping station: seconds, "
                             f"got {_kind(demands)}")
        for station_name, value in demands.items():
            field_name = f"{where}.demands.{station_name}"
            if station_name not in station_names:
                raise ModelError(f"{field_name}: unknown station {station_name!r} "
                                 f"(stations: {', '.join(station_names)})")
            if not _is_number(value) or value < 0:
                raise ModelError(f"{field_name}: must be a number >= 0, got {value!r}")
            visits.append(Visit(station=station_name, service_time=float(value)))
    else:
        route = raw["route"]
        if not isinstance(route, list) or not route:
            raise ModelError(f"{where}.route: must be a non-empty list of visits, got {_kind(route)}")
        for step, raw_visit in enumerate(route):
            visits.append(_parse_visit(raw_visit, f"{where}.route[{step}]", station_names))
    assert weight is not None
    return RequestClass(name=name, route=tuple(visits), weight=weight, think_time=think_time)


def _parse_visit(raw: Any, where: str, station_names: list[str]) -> Visit:
    if not isinstance(raw, Mapping):
        raise ModelError(f"{where}: must be a mapping with station and service_time, got {_kind(raw)}")
    _reject_unknown(raw, _VISIT_FIELDS, where)
    for required in ("station", "service_time"):
        if required not in raw:
            raise ModelError(f"{where}.{required}: missing field")
    station = raw["station"]
    if station not in station_names:
        raise ModelError(f"{where}.station: unknown station {station!r} (stations: "
                         f"{', '.join(station_names)})")
    service_time = _number(raw, "service_time", where, default=None, minimum=0.0)
    count = _integer(raw, "count", where, default=1, minimum=1)
    probability = _number(raw, "probability", where, default=1.0, minimum=0.0)
    if probability is not None and probability > 1:
        raise ModelError(f"{where}.probability: must be a number in [0, 1], got {probability!r}")
    assert service_time is not None and probability is not None
    return Visit(station=station, service_time=service_time, count=count, probability=probability)


def _parse_distribution(raw: Any, where: str) -> Distribution:
    if isinstance(raw, str):
        raw = {"kind": raw}
    if not isinstance(raw, Mapping):
        raise ModelError(f"{where}: must be a distribution name or a mapping with kind and cv, "
                         f"got {_kind(raw)}")
    _reject_unknown(raw, _DISTRIBUTION_FIELDS, where)
    kind = raw.get("kind", "exponential")
    cv = _number(raw, "cv", where, default=None, minimum=0.0)
    return _wrap(where, lambda: Distribution(kind=kind, cv=cv))


# --------------------------------------------------------------------------------------------
# Small validation helpers
# --------------------------------------------------------------------------------------------


def _number(raw: Mapping[str, Any], key: str, where: str, *, default: float | None,
            minimum: float) -> float | None:
    if key not in raw:
        return default
    value = raw[key]
    if not _is_number(value) or value < minimum:
        raise ModelError(f"{_join(where, key)}: must be a number >= {minimum:g}, got {value!r}")
    return float(value)


def _integer(raw: Mapping[str, Any], key: str, where: str, *, default: int, minimum: int) -> int:
    if key not in raw:
        return default
    value = raw[key]
    if not _is_int(value) or value < minimum:
        raise ModelError(f"{_join(where, key)}: must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _checked_demand(name: str, value: float) -> float:
    if not _is_number(value) or value < 0:
        raise ModelError(f"demands.{name}: must be a number >= 0, got {value!r}")
    return float(value)


def _reject_unknown(raw: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    allowed = tuple(allowed)
    for key in raw:
        if key not in allowed:
            raise ModelError(f"{_join(where, str(key))}: unknown field (expected one of: "
                             f"{', '.join(allowed)})")


def _wrap(where: str, build: Any) -> Any:
    """Run a dataclass constructor, prefixing its field errors with ``where``."""
    try:
        return build()
    except ModelError as exc:
        raise ModelError(f"{where}.{exc}") from None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _kind(value: Any) -> str:
    """How to name what we got instead, in an error message."""
    if value is None:
        return "nothing"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


def _one_line(text: str) -> str:
    return " ".join(text.split())

