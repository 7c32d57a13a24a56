"""CPU seconds per node, from the node's control group or, failing that, its process tree.

The control group's account is exact (it includes tasks that already exited). Without one, the
process tree is walked with psutil: each live process's own time plus the time of the children it
has reaped, which for PostgreSQL's postmaster includes every backend that has exited, so
short-lived connections are not lost.
"""

from __future__ import annotations

import psutil

from scalesim.measure.budgets import CpuGroup


def process_tree_cpu_seconds(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def node_cpu_seconds(*, pid: int | None, group: CpuGroup | None) -> float:
    if group is not None:
        return group.cpu_seconds()
    return process_tree_cpu_seconds(pid) if pid is not None else 0.0
