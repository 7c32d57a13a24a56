"""`scalesim up` leaves a stage running, `status` shows each node, `down` (from another shell) stops it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil


def _scalesim(*args: str, runs: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scalesim", *args, "--runs-dir", str(runs)], capture_output=True,
                          text=True, timeout=180, check=False)


def test_up_status_down(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    up = _scalesim("up", "stage1", "--app-servers", "2", runs=runs)
    try:
        assert up.returncode == 0, up.stderr[-2000:]
        assert "stage1 is up in" in up.stdout
        again = _scalesim("up", "stage0", runs=runs)
        assert again.returncode == 1 and "already up" in again.stderr
        status = _scalesim("status", runs=runs)
        assert status.returncode == 0
        for name in ("primary", "keyvalue", "app1", "app2", "balancer"):
            assert any(line.startswith(name) and "healthy" in line for line in status.stdout.splitlines()), name
        state = json.loads(_scalesim("status", "--json", runs=runs).stdout)
        assert [node["health"] for node in state["nodes"]] == ["healthy"] * 5
        assert all(node["cpu_budget"] for node in state["nodes"])
        pids = [node["pid"] for node in state["nodes"]]
    finally:
        down = _scalesim("down", runs=runs)  # a separate process, as from another shell
    assert down.returncode == 0 and "stopped 5 node(s)" in down.stdout
    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    after = _scalesim("status", runs=runs)
    assert after.returncode == 1 and "nothing is up" in after.stderr
