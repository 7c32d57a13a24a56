"""Whether this machine can run a scenario: refused up front, with the reason, rather than half-started.

A scenario file is checked for what is sane anywhere (`scalesim.topology`); this module checks what
one machine can hold before `scalesim run` or `up` starts anything: the memory every server process,
the seeding and Locust's users need, the connections Locust must keep open, and the request rate
Locust must offer. The figures per process are modest on purpose (what a node of each role uses
when idle), so that a refusal means the run surely could not work, never that it might be slow.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import psutil

from scalesim.errors import ScenarioError
from scalesim.topology import LoadProfile, Scenario

MB = 1024 * 1024
_LABELS = {"app": "app servers", "workers": "workers", "primary": "PostgreSQL primary", "replicas": "replicas",
           "keyvalue": "key-value server", "cache": "cache server", "balancer": "balancer"}


@dataclass(frozen=True, kw_only=True)
class MachineNeeds:
    """What one node, one seeded row and one simulated user cost, at the least."""

    memory_per_role_mb: tuple[tuple[str, float], ...] = (
        ("app", 60.0), ("workers", 50.0), ("primary", 64.0), ("replicas", 64.0), ("keyvalue", 8.0),
        ("cache", 8.0), ("balancer", 30.0),
    )
    locust_process_mb: float = 60.0
    memory_per_user_kb: float = 30.0
    memory_per_seeded_row_bytes: float = 300.0   # rows are drawn in memory before they are loaded
    locust_cpu_seconds_per_request: float = 0.0004
    # Locust's users share its cores with the servers: refuse only far beyond what they could offer.
    locust_cpu_oversubscription: float = 4.0
    spare_file_descriptors: int = 100


def check_fits_machine(scenario: Scenario, *, profile: LoadProfile | None, servers: bool = True,
                       locust_workers: int = 0, needs: MachineNeeds | None = None) -> None:
    """Raise `ScenarioError` naming what this machine lacks for `scenario` (its servers when
    `servers`, and the load `profile` when given); return quietly when it fits."""
    needs = needs or MachineNeeds()
    available = psutil.virtual_memory().available
    cores = os.cpu_count() or 1
    memory = 0.0
    parts = []
    if servers:
        for role, megabytes in needs.memory_per_role_mb:
            with contextlib.suppress(AttributeError):  # a role this scenario does not know
                count = scenario.nodes.role(role).count
                if count:
                    memory += count * megabytes * MB
                    parts.append(f"{count:,} {_LABELS.get(role, role)}")
        data = scenario.data
        rows = data.users * (1 + data.rentals_per_user) + data.books + data.authors
        memory += rows * needs.memory_per_seeded_row_bytes
    users = max(profile.steps) if profile is not None else 0
    if profile is not None:
        memory += needs.locust_process_mb * MB * (1 + locust_workers) + users * needs.memory_per_user_kb * 1024
    if memory > available:
        what = ", ".join(parts) + (f" and {users:,} Locust users" if users else "")
        raise ScenarioError(f"{scenario.name}: {what} need about {memory / 2**30:,.1f} GB of memory; this machine "
                            f"has {available / 2**30:,.1f} GB available")
    if profile is None:
        return
    descriptors = _open_file_limit()
    per_process = users / max(1, locust_workers)
    if descriptors is not None and per_process + needs.spare_file_descriptors > descriptors:
        raise ScenarioError(f"{scenario.name}: a step of {users:,} users keeps {per_process:,.0f} connections open "
                            f"in one Locust process; this machine allows a process {descriptors:,} open files "
                            "(ulimit -n)")
    think = (scenario.workload.think_time_min + scenario.workload.think_time_max) / 2
    if think > 0:
        offered = users / think
        cores_needed = offered * needs.locust_cpu_seconds_per_request
        if cores_needed > cores * needs.locust_cpu_oversubscription:
            raise ScenarioError(f"{scenario.name}: {users:,} users with {think:g} s think time offer about "
                                f"{offered:,.0f} requests/s, which Locust alone needs about {cores_needed:,.0f} "
                                f"cores to send; this machine has {cores}")


def _open_file_limit() -> int | None:
    """The most files one process may open here (the hard limit: Locust raises its soft limit to it)."""
    try:
        import resource
    except ImportError:  # not a Unix
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = hard if hard != resource.RLIM_INFINITY else soft
    return None if limit == resource.RLIM_INFINITY else int(limit)
