"""What users felt: the per-second timeline of a run, and each fault's cost read from it.

The load generator reports about once a second (``progress`` events): throughput, failed requests
and latency over the last second. `Timeline` lines those points up on the load's clock (seconds
since ``run_start``) and `assess_faults` reads, for each fault:

* the **baseline**: median throughput over the ``baseline_s`` seconds before the fault began;
* the **failed requests** it caused: failures from its beginning until the system recovered (or the
  next fault on the same clock began, or the run ended);
* **recovery**: the first second, from the fault's end (the restarted node answering again, the
  resumed node, the delay removed) -- or from its beginning when it has no end --, after which
  throughput stays at or above ``recovered_fraction`` of the baseline with no failed request for
  ``hold_s`` seconds (throughput averaged over ``smooth_s`` seconds; the fraction is lowered when the
  baseline's own noise is larger, see `full_throughput_floor`). ``time_to_recover_s`` is
  measured from the fault's end: the time back to full throughput once the node is back;
* ``degraded_s``: how many seconds, from the fault's beginning until recovery, had a failed
  request or throughput below that fraction -- 0 when users did not notice the fault;
* the worst second: lowest throughput and highest p95 while it lasted.

A fault that costs nothing (a killed app server behind a balancer) recovers in its first second:
``failed_requests`` 0 and ``time_to_recover_s`` 0 are the finding, not a gap in the data.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scalesim.faults.spec import Fault


@dataclass(frozen=True, kw_only=True)
class RecoverySettings:
    baseline_s: float = 10.0
    recovered_fraction: float = 0.9
    hold_s: int = 3
    smooth_s: int = 3
    noise_sigmas: float = 2.0


@dataclass(frozen=True, kw_only=True)
class Point:
    t_s: float
    rps: float
    failures: int
    users: int | None = None
    mean_ms: float | None = None
    p95_ms: float | None = None
    phase: str | None = None
    errors: Mapping[str, int] | None = None  # failed requests of this second, per reason

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"t_s": round(self.t_s, 3), "rps": self.rps, "failures": self.failures,
                                "users": self.users, "mean_ms": self.mean_ms, "p95_ms": self.p95_ms,
                                "phase": self.phase}
        if self.errors:
            data["errors"] = dict(self.errors)
        return data


def timeline_from_events(events: Iterable[Mapping[str, Any]], *, start_time: float) -> list[Point]:
    """Per-second points from ``progress`` events (wall ``time`` -> seconds since `start_time`).

    Failures per interval come from ``failures_interval`` when the load generator sends it, else from
    the difference of the cumulative per-step ``failures``.
    """
    points: list[Point] = []
    last_step: Any = None
    last_cumulative = 0
    for event in events:
        if event.get("event") != "progress":
            continue
        cumulative = int(event.get("failures") or 0)
        if event.get("step") != last_step:
            last_step, last_cumulative = event.get("step"), 0
        if event.get("failures_interval") is not None:
            failures = int(event["failures_interval"])
        else:
            failures = max(0, cumulative - last_cumulative)
        last_cumulative = cumulative
        points.append(Point(
            t_s=float(event.get("time", start_time)) - start_time, rps=float(event.get("rps") or 0.0),
            failures=failures, users=event.get("users"), mean_ms=event.get("mean_ms"), p95_ms=event.get("p95_ms"),
            phase=event.get("phase"), errors=event.get("errors_interval") or None))
    return points


def _end_reference(fault: Fault, actions: Sequence[Mapping[str, Any]]) -> float | None:
    """When the fault's end took effect: a restarted node answering, a resumed node, a delay removed."""
    if fault.end_s is None:
        return None
    for action in actions:
        if action.get("fault") == fault.label and action.get("action") in ("ready", "resumed", "latency_off"):
            return float(action["t_s"])
    return None  # the end never took effect (restart failed, or the run ended first)


def _begin_reference(fault: Fault, actions: Sequence[Mapping[str, Any]]) -> float:
    for action in actions:
        if action.get("fault") == fault.label and action.get("action") in ("killed", "stopped", "paused",
                                                                            "latency_on"):
            return float(action["t_s"])
    return fault.start_s


def _healthy(points: Sequence[Point], index: int, *, floor: float, settings: RecoverySettings) -> bool:
    """No failure in this second, and throughput averaged over `smooth_s` seconds at or above `floor`."""
    window = points[max(0, index - settings.smooth_s + 1):index + 1]
    smoothed = sum(p.rps for p in window) / len(window)
    return points[index].failures == 0 and smoothed >= floor


def full_throughput_floor(before: Sequence[float], *, settings: RecoverySettings) -> float:
    """The throughput that counts as "back to full": the recovered fraction of the baseline, or lower
    when the baseline's own second-to-second noise is larger. A closed population of a few dozen
    users gives a few dozen requests a second, and a Poisson count of 30 varies by 5 from one second
    to the next: an average over 3 s still swings by 10% with nothing wrong."""
    baseline = statistics.median(before)
    noise = statistics.stdev(before) / settings.smooth_s ** 0.5 if len(before) > 2 else 0.0
    return baseline - max((1 - settings.recovered_fraction) * baseline, settings.noise_sigmas * noise)


def assess_fault(fault: Fault, points: Sequence[Point], actions: Sequence[Mapping[str, Any]], *,
                 settings: RecoverySettings = RecoverySettings(), horizon_s: float | None = None) -> dict[str, Any]:
    began = _begin_reference(fault, actions)
    ended = _end_reference(fault, actions)
    before = [p.rps for p in points if began - settings.baseline_s <= p.t_s < began and p.phase != "warmup"]
    if not before:
        before = [p.rps for p in points if p.t_s < began]
    baseline = statistics.median(before) if before else None
    horizon = horizon_s if horizon_s is not None else (points[-1].t_s + 1 if points else began)
    reference = ended if ended is not None else (began if fault.end_s is None else None)
    recovered_at = None
    unhealthy_s = 0
    floor = full_throughput_floor(before, settings=settings) if before else None
    if floor is not None:
        healthy = [_healthy(points, i, floor=floor, settings=settings) for i in range(len(points))]
        span = [i for i, p in enumerate(points) if began < p.t_s <= horizon]
        if reference is not None:
            for position, index in enumerate(span):
                run = span[position:position + settings.hold_s]
                if points[index].t_s >= reference and len(run) == settings.hold_s and all(healthy[i] for i in run):
                    recovered_at = points[index].t_s
                    break
        end_of_blame = recovered_at if recovered_at is not None else horizon
        unhealthy_s = sum(1 for i in span if points[i].t_s < end_of_blame and not healthy[i])
    impact_end = recovered_at if recovered_at is not None else horizon
    during = [p for p in points if began <= p.t_s < max(impact_end, began + 1)]
    p95_before = [p.p95_ms for p in points if began - settings.baseline_s <= p.t_s < began and p.p95_ms is not None]
    p95_during = [p.p95_ms for p in during if p.p95_ms is not None]
    # Failures are counted over the interval each point closes, which began about a second earlier.
    blamed = [p for p in points if began < p.t_s <= max(impact_end, began) + 1]
    failed = sum(p.failures for p in blamed)
    reasons: dict[str, int] = {}
    for point in blamed:
        for reason, count in (point.errors or {}).items():
            reasons[reason] = reasons.get(reason, 0) + int(count)
    return {
        **fault.to_dict(),
        "began_s": round(began, 3),
        "ended_s": round(ended, 3) if ended is not None else None,
        "baseline_rps": round(baseline, 2) if baseline is not None else None,
        "full_throughput_rps": round(floor, 2) if floor is not None else None,
        "min_rps": round(min((p.rps for p in during), default=0.0), 2) if during else None,
        "p95_before_ms": round(statistics.median(p95_before), 2) if p95_before else None,
        "worst_p95_ms": round(max(p95_during), 2) if p95_during else None,
        "failed_requests": failed,
        "errors": dict(sorted(reasons.items(), key=lambda item: -item[1])),
        # Seconds with a failure or with throughput below the recovered fraction, until recovery.
        "degraded_s": unhealthy_s,
        "recovered_at_s": round(recovered_at, 3) if recovered_at is not None else None,
        "time_to_recover_s": (round(max(0.0, recovered_at - reference), 3)
                              if recovered_at is not None and reference is not None else None),
        "recovered": recovered_at is not None,
    }


def assess_faults(faults: Sequence[Fault], points: Sequence[Point], actions: Sequence[Mapping[str, Any]], *,
                  settings: RecoverySettings = RecoverySettings()) -> list[dict[str, Any]]:
    """One assessment per fault; a fault's window of blame ends where the next fault begins."""
    assessed = []
    ordered = sorted(faults, key=lambda fault: fault.start_s)
    for index, fault in enumerate(ordered):
        horizon = ordered[index + 1].start_s if index + 1 < len(ordered) else None
        assessed.append(assess_fault(fault, points, actions, settings=settings, horizon_s=horizon))
    return assessed
