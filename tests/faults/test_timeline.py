"""Reading a fault's cost off the per-second timeline."""

from __future__ import annotations

from typing import Any

import pytest

from scalesim.faults.spec import parse_fault
from scalesim.faults.timeline import Point, assess_fault, assess_faults, timeline_from_events


def _points(rps: list[float], failures: list[int] | None = None) -> list[Point]:
    failures = failures or [0] * len(rps)
    pairs = enumerate(zip(rps, failures, strict=True))
    return [Point(t_s=float(i + 1), rps=r, failures=f, p95_ms=5.0) for i, (r, f) in pairs]


def _actions(fault: str, began: float, ended: float | None, end_action: str = "ready") -> list[dict[str, Any]]:
    actions = [{"fault": fault, "action": "killed", "t_s": began}]
    if ended is not None:
        actions.append({"fault": fault, "action": end_action, "t_s": ended})
    return actions


def test_a_fault_nobody_noticed_costs_nothing() -> None:
    fault = parse_fault("kill:app2@12s+5s")
    result = assess_fault(fault, _points([40.0] * 30), _actions(fault.label, 12.0, 17.5))
    assert result["failed_requests"] == 0
    assert result["degraded_s"] == 0
    assert result["recovered"] and result["time_to_recover_s"] < 1.0
    assert result["baseline_rps"] == 40.0


def test_an_outage_counts_its_failures_and_recovery() -> None:
    rps = [40.0] * 12 + [5.0] * 6 + [20.0, 30.0] + [40.0] * 10
    failures = [0] * 12 + [30] * 6 + [3, 0] + [0] * 10
    fault = parse_fault("kill:primary@12s+6s")
    result = assess_fault(fault, _points(rps, failures), _actions(fault.label, 12.0, 18.2))
    assert result["failed_requests"] == 183
    assert result["min_rps"] == 5.0
    assert result["recovered"]
    # back once 3 s of averaged throughput reach 90% of 40 req/s with no failure
    assert 20.0 <= result["recovered_at_s"] <= 24.0
    assert result["time_to_recover_s"] == pytest.approx(result["recovered_at_s"] - 18.2, abs=0.001)
    assert result["degraded_s"] >= 7


def test_no_recovery_when_the_node_never_returns() -> None:
    fault = parse_fault("kill:primary@10s+5s")
    rps = [40.0] * 10 + [0.0] * 20
    result = assess_fault(fault, _points(rps, [0] * 10 + [10] * 20), _actions(fault.label, 10.0, None))
    assert not result["recovered"] and result["time_to_recover_s"] is None
    assert result["failed_requests"] == 200


def test_blame_ends_where_the_next_fault_begins() -> None:
    first, second = parse_fault("kill:app1@10s+2s"), parse_fault("kill:primary@20s+2s")
    failures = [0] * 20 + [50] * 3 + [0] * 10
    actions = _actions(first.label, 10.0, 12.0) + _actions(second.label, 20.0, 22.0)
    a, b = assess_faults([second, first], _points([40.0] * 33, failures), actions)
    assert (a["node"], a["failed_requests"]) == ("app1", 0)
    assert (b["node"], b["failed_requests"]) == ("primary", 150)


def test_events_to_points() -> None:
    events = [
        {"event": "progress", "time": 101.0, "step": 0, "rps": 10, "failures": 0, "users": 5},
        {"event": "step_end", "time": 101.5},
        {"event": "progress", "time": 102.0, "step": 0, "rps": 12, "failures": 4, "users": 5},
        {"event": "progress", "time": 103.0, "step": 0, "rps": 12, "failures": 5, "failures_interval": 1,
         "p95_ms": 7.5},
    ]
    points = timeline_from_events(events, start_time=100.0)
    assert [(p.t_s, p.failures) for p in points] == [(1.0, 0), (2.0, 4), (3.0, 1)]
    assert points[2].p95_ms == 7.5


def test_each_fault_names_the_failures_it_caused() -> None:
    points = [Point(t_s=float(t), rps=40.0, failures=0) for t in range(1, 12)]
    points += [Point(t_s=12.0, rps=30.0, failures=3, errors={"POST /api/rentals: HTTP 503": 3}),
               Point(t_s=13.0, rps=30.0, failures=2, errors={"POST /api/rentals: HTTP 503": 1,
                                                             "GET /api/profile: HTTP 503": 1})]
    points += [Point(t_s=float(t), rps=40.0, failures=0) for t in range(14, 25)]
    fault = parse_fault("kill:primary@11s+2s")
    result = assess_fault(fault, points, _actions(fault.label, 11.0, 13.1))
    assert result["errors"] == {"POST /api/rentals: HTTP 503": 4, "GET /api/profile: HTTP 503": 1}
    assert list(result["errors"]) == ["POST /api/rentals: HTTP 503", "GET /api/profile: HTTP 503"]  # most first
    assert points[12].to_dict()["errors"] == {"POST /api/rentals: HTTP 503": 1, "GET /api/profile: HTTP 503": 1}
    assert "errors" not in points[0].to_dict()
