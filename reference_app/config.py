"""The reference app's configuration: one JSON object, one dataclass.

Every process of the reference app -- a uvicorn server, an arq worker -- is configured the same way:
the deployment puts a JSON object in the environment variable ``SCALESIM_APP_CONFIG`` and the process
calls :meth:`AppConfig.from_env`. The keys of the contract (see ``docs/CONTRACTS.md``) say which
behaviours of a stage are switched on: where sessions live, whether joins run in SQL or in the app,
which caches are used, where reads go, and whether charges are precomputed. Each flag is honoured on
its own; a scenario switches them on cumulatively, stage by stage.

The remaining fields are tuning values with defaults (rental rules, password cost, cache lifetimes,
worker polling). They live here rather than as constants scattered through the modules so that a
deployment, a test or a benchmark can change any of them in one place.

Validation is strict and early: a wrong type, an unknown key or an impossible combination (for
example a query cache without a key-value server) raises a ``ValueError`` with a one-line message
before any server socket is opened, so that a misconfigured deployment fails at start, loudly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

CONFIG_ENV_VAR = "SCALESIM_APP_CONFIG"
# A container deployment's key-value password, kept out of the config as PGPASSWORD keeps the
# database's: it fills in the key-value and cache URLs that carry none.
KEYVALUE_PASSWORD_ENV_VAR = "SCALESIM_KEYVALUE_PASSWORD"
# ...and its ops token for /api/_stats, so that no generated deployment file holds a secret.
STATS_TOKEN_ENV_VAR = "SCALESIM_STATS_TOKEN"
# A bearer token (RFC 6750's token68 characters), long enough not to be guessed.
STATS_TOKEN_MIN_CHARS = 16
_STATS_TOKEN = re.compile(rf"[A-Za-z0-9._~+/-]{{{STATS_TOKEN_MIN_CHARS},256}}")

_CHOICES: dict[str, tuple[str, ...]] = {
    "sessions": ("memory", "keyvalue"),
    "joins": ("sql", "app"),
    "reads": ("primary", "replicas"),
    "charges": ("computed", "precomputed"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class AppConfig:
    """Everything one process of the reference app needs to know.

    The first block mirrors the contract's keys; the second holds tuning values with defaults.
    """

    database_url: str
    server_name: str = "app"
    replica_urls: tuple[str, ...] = ()
    keyvalue_url: str | None = None
    # Where the query and profile caches live; the key-value server when not given.
    cache_url: str | None = None
    sessions: str = "memory"
    joins: str = "sql"
    query_cache: bool = False
    object_cache: bool = False
    reads: str = "primary"
    charges: str = "computed"
    pool_size: int = 10
    session_ttl_seconds: int = 3600
    query_cache_ttl_seconds: int = 60
    # The ops token /api/_stats asks for (`Authorization: Bearer <token>`); open to anyone when unset.
    stats_token: str | None = None

    # Rental rules (see reference_app.charges).
    max_open_rentals: int = 5
    late_after_days: int = 14
    late_fee_percent: int = 50
    # Catalog paging.
    default_per_page: int = 20
    max_per_page: int = 100
    # PBKDF2-SHA256 iterations for new password hashes; stored in each hash, so verification
    # follows whatever cost a hash was made with. Deliberately low: see docs/api.md.
    password_iterations: int = 1000
    # Lifetime of a cached user profile; workers rewrite it after every write of the user.
    profile_cache_ttl_seconds: int = 3600
    # How often each app process refreshes its view of every replica's replay position.
    replica_lsn_refresh_ms: int = 200
    # How long arq workers sleep between polls of an empty queue (arq's default is 500 ms).
    worker_poll_ms: int = 50
    # A separate cache server is optional: a call to it gives up after this long (connecting or
    # waiting for the answer), and after a failure the caches are skipped for cache_retry_ms before
    # one request tries again, so that requests fall back to the database at once.
    cache_timeout_ms: int = 250
    cache_retry_ms: int = 1000
    # The session store is required: a request waits for it at most this long (a hung server then
    # costs a clear 503, not a request that never ends).
    keyvalue_timeout_ms: int = 2000
    # A read on a replica gives up after this long (the primary answers it instead), and a replica
    # that failed is skipped for replica_retry_ms.
    replica_timeout_ms: int = 1000
    replica_retry_ms: int = 2000

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def needs_keyvalue(self) -> bool:
        """Whether any enabled behaviour keeps state in the key-value server."""
        return self.sessions == "keyvalue" or self.query_cache or self.object_cache or (self.charges == "precomputed")

    @property
    def cache_server_url(self) -> str | None:
        """Where the caches live: ``cache_url``, else the key-value server."""
        return self.cache_url or self.keyvalue_url

    @property
    def separate_cache_server(self) -> bool:
        """Whether the caches have a server of their own, which may fail without the sessions failing."""
        return self.cache_server_url is not None and self.cache_server_url != self.keyvalue_url

    @classmethod
    def from_mapping(cls, raw: Any) -> AppConfig:
        """Build a config from a decoded JSON object, rejecting unknown keys and wrong types."""
        if not isinstance(raw, dict):
            raise ValueError(f"{CONFIG_ENV_VAR} must be a JSON object, not {type(raw).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(f"unknown app config key(s): {', '.join(unknown)}")
        if "database_url" not in raw:
            raise ValueError("app config needs 'database_url'")
        values: dict[str, Any] = {}
        for name, value in raw.items():
            values[name] = _coerce(name, known[name].type, value)
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> AppConfig:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{CONFIG_ENV_VAR} is not valid JSON: {exc.msg} at position {exc.pos}") from None
        return cls.from_mapping(raw)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> AppConfig:
        """Read the config from ``SCALESIM_APP_CONFIG`` (or from ``environ`` when given)."""
        env = os.environ if environ is None else environ
        text = env.get(CONFIG_ENV_VAR)
        if not text:
            raise ValueError(f"{CONFIG_ENV_VAR} is not set: it must hold the app config as a JSON object")
        config = cls.from_json(text)
        if config.stats_token is None and env.get(STATS_TOKEN_ENV_VAR):
            config = config.replace(stats_token=env[STATS_TOKEN_ENV_VAR])
        password = env.get(KEYVALUE_PASSWORD_ENV_VAR)
        if not password:
            return config
        return config.replace(**{
            name: _with_password(url, password)
            for name in ("keyvalue_url", "cache_url")
            if (url := getattr(config, name)) and "://" in url and "@" not in url.split("://", 1)[1].split("/", 1)[0]
        })

    def to_json(self) -> str:
        """The JSON form accepted by :meth:`from_json` (handy for tests and deployments)."""
        data = dataclasses.asdict(self)
        data["replica_urls"] = list(self.replica_urls)
        return json.dumps(data)

    def replace(self, **changes: Any) -> AppConfig:
        return dataclasses.replace(self, **changes)


def _with_password(url: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://:{quote(password, safe='')}@{rest}"


def _coerce(name: str, annotation: Any, value: Any) -> Any:
    """Check one JSON value against its field's declared type (annotations are strings here)."""
    kind = str(annotation)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"app config {name!r} must be true or false, not {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"app config {name!r} must be an integer, not {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError(f"app config {name!r} must be a string, not {value!r}")
        return value
    if kind == "str | None":
        if value is not None and not isinstance(value, str):
            raise ValueError(f"app config {name!r} must be a string or null, not {value!r}")
        return value
    if kind == "tuple[str, ...]":
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValueError(f"app config {name!r} must be a list of strings, not {value!r}")
        return tuple(value)
    raise ValueError(f"app config {name!r} has an unsupported type {kind}")  # pragma: no cover


def _validate(config: AppConfig) -> None:
    for name, allowed in _CHOICES.items():
        value = getattr(config, name)
        if value not in allowed:
            raise ValueError(f"app config {name!r} must be one of {', '.join(allowed)}, not {value!r}")
    for url_name in ("database_url",):
        url = getattr(config, url_name)
        if not isinstance(url, str) or not url.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"app config {url_name!r} must be a postgresql:// URL, not {url!r}")
    for url in config.replica_urls:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"app config 'replica_urls' must hold postgresql:// URLs, not {url!r}")
    for url_name in ("keyvalue_url", "cache_url"):
        server_url = getattr(config, url_name)
        if server_url is not None and not server_url.startswith(("redis://", "rediss://", "valkey://", "unix://")):
            raise ValueError(f"app config {url_name!r} must be a redis:// URL, not {server_url!r}")
    if not config.server_name:
        raise ValueError("app config 'server_name' must not be empty")
    if config.stats_token is not None and _STATS_TOKEN.fullmatch(config.stats_token) is None:
        raise ValueError(
            f"app config 'stats_token' must be {STATS_TOKEN_MIN_CHARS} to 256 characters of A-Z a-z 0-9 - . _ ~ + /"
        )
    positive = (
        "pool_size",
        "session_ttl_seconds",
        "query_cache_ttl_seconds",
        "max_open_rentals",
        "default_per_page",
        "max_per_page",
        "password_iterations",
        "profile_cache_ttl_seconds",
        "replica_lsn_refresh_ms",
        "worker_poll_ms",
        "cache_timeout_ms",
        "cache_retry_ms",
        "keyvalue_timeout_ms",
        "replica_timeout_ms",
        "replica_retry_ms",
    )
    for name in positive:
        if getattr(config, name) < 1:
            raise ValueError(f"app config {name!r} must be at least 1, not {getattr(config, name)}")
    for name in ("late_after_days", "late_fee_percent"):
        if getattr(config, name) < 0:
            raise ValueError(f"app config {name!r} must not be negative, not {getattr(config, name)}")
    if config.default_per_page > config.max_per_page:
        raise ValueError("app config 'default_per_page' must not exceed 'max_per_page'")
    if config.needs_keyvalue and not config.keyvalue_url:
        wanted = [
            label
            for label, on in (
                ("sessions: keyvalue", config.sessions == "keyvalue"),
                ("query_cache", config.query_cache),
                ("object_cache", config.object_cache),
                ("charges: precomputed", config.charges == "precomputed"),
            )
            if on
        ]
        raise ValueError(f"app config needs 'keyvalue_url' for {', '.join(wanted)}")
    if config.reads == "replicas" and not config.replica_urls:
        raise ValueError("app config 'reads: replicas' needs at least one entry in 'replica_urls'")
