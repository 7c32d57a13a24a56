"""The real Locust driver against a small fake of the app (see fakeapp.py).

Each run is two short steps; Locust itself (single process, or master + workers) runs as in
production. Every test also checks that no Locust process outlives the call.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from scalesim.loadgen import DriverConfig, LoadgenError, LoadResult, ProcessTreeCPU, run_load
from scalesim.loadgen.acks import read_acks
from tests.loadgen.fakeapp import FakeApp

WORKLOAD = {
    "think_time": {"min": 0.05, "max": 0.2},
    "mix": {
        "browse_catalog": 30,
        "view_book": 30,
        "profile": 10,
        "my_rentals": 15,
        "charges": 10,
        "rent_and_return": 5,
    },
}
QUICK = {"steps": [2, 4], "step_seconds": 2, "warmup_seconds": 0.5}
TEMPLATES = {
    "/api/login",
    "/api/categories",
    "/api/books",
    "/api/books/{id}",
    "/api/profile",
    "/api/users/{id}/rentals",
    "/api/users/{id}/charges",
    "/api/rentals",
    "/api/rentals/{id}/return",
}
FAST = DriverConfig(locust_html=False)  # the HTML report takes a second to write
TIMELINE_FIELDS = {
    "step", "phase", "users", "t", "rps", "requests", "failures", "failures_interval", "mean_ms", "p95_ms",
}


def locust_children() -> list[psutil.Process]:
    alive = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and "locust" in " ".join(proc.cmdline()):
                alive.append(proc)
        except psutil.Error:
            continue
    return alive


@pytest.fixture(autouse=True)
def no_locust_left_behind() -> Any:
    assert not locust_children()
    yield
    survivors = locust_children()
    for proc in survivors:
        proc.kill()
    assert not survivors, f"Locust processes survived: {[p.pid for p in survivors]}"


def run(app_url: str, tmp_path: Path, events: list[dict[str, Any]], **kw: Any) -> LoadResult:
    kw.setdefault("workload", WORKLOAD)
    kw.setdefault("load", QUICK)
    kw.setdefault("config", FAST)
    return run_load(host=app_url, seeded_users=100, out_dir=tmp_path / "load", on_event=events.append, **kw)


def test_two_steps_single_process(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    with FakeApp() as app:
        result = run(app.url, tmp_path, events, config=DriverConfig())
    kinds = [e["event"] for e in events if e["event"] not in ("progress",)]
    assert kinds == [
        "run_start",
        "step_start",
        "measure_start",
        "step_end",
        "step_start",
        "measure_start",
        "step_end",
        "done",
    ]
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and all(set(e) >= TIMELINE_FIELDS for e in progress)
    assert any(e["phase"] == "measure" and e["rps"] > 0 and e["users"] > 0 for e in progress)
    # the per-second timeline: each interval's own count, failures and latency, on a clock from run_start
    times = [e["t"] for e in progress]
    assert times == sorted(times) and 0.8 < times[0] < 1.5
    for before, after in zip(progress, progress[1:], strict=False):
        assert after["requests"] == pytest.approx(after["rps"] * (after["t"] - before["t"]), abs=0.1)
    busy = [e for e in progress if e["requests"]]
    assert len(busy) >= 4 and all(e["failures_interval"] == 0 and 0 < e["mean_ms"] <= e["p95_ms"] for e in busy)
    assert all(e["mean_ms"] is None and e["p95_ms"] is None for e in progress if not e["requests"])
    assert sum(e["requests"] for e in progress) <= sum(app.state.hits.values())
    assert result.complete and [s.users for s in result.steps] == [2, 4]
    for step in result.steps:
        assert step.total.requests > 0 and step.total.failures == 0
        assert 1.9 < step.window_s < 2.5 and step.ended_at > step.started_at
        assert step.loadgen_cpu_seconds is not None and step.loadgen_cpu_seconds > 0
        names = {e.name for e in step.endpoints}
        assert names <= TEMPLATES and "/api/books" in names
        assert not any(re.search(r"\d", n) for n in names)
        assert sum(e.requests for e in step.endpoints) == step.total.requests
        assert step.total.rps == pytest.approx(step.total.requests / step.window_s, rel=0.01)
        assert 0 < step.total.p50_ms <= step.total.p95_ms <= step.total.p99_ms <= step.total.max_ms
    # the step_end event handed to on_event carries the driver's CPU figure
    ends = [e for e in events if e["event"] == "step_end"]
    assert all(e["loadgen_cpu_seconds"] == s.loadgen_cpu_seconds for e, s in zip(ends, result.steps, strict=True))
    # each simulated user logged in once, as a different seed user
    assert sum(app.state.logins.values()) == 4 and max(app.state.logins.values()) == 1
    # the fake served at least what the windows counted (warm-up and ramps come on top)
    assert sum(app.state.hits.values()) >= sum(s.total.requests for s in result.steps)
    for key in ("events", "locust_log", "stats_csv", "html", "json"):
        assert Path(result.files[key]).is_file(), key
    assert result.loadgen_cpu_seconds > sum(s.loadgen_cpu_seconds or 0 for s in result.steps)
    assert LoadResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    # every acknowledged write is one the app made, with its user and book, in one file for the one process
    acks = read_acks(result.files["acks"])
    assert acks.files == 1 and acks.unreadable_lines == 0
    assert acks.rentals and all(app.state.rentals[rental] == made for rental, made in acks.rentals.items())
    assert acks.returns and acks.returns <= app.state.returned and acks.returns <= set(acks.rentals)
    # answers that arrived before Locust stopped were all recorded: at most one request in flight per user
    assert len(app.state.rentals) - len(acks.rentals) <= 4


def test_409_on_rent_is_not_a_failure(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    workload = {"think_time": {"min": 0.02, "max": 0.05}, "mix": {"rent_and_return": 1}}
    with FakeApp(rent_conflict=True) as app:
        result = run(app.url, tmp_path, events, workload=workload)
    rents = sum(s.endpoint("/api/rentals", "POST").requests for s in result.steps)
    rejected = sum(s.rejections.get("POST /api/rentals: 409", 0) for s in result.steps)
    assert rents > 0 and rejected == rents
    assert all(s.total.failures == 0 and not s.errors for s in result.steps)
    assert app.state.hits["POST /api/rentals/{id}/return"] == 0


def test_distributed_master_and_workers(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    with FakeApp() as app:
        result = run(app.url, tmp_path, events, locust_workers=2)
    assert result.complete and len(result.steps) == 2
    ends = [e for e in events if e["event"] == "step_end"]
    assert [e["workers_reporting"] for e in ends] == [2, 2]
    for step in result.steps:
        assert step.total.requests > 0 and step.total.failures == 0
        assert {e.name for e in step.endpoints} <= TEMPLATES
    assert len(result.files["worker_logs"]) == 2
    assert sum(app.state.logins.values()) == 4 and max(app.state.logins.values()) == 1
    assert not result.warnings


def test_unreachable_host_shows_as_failures(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    events: list[dict[str, Any]] = []
    load = {"steps": [2], "step_seconds": 1.5, "warmup_seconds": 0.2}
    result = run(f"http://127.0.0.1:{port}", tmp_path, events, load=load)
    (step,) = result.steps
    assert step.total.requests > 0 and step.total.failures == step.total.requests
    assert any("refused" in message.lower() for message in step.errors), step.errors
    # the timeline keeps coming while every request fails, and says so second by second
    failing = [e for e in events if e["event"] == "progress" and e["requests"]]
    assert failing and all(e["failures_interval"] == e["requests"] and e["p95_ms"] is not None for e in failing)
    assert read_acks(result.files["acks"]).files == 0  # nothing was acknowledged


def test_acknowledged_writes_per_worker_and_never_unanswered_ones(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    workload = {"think_time": {"min": 0.02, "max": 0.05}, "mix": {"rent_and_return": 1}}
    # every return times out on the client: the app closed the rental, but the client never heard it did
    timeouts = DriverConfig(locust_html=False, load_overrides={"request_timeout_s": 0.2})
    with FakeApp(return_delay_s=0.5) as app:
        result = run(app.url, tmp_path, events, workload=workload, locust_workers=2, config=timeouts,
                     load={"steps": [4], "step_seconds": 2, "warmup_seconds": 0.2})
    acks = read_acks(result.files["acks"])
    assert acks.files == 2  # one file per worker, none from the master
    assert len(acks.rentals) >= 4 and all(app.state.rentals[rental] == made for rental, made in acks.rentals.items())
    assert app.state.returned and not acks.returns
    errors = {message for step in result.steps for message in step.errors}
    assert any(message.startswith("POST /api/rentals/{id}/return") for message in errors), errors
    # the distributed timeline: the workers' intervals, failures and latency included
    progress = [e for e in events if e["event"] == "progress" and e["phase"] == "measure"]
    assert progress and all(set(e) >= TIMELINE_FIELDS for e in progress)
    assert any(e["requests"] and e["failures_interval"] and e["p95_ms"] for e in progress)


def test_exception_in_on_event_stops_locust(tmp_path: Path) -> None:
    seen: list[str] = []

    def explode(event: dict[str, Any]) -> None:
        seen.append(event["event"])
        if event["event"] == "measure_start":
            raise RuntimeError("caller broke")

    with FakeApp() as app, pytest.raises(RuntimeError, match="caller broke"):
        run_load(
            host=app.url,
            workload=WORKLOAD,
            load=QUICK,
            seeded_users=100,
            out_dir=tmp_path,
            on_event=explode,
            config=FAST,
        )
    assert "measure_start" in seen  # the autouse fixture checks that nothing survived


def test_keyboard_interrupt_stops_distributed_locust(tmp_path: Path) -> None:
    def interrupt(event: dict[str, Any]) -> None:
        if event["event"] == "step_start":
            raise KeyboardInterrupt

    with FakeApp() as app, pytest.raises(KeyboardInterrupt):
        run_load(
            host=app.url,
            workload=WORKLOAD,
            load=QUICK,
            seeded_users=100,
            out_dir=tmp_path,
            on_event=interrupt,
            locust_workers=2,
            config=FAST,
        )


def test_overrunning_the_time_limit_fails_clearly(tmp_path: Path) -> None:
    long_load = {"steps": [1], "step_seconds": 60, "warmup_seconds": 0}
    started = time.monotonic()
    with FakeApp() as app, pytest.raises(LoadgenError, match="exceeded its time limit") as err:
        run_load(
            host=app.url,
            workload=WORKLOAD,
            load=long_load,
            seeded_users=100,
            out_dir=tmp_path,
            timeout_s=3,
            config=FAST,
        )
    assert time.monotonic() - started < 3 + FAST.kill_grace_s + 5
    assert err.value.result is not None and err.value.result.steps == []


def test_locust_failing_to_start_is_one_clear_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken_locustfile.py"
    broken.write_text("raise ImportError('no module named flux_capacitor')\n")
    for locustfile, expected in ((broken, "flux_capacitor"), (tmp_path / "missing.py", "missing.py")):
        with pytest.raises(LoadgenError) as err:
            run_load(
                host="http://127.0.0.1:9",
                workload=WORKLOAD,
                load=QUICK,
                seeded_users=10,
                out_dir=tmp_path / "out",
                config=DriverConfig(locustfile=locustfile),
            )
        message = str(err.value)
        assert "\n" not in message and "failed to start" in message and expected in message, message


def test_process_tree_cpu_counts_children_and_never_goes_back() -> None:
    busy = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time\\nt = time.process_time()\\n"
        "while time.process_time() - t < 0.3: pass'])\n"
        "child.wait()\ntime.sleep(0.5)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", busy])
    tree = ProcessTreeCPU()
    tree.add(proc.pid)
    samples = []
    while proc.poll() is None:
        samples.append(tree.sample())
        time.sleep(0.05)
    samples.append(tree.sample())
    assert samples == sorted(samples)
    assert samples[-1] >= 0.3  # the grandchild's busy loop is counted, live and once reaped ...
    assert samples[-1] < 0.3 + 0.25  # ... but only once
    proc.wait()
    assert tree.sample() == samples[-1]  # the root is gone: its last value stays
