"""Step statistics: what one measurement window of a load step looked like.

A load run is a staircase of user counts. For every step the load generator keeps a
*window recorder*: for each endpoint (method + templated name, e.g. ``GET /api/books/{id}``)
it counts requests and failures and feeds every response time into a :class:`LogHistogram`.
When the window closes, the recorder turns into a :class:`StepStats` — throughput, mean,
p50 / p95 / p99 and max latency per endpoint and in total, plus an error tally.

Why not Locust's own numbers? Locust rounds response times before it stores them (whole
milliseconds below 100 ms, two significant digits above), which is too coarse to compare a
measured p95 of 130 ms with a model's 134 ms. :class:`LogHistogram` instead keeps
logarithmically spaced buckets whose width guarantees a chosen *relative* error (1% by
default) for every percentile, in fixed memory, however many samples it sees::

    >>> h = LogHistogram()
    >>> for ms in (12.0, 15.5, 230.0):
    ...     h.record(ms)
    >>> round(h.percentile(50), 1)
    15.5

Histograms with the same parameters merge exactly (bucket counts add up), which is how the
windows of several Locust worker processes become one step.

Next to the window recorder, an :class:`IntervalRecorder` keeps the last progress interval
(about a second): requests, failures and a histogram for its mean and p95. Read and reset on
every progress tick, it makes a per-second timeline that shows a fault (a server killed
mid-run) as it happens, whatever step or phase the run is in.

This module is pure Python and never imports Locust: the locustfile imports it inside the
Locust process, and the driver and the report import it outside.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = [
    "TOTAL_NAME",
    "EndpointStats",
    "IntervalRecorder",
    "LogHistogram",
    "StepStats",
    "WindowRecorder",
]

#: Name of the aggregate row, as in Locust's own reports.
TOTAL_NAME = "Aggregated"


class LogHistogram:
    """A log-bucketed histogram with bounded relative error and fixed memory.

    Values (milliseconds, floats) fall into buckets whose bounds grow geometrically by
    ``gamma = (1 + e) / (1 - e)``, where ``e`` is *relative_error*. Reporting a bucket by
    ``2 * upper / (gamma + 1)`` is then within ``e`` of every value the bucket holds, so any
    percentile is within ``e`` of the exact (nearest-rank) percentile. The same trick is
    behind DDSketch.

    Values at or below *min_value* share the first bucket; values above *max_value* share
    the last one (exact minimum and maximum are tracked separately, and estimates are
    clamped to them). The bucket array is allocated once: about 1,100 eight-byte counters
    for the defaults (1 µs .. 1 hour at 1%), whatever the number of samples.
    """

    __slots__ = (
        "relative_error",
        "min_value",
        "max_value",
        "_log_gamma",
        "_offset",
        "_counts",
        "count",
        "sum",
        "min",
        "max",
    )

    def __init__(
        self, *, relative_error: float = 0.01, min_value: float = 0.001, max_value: float = 3_600_000.0
    ) -> None:
        if not 0.0 < relative_error < 0.5:
            raise ValueError(f"relative_error must be in (0, 0.5), got {relative_error}")
        if not 0.0 < min_value < max_value:
            raise ValueError(f"need 0 < min_value < max_value, got {min_value}, {max_value}")
        self.relative_error = relative_error
        self.min_value = min_value
        self.max_value = max_value
        gamma = (1.0 + relative_error) / (1.0 - relative_error)
        self._log_gamma = math.log(gamma)
        self._offset = math.ceil(math.log(min_value) / self._log_gamma)
        n_buckets = math.ceil(math.log(max_value) / self._log_gamma) - self._offset + 1
        self._counts = array("q", bytes(8 * n_buckets))
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    # -- recording ---------------------------------------------------------------------------

    def _index(self, value: float) -> int:
        if value <= self.min_value:
            return 0
        index = math.ceil(math.log(value) / self._log_gamma) - self._offset
        last = len(self._counts) - 1
        return last if index > last else index

    def record(self, value: float, count: int = 1) -> None:
        """Add *count* samples of *value* (negative values count as 0)."""
        if value < 0.0 or value != value:  # negative or NaN
            value = 0.0
        self._counts[self._index(value)] += count
        self.count += count
        self.sum += value * count
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def reset(self) -> None:
        """Forget every sample (the bucket array is reused, not reallocated)."""
        counts = self._counts
        for i in range(len(counts)):
            counts[i] = 0
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def merge(self, other: LogHistogram) -> None:
        """Add *other*'s samples to this histogram (parameters must match)."""
        self._check_compatible(other.relative_error, other.min_value, other.max_value)
        mine = self._counts
        for i, c in enumerate(other._counts):
            if c:
                mine[i] += c
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def _check_compatible(self, relative_error: float, min_value: float, max_value: float) -> None:
        if (relative_error, min_value, max_value) != (self.relative_error, self.min_value, self.max_value):
            raise ValueError("cannot merge histograms with different parameters")

    # -- reading -----------------------------------------------------------------------------

    @property
    def n_buckets(self) -> int:
        return len(self._counts)

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0

    def _estimate(self, index: int) -> float:
        # every value in bucket i lies in (gamma**(k-1), gamma**k], k = i + offset; this
        # representative is within relative_error of all of them (bucket 0 also holds the
        # values <= min_value: the clamp to the exact minimum covers those)
        gamma = math.exp(self._log_gamma)
        value = 2.0 * math.exp((index + self._offset) * self._log_gamma) / (gamma + 1.0)
        return min(max(value, self.min), self.max)

    def percentiles(self, ps: Iterable[float]) -> list[float]:
        """Nearest-rank percentiles (``p`` in 0..100) in one pass; 0.0 for an empty histogram.

        The nearest-rank p-th percentile is the ``ceil(p/100 * n)``-th smallest sample; the
        answer is within ``relative_error`` of it.
        """
        wanted = list(ps)
        if self.count == 0:
            return [0.0] * len(wanted)
        ranks = [max(1, math.ceil(p / 100.0 * self.count - 1e-9)) for p in wanted]
        order = sorted(range(len(wanted)), key=lambda k: ranks[k])
        out = [0.0] * len(wanted)
        pos = 0
        cumulative = 0
        for index, c in enumerate(self._counts):
            if not c:
                continue
            cumulative += c
            while pos < len(order) and ranks[order[pos]] <= cumulative:
                k = order[pos]
                out[k] = self.max if wanted[k] >= 100.0 else self._estimate(index)
                pos += 1
            if pos == len(order):
                break
        for k in order[pos:]:  # only reachable through float noise
            out[k] = self.max
        return out

    def percentile(self, p: float) -> float:
        """The nearest-rank *p*-th percentile (0..100), within ``relative_error``."""
        return self.percentiles([p])[0]

    # -- serialization -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A compact, JSON- and msgpack-friendly form (non-empty buckets only)."""
        return {
            "relative_error": self.relative_error,
            "min_value": self.min_value,
            "max_value": self.max_value,
            "count": self.count,
            "sum": self.sum,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
            "buckets": [[i, c] for i, c in enumerate(self._counts) if c],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LogHistogram:
        hist = cls(relative_error=data["relative_error"], min_value=data["min_value"], max_value=data["max_value"])
        hist.merge_dict(data)
        return hist

    def merge_dict(self, data: Mapping[str, Any]) -> None:
        """Merge the serialized form of a compatible histogram without building it."""
        self._check_compatible(data["relative_error"], data["min_value"], data["max_value"])
        for i, c in data["buckets"]:
            self._counts[int(i)] += int(c)
        self.count += int(data["count"])
        self.sum += float(data["sum"])
        if data.get("min") is not None:
            self.min = min(self.min, float(data["min"]))
        if data.get("max") is not None:
            self.max = max(self.max, float(data["max"]))


def _r(value: float, digits: int = 3) -> float:
    return round(float(value), digits)


@dataclass(frozen=True, kw_only=True)
class EndpointStats:
    """One endpoint's (or the total's) figures over a measurement window.

    Latencies are in milliseconds and include failed requests (as Locust does); ``rps``
    is ``requests / window_s``; ``requests`` includes ``failures``.
    """

    name: str
    method: str
    requests: int
    failures: int
    rps: float
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EndpointStats:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_histogram(
        cls, *, name: str, method: str, requests: int, failures: int, window_s: float, histogram: LogHistogram
    ) -> EndpointStats:
        p50, p95, p99 = histogram.percentiles((50, 95, 99))
        return cls(
            name=name,
            method=method,
            requests=requests,
            failures=failures,
            rps=_r(requests / window_s if window_s > 0 else 0.0),
            mean_ms=_r(histogram.mean),
            p50_ms=_r(p50),
            p95_ms=_r(p95),
            p99_ms=_r(p99),
            max_ms=_r(histogram.max if histogram.count else 0.0),
        )


@dataclass(frozen=True, kw_only=True)
class StepStats:
    """The measurement window of one load step.

    ``started_at`` / ``ended_at`` are wall-clock epoch seconds of the window (warm-up
    excluded); ``window_s`` is its duration on a monotonic clock. ``errors`` maps a failure
    message (``"METHOD name: reason"``) to its count. ``rejections`` counts expected business
    answers that were *not* failures (e.g. ``"POST /api/rentals: 409"`` — no copy left).
    ``loadgen_cpu_seconds`` is the CPU time the whole Locust process tree spent during the
    window (filled in by the driver; ``None`` when unknown).
    """

    index: int
    users: int
    window_s: float
    started_at: float
    ended_at: float
    total: EndpointStats
    endpoints: list[EndpointStats]
    errors: dict[str, int] = field(default_factory=dict)
    loadgen_cpu_seconds: float | None = None
    rejections: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.total.rps

    def endpoint(self, name: str, method: str | None = None) -> EndpointStats:
        for e in self.endpoints:
            if e.name == name and (method is None or e.method == method):
                return e
        raise KeyError(f"no endpoint {method or '*'} {name} in step {self.index}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "users": self.users,
            "window_s": self.window_s,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "total": self.total.to_dict(),
            "endpoints": [e.to_dict() for e in self.endpoints],
            "errors": dict(self.errors),
            "loadgen_cpu_seconds": self.loadgen_cpu_seconds,
            "rejections": dict(self.rejections),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepStats:
        """Build from :meth:`to_dict` output or from a ``step_end`` event (``step`` = index)."""
        index = data["index"] if "index" in data else data["step"]
        cpu = data.get("loadgen_cpu_seconds")
        return cls(
            index=int(index),
            users=int(data["users"]),
            window_s=float(data["window_s"]),
            started_at=float(data["started_at"]),
            ended_at=float(data["ended_at"]),
            total=EndpointStats.from_dict(data["total"]),
            endpoints=[EndpointStats.from_dict(e) for e in data.get("endpoints", [])],
            errors={str(k): int(v) for k, v in data.get("errors", {}).items()},
            loadgen_cpu_seconds=None if cpu is None else float(cpu),
            rejections={str(k): int(v) for k, v in data.get("rejections", {}).items()},
        )


class _Endpoint:
    __slots__ = ("requests", "failures", "histogram")

    def __init__(self, histogram: LogHistogram) -> None:
        self.requests = 0
        self.failures = 0
        self.histogram = histogram


class WindowRecorder:
    """Collects one measurement window: per-endpoint counts and latency histograms.

    Feed it from Locust's ``events.request`` hook with :meth:`record`; call :meth:`reset`
    when a window opens and :meth:`step_stats` when it closes. Several recorders (one per
    Locust worker) combine through :meth:`snapshot` / :meth:`merge_snapshot`.

    Memory is bounded: at most *max_endpoints* endpoint rows (later ones are folded into one
    more row, ``"(other)"``) and *max_errors* distinct error messages (later ones count under
    ``"(other errors)"``). ``lifetime_requests`` / ``lifetime_failures`` are never reset;
    they drive the once-a-second progress figures.
    """

    OTHER_ENDPOINT = "(other)"
    OTHER_ERRORS = "(other errors)"

    def __init__(self, *, relative_error: float = 0.01, max_endpoints: int = 100, max_errors: int = 100) -> None:
        self.relative_error = relative_error
        self.max_endpoints = max_endpoints
        self.max_errors = max_errors
        self._endpoints: dict[tuple[str, str], _Endpoint] = {}
        self._total = _Endpoint(self._new_histogram())
        self.errors: dict[str, int] = {}
        self.rejections: dict[str, int] = {}
        self.lifetime_requests = 0
        self.lifetime_failures = 0

    def _new_histogram(self) -> LogHistogram:
        return LogHistogram(relative_error=self.relative_error)

    def _endpoint(self, method: str, name: str) -> _Endpoint:
        key = (method, name)
        row = self._endpoints.get(key)
        if row is None:
            if len(self._endpoints) >= self.max_endpoints:
                key = ("", self.OTHER_ENDPOINT)
                row = self._endpoints.get(key)
            if row is None:
                row = self._endpoints[key] = _Endpoint(self._new_histogram())
        return row

    @staticmethod
    def _bump(table: dict[str, int], key: str, limit: int, overflow: str, count: int = 1) -> None:
        if key in table or len(table) < limit:
            table[key] = table.get(key, 0) + count
        else:
            table[overflow] = table.get(overflow, 0) + count

    def record(self, method: str, name: str, response_time_ms: float, error: str | None = None) -> None:
        """One finished request; *error* is its failure message (``None`` = success)."""
        row = self._endpoint(method, name)
        total = self._total
        row.requests += 1
        total.requests += 1
        row.histogram.record(response_time_ms)
        total.histogram.record(response_time_ms)
        self.lifetime_requests += 1
        if error is not None:
            row.failures += 1
            total.failures += 1
            self.lifetime_failures += 1
            self._bump(self.errors, f"{method} {name}: {error}", self.max_errors, self.OTHER_ERRORS)

    def reject(self, key: str) -> None:
        """Count an expected business answer that is not a failure (e.g. a 409 on rent)."""
        self._bump(self.rejections, key, self.max_errors, self.OTHER_ERRORS)

    @property
    def requests(self) -> int:
        return self._total.requests

    @property
    def failures(self) -> int:
        return self._total.failures

    def reset(self) -> None:
        """Open a new window: zero every counter except the lifetime ones."""
        for row in self._endpoints.values():
            row.requests = row.failures = 0
            row.histogram.reset()
        self._total.requests = self._total.failures = 0
        self._total.histogram.reset()
        self.errors.clear()
        self.rejections.clear()

    def snapshot(self) -> dict[str, Any]:
        """The window so far, as plain data (JSON/msgpack-safe) for :meth:`merge_snapshot`."""
        return {
            "endpoints": [
                [method, name, row.requests, row.failures, row.histogram.to_dict()]
                for (method, name), row in self._endpoints.items()
                if row.requests
            ],
            "errors": dict(self.errors),
            "rejections": dict(self.rejections),
        }

    def merge_snapshot(self, snap: Mapping[str, Any]) -> None:
        """Add another recorder's :meth:`snapshot` to this window."""
        for method, name, requests, failures, hist in snap.get("endpoints", []):
            row = self._endpoint(str(method), str(name))
            row.requests += int(requests)
            row.failures += int(failures)
            row.histogram.merge_dict(hist)
            self._total.requests += int(requests)
            self._total.failures += int(failures)
            self._total.histogram.merge_dict(hist)
        for key, count in snap.get("errors", {}).items():
            self._bump(self.errors, str(key), self.max_errors, self.OTHER_ERRORS, int(count))
        for key, count in snap.get("rejections", {}).items():
            self._bump(self.rejections, str(key), self.max_errors, self.OTHER_ERRORS, int(count))

    def step_stats(self, *, index: int, users: int, window_s: float, started_at: float, ended_at: float) -> StepStats:
        """Close the window into a :class:`StepStats` (the recorder itself is unchanged)."""
        endpoints = [
            EndpointStats.from_histogram(
                name=name,
                method=method,
                requests=row.requests,
                failures=row.failures,
                window_s=window_s,
                histogram=row.histogram,
            )
            for (method, name), row in sorted(self._endpoints.items(), key=lambda kv: (kv[0][1], kv[0][0]))
            if row.requests
        ]
        total = EndpointStats.from_histogram(
            name=TOTAL_NAME,
            method="",
            requests=self._total.requests,
            failures=self._total.failures,
            window_s=window_s,
            histogram=self._total.histogram,
        )
        return StepStats(
            index=index,
            users=users,
            window_s=round(window_s, 4),
            started_at=started_at,
            ended_at=ended_at,
            total=total,
            endpoints=endpoints,
            errors=dict(self.errors),
            rejections=dict(self.rejections),
        )


class IntervalRecorder:
    """One progress interval: requests, failed requests and a latency histogram, reset on every read.

    Feed it alongside the :class:`WindowRecorder` (every request, in every phase, warm-ups and
    ramps included); :meth:`take` returns the interval as plain data and starts the next one. In
    distributed mode each worker sends its :meth:`take` with its lifetime counts once a second
    and the master merges (:meth:`merge_snapshot`) whatever arrived before its own tick, so no
    request is lost or counted twice, though an interval's edges are each worker's, not the master's.
    """

    #: Distinct failure reasons kept per interval (a fault makes a handful; a bug could make many).
    MAX_REASONS = 20

    def __init__(self, *, relative_error: float = 0.01) -> None:
        self.relative_error = relative_error
        self.requests = 0
        self.failures = 0
        self.errors: dict[str, int] = {}
        self.histogram = LogHistogram(relative_error=relative_error)

    def record(self, response_time_ms: float, *, failed: bool, reason: str | None = None) -> None:
        self.requests += 1
        if failed:
            self.failures += 1
            if reason is not None:
                self._count(reason, 1)
        self.histogram.record(response_time_ms)

    def _count(self, reason: str, count: int) -> None:
        key = reason if reason in self.errors or len(self.errors) < self.MAX_REASONS else "other"
        self.errors[key] = self.errors.get(key, 0) + count

    def take(self) -> dict[str, Any]:
        """The interval so far (JSON/msgpack-safe, for :meth:`merge_snapshot`), then reset."""
        snapshot = {"requests": self.requests, "failures": self.failures, "errors": self.errors,
                    "histogram": self.histogram.to_dict()}
        self.requests = self.failures = 0
        self.errors = {}
        self.histogram.reset()
        return snapshot

    def merge_snapshot(self, snap: Mapping[str, Any]) -> None:
        self.requests += int(snap.get("requests", 0))
        self.failures += int(snap.get("failures", 0))
        for reason, count in (snap.get("errors") or {}).items():
            self._count(str(reason), int(count))
        if snap.get("histogram"):
            self.histogram.merge_dict(snap["histogram"])

    def summary(self) -> dict[str, Any]:
        """``requests``, ``failures_interval`` with ``errors_interval`` (count per reason), ``mean_ms`` and
        ``p95_ms`` (``None`` without requests)."""
        hist = self.histogram
        return {
            "requests": self.requests,
            "failures_interval": self.failures,
            "errors_interval": dict(self.errors),
            "mean_ms": _r(hist.mean) if hist.count else None,
            "p95_ms": _r(hist.percentile(95)) if hist.count else None,
        }
