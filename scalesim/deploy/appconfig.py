"""The app's configuration for a stage (SCALESIM_APP_CONFIG), the same for every kind of deployment.

Local processes, compose services and Kubernetes pods differ only in where the databases and the
key-value and cache servers are; the stage's behaviour flags and the tuning values come from here
alone. Each call draws a new ops token (``stats_token``), so every deployment's counters are its own to read.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from scalesim.topology import Scenario

if TYPE_CHECKING:
    from scalesim.deploy.local import DeploymentSettings


def app_config(scenario: Scenario, *, database_url: str, replica_urls: Sequence[str], keyvalue_url: str | None,
               settings: DeploymentSettings, cache_url: str | None = None) -> dict[str, Any]:
    """SCALESIM_APP_CONFIG without ``server_name`` (each node adds its own)."""
    behaviour = scenario.app
    return {
        "database_url": database_url,
        "replica_urls": list(replica_urls),
        "keyvalue_url": keyvalue_url,
        # The caches' own server (stage3+); without one the caches share the key-value server.
        "cache_url": cache_url,
        "sessions": behaviour.sessions,
        "joins": behaviour.joins,
        "query_cache": behaviour.query_cache,
        "object_cache": behaviour.object_cache,
        "reads": behaviour.reads,
        "charges": behaviour.charges,
        "pool_size": settings.pool_size,
        "session_ttl_seconds": settings.session_ttl_seconds,
        "query_cache_ttl_seconds": settings.query_cache_ttl_seconds,
        # Each deployment gets its own ops token for /api/_stats; the runner reads it from here.
        "stats_token": secrets.token_urlsafe(32),
    }
