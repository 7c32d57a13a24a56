"""The injector against real processes: a crash and a restart, a pause and a resume, added latency."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from scalesim.components.process import ManagedProcess, free_port, http_ok
from scalesim.deploy.local import Node
from scalesim.faults.delayproxy import DelayProxyProcess, start_delay_proxy
from scalesim.faults.injector import FaultInjector
from scalesim.faults.spec import FaultPlan, parse_fault


@dataclass
class TinyDeployment:
    """What the injector needs of a deployment: its nodes, and to hear of a restart."""

    nodes: list[Node]
    proxies: dict[str, DelayProxyProcess] = field(default_factory=dict)
    restarts: list[str] = field(default_factory=list)

    def node_restarted(self, node: Node) -> None:
        self.restarts.append(node.name)


@pytest.fixture
def web_node(tmp_path: Path) -> Iterator[Node]:
    port = free_port()
    process = ManagedProcess(name="web", argv=[sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                             log_path=tmp_path / "web.log", cwd=tmp_path, stop_timeout=3)
    process.start()
    url = f"http://127.0.0.1:{port}/"
    process.wait_ready(lambda: http_ok(url), timeout=15)
    node = Node(name="app1", role="app", port=port, cpu_budget=None, process=process, url=url.rstrip("/"),
                health_url=url)
    yield node
    process.stop()


def _wait(check: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def _injector(node: Node, *faults: str) -> tuple[FaultInjector, TinyDeployment]:
    deployment = TinyDeployment(nodes=[node])
    plan = FaultPlan(faults=tuple(parse_fault(text) for text in faults))
    return FaultInjector(plan=plan, deployment=deployment), deployment  # type: ignore[arg-type]


def test_kill_then_restart(web_node: Node) -> None:
    first_pid = web_node.process.pid
    injector, deployment = _injector(web_node, "kill:app1@0.2s+0.5s")
    injector.start()
    assert _wait(lambda: not web_node.process.alive(), timeout=5), "the node was not killed"
    assert injector.node_is_down("app1")
    assert not http_ok(web_node.health_url or "")
    assert _wait(lambda: any(a["action"] == "ready" for a in injector.to_list())), injector.to_list()
    injector.finish()
    assert [a["action"] for a in injector.to_list()] == ["killed", "restarted", "ready"]
    assert web_node.process.pid != first_pid and http_ok(web_node.health_url or "")
    assert deployment.restarts == ["app1"] and not injector.node_is_down("app1")


def test_pause_freezes_and_resume_thaws(web_node: Node) -> None:
    injector, _ = _injector(web_node, "pause:app1@0.1s+1.5s")
    injector.start()
    assert _wait(lambda: injector.node_is_down("app1"), timeout=5)
    assert web_node.process.alive()  # frozen, not dead: connections hang
    assert not http_ok(web_node.health_url or "", timeout=0.3)
    assert _wait(lambda: not injector.node_is_down("app1"), timeout=10)
    assert http_ok(web_node.health_url or "", timeout=2)
    injector.finish()


def test_finish_resumes_a_node_paused_until_the_end(web_node: Node) -> None:
    injector, _ = _injector(web_node, "pause:app1@0s")
    injector.start()
    assert _wait(lambda: injector.node_is_down("app1"), timeout=5)
    injector.finish()
    assert http_ok(web_node.health_url or "", timeout=2)


def test_restore_brings_back_a_node_killed_for_good(web_node: Node) -> None:
    injector, deployment = _injector(web_node, "kill:app1@0.1s")
    injector.start()
    assert _wait(lambda: not web_node.process.alive(), timeout=5)
    time.sleep(0.3)
    assert not web_node.process.alive()  # no duration: it stays down while the load lasts
    injector.restore()  # the load is over: the audit needs every node
    assert [a["action"] for a in injector.to_list()] == ["killed", "restored", "ready"]
    assert http_ok(web_node.health_url or "") and deployment.restarts == ["app1"]


def test_a_failed_restart_is_recorded_not_raised(web_node: Node, tmp_path: Path) -> None:
    web_node.process.argv = [sys.executable, "-c", "raise SystemExit(3)"]  # the restart cannot come up
    injector, _ = _injector(web_node, "kill:app1@0s+0.2s")
    injector.start()
    assert _wait(lambda: any(a["action"] == "failed" for a in injector.to_list()), timeout=15)
    injector.finish()
    failed = [a for a in injector.to_list() if a["action"] == "failed"]
    assert "exited while restarting" in failed[0]["detail"]


def _request_ms(url: str) -> float:
    started = time.perf_counter()
    assert http_ok(url, timeout=5)
    return (time.perf_counter() - started) * 1000


def test_latency_through_the_delay_proxy(web_node: Node, tmp_path: Path) -> None:
    assert web_node.port is not None
    proxy = start_delay_proxy(target="app1", upstream_port=web_node.port, run_dir=tmp_path)
    try:
        through = f"http://127.0.0.1:{proxy.port}/"
        deployment = TinyDeployment(nodes=[web_node], proxies={"app1": proxy})
        plan = FaultPlan(faults=(parse_fault("latency:app1=60ms@0.3s+1.2s"),))
        injector = FaultInjector(plan=plan, deployment=deployment)  # type: ignore[arg-type]
        before = min(_request_ms(through) for _ in range(3))
        injector.start()
        assert _wait(lambda: any(a["action"] == "latency_on" for a in injector.to_list()), timeout=5)
        time.sleep(0.1)  # the signal reaches the proxy
        during = min(_request_ms(through) for _ in range(3))
        direct = min(_request_ms(web_node.health_url or "") for _ in range(3))
        assert _wait(lambda: any(a["action"] == "latency_off" for a in injector.to_list()), timeout=5)
        time.sleep(0.1)
        after = min(_request_ms(through) for _ in range(3))
        injector.finish()
    finally:
        proxy.process.stop()
    assert during >= 55, during  # each request waits once on its way in
    assert before < 30 and after < 30 and direct < 30, (before, after, direct)
    assert not proxy.process.alive()
