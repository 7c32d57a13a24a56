"""Run Locust in its own processes, one load step after another, and collect the steps.

Locust monkey-patches the standard library for gevent as soon as it is imported, which does not
mix with the asyncio code elsewhere in scalesim. So the driver never imports it: it starts
``python -m locust -f reference_app/locustfile.py --headless ...`` as a child process (or, with
``locust_workers > 0``, a master and that many worker processes, Locust's distributed mode) and
talks to it through a pipe. The Locust side writes one JSON object per line; the driver reads
them on a thread, measures the CPU time of the Locust process tree, and hands every event to
the caller::

    def show(event):
        if event["event"] == "step_end":
            print(event["users"], "users:", event["total"]["rps"], "req/s")

    result = run_load(host="http://127.0.0.1:8000", workload=spec["workload"], load=spec["quick"],
                      seeded_users=1000, out_dir=Path("runs/0/load"), on_event=show)
    for step in result.steps:
        print(step.users, step.total.p95_ms)

The events, in order (every event also carries ``"time"``, epoch seconds, Locust's clock):

``{"event": "run_start", "pid", "steps": [..], "workers", "step_seconds", "warmup_seconds", "spawn_rate", "host"}``
    the Locust process is up (in distributed mode, before the workers have connected).
``{"event": "step_start", "step": i, "users": n, "steps": count}``
    ramping to ``n`` users begins.
``{"event": "measure_start", "step": i, "users": n, "users_actual": m}``
    ramp and warm-up are over, statistics were reset: the measurement window opens. The driver
    snapshots the Locust tree's CPU here; a caller snapshots its per-node CPU.
``{"event": "progress", "step": i, "phase", "users", "t", "rps", "requests", "failures",``
``"failures_interval", "errors_interval", "mean_ms", "p95_ms"}``
    about once a second, in every phase and whether requests succeed or fail (a per-second timeline
    of the whole run): ``phase`` is ``starting|ramp|warmup|measure|collect|done``, ``t`` the seconds
    since ``run_start``; ``rps``, ``requests`` and ``failures_interval`` (failed requests,
    ``errors_interval`` the same per reason) are over the last interval, ``mean_ms`` and ``p95_ms``
    the latency of that interval's responses (``null`` when none came back); ``failures`` counts
    failed requests since the step started. In distributed mode the interval figures are what the
    workers reported since the previous tick (each sends its counts and a small histogram once a
    second).
``{"event": "step_end", "step": i, "users": n, "users_actual", "workers_reporting", "window_s",``
``"started_at", "ended_at", "total": {...}, "endpoints": [{...}], "errors": {message: count},``
``"rejections": {key: count}, "loadgen_cpu_seconds"}``
    the window closed. ``total`` and each of ``endpoints`` are
    :class:`~scalesim.loadgen.stats.EndpointStats` dicts (``name, method, requests, failures,
    rps, mean_ms, p50_ms, p95_ms, p99_ms, max_ms``); the driver adds ``loadgen_cpu_seconds``
    (CPU seconds of all Locust processes during the window) before passing the event on.
``{"event": "warning", "message"}`` / ``{"event": "error", "message"}``
    something the run survived (a slow ramp, a worker that did not report) / did not.
``{"event": "done", "complete": bool, "steps_completed": k}``
    the last step ended (or Locust was stopped early: ``complete`` is false).

Whatever happens — an exception in ``on_event``, ``KeyboardInterrupt``, a time-out — the
driver stops every Locust process it started (SIGTERM to their process group, then SIGKILL)
before returning or raising. The run is bounded in time: see
:class:`~scalesim.loadgen.config.DriverConfig`. A host that does not answer is not an error:
the requests fail and the steps say so. Locust failing to start is a :class:`LoadgenError`
with a one-line reason and the log to look at.

Every write the app acknowledged (a rent answered 201, a return answered 200) is recorded by the
Locust process that saw it, in ``out_dir/acks/<pid>.jsonl`` (see :mod:`scalesim.loadgen.acks`),
for the integrity audit that follows a run (:mod:`scalesim.audit`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from scalesim.components.process import free_port
from scalesim.loadgen.config import ENV_VAR, DriverConfig, LoadConfig
from scalesim.loadgen.stats import StepStats
from scalesim.measure.cpu import process_tree_cpu_seconds

__all__ = ["LoadResult", "LoadgenError", "ProcessTreeCPU", "default_locustfile", "run_load"]

EventCallback = Callable[[dict[str, Any]], None]


class LoadgenError(RuntimeError):
    """The load run could not start or did not finish; ``result`` holds what was measured."""

    def __init__(self, message: str, *, result: LoadResult | None = None) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class LoadResult:
    """What :func:`run_load` measured.

    ``steps`` in order; ``loadgen_cpu_seconds`` is the CPU time of the whole Locust process
    tree over the whole run (start-up included); ``files`` names what was written into
    ``out_dir`` (``events`` — every event line, ``acks`` — the folder of acknowledged writes,
    ``locust_log`` / ``worker_logs``, and Locust's own ``stats_csv``, ``history_csv``,
    ``failures_csv``, ``html``, ``json`` when written).
    """

    steps: list[StepStats]
    out_dir: Path
    host: str
    started_at: float
    ended_at: float
    expected_duration_s: float
    loadgen_cpu_seconds: float
    locust_workers: int
    complete: bool
    returncode: int | None = None
    files: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return self.ended_at - self.started_at

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": [s.to_dict() for s in self.steps],
            "out_dir": str(self.out_dir),
            "host": self.host,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "expected_duration_s": self.expected_duration_s,
            "loadgen_cpu_seconds": self.loadgen_cpu_seconds,
            "locust_workers": self.locust_workers,
            "complete": self.complete,
            "returncode": self.returncode,
            "files": dict(self.files),
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoadResult:
        return cls(
            steps=[StepStats.from_dict(s) for s in data.get("steps", [])],
            out_dir=Path(data["out_dir"]),
            host=str(data.get("host", "")),
            started_at=float(data["started_at"]),
            ended_at=float(data["ended_at"]),
            expected_duration_s=float(data.get("expected_duration_s", 0.0)),
            loadgen_cpu_seconds=float(data.get("loadgen_cpu_seconds", 0.0)),
            locust_workers=int(data.get("locust_workers", 0)),
            complete=bool(data.get("complete", False)),
            returncode=data.get("returncode"),
            files=dict(data.get("files", {})),
            warnings=list(data.get("warnings", [])),
        )


class ProcessTreeCPU:
    """CPU seconds of some processes and their descendants, as the per-node measure counts them.

    Each root is measured with :func:`scalesim.measure.cpu.process_tree_cpu_seconds` (live
    processes' own time plus what they have reaped). On top of that a root that has exited keeps
    its last value, so samples never go backwards and the run's total survives the end of the
    run; a root's pid is checked against its start time, so a reused pid is never measured.
    """

    def __init__(self) -> None:
        self._roots: dict[int, float] = {}  # pid -> create_time
        self._last: dict[int, float] = {}

    def add(self, pid: int) -> None:
        with contextlib.suppress(psutil.Error):
            self._roots[pid] = psutil.Process(pid).create_time()
            self._last[pid] = 0.0

    def sample(self) -> float:
        for pid, created in self._roots.items():
            try:
                if psutil.Process(pid).create_time() != created:
                    continue
            except psutil.Error:
                continue
            self._last[pid] = max(self._last[pid], process_tree_cpu_seconds(pid))
        return sum(self._last.values())


def default_locustfile() -> Path:
    """``reference_app/locustfile.py``, found without importing the ``reference_app`` package."""
    spec = importlib.util.find_spec("reference_app")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "locustfile.py"
            if candidate.is_file():
                return candidate
    return Path(__file__).resolve().parents[2] / "reference_app" / "locustfile.py"


def _last_line(path: Path) -> str:
    """The last meaningful line of a log (for a traceback: the exception)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        text = line.strip()
        if text and not text.startswith(("KeyboardInterrupt", "^")):
            return text[:300]
    return ""


class _EventReader(threading.Thread):
    """Reads JSON lines from the pipe into a queue; ``None`` marks the end of the pipe."""

    def __init__(self, fd: int, out: queue.Queue[dict[str, Any] | None]) -> None:
        super().__init__(name="scalesim-loadgen-events", daemon=True)
        self._file = os.fdopen(fd, "rb", buffering=0)
        self._out = out

    def run(self) -> None:
        buffer = b""
        try:
            while chunk := self._file.read(65536):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(event, dict) and "event" in event:
                        self._out.put(event)
        except (OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                self._file.close()
            self._out.put(None)


class _LocustProcesses:
    """The Locust master (or single process) and its workers, in one process group."""

    def __init__(self, *, cfg: DriverConfig, out_dir: Path) -> None:
        self.cfg = cfg
        self.out_dir = out_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[IO[bytes]] = []
        self.log_paths: list[Path] = []
        self.cpu = ProcessTreeCPU()
        self.pgid: int | None = None

    @property
    def master(self) -> subprocess.Popen[bytes]:
        return self.procs[0]

    def spawn(
        self, args: list[str], *, env: dict[str, str], log_name: str, pass_fds: tuple[int, ...] = ()
    ) -> subprocess.Popen[bytes]:
        log_path = self.out_dir / log_name
        log = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        self.logs.append(log)
        self.log_paths.append(log_path)
        proc = subprocess.Popen(
            args,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=pass_fds,
            process_group=0 if self.pgid is None else self.pgid,
        )
        if self.pgid is None:
            self.pgid = proc.pid
        self.procs.append(proc)
        self.cpu.add(proc.pid)
        return proc

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p.poll() is None]

    def wait_all(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            remaining = deadline - time.monotonic()
            try:
                proc.wait(timeout=max(0.0, remaining))
            except subprocess.TimeoutExpired:
                return False
        return True

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, sig)
        for proc in self.alive():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    def stop(self) -> None:
        """SIGTERM (Locust writes its reports), then SIGKILL whatever is left; reap all."""
        if self.alive():
            self._signal_group(signal.SIGTERM)
            if not self.wait_all(self.cfg.kill_grace_s):
                self._signal_group(signal.SIGKILL)
                self.wait_all(10.0)
        elif self.pgid is not None:  # stragglers that outlived their parent in our group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, signal.SIGKILL)

    def close(self) -> None:
        for log in self.logs:
            with contextlib.suppress(OSError):
                log.close()


#: Locust's own output files in ``out_dir``, by their key in ``LoadResult.files``
_LOCUST_OUTPUTS = {
    "stats_csv": "locust_stats.csv",
    "history_csv": "locust_stats_history.csv",
    "failures_csv": "locust_failures.csv",
    "exceptions_csv": "locust_exceptions.csv",
    "html": "locust.html",
    "json": "locust.json",
}


def _locust_env(config: LoadConfig) -> dict[str, str]:
    env = dict(os.environ)
    env[ENV_VAR] = config.to_json()
    env["PYTHONUNBUFFERED"] = "1"
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def run_load(
    *,
    host: str,
    workload: Mapping[str, Any],
    load: Mapping[str, Any],
    seeded_users: int,
    out_dir: Path | str,
    on_event: EventCallback | None = None,
    locust_workers: int = 0,
    timeout_s: float | None = None,
    config: DriverConfig | None = None,
) -> LoadResult:
    """Drive *host* through the load steps with Locust; return the measured steps.

    *workload* is a scenario's ``workload`` section (``think_time``, ``mix``), *load* its
    ``load`` or ``quick`` section (``steps``, ``step_seconds``, ``warmup_seconds``, optional
    ``spawn_rate``), *seeded_users* how many seed users exist to log in as. Locust's logs and
    reports, ``events.jsonl`` and the acknowledged writes (``acks/``) go to *out_dir*.
    *on_event* is called on this thread with every event (see the module docstring); an
    exception from it stops the run and propagates.
    *locust_workers* > 0 runs a Locust master and that many workers. *timeout_s* bounds the
    whole run (default: from the plan, see :class:`DriverConfig`).

    Raises :class:`LoadgenError` if Locust fails to start, exits early, stalls or overruns.
    """
    cfg = config or DriverConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    locustfile = Path(cfg.locustfile) if cfg.locustfile else default_locustfile()
    overrides = {"acks_dir": str(out / "acks"), **dict(cfg.load_overrides)}
    load_cfg = LoadConfig.from_scenario(
        workload=workload, load=load, seeded_users=seeded_users, workers=locust_workers, **overrides
    )
    expected = load_cfg.expected_duration_s()
    limit = timeout_s if timeout_s is not None else expected * cfg.timeout_factor + cfg.timeout_margin_s

    events_path = out / "events.jsonl"
    for name in _LOCUST_OUTPUTS.values():  # a previous run's reports must not pass for this one's
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    if load_cfg.acks_dir:  # ... nor its acknowledged writes
        for stale in Path(load_cfg.acks_dir).glob("*.jsonl"):
            stale.unlink(missing_ok=True)
    steps: list[StepStats] = []
    warnings: list[str] = []
    started_at = time.time()
    t0 = time.monotonic()
    procs = _LocustProcesses(cfg=cfg, out_dir=out)
    state: dict[str, Any] = {"done": None, "cpu_at_measure": None, "first": False, "errors": []}

    def result(complete: bool) -> LoadResult:
        files: dict[str, Any] = {"events": str(events_path)}
        if load_cfg.acks_dir:
            files["acks"] = load_cfg.acks_dir
        if procs.log_paths:
            files["locust_log"] = str(procs.log_paths[0])
            if len(procs.log_paths) > 1:
                files["worker_logs"] = [str(p) for p in procs.log_paths[1:]]
        for key, name in _LOCUST_OUTPUTS.items():
            if (out / name).exists():
                files[key] = str(out / name)
        return LoadResult(
            steps=list(steps),
            out_dir=out,
            host=host,
            started_at=started_at,
            ended_at=time.time(),
            expected_duration_s=expected,
            loadgen_cpu_seconds=round(procs.cpu.sample(), 4),
            locust_workers=locust_workers,
            complete=complete,
            returncode=procs.master.returncode if procs.procs else None,
            files=files,
            warnings=list(warnings),
        )

    def fail(message: str) -> LoadgenError:
        return LoadgenError(message, result=result(False))

    common = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(locustfile),
        "--host",
        host,
        "--loglevel",
        cfg.loglevel,
        *cfg.extra_args,
    ]
    master_args = [*common, "--headless", "--only-summary", "--exit-code-on-error", "0"]
    if cfg.locust_csv:
        master_args += ["--csv", str(out / "locust")]
    if cfg.locust_html:
        master_args += ["--html", str(out / "locust.html")]
    if cfg.locust_json:
        master_args += ["--json-file", str(out / "locust")]
    port = 0
    if locust_workers > 0:
        port = free_port()
        master_args += [
            "--master",
            "--master-bind-host",
            "127.0.0.1",
            "--master-bind-port",
            str(port),
            "--expect-workers",
            str(locust_workers),
            "--expect-workers-max-wait",
            str(int(cfg.startup_timeout_s)),
        ]

    read_fd, write_fd = os.pipe()
    events: queue.Queue[dict[str, Any] | None] = queue.Queue()
    reader: _EventReader | None = None
    events_log = open(events_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in finally
    try:
        try:
            procs.spawn(
                master_args,
                env=_locust_env(load_cfg.replace(events_fd=write_fd)),
                log_name="locust.log",
                pass_fds=(write_fd,),
            )
        finally:
            os.close(write_fd)
        reader = _EventReader(read_fd, events)
        reader.start()
        worker_env = _locust_env(load_cfg)
        for k in range(locust_workers):
            procs.spawn(
                [*common, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
                env=worker_env,
                log_name=f"locust-worker-{k + 1}.log",
            )

        last_event = time.monotonic()
        while True:
            now = time.monotonic()
            if now - t0 > limit:
                raise fail(
                    f"load run exceeded its time limit of {limit:.0f} s (planned {expected:.0f} s); "
                    f"stopped Locust after {len(steps)} of {len(load_cfg.steps)} steps"
                )
            try:
                event = events.get(timeout=max(0.01, min(0.5, limit - (now - t0))))
            except queue.Empty:
                silent = time.monotonic() - last_event
                if not state["first"] and silent > cfg.startup_timeout_s:
                    raise fail(
                        f"Locust did not start within {cfg.startup_timeout_s:.0f} s; see {procs.log_paths[0]}"
                    ) from None
                if state["first"] and silent > cfg.stall_timeout_s:
                    raise fail(
                        f"no events from Locust for {silent:.0f} s (stalled?) after {len(steps)} "
                        f"of {len(load_cfg.steps)} steps; see {procs.log_paths[0]}"
                    ) from None
                continue
            if event is None:  # the master closed the pipe: it has exited
                break
            last_event = time.monotonic()
            state["first"] = True
            kind = event.get("event")
            if kind == "measure_start":
                state["cpu_at_measure"] = procs.cpu.sample()
            elif kind == "step_end":
                cpu_now = procs.cpu.sample()
                if state["cpu_at_measure"] is not None:
                    event["loadgen_cpu_seconds"] = round(cpu_now - state["cpu_at_measure"], 4)
                state["cpu_at_measure"] = None
                steps.append(StepStats.from_dict(event))
            elif kind == "warning":
                warnings.append(str(event.get("message", "")))
            elif kind == "error":
                state["errors"].append(str(event.get("message", "")))
            events_log.write(json.dumps(event, separators=(",", ":")) + "\n")
            events_log.flush()
            if on_event is not None:
                on_event(event)
            if kind == "done":
                state["done"] = event
                break

        done = state["done"]
        if done is not None:
            # Locust quits by itself after the last step and writes its reports
            if not procs.wait_all(cfg.exit_grace_s):
                warnings.append(f"Locust did not exit within {cfg.exit_grace_s:.0f} s after the last step; killed")
            procs.stop()
        else:
            with contextlib.suppress(subprocess.TimeoutExpired):
                procs.master.wait(timeout=cfg.kill_grace_s)
        code = procs.master.returncode
        if state["errors"]:
            raise fail(f"Locust run failed: {state['errors'][0]}")
        if done is None:
            reason = _last_line(procs.log_paths[0]) or "no output"
            if not steps and not state["first"]:
                raise fail(f"Locust failed to start (exit code {code}): {reason} [{procs.log_paths[0]}]")
            raise fail(
                f"Locust exited (code {code}) after {len(steps)} of {len(load_cfg.steps)} steps: "
                f"{reason} [{procs.log_paths[0]}]"
            )
        if not done.get("complete", False):
            raise fail(f"Locust stopped early after {len(steps)} of {len(load_cfg.steps)} steps [{procs.log_paths[0]}]")
        return result(True)
    finally:
        procs.stop()
        procs.close()
        events_log.close()
        if reader is not None:
            reader.join(timeout=2.0)
        else:
            with contextlib.suppress(OSError):
                os.close(read_fd)
