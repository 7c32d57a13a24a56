"""The process ledger: a `kill -9` of scalesim orphans nothing for long.

Unit tests drive `scalesim.deploy.ledger` with real processes (``sleep`` in sessions of their own)
and entries whose owner is a process that has exited; the end-to-end tests SIGKILL a real
``scalesim run`` while Locust loads a stage, see its servers survive it, and see the next
``scalesim down`` / ``scalesim run`` stop every one of them, PostgreSQL's backends included, and
remove its CPU groups and data folders.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from scalesim.deploy.ledger import (
    STATE_DIR_ENV,
    LedgerEntry,
    LedgerSettings,
    ProcessGroup,
    RunLedger,
    default_state_dir,
    read_entries,
    start_time,
    sweep,
)
from scalesim.deploy.local import DeploymentSettings, LocalDeployment
from scalesim.errors import ComponentError
from scalesim.measure.budgets import CgroupLayout
from scalesim.topology import load_scenario

FAST = LedgerSettings(stop_grace_seconds=1.0, kill_wait_seconds=3.0)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pids: list[int], *, timeout: float = 5.0) -> list[int]:
    """The pids still alive after `timeout` (an exited orphan may linger a moment as a zombie)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pids if _alive(pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "state"
    monkeypatch.setenv(STATE_DIR_ENV, str(folder))
    return folder


@pytest.fixture
def sessions() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes in sessions of their own, as scalesim starts its servers; killed at the end regardless."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def _server(sessions: list[subprocess.Popen[bytes]], *, code: str = "import time; time.sleep(120)",
            log: Path | None = None) -> subprocess.Popen[bytes]:
    with open(log or os.devnull, "ab") as out:
        process = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    sessions.append(process)
    deadline = time.monotonic() + 5
    while start_time(process.pid) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return process


def _dead_owner() -> tuple[int, float]:
    """The pid and start time of a process that has exited: an owner killed by SIGKILL."""
    process = subprocess.Popen(["sleep", "30"])
    started = start_time(process.pid)
    assert started is not None
    process.kill()
    process.wait()
    return process.pid, started


def _orphan_entry(state: Path, *, run_dir: Path, groups: list[ProcessGroup], detached: bool = False,
                  data_dirs: list[str] | None = None, owner: tuple[int, float] | None = None) -> Path:
    pid, started = owner or _dead_owner()
    entry = LedgerEntry(run_id=run_dir.name, run_dir=str(run_dir), owner_pid=pid, owner_started=started,
                        detached=detached, groups=groups, data_dirs=data_dirs or [])
    ledger = RunLedger(entry=entry, path=state / f"{run_dir.name}.json")
    ledger.write()
    return ledger.path


def _group(name: str, process: subprocess.Popen[bytes]) -> ProcessGroup:
    started = start_time(process.pid)
    assert started is not None
    return ProcessGroup(name=name, pgid=process.pid, started=started)


# -- the module ------------------------------------------------------------------------------------


def test_state_folder_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(STATE_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "xdg" / "scalesim" / "ledger"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "scalesim" / "ledger"
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "explicit"))
    assert default_state_dir() == tmp_path / "explicit"


def test_entry_records_owner_groups_and_data_and_goes_away_on_close(
        state: Path, tmp_path: Path, sessions: list[subprocess.Popen[bytes]]) -> None:
    ledger = RunLedger.open(run_id="20250101-000000-stage0-abcd", run_dir=tmp_path / "run")
    server = _server(sessions)
    ledger.record_group(name="app1", pgid=server.pid, data_dirs=[tmp_path / "data"])
    restarted = _server(sessions)
    ledger.record_group(name="app1", pgid=restarted.pid)  # a restart replaces the record
    [(path, entry)] = read_entries(state)
    assert entry is not None and path == ledger.path
    assert entry.owner_pid == os.getpid() and entry.owner_started == start_time(os.getpid())
    assert not entry.detached and entry.run_dir == str((tmp_path / "run").resolve())
    assert [(g.name, g.pgid, g.started) for g in entry.groups] == [("app1", restarted.pid, start_time(restarted.pid))]
    assert entry.data_dirs == [str((tmp_path / "data").resolve())]
    assert [p.name for p in state.iterdir()] == [path.name]  # no temporary file left beside it
    ledger.mark_detached()
    assert json.loads(path.read_text())["detached"] is True
    ledger.close()
    assert read_entries(state) == []


def test_a_live_owners_run_is_never_swept(state: Path, tmp_path: Path,
                                          sessions: list[subprocess.Popen[bytes]]) -> None:
    ledger = RunLedger.open(run_id="live-run", run_dir=tmp_path / "run")
    server = _server(sessions)
    ledger.record_group(name="app1", pgid=server.pid)
    assert sweep(settings=FAST) == []
    assert _alive(server.pid) and ledger.path.exists()


def test_an_orphan_is_stopped_and_tidied(state: Path, tmp_path: Path, sessions: list[subprocess.Popen[bytes]]) -> None:
    run_dir = tmp_path / "runs" / "20250101-000000-stage1-orph"
    (run_dir / "logs").mkdir(parents=True)
    data = tmp_path / "scalesim-pg-private"
    (data / "primary").mkdir(parents=True)
    (data / ".pgpass").write_text("secret")
    owner = _dead_owner()
    recorded = _server(sessions)
    # A server that ignores SIGTERM, and one started but not yet recorded when its owner died,
    # found by its log in the run folder.
    stubborn = _server(sessions, code="import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                      "time.sleep(120)")
    unrecorded = _server(sessions, log=run_dir / "logs" / "app2.log")
    bystander = _server(sessions)  # same kind of process, nothing to do with the run
    path = _orphan_entry(state, run_dir=run_dir, groups=[_group("app1", recorded), _group("worker1", stubborn)],
                         data_dirs=[str(data)], owner=owner)
    [report] = sweep(settings=FAST)
    assert report.run_id == run_dir.name and report.processes_stopped == 3
    assert report.groups_stopped == ("app1", "worker1") and report.data_dirs_removed == 1
    assert run_dir.name in report.line() and "\n" not in report.line()
    assert _wait_gone([recorded.pid, stubborn.pid, unrecorded.pid]) == []
    assert _alive(bystander.pid)
    assert not data.exists() and not path.exists()
    assert (run_dir / "logs").is_dir()  # the run folder and its logs stay
    assert sweep(settings=FAST) == []


def test_a_reused_pid_is_neither_the_owner_nor_a_server(state: Path, tmp_path: Path,
                                                        sessions: list[subprocess.Popen[bytes]]) -> None:
    innocent = _server(sessions)
    started = start_time(innocent.pid)
    assert started is not None
    # The recorded leader's pid now belongs to another program: its start time differs.
    _orphan_entry(state, run_dir=tmp_path / "run-a", groups=[ProcessGroup(name="app1", pgid=innocent.pid,
                                                                          started=started - 50.0)])
    [report] = sweep(settings=FAST)
    assert report.processes_stopped == 0 and report.groups_stopped == ()
    assert _alive(innocent.pid)
    # An owner pid that is alive but belongs to another program (its start time differs) is no owner.
    server = _server(sessions)
    impostor = LedgerEntry(run_id="run-b", run_dir=str(tmp_path / "run-b"), owner_pid=os.getpid(),
                           owner_started=start_time(os.getpid()) - 50.0,  # type: ignore[operator]
                           groups=[_group("app1", server)])
    RunLedger(entry=impostor, path=state / "run-b.json").write()
    [report] = sweep(settings=FAST)
    assert report.run_id == "run-b" and _wait_gone([server.pid]) == []
    assert _alive(innocent.pid)


def test_a_detached_deployment_stays_until_its_processes_are_gone(
        state: Path, tmp_path: Path, sessions: list[subprocess.Popen[bytes]]) -> None:
    server = _server(sessions)
    path = _orphan_entry(state, run_dir=tmp_path / "up-run", groups=[_group("app1", server)], detached=True)
    assert sweep(settings=FAST) == []
    assert _alive(server.pid) and path.exists()
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()
    assert sweep(settings=FAST) == []  # deleted silently
    assert not path.exists()


def test_an_unreadable_entry_is_left_alone(state: Path) -> None:
    state.mkdir(parents=True)
    (state / "foreign.json").write_text("{not json")
    (state / "future.json").write_text(json.dumps({"version": 99}))
    assert sweep(settings=FAST) == []
    assert sorted(p.name for p in state.iterdir()) == ["foreign.json", "future.json"]


def test_sweep_runs_at_the_start_of_up(state: Path, tmp_path: Path, sessions: list[subprocess.Popen[bytes]]) -> None:
    server = _server(sessions)
    _orphan_entry(state, run_dir=tmp_path / "20250101-000000-stage0-dead", groups=[_group("app1", server)])
    done = subprocess.run([sys.executable, "-m", "scalesim", "up", "stage9", "--runs-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 2 and "swept orphaned run 20250101-000000-stage0-dead" in lines[0]
    assert "unknown stage 'stage9'" in lines[1]
    assert _wait_gone([server.pid]) == []


# -- a real deployment ------------------------------------------------------------------------------


def _small(stage: str) -> object:
    scenario = load_scenario(stage)
    return dataclasses.replace(scenario, data=dataclasses.replace(scenario.data, users=50, books=100, authors=30,
                                                                      rentals_per_user=3))


def test_a_deployment_records_each_node_and_removes_its_entry_at_the_end(state: Path, tmp_path: Path) -> None:
    deployment = LocalDeployment(scenario=_small("stage0"), run_dir=tmp_path / "run")  # type: ignore[arg-type]
    try:
        deployment.up()
        [(_, entry)] = read_entries(state)
        assert entry is not None and entry.owner_pid == os.getpid() and not entry.detached
        assert [(g.name, g.pgid) for g in entry.groups] == [(n.name, n.process.pid) for n in deployment.nodes]
        assert all(Path(d).is_dir() for d in entry.data_dirs) and entry.data_dirs
        assert entry.run_id == deployment.run_id
    finally:
        deployment.down()
    assert read_entries(state) == []


def test_a_failure_during_bring_up_removes_the_entry_too(state: Path, tmp_path: Path) -> None:
    # pool_size 0 is refused by the app: the app server exits during start-up, after PostgreSQL is up.
    deployment = LocalDeployment(scenario=_small("stage0"), run_dir=tmp_path / "run",  # type: ignore[arg-type]
                                 settings=DeploymentSettings(pool_size=0))
    with pytest.raises(ComponentError, match="app1 exited during start-up"):
        deployment.up()
    pids = [node.process.pid for node in deployment.nodes if node.process.pid]
    assert pids and _wait_gone(pids) == []
    assert read_entries(state) == []


# -- kill -9 of a real run ----------------------------------------------------------------------------


def _run_processes(groups: list[dict[str, Any]]) -> list[int]:
    """Every process of the recorded groups: leaders, their group, and their descendants
    (PostgreSQL's backends run in sessions of their own)."""
    pgids = {int(group["pgid"]) for group in groups}
    found = set()
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(process.pid) in pgids:
                found.add(process.pid)
    for pgid in pgids:
        with contextlib.suppress(psutil.Error):
            found.update(child.pid for child in psutil.Process(pgid).children(recursive=True))
    return sorted(pid for pid in found if _alive(pid))


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for process in psutil.process_iter(["cmdline", "environ"]):
        try:
            if text in " ".join(process.info["cmdline"] or []) or text in json.dumps(process.info["environ"] or {}):
                found.append(f"{process.pid} {' '.join(process.info['cmdline'] or [])[:120]}")
        except (psutil.Error, TypeError):
            continue
    return found


@dataclasses.dataclass
class LiveRun:
    """A `scalesim run --quick` subprocess, loaded by Locust, and its ledger entry."""

    process: subprocess.Popen[bytes]
    entry: dict[str, Any]
    env: dict[str, str]
    runs: Path
    state: Path
    log: Path

    @property
    def groups(self) -> list[dict[str, Any]]:
        return list(self.entry["groups"])


@contextlib.contextmanager
def _loaded_run(tmp_path: Path, stage: str) -> Iterator[LiveRun]:
    """Start `scalesim run STAGE --quick` and wait until its stage is up and Locust is recorded."""
    state, runs, log = tmp_path / "state", tmp_path / "runs", tmp_path / "scalesim.log"
    env = {**os.environ, STATE_DIR_ENV: str(state)}
    with open(log, "wb") as out:
        owner = subprocess.Popen([sys.executable, "-m", "scalesim", "run", stage, "--quick", "--runs-dir", str(runs)],
                                 stdout=subprocess.DEVNULL, stderr=out, env=env)
    try:
        deadline = time.monotonic() + 150
        entry: dict[str, Any] = {}
        while time.monotonic() < deadline and owner.poll() is None and not entry:
            for path in state.glob("*.json") if state.is_dir() else []:
                found = json.loads(path.read_text())
                if any(group["name"] == "locust" for group in found["groups"]):
                    entry = found
            time.sleep(0.2)
        assert entry, log.read_text()[-3000:]
        assert f"{stage} is up in" in log.read_text()
        yield LiveRun(process=owner, entry=entry, env=env, runs=runs, state=state, log=log)
    finally:
        if owner.poll() is None:
            owner.kill()
        owner.wait()
        sweep(folder=state, settings=FAST)  # whatever a failed assertion left running


@pytest.mark.parametrize(("stage", "sweeper"), [("stage4", ["down"]), ("stage1", ["run", "no-such-stage"])])
def test_kill_9_of_a_run_leaves_orphans_that_the_next_command_sweeps(tmp_path: Path, stage: str,
                                                                      sweeper: list[str]) -> None:
    with _loaded_run(tmp_path, stage) as run:
        names = {str(group["name"]) for group in run.groups}
        assert {"primary", "app1", "balancer", "locust"} <= names
        if stage == "stage4":
            assert {"replica1", "replica2", "worker1"} <= names
        pids = _run_processes(run.groups)
        assert len(pids) > len(run.groups)  # backends, Locust's user processes, ...
        layout, _ = CgroupLayout.detect()
        cpu_group = layout.cpu / f"scalesim-{run.entry['run_id']}" if layout is not None else None
        assert cpu_group is None or cpu_group.is_dir()
        data_dirs = [Path(d) for d in run.entry["data_dirs"]]
        assert data_dirs and all(d.is_dir() for d in data_dirs)

        run.process.send_signal(signal.SIGKILL)
        run.process.wait(timeout=10)
        time.sleep(1.0)
        survivors = [pid for pid in pids if _alive(pid)]
        assert len(survivors) > len(run.groups) // 2  # the problem the ledger solves: its servers outlive it

        done = subprocess.run([sys.executable, "-m", "scalesim", *sweeper, "--runs-dir", str(run.runs)],
                              capture_output=True, text=True, timeout=120, check=False, env=run.env)
        assert "Traceback" not in done.stderr
        swept = [line for line in done.stderr.splitlines() if line.startswith("swept orphaned run")]
        assert len(swept) == 1 and run.entry["run_id"] in swept[0], done.stderr
        if sweeper == ["down"]:
            assert done.returncode == 0, done.stderr
        else:
            assert done.returncode == 1 and "unknown stage 'no-such-stage'" in done.stderr
        assert _wait_gone(pids) == []
        assert _run_processes(run.groups) == []
        assert _processes_mentioning(str(run.runs)) == []
        assert cpu_group is None or not cpu_group.exists()
        assert not any(d.exists() for d in data_dirs)
        assert list(run.state.glob("*.json")) == []
        run_dir = Path(run.entry["run_dir"])  # no password or server configuration left beside the logs
        assert not (run_dir / "secrets.json").exists() and not (run_dir / "data").exists()
        assert (run_dir / "logs").is_dir()


def test_sigterm_during_a_run_stops_everything_and_clears_the_ledger(tmp_path: Path) -> None:
    with _loaded_run(tmp_path, "stage0") as run:
        pids = _run_processes(run.groups)
        run.process.send_signal(signal.SIGTERM)
        assert run.process.wait(timeout=60) == 130
        assert "interrupted" in run.log.read_text() and "Traceback" not in run.log.read_text()
        assert _wait_gone(pids) == []
        assert list(run.state.glob("*.json")) == []  # a clean end: nothing for a sweep to do
