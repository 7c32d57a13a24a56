"""AppConfig: the contract's keys, defaults, and one-line errors for everything invalid."""

from __future__ import annotations

import json
import secrets

import pytest

from reference_app.config import CONFIG_ENV_VAR, AppConfig
from scalesim.deploy.appconfig import app_config
from scalesim.deploy.local import DeploymentSettings
from scalesim.topology import load_scenario

DB = "postgresql://scalesim@127.0.0.1:5432/bookrental"
KV = "redis://127.0.0.1:6379/0"


def env(**values: object) -> dict[str, str]:
    return {CONFIG_ENV_VAR: json.dumps(values)}


def test_stage0_defaults() -> None:
    config = AppConfig.from_env(env(database_url=DB, server_name="app-1"))
    assert config.server_name == "app-1"
    assert (config.sessions, config.joins, config.reads, config.charges) == ("memory", "sql", "primary", "computed")
    assert not config.query_cache and not config.object_cache
    assert config.replica_urls == ()


def test_every_contract_key_is_accepted() -> None:
    config = AppConfig.from_env(
        env(
            server_name="app-2",
            database_url=DB,
            replica_urls=[DB.replace("5432", "5433")],
            keyvalue_url=KV,
            sessions="keyvalue",
            joins="app",
            query_cache=True,
            object_cache=True,
            reads="replicas",
            charges="precomputed",
            pool_size=4,
            session_ttl_seconds=60,
            query_cache_ttl_seconds=5,
        )
    )
    assert config.replica_urls == (DB.replace("5432", "5433"),)
    assert config.pool_size == 4


def test_round_trip_through_json() -> None:
    config = AppConfig(database_url=DB, keyvalue_url=KV, sessions="keyvalue", replica_urls=(DB,))
    assert AppConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "needs 'database_url'"),
        ({"database_url": DB, "colour": "red"}, "unknown app config key"),
        ({"database_url": "mysql://x"}, "postgresql:// URL"),
        ({"database_url": DB, "sessions": "cookies"}, "'sessions' must be one of memory, keyvalue"),
        ({"database_url": DB, "joins": "sometimes"}, "'joins' must be one of"),
        ({"database_url": DB, "pool_size": 0}, "'pool_size' must be at least 1"),
        ({"database_url": DB, "pool_size": "10"}, "'pool_size' must be an integer"),
        ({"database_url": DB, "pool_size": True}, "'pool_size' must be an integer"),
        ({"database_url": DB, "query_cache": "yes"}, "'query_cache' must be true or false"),
        ({"database_url": DB, "replica_urls": "postgresql://x"}, "must be a list of strings"),
        ({"database_url": DB, "sessions": "keyvalue"}, "needs 'keyvalue_url' for sessions: keyvalue"),
        ({"database_url": DB, "query_cache": True}, "needs 'keyvalue_url' for query_cache"),
        ({"database_url": DB, "reads": "replicas"}, "needs at least one entry in 'replica_urls'"),
        ({"database_url": DB, "keyvalue_url": "http://x"}, "redis:// URL"),
        ({"database_url": DB, "stats_token": "too-short"}, "'stats_token' must be 16 to 256 characters"),
        ({"database_url": DB, "stats_token": "sixteen chars or more, spaced"}, "'stats_token' must be"),
        ({"database_url": DB, "stats_token": 12345678901234567890}, "'stats_token' must be a string or null"),
    ],
)
def test_invalid_values_are_refused_with_one_line(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        AppConfig.from_env(env(**values))
    assert "\n" not in str(caught.value)


def test_missing_and_malformed_environment() -> None:
    with pytest.raises(ValueError, match="is not set"):
        AppConfig.from_env({})
    with pytest.raises(ValueError, match="not valid JSON"):
        AppConfig.from_env({CONFIG_ENV_VAR: "{nope"})
    with pytest.raises(ValueError, match="must be a JSON object"):
        AppConfig.from_env({CONFIG_ENV_VAR: "[]"})


def test_the_stats_token_is_optional() -> None:
    assert AppConfig.from_env(env(database_url=DB)).stats_token is None
    token = secrets.token_urlsafe(32)
    config = AppConfig.from_env(env(database_url=DB, stats_token=token))
    assert config.stats_token == token
    assert AppConfig.from_json(config.to_json()) == config


def test_each_deployment_gets_its_own_stats_token() -> None:
    scenario = load_scenario("stage1")
    made = [
        app_config(scenario, database_url=DB, replica_urls=[], keyvalue_url=KV, settings=DeploymentSettings())
        for _ in range(2)
    ]
    tokens = [config["stats_token"] for config in made]
    assert tokens[0] != tokens[1] and all(len(token) >= 43 for token in tokens)
    for config in made:  # the app accepts what the deployment writes
        assert AppConfig.from_mapping({**config, "server_name": "app1"}).stats_token == config["stats_token"]


def test_container_secrets_come_from_the_environment() -> None:
    """Deployment files hold no secret: the key-value password and the ops token arrive as variables."""
    config = {"server_name": "app1", "database_url": "postgresql://scalesim@primary:5432/bookrental",
              "keyvalue_url": "redis://keyvalue:6379/0", "sessions": "keyvalue"}
    environ = {CONFIG_ENV_VAR: json.dumps(config), "SCALESIM_KEYVALUE_PASSWORD": "kv-secret",
               "SCALESIM_STATS_TOKEN": "ops-token-0123456789"}
    loaded = AppConfig.from_env(environ)
    assert loaded.keyvalue_url == "redis://:kv-secret@keyvalue:6379/0"
    assert loaded.stats_token == "ops-token-0123456789"
    # a token in the config itself wins over the environment
    explicit = AppConfig.from_env({**environ, CONFIG_ENV_VAR: json.dumps({**config, "stats_token": "t" * 20})})
    assert explicit.stats_token == "t" * 20
    with pytest.raises(ValueError, match="stats_token"):
        AppConfig.from_env({**environ, "SCALESIM_STATS_TOKEN": "short"})
