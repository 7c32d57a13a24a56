"""The process ledger: what every live run started, kept where a ``kill -9`` of scalesim cannot erase it.

Every server scalesim starts runs in its own process group, so a run that ends by itself, by Ctrl-C,
by SIGTERM or by a failure during bring-up stops what it started. A scalesim that is SIGKILLed
cannot: its servers, its Locust processes, its CPU control groups and its database folders would
outlive it. So each run keeps one JSON entry in a per-user state folder (``$SCALESIM_STATE_DIR``,
by default ``${XDG_STATE_HOME:-~/.local/state}/scalesim/ledger``) that says

* who owns the run: scalesim's pid *and* that process's start time, so a pid the system has since
  given to another program is not taken for a live owner;
* whether the deployment is *detached*: a finished ``scalesim up``, meant to outlive its command
  and stopped by ``scalesim down``;
* every process group the run started (name, pgid, the leader's start time), the run id (CPU
  groups are named after it), the run folder and the database data folders.

The entry is rewritten atomically (a temporary file renamed over it) as each group starts, and
removed when the run ends cleanly. `sweep` runs at the start of ``scalesim up``, ``run`` and
``down``: an entry whose owner is dead and which is not detached is an orphan. Its processes are
stopped (SIGTERM, SIGKILL after a grace period), its CPU groups and data folders removed, its entry
deleted. A group is signalled only while its leader's start time matches the record, so a reused
pid is never hit. PostgreSQL's backends leave the postmaster's group (each calls ``setsid``), so a
verified leader's descendants count as its members, and a process started after the owner whose
standard output or error is a log in the orphan's run folder is one of the run's servers too (that
also catches a server killed in the instant between its start and its record).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from scalesim.errors import ScalesimError
from scalesim.measure.budgets import CGROUP_ROOT

STATE_DIR_ENV = "SCALESIM_STATE_DIR"
ENTRY_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class LedgerSettings:
    """Tuning values of the ledger and its sweep."""

    stop_grace_seconds: float = 5.0      # SIGTERM, then SIGKILL after this long
    kill_wait_seconds: float = 5.0       # how long SIGKILLed processes may take to vanish
    poll_seconds: float = 0.05
    cgroup_wait_seconds: float = 2.0     # a killed task may take a moment to leave its control group
    # Start times are kernel clock ticks since boot: two readings of one process agree exactly, and
    # another process started in another tick differs by at least 10 ms.
    start_time_tolerance: float = 0.005
    # A temporary file from a write that never finished (its writer was killed mid-rename).
    stale_temp_seconds: float = 60.0


def default_state_dir() -> Path:
    """``$SCALESIM_STATE_DIR``, else ``${XDG_STATE_HOME:-~/.local/state}/scalesim/ledger``."""
    explicit = os.environ.get(STATE_DIR_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "scalesim" / "ledger"


def start_time(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch); None if it is gone or a zombie."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(process.create_time())
    except (psutil.Error, ValueError):
        return None


@dataclass(frozen=True, kw_only=True)
class ProcessGroup:
    """One process group a run started: its name, its id (the leader's pid) and the leader's start time."""

    name: str
    pgid: int
    started: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "pgid": self.pgid, "started": self.started}


@dataclass(kw_only=True)
class LedgerEntry:
    """One run's record; `RunLedger` writes it, `sweep` reads it."""

    run_id: str
    run_dir: str
    owner_pid: int
    owner_started: float
    detached: bool = False
    groups: list[ProcessGroup] = field(default_factory=list)
    data_dirs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"version": ENTRY_VERSION, "run_id": self.run_id, "run_dir": self.run_dir,
                "owner": {"pid": self.owner_pid, "started": self.owner_started}, "detached": self.detached,
                "groups": [group.to_dict() for group in self.groups], "data_dirs": list(self.data_dirs)}

    @classmethod
    def from_dict(cls, data: Any) -> LedgerEntry:
        """The entry a file holds; ValueError if it is not one this version wrote."""
        try:
            if data["version"] != ENTRY_VERSION:
                raise ValueError(f"entry version {data['version']!r}")
            return cls(run_id=str(data["run_id"]), run_dir=str(data["run_dir"]),
                       owner_pid=int(data["owner"]["pid"]), owner_started=float(data["owner"]["started"]),
                       detached=bool(data["detached"]),
                       groups=[ProcessGroup(name=str(g["name"]), pgid=int(g["pgid"]), started=float(g["started"]))
                               for g in data["groups"]],
                       data_dirs=[str(path) for path in data["data_dirs"]])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a ledger entry: {exc}") from None

    def owner_alive(self, settings: LedgerSettings) -> bool:
        started = start_time(self.owner_pid)
        return started is not None and abs(started - self.owner_started) <= settings.start_time_tolerance


def entry_file_name(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", run_id).lstrip(".") + ".json"


def _write_atomically(path: Path, document: dict[str, Any]) -> None:
    """Write to a temporary file beside `path`, then rename it over `path`: a reader sees either
    the old entry or the new one, never half of one, even if the writer is killed mid-way."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


@dataclass(kw_only=True)
class RunLedger:
    """The live run's side: one entry, rewritten as process groups start, removed at a clean end."""

    entry: LedgerEntry
    path: Path

    @classmethod
    def open(cls, *, run_id: str, run_dir: Path, folder: Path | None = None) -> RunLedger:
        """Start the entry of a run owned by this process."""
        pid = os.getpid()
        started = start_time(pid)
        assert started is not None  # this very process
        entry = LedgerEntry(run_id=run_id, run_dir=str(run_dir.resolve()), owner_pid=pid, owner_started=started)
        ledger = cls(entry=entry, path=(folder or default_state_dir()) / entry_file_name(run_id))
        try:
            ledger.write()
        except OSError as exc:
            raise ScalesimError(f"cannot write the process ledger in {ledger.path.parent}: {exc.strerror or exc} "
                                f"(set {STATE_DIR_ENV} to a writable folder)") from None
        return ledger

    def write(self) -> None:
        try:
            _write_atomically(self.path, self.entry.to_dict())
        except OSError as exc:  # a write error names no file by itself: name the entry
            raise OSError(exc.errno, exc.strerror or str(exc), str(self.path)) from None

    def record_group(self, *, name: str, pgid: int, data_dirs: Iterable[Path | str] = ()) -> None:
        """A process group that started (a server restarted under the same name replaces its record)."""
        started = start_time(pgid)
        if started is None:  # already gone: nothing to stop later
            return
        groups = [group for group in self.entry.groups if group.name != name]
        self.entry.groups = [*groups, ProcessGroup(name=name, pgid=pgid, started=started)]
        for path in data_dirs:
            text = str(Path(path).resolve())
            if text not in self.entry.data_dirs:
                self.entry.data_dirs.append(text)
        self.write()

    def mark_detached(self) -> None:
        """The deployment is meant to outlive this process (`scalesim up`): no sweep takes it for an orphan."""
        self.entry.detached = True
        self.write()

    def close(self) -> None:
        """The run ended cleanly: everything it started has been stopped."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def forget(run_id: str, *, folder: Path | None = None) -> None:
    """Delete a run's entry (``scalesim down`` after stopping a detached deployment)."""
    _delete((folder or default_state_dir()) / entry_file_name(run_id))


def read_entries(folder: Path | None = None) -> list[tuple[Path, LedgerEntry | None]]:
    """Every entry file and what it holds (None: unreadable, or written by another version)."""
    folder = folder or default_state_dir()
    try:
        paths = sorted(folder.glob("*.json"))
    except OSError:
        return []
    found: list[tuple[Path, LedgerEntry | None]] = []
    for path in paths:
        try:
            found.append((path, LedgerEntry.from_dict(json.loads(path.read_text()))))
        except (OSError, ValueError):
            found.append((path, None))
    return found


# -- the sweep ---------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SweepReport:
    """What was done about one orphaned run: one line for the user."""

    run_id: str
    owner_pid: int
    groups_stopped: tuple[str, ...]
    processes_stopped: int
    cpu_groups_removed: int
    data_dirs_removed: int

    def line(self) -> str:
        groups = ", ".join(self.groups_stopped) or "none were running"
        return (f"swept orphaned run {self.run_id} (its scalesim, pid {self.owner_pid}, is gone): stopped "
                f"{self.processes_stopped} process(es) [{groups}], removed {self.cpu_groups_removed} CPU group(s) "
                f"and {self.data_dirs_removed} data folder(s)")


def sweep(*, folder: Path | None = None, settings: LedgerSettings | None = None) -> list[SweepReport]:
    """Stop and tidy every orphaned run; delete detached entries whose processes are all gone."""
    settings = settings or LedgerSettings()
    folder = folder or default_state_dir()
    _remove_stale_temporaries(folder, settings)
    reports = []
    for path, entry in read_entries(folder):
        if entry is None or entry.owner_alive(settings):
            continue  # another version's entry is left to it; a live owner's run is never touched
        if entry.detached:
            if not any(_verified_members(group, settings) for group in entry.groups):
                _delete(path)
            continue
        reports.append(_sweep_orphan(entry, settings))
        _delete(path)
    return reports


def _delete(path: Path) -> None:
    with contextlib.suppress(OSError):  # gone already (another sweep), or a folder this user cannot write
        path.unlink()


def _remove_stale_temporaries(folder: Path, settings: LedgerSettings) -> None:
    with contextlib.suppress(OSError):
        for temporary in folder.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                if time.time() - temporary.stat().st_mtime > settings.stale_temp_seconds:
                    temporary.unlink()


def _sweep_orphan(entry: LedgerEntry, settings: LedgerSettings) -> SweepReport:
    targets: dict[int, psutil.Process] = {}
    running = []
    for group in entry.groups:
        members = _verified_members(group, settings)
        if members:
            running.append(group.name)
        targets.update((process.pid, process) for process in members)
    strays = _strays(entry)
    targets.update((process.pid, process) for process in strays)
    if strays and not running:
        running.append("unrecorded servers")
    _stop(list(targets.values()), settings)
    cpu_groups = _remove_cpu_groups(entry.run_id, settings)
    from scalesim.deploy.local import remove_state  # local.py records into the ledger: import late

    # The state and secrets files, and the servers' configuration and password files in the run folder.
    remove_state(Path(entry.run_dir))
    data_dirs = 0
    for text in entry.data_dirs:
        path = Path(text)
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
            data_dirs += 0 if path.exists() else 1
    return SweepReport(run_id=entry.run_id, owner_pid=entry.owner_pid, groups_stopped=tuple(running),
                       processes_stopped=len(targets), cpu_groups_removed=cpu_groups, data_dirs_removed=data_dirs)


def _all_processes() -> Iterator[psutil.Process]:
    own = {os.getpid(), *(parent.pid for parent in _ancestors())}
    for process in psutil.process_iter():
        if process.pid not in own:
            yield process


def _ancestors() -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return list(psutil.Process().parents())
    return []


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _verified_members(group: ProcessGroup, settings: LedgerSettings) -> list[psutil.Process]:
    """The live processes of a recorded group, checked against the record.

    With the leader alive, its start time must match: a different start time means the pid was
    given to another program, whose group is left alone. Its members are the processes in its
    group plus its descendants (PostgreSQL's backends run in sessions of their own). With the
    leader gone, the group id cannot have been reused while any member lives, so its remaining
    members count if they started no earlier than the leader did.
    """
    leader_started = start_time(group.pgid)
    if leader_started is not None and abs(leader_started - group.started) > settings.start_time_tolerance:
        return []
    members: dict[int, psutil.Process] = {}
    for process in _all_processes():
        try:
            if os.getpgid(process.pid) != group.pgid or not _alive(process):
                continue
            if leader_started is None and process.create_time() < group.started - settings.start_time_tolerance:
                continue
        except (OSError, psutil.Error):
            continue
        members[process.pid] = process
    if leader_started is not None:
        with contextlib.suppress(psutil.Error):
            leader = psutil.Process(group.pgid)
            members[leader.pid] = leader
            members.update((child.pid, child) for child in leader.children(recursive=True) if _alive(child))
    return list(members.values())


def _strays(entry: LedgerEntry) -> list[psutil.Process]:
    """Processes started after the owner whose standard output or error is a file in the run folder."""
    run_dir = entry.run_dir.rstrip("/") + "/"
    found = []
    for process in _all_processes():
        try:
            if process.create_time() < entry.owner_started or not _alive(process):
                continue
            targets = [os.readlink(f"/proc/{process.pid}/fd/{fd}") for fd in (1, 2)
                       if os.path.lexists(f"/proc/{process.pid}/fd/{fd}")]
        except (OSError, psutil.Error):  # gone, not ours to inspect, or no /proc on this system
            continue
        if any(target.startswith(run_dir) for target in targets):
            found.append(process)
    return found


def _stop(processes: list[psutil.Process], settings: LedgerSettings) -> None:
    """SIGTERM to every process at once, SIGKILL to what is left after the grace period."""
    for sig, wait in ((signal.SIGTERM, settings.stop_grace_seconds), (signal.SIGKILL, settings.kill_wait_seconds)):
        living = [process for process in processes if _alive(process)]
        if not living:
            return
        for process in living:
            with contextlib.suppress(psutil.Error):
                process.send_signal(sig)
                if sig == signal.SIGTERM:
                    process.send_signal(signal.SIGCONT)  # a stopped (paused) server acts on it only once running
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(_alive(process) for process in living):
            time.sleep(settings.poll_seconds)


def _cpu_group_dirs(run_id: str) -> list[Path]:
    return [CGROUP_ROOT / controller / f"scalesim-{run_id}" for controller in ("cpu", "cpuacct", ".", "unified")]


def _remove_cpu_groups(run_id: str, settings: LedgerSettings) -> int:
    """Remove the run's control groups (node groups first); returns how many node groups there were."""
    parents = [parent for parent in _cpu_group_dirs(run_id) if parent.is_dir()]
    names: set[str] = set()
    deadline = time.monotonic() + settings.cgroup_wait_seconds
    while parents:
        for parent in parents:
            with contextlib.suppress(OSError):
                for child in parent.iterdir():
                    if child.is_dir():
                        names.add(child.name)
                        with contextlib.suppress(OSError):
                            child.rmdir()
                parent.rmdir()
        parents = [parent for parent in parents if parent.is_dir()]
        if time.monotonic() > deadline:
            break
        time.sleep(settings.poll_seconds)
    return len(names)
