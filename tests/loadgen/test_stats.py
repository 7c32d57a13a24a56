"""The histogram, the window and interval recorders, the stats dataclasses, the load configuration and
the acknowledged-writes log."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml

from scalesim.loadgen.acks import AckLog, read_acks
from scalesim.loadgen.config import ENV_VAR, LoadConfig, seed_user_index
from scalesim.loadgen.stats import TOTAL_NAME, EndpointStats, IntervalRecorder, LogHistogram, StepStats, WindowRecorder

ROOT = Path(__file__).resolve().parents[2]


def exact_percentile(sorted_values: list[float], p: float) -> float:
    """Nearest rank: the ceil(p/100 * n)-th smallest value."""
    k = max(1, math.ceil(p / 100 * len(sorted_values) - 1e-9))
    return sorted_values[k - 1]


DISTRIBUTIONS = {
    "lognormal": lambda rng: rng.lognormvariate(3.0, 1.0),
    "exponential": lambda rng: rng.expovariate(1 / 40.0),
    "uniform": lambda rng: rng.uniform(0.2, 2000.0),
    "bimodal": lambda rng: rng.gauss(5.0, 0.5) if rng.random() < 0.9 else rng.gauss(900.0, 50.0),
}


@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("seed", [1, 2])
def test_percentiles_within_one_percent_of_exact(dist: str, seed: int) -> None:
    rng = random.Random(seed)
    values = [max(0.01, DISTRIBUTIONS[dist](rng)) for _ in range(50_000)]
    hist = LogHistogram(relative_error=0.01)
    for v in values:
        hist.record(v)
    values.sort()
    ps = [1, 10, 25, 50, 75, 90, 95, 99, 99.9, 100]
    for p, estimate in zip(ps, hist.percentiles(ps), strict=True):
        exact = exact_percentile(values, p)
        assert abs(estimate - exact) <= 0.01 * exact * (1 + 1e-9), (p, estimate, exact)
    assert hist.count == len(values)
    assert hist.mean == pytest.approx(sum(values) / len(values), rel=1e-9)
    assert hist.max == values[-1] and hist.min == values[0]
    assert hist.percentile(100) == values[-1]


def test_small_and_edge_cases() -> None:
    hist = LogHistogram()
    assert hist.percentiles([50, 95]) == [0.0, 0.0] and hist.mean == 0.0
    hist.record(123.456)
    assert hist.percentile(50) == 123.456  # clamped to the exact min/max
    hist.record(-5.0)  # a clock glitch counts as 0
    hist.record(10_000_000.0)  # beyond max_value: last bucket, exact max kept
    assert hist.count == 3 and hist.min == 0.0 and hist.max == 10_000_000.0
    assert hist.percentile(100) == 10_000_000.0
    with pytest.raises(ValueError):
        LogHistogram(relative_error=0.0)


def test_merge_equals_recording_everything_in_one() -> None:
    rng = random.Random(7)
    a, b, both = LogHistogram(), LogHistogram(), LogHistogram()
    for i in range(20_000):
        v = rng.lognormvariate(2, 1.5)
        (a if i % 3 else b).record(v)
        both.record(v)
    merged = LogHistogram()
    merged.merge(a)
    merged.merge(b)
    ps = [50, 95, 99]
    assert merged.percentiles(ps) == both.percentiles(ps)
    assert merged.count == both.count and merged.max == both.max and merged.min == both.min
    via_dict = LogHistogram.from_dict(json.loads(json.dumps(a.to_dict())))
    via_dict.merge_dict(b.to_dict())
    assert via_dict.percentiles(ps) == both.percentiles(ps)
    with pytest.raises(ValueError):
        merged.merge(LogHistogram(relative_error=0.02))


def test_memory_is_fixed_however_many_samples() -> None:
    hist = LogHistogram()
    buckets = hist.n_buckets
    assert buckets < 1500
    rng = random.Random(3)
    for _ in range(10_000):  # warm up every code path
        hist.record(rng.uniform(0, 1e7))
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    for _ in range(200_000):
        hist.record(rng.lognormvariate(3, 3))
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert hist.n_buckets == buckets
    assert after - before < 4096  # no per-sample allocation survives


def test_recorder_memory_stays_flat_with_many_windows() -> None:
    rec = WindowRecorder()
    names = [f"/api/e{i}" for i in range(8)]
    rng = random.Random(4)

    def window() -> None:
        rec.reset()
        for _ in range(5_000):
            rec.record("GET", rng.choice(names), rng.expovariate(0.1), "HTTP 500" if rng.random() < 0.01 else None)
        rec.step_stats(index=0, users=1, window_s=1.0, started_at=0.0, ended_at=1.0)

    window()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    for _ in range(5):
        window()
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert after - before < 16_384


def test_window_recorder_counts_resets_and_bounds() -> None:
    rec = WindowRecorder(max_endpoints=3, max_errors=2)
    rec.record("GET", "/api/books", 10.0)
    rec.record("GET", "/api/books", 30.0, "HTTP 500")
    rec.record("POST", "/api/rentals", 5.0)
    rec.reject("POST /api/rentals: 409")
    step = rec.step_stats(index=2, users=10, window_s=2.0, started_at=100.0, ended_at=102.0)
    assert step.total.name == TOTAL_NAME and step.total.requests == 3 and step.total.failures == 1
    assert step.total.rps == 1.5
    books = step.endpoint("/api/books", "GET")
    assert books.requests == 2 and books.failures == 1 and books.max_ms == 30.0 and books.mean_ms == 20.0
    assert step.errors == {"GET /api/books: HTTP 500": 1}
    assert step.rejections == {"POST /api/rentals: 409": 1}
    # bounded variety: extra endpoints fold into "(other)", extra errors into "(other errors)"
    for i in range(5):
        rec.record("GET", f"/x{i}", 1.0, f"boom {i}")
    assert len(rec._endpoints) == 3 + 1 and ("", WindowRecorder.OTHER_ENDPOINT) in rec._endpoints
    assert len(rec.errors) <= 3 and rec.errors[WindowRecorder.OTHER_ERRORS] >= 1
    rec.reset()
    assert rec.requests == 0 and rec.failures == 0 and not rec.errors and not rec.rejections
    assert rec.lifetime_requests == 8 and rec.lifetime_failures == 6


def test_window_recorder_snapshots_merge_like_one_recorder() -> None:
    rng = random.Random(5)
    one, parts = WindowRecorder(), [WindowRecorder(), WindowRecorder()]
    for i in range(3_000):
        name = rng.choice(["/api/books", "/api/books/{id}", "/api/profile"])
        v = rng.expovariate(0.05)
        err = "HTTP 503" if i % 50 == 0 else None
        one.record("GET", name, v, err)
        parts[i % 2].record("GET", name, v, err)
    merged = WindowRecorder()
    for part in parts:
        merged.merge_snapshot(json.loads(json.dumps(part.snapshot())))
    kw: dict[str, Any] = {"index": 0, "users": 5, "window_s": 3.0, "started_at": 1.0, "ended_at": 4.0}
    assert merged.step_stats(**kw) == one.step_stats(**kw)


def test_interval_recorder_reads_and_resets_and_merges_exactly() -> None:
    rec = IntervalRecorder()
    assert rec.summary() == {"requests": 0, "failures_interval": 0, "errors_interval": {}, "mean_ms": None,
                             "p95_ms": None}
    for i in range(1, 101):
        rec.record(float(i), failed=i > 90, reason="GET /x: HTTP 503" if i > 95 else None)
    figures = rec.summary()
    assert figures["requests"] == 100 and figures["failures_interval"] == 10
    assert figures["errors_interval"] == {"GET /x: HTTP 503": 5}
    assert figures["mean_ms"] == 50.5 and abs(figures["p95_ms"] - 95) <= 0.95
    snapshot = rec.take()
    assert rec.summary()["requests"] == 0 and rec.histogram.count == 0  # the next interval starts empty
    # what two workers send merges into what one process would have seen
    rng = random.Random(6)
    one, parts, merged = IntervalRecorder(), [IntervalRecorder(), IntervalRecorder()], IntervalRecorder()
    for i in range(2_000):
        v, failed = rng.expovariate(0.02), rng.random() < 0.1
        reason = f"GET /{i % 3}: HTTP 503" if failed else None
        one.record(v, failed=failed, reason=reason)
        parts[i % 2].record(v, failed=failed, reason=reason)
    for part in parts:
        merged.merge_snapshot(json.loads(json.dumps(part.take())))
    assert merged.summary() == one.summary()
    merged.merge_snapshot(snapshot)
    assert merged.summary()["requests"] == 2_100


def test_ack_log_batches_and_reads_back(tmp_path: Path) -> None:
    folder = tmp_path / "acks"
    log = AckLog(folder=folder, name="123")
    log.rented(rental_id=7, user_id=3, book_id=40)
    log.returned(rental_id=7)
    log.rented(rental_id=8, user_id=4, book_id=41)
    assert log.pending == 3 and not folder.exists()  # nothing is written until a flush
    log.flush()
    assert log.pending == 0 and log.written == 3
    assert len((folder / "123.jsonl").read_text().splitlines()) == 3
    log.flush()  # nothing pending: no write
    other = AckLog(folder=folder, name="456")
    other.returned(rental_id=8)
    other.flush()
    with (folder / "456.jsonl").open("a") as torn:  # a process killed in mid-write
        torn.write('{"op": "rent", "rental": 9, "us')
    acks = read_acks(folder)
    assert acks.rentals == {7: (3, 40), 8: (4, 41)} and acks.returns == {7, 8}
    assert acks.files == 2 and acks.unreadable_lines == 1
    assert read_acks(tmp_path / "missing").files == 0
    off = AckLog(folder=None, name="x")
    off.rented(rental_id=1, user_id=1, book_id=1)
    off.flush()
    assert off.pending == 0 and off.path is None


def test_stats_round_trip() -> None:
    rec = WindowRecorder()
    for v in (1.0, 2.0, 300.0):
        rec.record("GET", "/api/books/{id}", v)
    rec.record("POST", "/api/login", 9.0, "HTTP 401 wrong email or password")
    step = rec.step_stats(index=1, users=20, window_s=12.0, started_at=10.0, ended_at=22.0)
    step = StepStats.from_dict({**step.to_dict(), "loadgen_cpu_seconds": 0.5})
    again = StepStats.from_dict(json.loads(json.dumps(step.to_dict())))
    assert again == step and again.loadgen_cpu_seconds == 0.5
    # a step_end event (index as "step", extra keys) reads back too
    event = {"event": "step_end", "step": 1, "time": 1.0, "users_actual": 20, **step.to_dict()}
    del event["index"]
    assert StepStats.from_dict(event) == step
    e = step.endpoints[0]
    assert EndpointStats.from_dict(e.to_dict()) == e
    assert set(e.to_dict()) == {
        "name",
        "method",
        "requests",
        "failures",
        "rps",
        "mean_ms",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "max_ms",
    }


def test_load_config_from_the_stage0_scenario() -> None:
    spec = yaml.safe_load((ROOT / "scenarios" / "stage0.yaml").read_text())
    cfg = LoadConfig.from_scenario(workload=spec["workload"], load=spec["quick"], seeded_users=spec["data"]["users"])
    assert cfg.steps == tuple(spec["quick"]["steps"]) and cfg.step_seconds == spec["quick"]["step_seconds"]
    assert (cfg.think_min_s, cfg.think_max_s) == (0.5, 1.5)
    assert cfg.integer_mix() == {k: int(v) for k, v in spec["workload"]["mix"].items()}
    assert LoadConfig.from_env({ENV_VAR: cfg.to_json()}) == cfg
    assert LoadConfig.from_env({}) == LoadConfig()
    load = spec["load"]
    full = LoadConfig.from_scenario(workload=spec["workload"], load=load, seeded_users=1000)
    # every step's window and warm-up, plus ramps at the spawn rate on a 1 s tick
    held = len(load["steps"]) * (load["step_seconds"] + load["warmup_seconds"])
    ramps = sum(abs(b - a) for a, b in zip([0, *load["steps"]], load["steps"], strict=False)) / load["spawn_rate"]
    assert held <= full.expected_duration_s() <= held + ramps + 2 * len(load["steps"]) + 5


def test_load_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        LoadConfig(mix={"browse": 1})
    with pytest.raises(ValueError, match="steps"):
        LoadConfig(steps=())
    with pytest.raises(ValueError, match="think_time"):
        LoadConfig(think_min_s=2, think_max_s=1)
    with pytest.raises(ValueError, match="unknown load configuration key"):
        LoadConfig.from_dict({"stepz": [1]})
    with pytest.raises(ValueError, match="acks_flush_s"):
        LoadConfig(acks_flush_s=0)
    assert LoadConfig.from_json(LoadConfig(acks_dir="/tmp/acks").to_json()).acks_dir == "/tmp/acks"
    assert LoadConfig(mix={"view_book": 0.5, "profile": 1.5}).integer_mix() == {"view_book": 100, "profile": 300}


def test_seed_users_are_distinct_and_spread() -> None:
    for seeded in (1, 2, 7, 100, 1000):
        picked = [seed_user_index(slot, seeded) for slot in range(seeded)]
        assert sorted(picked) == list(range(1, seeded + 1))
    first_ten = [seed_user_index(slot, 1000) for slot in range(10)]
    assert max(first_ten) - min(first_ten) > 500


def test_scalesim_loadgen_does_not_import_locust() -> None:
    code = (
        "import sys, scalesim.loadgen, scalesim.loadgen.driver; "
        "bad = [m for m in ('locust', 'gevent') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
