"""`scalesim run stage5 --quick` end to end, as a user runs it: results, report, a clean integrity audit
(replicas and precomputed charges included), and nothing left running."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from scalesim.results import load_results


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for process in psutil.process_iter(["cmdline", "environ"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or [])
            environ = json.dumps(process.info["environ"] or {})
        except (psutil.Error, TypeError):
            continue
        if text in cmdline or text in environ:
            found.append(f"{process.pid} {cmdline[:120]}")
    return found


def test_quick_run_writes_results_and_report_and_stops_everything(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-m", "scalesim", "run", "stage5", "--quick", "--runs-dir", str(runs)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    [run_dir] = list(runs.iterdir())
    results = load_results(run_dir)
    assert results["schema_version"] == 1
    assert [step["users"] for step in results["steps"]] == [20, 120]
    for step in results["steps"]:
        assert step["total"]["requests"] > 0
        assert step["total"]["failures"] == 0
        assert step["nodes"]["app1"]["cpu_seconds"] > 0 and step["nodes"]["primary"]["cpu_seconds"] > 0
        assert {e["name"] for e in step["endpoints"]} >= {"/api/books", "/api/books/{id}"}
    assert results["summary"]["max_rps_within_objective"] > 0
    assert "best throughput with p95" in done.stdout and "GET /api/books/{id}" in done.stdout
    # the audit after the load: every acknowledged write kept, replicas identical, stored charges exact
    audit = results["audit"]
    assert audit["ok"] is True and audit["problems"] == [], audit["problems"]
    assert audit["acks"]["rentals"] > 0 and audit["acks"]["returns"] > 0
    assert [replica["converged"] for replica in audit["replication"]["replicas"]] == [True, True]
    assert audit["queue"]["drained"] and audit["charges"]["users_checked"] == results["scenario"]["data"]["users"]
    assert "integrity audit" in done.stdout and "audit ok" in done.stdout
    for name in ("report.html", "report.md", "capacity.png", "locust/locust_stats.csv", "logs/primary.log",
                 "logs/app1.log"):
        assert (run_dir / name).exists(), name
    assert not (run_dir / "deployment.json").exists()
    assert _processes_mentioning(str(run_dir)) == []
    nodes = {node["name"]: node["pid"] for node in results["deployment"]["nodes"]}
    assert {"primary", "replica1", "replica2", "app1", "worker1", "balancer"} <= set(nodes)
    assert not [pid for pid in nodes.values() if psutil.pid_exists(pid)
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


def test_ctrl_c_during_a_run_stops_every_server(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    process = subprocess.Popen([sys.executable, "-m", "scalesim", "run", "stage1", "--quick", "--runs-dir",
                                str(runs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    deadline = time.monotonic() + 120
    seen = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        seen.append(line)
        if "step 1" in line:  # servers up and Locust running
            break
    [run_dir] = list(runs.iterdir())
    state = json.loads((run_dir / "deployment.json").read_text())
    pids = [node["pid"] for node in state["nodes"]]
    assert len(pids) == 6
    locust = [p.pid for p in psutil.Process(process.pid).children(recursive=True) if "locust" in " ".join(p.cmdline())]
    assert locust
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=60)
    assert process.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest and "Traceback" not in rest
    time.sleep(0.5)
    survivors = [pid for pid in pids + locust
                 if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert survivors == []
    assert _processes_mentioning(str(run_dir)) == []
