"""A stage as containers: the engine-neutral plan shared by the compose and Kubernetes writers.

The local deployment (`scalesim.deploy.local`) runs each node of a stage as a process on loopback
ports. A container deployment runs the same nodes, one container each, and finds them by name
instead of by port: ``primary``, ``replica1`` .. ``replicaR``, ``keyvalue``, ``cache``, ``app1`` .. ``appN``,
``worker1`` .. ``workerW``, ``balancer``. This module holds everything both container formats must
agree on, so that a compose file and a set of Kubernetes manifests for the same stage describe the
same topology as ``scalesim up`` does:

* the images (official PostgreSQL, Redis and Caddy images, pinned by digest, and the project's own
  image for app servers, workers and the seeder);
* the app configuration (`app_config`), built like ``LocalDeployment._build_app_config`` with
  service host names in place of loopback ports and the same tuning values;
* the Caddyfile of the balancer (`balancer_caddyfile`), with the directives of the local one;
* PostgreSQL's server settings (`postgres_server_args`, from the same `PostgresSettings`), the
  primary's init script that creates the replication role, and the replica's start script that
  copies the primary with ``pg_basebackup -R`` into an empty data folder;
* the commands of the app server, the worker and the seeder (docs/CONTRACTS.md).

Passwords never appear in what is generated: containers read them from environment variables
(compose interpolates them, Kubernetes takes them from a Secret), and the app finds its database
password in ``PGPASSWORD``, which asyncpg reads when the URL has none, and the key-value servers'
in ``SCALESIM_KEYVALUE_PASSWORD``, which the app puts into its key-value and cache URLs. The URLs
in ``SCALESIM_APP_CONFIG`` therefore look exactly like the local ones, only with other hosts and
without passwords. The key-value servers (``keyvalue`` and ``cache``) read theirs from
``REDISCLI_AUTH``, the variable ``redis-cli`` (their health check) authenticates with, and take it
as configuration on standard input, not on their command line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

from scalesim.components.balancer import BalancerSettings, caddyfile
from scalesim.components.postgres import DATABASE, SUPERUSER, PostgresSettings
from scalesim.deploy.appconfig import app_config as local_app_config
from scalesim.deploy.local import DeploymentSettings
from scalesim.topology import DataSpec, Scenario

# Official images, pinned by tag and by the digest of their multi-platform index, as recorded by
# docker-library/repo-info (postgres and redis: the September 2026 builds; caddy: June 2026).
# `docker buildx imagetools inspect IMAGE:TAG` prints the current digest when it is time to move.
POSTGRES_IMAGE = "postgres:18.6-bookworm@sha256:3725f4e2499eef5134592b3b4ab79a543ed7f8e533b05b5b637af926630f6650"
# Redis 7.2 is the release Valkey forked from (the local deployment runs Valkey): same protocol,
# same commands for everything the app and arq use.
KEYVALUE_IMAGE = "redis:7.2.16-bookworm@sha256:0637954999d01b7c9ce9167db2da50656e2590d3b884f1c600c5f63bb6e6773c"
BALANCER_IMAGE = "caddy:2.11.4-alpine@sha256:ad27e531c8b286ff153c0e6e16587a1583e4111bb58c4d83bd73d6d3ef0a0ce1"
#: The project's image (see the Dockerfile); deployments name the tag they were built or pushed with.
APP_IMAGE = "scalesim:latest"

#: Where the official postgres:18 image keeps its data folder (its PGDATA default, set explicitly).
PGDATA = "/var/lib/postgresql/18/docker"
#: The volume of the postgres image; the data folder lives inside it.
PG_VOLUME = "/var/lib/postgresql"
#: Files mounted into the postgres containers.
PRIMARY_INIT_DIR = "/docker-entrypoint-initdb.d"
PRIMARY_INIT_FILE = "10-replication-role.sh"
REPLICA_SCRIPT_DIR = "/opt/scalesim"
REPLICA_SCRIPT_FILE = "replica-start.sh"

#: Environment variables a container deployment reads (documented in docs/deploy.md).
DB_PASSWORD_VARIABLE = "SCALESIM_DB_PASSWORD"
REPLICATION_PASSWORD_VARIABLE = "SCALESIM_REPLICATION_PASSWORD"
HTTP_PORT_VARIABLE = "SCALESIM_HTTP_PORT"
#: The key-value servers' password: the name the app reads (reference_app.config) and, in compose,
#: the variable on the host that holds it.
KEYVALUE_PASSWORD_VARIABLE = "SCALESIM_KEYVALUE_PASSWORD"
STATS_TOKEN_VARIABLE = "SCALESIM_STATS_TOKEN"
#: The same password inside a key-value container, where redis-cli reads it too.
KEYVALUE_AUTH_VARIABLE = "REDISCLI_AUTH"


@dataclass(frozen=True, kw_only=True)
class Images:
    app: str = APP_IMAGE
    postgres: str = POSTGRES_IMAGE
    keyvalue: str = KEYVALUE_IMAGE
    balancer: str = BALANCER_IMAGE


@dataclass(frozen=True, kw_only=True)
class ContainerSettings:
    """Ports, names and images of a container deployment; tuning values come from the local one."""

    images: Images = field(default_factory=Images)
    app_port: int = 8000
    balancer_port: int = 8080
    postgres_port: int = 5432
    keyvalue_port: int = 6379
    #: The port published on the host (127.0.0.1 only) unless SCALESIM_HTTP_PORT says otherwise.
    published_port: int = 8080
    database: str = DATABASE
    db_user: str = SUPERUSER
    replication_user: str = "replicator"
    #: Pool size, session and cache lifetimes, PostgreSQL and Caddy settings: the same as `scalesim up`.
    tuning: DeploymentSettings = field(default_factory=DeploymentSettings)

    @property
    def postgres(self) -> PostgresSettings:
        return self.tuning.postgres

    @property
    def balancer(self) -> BalancerSettings:
        return self.tuning.balancer


@dataclass(frozen=True, kw_only=True)
class Hosts:
    """Where each server of a stage is reached from inside the deployment."""

    primary: str
    replicas: tuple[str, ...]
    keyvalue: str | None
    cache: str | None = None


# -- names ---------------------------------------------------------------------------------------

def numbered(prefix: str, count: int) -> list[str]:
    """``app1 .. appN``: the names the local deployment gives its nodes."""
    return [f"{prefix}{index}" for index in range(1, count + 1)]


def app_names(scenario: Scenario) -> list[str]:
    return numbered("app", scenario.nodes.app.count)


def replica_names(scenario: Scenario) -> list[str]:
    return numbered("replica", scenario.nodes.replicas.count)


def worker_names(scenario: Scenario) -> list[str]:
    return numbered("worker", scenario.nodes.workers.count)


def has_balancer(scenario: Scenario) -> bool:
    return scenario.nodes.balancer.count > 0


def has_keyvalue(scenario: Scenario) -> bool:
    return scenario.nodes.keyvalue.count > 0


def has_cache(scenario: Scenario) -> bool:
    return scenario.nodes.cache.count > 0


def keyvalue_eviction_policy(scenario: Scenario) -> str:
    """As the local deployment: sessions, marks and jobs are never evicted, unless the caches share the server."""
    shares_caches = not has_cache(scenario) and (scenario.app.query_cache or scenario.app.object_cache)
    return "allkeys-lru" if shares_caches else "noeviction"


def dns_label(text: str) -> str:
    """`text` as a lower-case DNS label (a compose project or a Kubernetes label value)."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return label[:63].rstrip("-") or "scalesim"


# -- the app's configuration ----------------------------------------------------------------------

def database_url(*, host: str, settings: ContainerSettings) -> str:
    """A URL without a password: the app and the seeder take it from PGPASSWORD."""
    return f"postgresql://{settings.db_user}@{host}:{settings.postgres_port}/{settings.database}"


def keyvalue_url(*, host: str, settings: ContainerSettings) -> str:
    return f"redis://{host}:{settings.keyvalue_port}/0"


def app_config(scenario: Scenario, *, hosts: Hosts, settings: ContainerSettings) -> dict[str, Any]:
    """SCALESIM_APP_CONFIG without ``server_name``, as the local deployment builds it, with service hosts.

    Without the ops token too: a secret, it reaches the app as ``SCALESIM_STATS_TOKEN`` from the
    environment (compose) or a Secret (Kubernetes), like the passwords."""
    config = local_app_config(
        scenario, database_url=database_url(host=hosts.primary, settings=settings),
        replica_urls=[database_url(host=host, settings=settings) for host in hosts.replicas],
        keyvalue_url=keyvalue_url(host=hosts.keyvalue, settings=settings) if hosts.keyvalue else None,
        cache_url=keyvalue_url(host=hosts.cache, settings=settings) if hosts.cache else None,
        settings=settings.tuning)
    config.pop("stats_token", None)
    return config


# -- commands ------------------------------------------------------------------------------------

def app_server_command(*, port: int) -> list[str]:
    """The contract's app server command, listening on every interface of its container."""
    return ["python", "-m", "uvicorn", "reference_app.app:create_app", "--factory",
            "--host", "0.0.0.0", "--port", str(port),
            "--no-access-log", "--log-level", "warning", "--timeout-graceful-shutdown", "3"]


WORKER_COMMAND = ["python", "-m", "reference_app.workers"]


def seed_command(data: DataSpec, *, url: str) -> list[str]:
    return ["python", "-m", "reference_app.seed", "--database-url", url,
            "--users", str(data.users), "--authors", str(data.authors), "--books", str(data.books),
            "--rentals-per-user", str(data.rentals_per_user), "--seed", str(data.seed)]


def app_health_command(*, port: int) -> list[str]:
    """A probe for the slim app image, which has Python but neither curl nor wget."""
    url = f"http://127.0.0.1:{port}/healthz"
    probe = ("import sys, urllib.request; "
             f"sys.exit(0 if urllib.request.urlopen('{url}', timeout=2).status == 200 else 1)")
    return ["python", "-c", probe]


def postgres_ready_command(*, settings: ContainerSettings) -> list[str]:
    """Ready once the final server accepts TCP (the image's init phase listens on a socket only)."""
    return ["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(settings.postgres_port),
            "-U", settings.db_user, "-d", settings.database]


def keyvalue_server_command(*, eviction_policy: str = "noeviction") -> list[str]:
    """The key-value server as the local deployment runs Valkey: memory only, no snapshots, the same
    memory limit and what to do when it is reached (the cache server: evict least recently used keys),
    and a password.

    The password (``REDISCLI_AUTH``) reaches the server as configuration on standard input
    (``redis-server -``), so it is not on any command line. The image's entrypoint still starts the
    server, dropping root for the ``redis`` user as it does by default.
    """
    script = (f"exec docker-entrypoint.sh redis-server - --save '' --appendonly no --maxmemory 256mb "
              f"--maxmemory-policy {eviction_policy} <<EOF\n"
              f"requirepass ${{{KEYVALUE_AUTH_VARIABLE}:?{KEYVALUE_AUTH_VARIABLE} must hold the password}}\n"
              "EOF\n")
    return ["sh", "-c", script]


# -- PostgreSQL ----------------------------------------------------------------------------------

def postgres_server_args(settings: ContainerSettings) -> list[str]:
    """``-c name=value`` pairs: the local server settings, listening on the container's network.

    The unix socket stays on (the image's init phase talks to its temporary server through it).
    """
    local_args = settings.postgres.argv(port=settings.postgres_port)
    values = dict(pair.split("=", 1) for pair in local_args[1::2])
    values["listen_addresses"] = "*"
    values.pop("unix_socket_directories", None)
    args: list[str] = []
    for name, value in values.items():
        args += ["-c", f"{name}={value}"]
    return args


#: Run once by the postgres image when it initializes the primary's data folder (sourced by its
#: entrypoint, which has POSTGRES_USER, POSTGRES_DB and PGDATA set): a role that may stream the
#: WAL, and a pg_hba.conf line that lets it in from other hosts with a password.
PRIMARY_INIT_SCRIPT = """\
# scalesim: the replication role and its pg_hba.conf entry (run once, when the data folder is made)
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \\
    -v role="$SCALESIM_REPLICATION_USER" -v password="$SCALESIM_REPLICATION_PASSWORD" <<'SQL'
CREATE ROLE :"role" WITH REPLICATION LOGIN PASSWORD :'password';
SQL
echo "host replication $SCALESIM_REPLICATION_USER all scram-sha-256" >> "$PGDATA/pg_hba.conf"
"""

#: A replica's start: wait for the primary, copy it into an empty data folder with pg_basebackup
#: (``-R`` writes standby.signal and primary_conninfo; ``-C -S`` makes its replication slot), then,
#: when given arguments, run ``postgres`` with them. Without arguments it only makes the copy (the
#: Kubernetes init container). A leftover slot of the same name, from a replica whose data folder
#: was lost, is dropped first so that ``-C`` can make it again.
REPLICA_START_SCRIPT = """\
#!/bin/bash
# scalesim: make this replica a streaming copy of the primary, then (with arguments) run postgres.
set -euo pipefail
: "${PRIMARY_HOST:?}" "${PRIMARY_PORT:?}" "${REPLICA_NAME:?}" "${PGDATA:?}"
: "${REPLICATION_USER:?}" "${REPLICATION_PASSWORD:?}"
export PGPASSWORD="$REPLICATION_PASSWORD"
slot="slot_${REPLICA_NAME//[^a-z0-9_]/_}"

waited=0
until pg_isready -q -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U "$REPLICATION_USER" -d postgres; do
    if [ "$waited" -ge "${PRIMARY_WAIT_SECONDS:-300}" ]; then
        echo "replica $REPLICA_NAME: primary $PRIMARY_HOST:$PRIMARY_PORT not ready after ${waited}s" >&2
        exit 1
    fi
    sleep 1
    waited=$((waited + 1))
done

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    echo "replica $REPLICA_NAME: copying $PRIMARY_HOST with pg_basebackup (slot $slot)" >&2
    psql -q -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U "$REPLICATION_USER" -d postgres -v ON_ERROR_STOP=1 \\
        -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
            WHERE slot_name = '$slot' AND NOT active" >/dev/null
    mkdir -p "$PGDATA"
    rm -rf "${PGDATA:?}"/*
    pg_basebackup \\
        -d "host=$PRIMARY_HOST port=$PRIMARY_PORT user=$REPLICATION_USER application_name=$REPLICA_NAME" \\
        -D "$PGDATA" -R -X stream -C -S "$slot" -c fast
    chmod 700 "$PGDATA"
fi

if [ "$#" -gt 0 ]; then
    exec postgres "$@"
fi
"""


def replica_environment(*, settings: ContainerSettings, primary: str = "primary") -> dict[str, str]:
    """What REPLICA_START_SCRIPT reads, except REPLICA_NAME and REPLICATION_PASSWORD (set by each format)."""
    return {
        "PGDATA": PGDATA,
        "PRIMARY_HOST": primary,
        "PRIMARY_PORT": str(settings.postgres_port),
        "REPLICATION_USER": settings.replication_user,
    }


# -- the balancer ----------------------------------------------------------------------------------

def balancer_caddyfile(*, port: int, upstreams: list[str], settings: BalancerSettings) -> str:
    """The local balancer's Caddyfile for a container: upstreams are ``host:port`` service names."""
    return caddyfile(port=port, upstreams=upstreams, settings=settings, bind=None)


def cpu_text(cores: float) -> str:
    """A budget in cores as compose writes it: ``0.25``."""
    return f"{cores:g}"


def millicores(cores: float) -> str:
    """A budget in cores as Kubernetes writes it: ``250m``."""
    return f"{max(1, round(cores * 1000))}m"


# -- YAML ------------------------------------------------------------------------------------------

class _BlockStringDumper(yaml.SafeDumper):
    """The safe dumper, writing multi-line strings (scripts, the Caddyfile) as ``|`` blocks."""


def _represent_string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockStringDumper.add_representer(str, _represent_string)


def dump_yaml(data: Any) -> str:
    """`data` as YAML, keys in the order given (``yaml.safe_dump`` with readable scripts)."""
    text: str = yaml.dump(data, Dumper=_BlockStringDumper, sort_keys=False, default_flow_style=False,
                          width=120, allow_unicode=True)
    return text


def dump_yaml_documents(documents: Iterable[Any]) -> str:
    text: str = yaml.dump_all(documents, Dumper=_BlockStringDumper, sort_keys=False, default_flow_style=False,
                              width=120, allow_unicode=True, explicit_start=True)
    return text
