"""The key-value server answers Redis commands and forgets nothing mid-run."""

from __future__ import annotations

from pathlib import Path

import redis

from scalesim.components.binaries import find_binaries
from scalesim.components.keyvalue import start_keyvalue
from scalesim.components.process import free_port


def test_keyvalue_round_trip(keyvalue_url: str) -> None:
    client = redis.Redis.from_url(keyvalue_url)
    try:
        client.set("scalesim:test", "ok", ex=30)
        assert client.get("scalesim:test") == b"ok"
        assert client.config_get("bind")["bind"] == "127.0.0.1"
    finally:
        client.delete("scalesim:test")
        client.close()


def test_a_persistent_server_keeps_what_it_acknowledged_across_a_crash(tmp_path: Path) -> None:
    """The session store's promise: a SIGKILL and restart of the process loses no acknowledged write;
    a cache server keeps nothing."""
    binary = find_binaries("embedded").keyvalue_server
    for persistent in (True, False):
        server = start_keyvalue(binary=binary, run_dir=tmp_path / str(persistent), port=free_port(),
                                persistent=persistent)
        try:
            client = redis.Redis.from_url(server.url)
            for index in range(200):
                client.set(f"session:{index}", index)
            client.close()
            server.process.kill()  # no shutdown, no save: a crash
            server.process.start()
            server.process.wait_ready(lambda s=server: _answers(s.url), timeout=15)
            client = redis.Redis.from_url(server.url)
            kept = client.dbsize()
            client.close()
            assert kept == (200 if persistent else 0), (persistent, kept)
        finally:
            server.stop()


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False
