"""CPU budgets: each node gets a CPU quota, so one machine behaves like a cluster of small hosts.

A node's budget (say 0.25 core) becomes a CFS quota on a control group that holds the node's whole
process tree: the process joins its group before it executes (in the child, between fork and exec),
so every process it forks later (PostgreSQL backends, say) is in the group too. With the group comes
an exact CPU account: the kernel adds up the CPU time of every task that was ever in the group,
including backends that already exited, which is what the utilization law needs.

cgroup v1 (``/sys/fs/cgroup/cpu`` and ``cpuacct``) and v2 (a unified hierarchy with the cpu
controller) are both handled. Where neither is writable (not root, a container without cgroup
access), budgets are reported as not enforced and CPU is measured with psutil instead.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import time
from dataclasses import dataclass, field
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


@dataclass(frozen=True, kw_only=True)
class CgroupLayout:
    """Where the cpu (quota) and cpuacct (accounting) controllers live, by version."""

    version: int
    cpu: Path
    cpuacct: Path | None

    @classmethod
    def detect(cls) -> tuple[CgroupLayout | None, str]:
        if os.geteuid() != 0:
            return None, "not running as root, so no CPU quotas can be set"
        v1_cpu = CGROUP_ROOT / "cpu"
        if (v1_cpu / "cpu.cfs_quota_us").exists() and os.access(v1_cpu, os.W_OK):
            cpuacct = CGROUP_ROOT / "cpuacct"
            return cls(version=1, cpu=v1_cpu,
                       cpuacct=cpuacct if (cpuacct / "cpuacct.usage").exists() else None), "cgroup v1"
        for unified in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
            controllers = unified / "cgroup.controllers"
            if controllers.exists() and "cpu" in controllers.read_text().split() and os.access(unified, os.W_OK):
                return cls(version=2, cpu=unified, cpuacct=None), "cgroup v2"
        return None, "no writable cgroup cpu controller on this machine"


@dataclass(kw_only=True)
class CpuGroup:
    """One node's control group(s): the quota, the join hook, the CPU account."""

    name: str
    cores: float | None
    layout: CgroupLayout
    paths: list[Path] = field(default_factory=list)

    def join_current_process(self) -> None:
        """Runs in the child between fork and exec: move this process into the node's groups."""
        pid = str(os.getpid()).encode()
        for path in self.paths:
            fd = os.open(path / "cgroup.procs", os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)

    def allow_user(self, user: str | None) -> None:
        """Let an unprivileged node process move itself in (the join runs after the user switch)."""
        if user is None:
            return
        entry = pwd.getpwnam(user)
        for path in self.paths:
            for name in ("cgroup.procs", "tasks"):
                with contextlib.suppress(FileNotFoundError):
                    os.chown(path / name, entry.pw_uid, entry.pw_gid)

    def cpu_seconds(self) -> float:
        """CPU seconds used by every task ever in this group."""
        if self.layout.version == 1:
            account = next((p for p in self.paths if (p / "cpuacct.usage").exists()), None)
            if account is not None:
                return int((account / "cpuacct.usage").read_text()) / 1e9
            return 0.0
        for line in (self.paths[0] / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
        return 0.0

    def remove(self) -> None:
        for path in self.paths:
            for _ in range(50):  # a just-killed task may take a moment to leave the group
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


@dataclass(kw_only=True)
class CpuBudgets:
    """The control groups of one run, under ``scalesim-<run id>``; removed at teardown."""

    run_id: str
    enforce: bool = True
    layout: CgroupLayout | None = None
    reason: str = ""
    groups: dict[str, CpuGroup] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.enforce:
            self.reason = "CPU budgets turned off (--no-budgets)"
            return
        self.layout, self.reason = CgroupLayout.detect()

    @property
    def enforced(self) -> bool:
        return self.layout is not None

    def _parents(self) -> list[Path]:
        assert self.layout is not None
        roots = [self.layout.cpu] + ([self.layout.cpuacct] if self.layout.cpuacct is not None else [])
        return [root / f"scalesim-{self.run_id}" for root in roots]

    def group(self, name: str, *, cores: float | None) -> CpuGroup | None:
        """A group for one node, with its quota; None when budgets are not enforced here."""
        if self.layout is None:
            return None
        paths = []
        try:
            for parent in self._parents():
                parent.mkdir(exist_ok=True)
                if self.layout.version == 2:
                    with contextlib.suppress(OSError):
                        (parent / "cgroup.subtree_control").write_text("+cpu")
                path = parent / name
                path.mkdir(exist_ok=True)
                paths.append(path)
            group = CpuGroup(name=name, cores=cores, layout=self.layout, paths=paths)
            # Start-up (imports, initdb, recovery) runs unthrottled; `apply` sets the quotas once the
            # stage is up, so a budget shapes the measured run, not the bring-up time.
            self._write_quota(group, None)
        except OSError as exc:
            self.reason = f"cannot create control groups: {exc.strerror}"
            self.layout = None
            return None
        self.groups[name] = group
        return group

    def apply(self) -> None:
        """Set every group's quota to its budget."""
        for group in self.groups.values():
            self._write_quota(group, group.cores)

    def _write_quota(self, group: CpuGroup, cores: float | None) -> None:
        cpu_path = group.paths[0]
        assert self.layout is not None
        if self.layout.version == 1:
            (cpu_path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            quota = -1 if cores is None else max(1000, int(cores * PERIOD_US))
            (cpu_path / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            quota_text = "max" if cores is None else str(max(1000, int(cores * PERIOD_US)))
            (cpu_path / "cpu.max").write_text(f"{quota_text} {PERIOD_US}")

    def remove(self) -> None:
        for group in self.groups.values():
            group.remove()
        if self.layout is not None:
            for parent in self._parents():
                with contextlib.suppress(OSError):
                    parent.rmdir()
        self.groups.clear()


def remove_stale_groups(run_id: str) -> None:
    """Tidy the groups of a run whose owner died (``scalesim down`` after a crash)."""
    for controller in ("cpu", "cpuacct", "."):
        parent = CGROUP_ROOT / controller / f"scalesim-{run_id}"
        if parent.is_dir():
            for child in parent.iterdir():
                if child.is_dir():
                    with contextlib.suppress(OSError):
                        child.rmdir()
            with contextlib.suppress(OSError):
                parent.rmdir()
