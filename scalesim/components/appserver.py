"""The reference app's processes: uvicorn app servers and arq background workers.

Both read their whole configuration from one environment variable, SCALESIM_APP_CONFIG (a JSON
object, see docs/CONTRACTS.md), so a node's behaviour is visible in one place: its process
environment and the run's results.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scalesim.components.process import LOOPBACK, ManagedProcess, ensure_port_free, http_ok
from scalesim.measure.budgets import CpuGroup

CONFIG_VARIABLE = "SCALESIM_APP_CONFIG"


@dataclass(kw_only=True)
class AppProcess:
    name: str
    port: int | None
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


def _env(config: Mapping[str, Any]) -> dict[str, str]:
    env = dict(os.environ)
    env[CONFIG_VARIABLE] = json.dumps(dict(config))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_app_server(*, name: str, port: int, config: Mapping[str, Any], run_dir: Path,
                     cpu_group: CpuGroup | None = None) -> AppProcess:
    ensure_port_free(port, role=name)
    argv = [sys.executable, "-m", "uvicorn", "reference_app.app:create_app", "--factory",
            "--host", LOOPBACK, "--port", str(port), "--no-access-log", "--log-level", "warning",
            "--timeout-graceful-shutdown", "3"]
    process = ManagedProcess(name=name, argv=argv, log_path=(run_dir / "logs" / f"{name}.log").resolve(),
                             env=_env({**config, "server_name": name}), cpu_group=cpu_group)
    app = AppProcess(name=name, port=port, process=process)
    process.start()
    return app


def wait_app_ready(app: AppProcess, *, timeout: float = 30.0) -> None:
    app.process.wait_ready(lambda: http_ok(f"{app.url}/healthz"), timeout=timeout, interval=0.05)


def start_worker(*, name: str, config: Mapping[str, Any], run_dir: Path,
                 cpu_group: CpuGroup | None = None) -> AppProcess:
    process = ManagedProcess(name=name, argv=[sys.executable, "-m", "reference_app.workers"],
                             log_path=(run_dir / "logs" / f"{name}.log").resolve(),
                             env=_env({**config, "server_name": name}), cpu_group=cpu_group)
    worker = AppProcess(name=name, port=None, process=process)
    process.start()
    return worker
