"""The app's entry point under uvicorn: misconfiguration ends the process with one line, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import REPO, free_port


def run_uvicorn(config_json: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SCALESIM_APP_CONFIG"}
    env["PYTHONPATH"] = str(REPO)
    if config_json is not None:
        env["SCALESIM_APP_CONFIG"] = config_json
    argv = [sys.executable, "-m", "uvicorn", "reference_app.app:create_app", "--factory"]
    argv += ["--host", "127.0.0.1", "--port", str(free_port())]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, cwd=REPO)


@pytest.mark.parametrize(
    ("config_json", "status", "message"),
    [
        (None, 2, "SCALESIM_APP_CONFIG is not set"),
        ('{"database_url": "sqlite://x"}', 2, "must be a postgresql:// URL"),
        ('{"database_url": "postgresql://x@127.0.0.1:1/db", "sessions": "redis"}', 2, "'sessions' must be one of"),
        (
            '{"database_url": "postgresql://x@127.0.0.1:1/db"}',
            3,
            "cannot open a pool for postgresql://x@127.0.0.1:1/db",
        ),
    ],
)
def test_bad_configuration_ends_the_server_cleanly(config_json: str | None, status: int, message: str) -> None:
    done = run_uvicorn(config_json)
    assert done.returncode == status
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unreachable_keyvalue_server_ends_the_server_cleanly(seeded_url: str) -> None:
    config = f'{{"database_url": "{seeded_url}", "sessions": "keyvalue", "keyvalue_url": "redis://127.0.0.1:1/0"}}'
    done = run_uvicorn(config)
    assert done.returncode == 3
    assert "cannot reach the key-value server" in done.stderr
    assert "Traceback" not in done.stderr
