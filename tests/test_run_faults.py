"""`scalesim run stage4 --fault ...` end to end: what each fault costs users, and no acknowledged write lost.

One run of stage4 (balancer, three app servers, sessions and cache servers, a primary and two
replicas, workers) meets four faults in turn, each given time to recover before the next:

* an app server killed: the balancer keeps every request succeeding;
* a replica killed: reads go to the other replica or the primary, no request fails;
* the cache server stopped: requests are answered from the database, none fails;
* the primary killed: writes fail fast with a 503 while reads go on, and succeed after the restart.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil

from scalesim.results import load_results

FAULTS = ["kill:app2@5s+4s", "kill:replica1@20s+4s", "stop:cache@32s+4s", "kill:primary@44s+4s"]


def test_stage4_survives_its_faults_and_loses_no_write(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    argv = [sys.executable, "-m", "scalesim", "run", "stage4", "--users", "30", "--runs-dir", str(runs)]
    for fault in FAULTS:
        argv += ["--fault", fault]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=400, check=False)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    [run_dir] = list(runs.iterdir())
    results = load_results(run_dir)
    assessed = {fault["node"]: fault for fault in results["faults"]["assessment"]}
    actions = [(a["node"], a["action"]) for a in results["faults"]["actions"]]
    for node, began in (("app2", "killed"), ("replica1", "killed"), ("cache", "stopped"), ("primary", "killed")):
        assert (node, began) in actions and (node, "ready") in actions, actions

    assert assessed["app2"]["failed_requests"] == 0, assessed["app2"]
    assert assessed["replica1"]["failed_requests"] == 0, assessed["replica1"]
    assert assessed["cache"]["failed_requests"] == 0, assessed["cache"]
    primary = assessed["primary"]
    assert primary["failed_requests"] > 0  # writes were refused while it was down...
    assert primary["recovered"], primary  # ...and accepted again after the restart
    errors = results["steps"][0]["errors"]
    assert errors and all(reason.startswith("POST ") and "503" in reason for reason in errors), errors
    # Reads went on while the primary was down: throughput never collapsed.
    assert primary["min_rps"] > 0.5 * primary["baseline_rps"], primary

    assert results["audit"]["ok"], results["audit"]
    assert len(results["timeline"]) >= 50
    assert (run_dir / "faults.png").exists() and (run_dir / "timeline.csv").exists()
    assert "kill:primary@44s+4s" in (run_dir / "report.html").read_text()
    assert "kill:primary@44s+4s" in done.stdout
    pids = [node["pid"] for node in results["deployment"]["nodes"]]
    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


def test_a_bad_fault_costs_one_line_and_starts_nothing(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for fault, says in (("kill:app9@5s", "stage1 has no node 'app9'"), ("explode:app1@5s", "unknown action"),
                        ("kill:app1@5x", "not a time")):
        done = subprocess.run([sys.executable, "-m", "scalesim", "run", "stage1", "--fault", fault, "--runs-dir",
                               str(runs)], capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode != 0
        assert says in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not runs.exists() or not list(runs.iterdir())
    done = subprocess.run([sys.executable, "-m", "scalesim", "run", "stage1", "--users", "5", "--runs-dir", str(runs)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "give at least one --fault" in done.stderr
