"""Process management: clear errors for busy ports and missing binaries; stopping kills the whole group."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import psutil
import pytest

from scalesim.components.process import ManagedProcess, ensure_port_free, free_port, run_checked
from scalesim.errors import ComponentError


def test_port_in_use_is_reported() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ComponentError, match=f"app1: port {port} on 127.0.0.1 is already in use"):
            ensure_port_free(port, role="app1")
    ensure_port_free(free_port(), role="app1")


def test_missing_binary_is_reported(tmp_path: Path) -> None:
    process = ManagedProcess(name="ghost", argv=["/nonexistent/ghost-server"], log_path=tmp_path / "ghost.log")
    with pytest.raises(ComponentError, match="ghost: binary not found: /nonexistent/ghost-server"):
        process.start()
    with pytest.raises(ComponentError, match="binary not found"):
        run_checked(["/nonexistent/initdb"], what="initdb", log_path=tmp_path / "x.log")


def test_failing_command_reports_its_last_output_line(tmp_path: Path) -> None:
    with pytest.raises(ComponentError, match=r"setup failed \(exit 3\): it went wrong"):
        run_checked([sys.executable, "-c", "print('it went wrong'); raise SystemExit(3)"], what="setup",
                    log_path=tmp_path / "setup.log")


def test_stop_kills_forked_children(tmp_path: Path) -> None:
    script = ("import subprocess, sys, time\n"
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              "print('ready', flush=True)\n"
              "time.sleep(60)\n")
    process = ManagedProcess(name="parent", argv=[sys.executable, "-c", script], log_path=tmp_path / "p.log")
    process.start()
    process.wait_ready(lambda: "ready" in (tmp_path / "p.log").read_text(), timeout=10)
    assert process.pid is not None
    children = psutil.Process(process.pid).children(recursive=True)
    assert children
    process.stop()
    time.sleep(0.1)
    assert not process.alive()
    assert not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in children)


def test_process_dying_during_start_up_is_reported(tmp_path: Path) -> None:
    process = ManagedProcess(name="flaky", argv=[sys.executable, "-c", "print('config is broken')"],
                             log_path=tmp_path / "flaky.log")
    process.start()
    with pytest.raises(ComponentError, match="flaky exited during start-up: config is broken"):
        process.wait_ready(lambda: False, timeout=10)
