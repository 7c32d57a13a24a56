"""CPU budgets: a quota caps a node's process tree, and the group's account counts exited children."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from scalesim.components.process import ManagedProcess
from scalesim.measure.budgets import CpuBudgets
from scalesim.measure.cpu import process_tree_cpu_seconds

BURN = ("import multiprocessing, time\n"
        "def burn():\n"
        "    end = time.time() + 1.5\n"
        "    while time.time() < end: pass\n"
        "ps = [multiprocessing.Process(target=burn) for _ in range(2)]\n"
        "[p.start() for p in ps]; [p.join() for p in ps]\n")


def test_quota_caps_the_whole_tree_and_accounts_exited_children(tmp_path: Path) -> None:
    budgets = CpuBudgets(run_id=f"test-{tmp_path.name}")
    if not budgets.enforced:
        pytest.skip(f"CPU budgets cannot be enforced here: {budgets.reason}")
    group = budgets.group("burner", cores=0.2)
    assert group is not None
    budgets.apply()
    process = ManagedProcess(name="burner", argv=[sys.executable, "-c", BURN], log_path=tmp_path / "burn.log",
                             cpu_group=group)
    try:
        process.start()
        assert process.popen is not None
        process.popen.wait(timeout=30)
        used = group.cpu_seconds()
        # Two children each wanting 1.5 s of CPU, capped at 0.2 core for ~1.5 s of wall time.
        assert 0.1 < used < 0.6, used
    finally:
        process.stop()
        budgets.remove()
    assert not any(path.exists() for path in group.paths)


def test_unenforced_budgets_say_why() -> None:
    budgets = CpuBudgets(run_id="never", enforce=False)
    assert not budgets.enforced
    assert "turned off" in budgets.reason
    assert budgets.group("x", cores=0.5) is None


def test_process_tree_cpu_counts_reaped_children(tmp_path: Path) -> None:
    script = ("import subprocess, sys, time\n"
              "subprocess.run([sys.executable, '-c', 'x = sum(range(30_000_000))'])\n"
              "print('done', flush=True); time.sleep(30)\n")
    process = ManagedProcess(name="parent", argv=[sys.executable, "-c", script], log_path=tmp_path / "p.log")
    process.start()
    try:
        process.wait_ready(lambda: "done" in (tmp_path / "p.log").read_text(), timeout=30)
        assert process.pid is not None
        assert process_tree_cpu_seconds(process.pid) > 0.2  # the child has exited; its time is kept
    finally:
        process.stop()
