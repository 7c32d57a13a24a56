"""A background worker outlives a crash of the key-value server holding its job queue.

Killing the key-value server (a fault, or a real crash) used to end the worker with a connection
error, leaving the queue unattended after the server came back: precomputed charges and profile
refreshes stopped for good. The worker now waits and reconnects.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from arq.connections import RedisSettings, create_pool

from reference_app.config import CONFIG_ENV_VAR
from scalesim.components.binaries import find_binaries
from scalesim.components.keyvalue import start_keyvalue
from scalesim.components.process import free_port

from .conftest import REPO


async def _enqueue_and_count(url: str) -> int:
    pool = await create_pool(RedisSettings.from_dsn(url))
    try:
        await pool.enqueue_job("recompute_charges", 3)
        return int(await pool.zcard("arq:queue"))
    finally:
        await pool.aclose()


async def _queued(url: str) -> int:
    pool = await create_pool(RedisSettings.from_dsn(url))
    try:
        return int(await pool.zcard("arq:queue"))
    finally:
        await pool.aclose()


def test_worker_reconnects_after_the_keyvalue_server_restarts(fresh_seeded_url: str, tmp_path: Path) -> None:
    server = start_keyvalue(binary=find_binaries("embedded").keyvalue_server, run_dir=tmp_path, port=free_port())
    config = {"server_name": "worker-test", "database_url": fresh_seeded_url, "keyvalue_url": server.url,
              "sessions": "keyvalue", "joins": "app", "charges": "precomputed", "pool_size": 2,
              "worker_poll_ms": 20}
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen([sys.executable, "-m", "reference_app.workers"], cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT, env={**os.environ, CONFIG_ENV_VAR: json.dumps(config)})
    try:
        time.sleep(1.5)
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()
        server.process.kill()
        time.sleep(2.5)  # the worker notices and retries
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()
        server.process.start()  # same port, same password, empty: no persistence
        assert asyncio.run(_enqueue_and_count(server.url)) >= 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and asyncio.run(_queued(server.url)):
            time.sleep(0.2)
        assert asyncio.run(_queued(server.url)) == 0, (tmp_path / "worker.log").read_text()[-2000:]
        assert "reconnecting" in (tmp_path / "worker.log").read_text()
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
        server.process.stop()
