"""The key-value server answers Redis commands and forgets nothing mid-run."""

from __future__ import annotations

import redis


def test_keyvalue_round_trip(keyvalue_url: str) -> None:
    client = redis.Redis.from_url(keyvalue_url)
    try:
        client.set("scalesim:test", "ok", ex=30)
        assert client.get("scalesim:test") == b"ok"
        assert client.config_get("bind")["bind"] == "127.0.0.1"
    finally:
        client.delete("scalesim:test")
        client.close()
