"""Fault specs: what a user may write, and the one line they get for what they may not."""

from __future__ import annotations

import pytest

from scalesim.faults.spec import FaultError, FaultPlan, parse_fault, parse_seconds, stage_node_names
from scalesim.topology import load_scenario


@pytest.mark.parametrize(("text", "seconds"), [("30", 30.0), ("30s", 30.0), ("1m", 60.0), ("1m30s", 90.0),
                                               ("500ms", 0.5), ("2.5s", 2.5)])
def test_times(text: str, seconds: float) -> None:
    assert parse_seconds(text, what="t") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "m", "1h", "-3s", "abc", "1m1m"])
def test_bad_times(text: str) -> None:
    with pytest.raises(FaultError):
        parse_seconds(text, what="t")


def test_kill_with_restart() -> None:
    fault = parse_fault("kill:app-2@30s+20s")
    assert (fault.action, fault.node, fault.start_s, fault.duration_s, fault.end_s) == ("kill", "app2", 30, 20, 50)


def test_stop_without_restart_lasts_to_the_end() -> None:
    fault = parse_fault("stop:cache@1m")
    assert fault.duration_s is None and fault.end_s is None


def test_latency() -> None:
    fault = parse_fault("latency:primary=20ms@10s+5s")
    assert fault.delay_ms == pytest.approx(20.0)
    assert parse_fault("latency:primary=20@10s").delay_ms == pytest.approx(20.0)


@pytest.mark.parametrize(("text", "says"), [
    ("kill app1 30s", "write ACTION:NODE@START"),
    ("explode:app1@3s", "unknown action 'explode'"),
    ("kill:app1@3s+0s", "more than 0 s"),
    ("kill:app1=20ms@3s", "only latency faults"),
    ("latency:primary@3s", "say how much latency"),
    ("latency:primary=0ms@3s", "between 0 and"),
    ("kill:app1@99999s", "later than"),
])
def test_bad_faults(text: str, says: str) -> None:
    with pytest.raises(FaultError, match=says):
        parse_fault(text)


def test_plan_checks_nodes_against_the_stage() -> None:
    stage4 = load_scenario("stage4")
    names = stage_node_names(stage4)
    assert {"primary", "replica1", "replica2", "keyvalue", "app1", "app3", "balancer", "worker1"} <= set(names)
    plan = FaultPlan.parse(["kill:primary@40s+5s", "kill:app1@10s+5s"], scenario=stage4)
    assert [f.node for f in plan.faults] == ["app1", "primary"]  # in time order
    assert plan.last_event_s == 45
    with pytest.raises(FaultError, match="stage0 has no node 'app2'"):
        FaultPlan.parse(["kill:app2@10s"], scenario=load_scenario("stage0"))
    with pytest.raises(FaultError, match="overlap on app1"):
        FaultPlan.parse(["kill:app1@10s+20s", "pause:app1@20s+1s"], scenario=stage4)
    with pytest.raises(FaultError, match="latency applies"):
        FaultPlan.parse(["latency:app1=5ms@10s"], scenario=stage4)
    # one after the other on the same node is fine
    assert len(FaultPlan.parse(["kill:app1@10s+5s", "pause:app1@20s+1s"], scenario=stage4)) == 2
