"""Starting, watching and stopping server processes.

Every server runs in its own process group (``start_new_session``), so stopping it stops every
process it forked (PostgreSQL's backends, uvicorn's workers) and a Ctrl-C typed at the terminal
reaches scalesim alone, which then stops its servers in order. Output goes to a log file in the run
folder. Ports are chosen free on 127.0.0.1, and a port asked for explicitly is checked first, so a
clash is reported as such rather than as a server that died mysteriously.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from scalesim.errors import ComponentError
from scalesim.measure.budgets import CpuGroup

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def ensure_port_free(port: int, *, role: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            raise ComponentError(f"{role}: port {port} on {LOOPBACK} is already in use") from None


def port_accepts(port: int, *, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def http_ok(url: str, *, timeout: float = 0.5) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback only)
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass(kw_only=True)
class ManagedProcess:
    """One server process (and its process group), its log file and how to stop it."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    user: str | int | None = None
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 10.0
    cpu_group: CpuGroup | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            try:
                self.popen = subprocess.Popen(
                    list(self.argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=dict(self.env) if self.env is not None else None, cwd=self.cwd,
                    start_new_session=True, user=self.user,
                    preexec_fn=self.cpu_group.join_current_process if self.cpu_group is not None else None,
                )
            except FileNotFoundError:
                raise ComponentError(f"{self.name}: binary not found: {self.argv[0]}") from None
            except PermissionError as exc:
                raise ComponentError(f"{self.name}: cannot run {self.argv[0]}: {exc.strerror}") from None
            except subprocess.SubprocessError as exc:  # the pre-exec join of the CPU group failed
                raise ComponentError(f"{self.name}: could not start: {exc}") from None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_ready(self, check: Callable[[], bool], *, timeout: float, interval: float = 0.02) -> None:
        """Poll `check` until it holds; fail with the log's last line if the process dies or stalls."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise ComponentError(f"{self.name} exited during start-up: {self.last_log_line()}")
            if check():
                return
            time.sleep(interval)
        raise ComponentError(f"{self.name} was not ready after {timeout:.0f} s: {self.last_log_line()}")

    def last_log_line(self) -> str:
        try:
            lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return "(no log)"
        return lines[-1].strip()[:300] if lines else f"(empty log {self.log_path})"

    def tree_pids(self) -> list[int]:
        """The process and every descendant: PostgreSQL's backends leave the postmaster's process group
        (each calls setsid), so signalling the group alone would miss them."""
        if self.popen is None:
            return []
        try:
            root = psutil.Process(self.popen.pid)
            return [root.pid, *(child.pid for child in root.children(recursive=True))]
        except psutil.Error:
            return []

    def signal_tree(self, sig: int) -> int:
        """Send `sig` to the process group and to every descendant; returns how many processes got it."""
        pids = self.tree_pids()
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        return len(pids)

    def kill(self) -> None:
        """A crash: SIGKILL to every process of the server at once, then reap the leader."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.signal_tree(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)

    def stop(self) -> None:
        """Stop the process group: the stop signal first, SIGKILL after `stop_timeout`."""
        if self.popen is None:
            return
        pgid = self.popen.pid
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, self.stop_signal)
            # A paused server (a pause fault) acts on the stop signal only once it runs again.
            self.signal_tree(signal.SIGCONT)
            try:
                self.popen.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
                self.popen.wait(timeout=5)
        # Children that outlived their leader (a forked worker) are still in the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def run_checked(argv: Sequence[str], *, what: str, log_path: Path, env: Mapping[str, str] | None = None,
                user: str | int | None = None, timeout: float = 120.0) -> None:
    """Run a short command to completion (initdb, pg_basebackup), its output appended to a log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        try:
            done = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                  env=dict(env) if env is not None else None, user=user, timeout=timeout,
                                  start_new_session=True, check=False)
        except FileNotFoundError:
            raise ComponentError(f"{what}: binary not found: {argv[0]}") from None
        except subprocess.TimeoutExpired:
            raise ComponentError(f"{what} took longer than {timeout:.0f} s (log: {log_path})") from None
    if done.returncode != 0:
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
        tail = lines[-1].strip() if lines else "no output"
        raise ComponentError(f"{what} failed (exit {done.returncode}): {tail}")
