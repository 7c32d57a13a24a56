"""Carrying out a fault plan against a running local deployment.

`FaultInjector` is started when the load starts (the load generator's ``run_start``) and works
through the plan on a thread of its own, so that the runner keeps handling the load generator's
events on time. Each fault has a beginning and, when it has a duration, an end:

    kill    SIGKILL to every process of the node at once (a crash)  ->  start it again
    stop    the node's own clean shutdown                           ->  start it again
    pause   SIGSTOP to every process of the node (a hung host)      ->  SIGCONT
    latency the node's delay proxy holds what the app sends it       ->  delay removed

A restarted node is the same node: same command, port, data folder, log file and CPU group. The
injector waits until it answers again (its health check, or its port) and records when. Every step
becomes an *action* record with its wall-clock time, which the timeline analysis lines up with the
load generator's per-second figures.

`finish()` undoes what is still in force when the load ends early or normally -- a paused node is
resumed, a delay removed -- before the deployment is stopped; a killed node without a restart stays
down (stopping a dead node is a no-op). After a complete load, `restore()` also starts every node a
fault left down (recorded as ``restored``), so that the integrity audit sees the whole deployment.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from scalesim.errors import ScalesimError
from scalesim.faults.spec import Fault, FaultPlan

if TYPE_CHECKING:
    from scalesim.deploy.local import LocalDeployment, Node
    from scalesim.faults.delayproxy import DelayProxyProcess


@dataclass(frozen=True, kw_only=True)
class InjectorSettings:
    """How long a restarted node may take to answer again, and how often it is asked."""

    ready_timeout_s: float = 60.0
    ready_poll_s: float = 0.05


@dataclass(kw_only=True)
class FaultInjector:
    plan: FaultPlan
    deployment: LocalDeployment
    settings: InjectorSettings = field(default_factory=InjectorSettings)
    progress: Callable[[str], None] = field(default=lambda message: None)
    actions: list[dict[str, Any]] = field(default_factory=list, init=False)
    started_at: float | None = field(default=None, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _paused: set[str] = field(default_factory=set, init=False)
    _delays: set[str] = field(default_factory=set, init=False)
    _down: set[str] = field(default_factory=set, init=False)

    def start(self, *, at: float | None = None) -> None:
        """Begin the plan's clock (wall time `at`, default now) and work through it in the background."""
        if self._thread is not None:
            return
        self.started_at = time.time() if at is None else at
        self._thread = threading.Thread(target=self._run, name="fault-injector", daemon=True)
        self._thread.start()

    def node_is_down(self, name: str) -> bool:
        """Whether a fault has `name` out of service right now (killed, stopped or paused)."""
        with self._lock:
            return name in self._down or name in self._paused

    def nodes_down(self) -> set[str]:
        with self._lock:
            return set(self._down | self._paused)

    # -- the schedule -------------------------------------------------------------------------

    def _schedule(self) -> list[tuple[float, int, str, Fault]]:
        steps: list[tuple[float, int, str, Fault]] = []
        for order, fault in enumerate(self.plan.faults):
            steps.append((fault.start_s, order, "begin", fault))
            if fault.end_s is not None:
                steps.append((fault.end_s, order, "end", fault))
        return sorted(steps, key=lambda step: (step[0], step[2] != "end", step[1]))

    def _run(self) -> None:
        assert self.started_at is not None
        for offset, _, phase, fault in self._schedule():
            delay = self.started_at + offset - time.time()
            if delay > 0 and self._stop.wait(delay):
                return
            try:
                if phase == "begin":
                    self._begin(fault)
                else:
                    self._end(fault)
            except Exception as exc:  # noqa: BLE001 -- a failed fault step is recorded, the run goes on
                self._record(fault, "failed", detail=str(exc)[:300])
                self.progress(f"fault {fault.label}: {exc}")

    def _node(self, name: str) -> Node:
        for node in self.deployment.nodes:
            if node.name == name:
                return node
        raise ScalesimError(f"no node {name!r} in this deployment")

    def _proxy(self, name: str) -> DelayProxyProcess:
        proxy = self.deployment.proxies.get(name)
        if proxy is None:
            raise ScalesimError(f"{name} has no delay proxy: latency faults must be known before bring-up")
        return proxy

    def _record(self, fault: Fault, action: str, **details: Any) -> None:
        now = time.time()
        record = {"fault": fault.label, "node": fault.node, "action": action, "time": now,
                  "t_s": round(now - (self.started_at or now), 3), **details}
        with self._lock:
            self.actions.append(record)

    def _begin(self, fault: Fault) -> None:
        node = self._node(fault.node)
        if fault.action == "kill":
            node.process.kill()
            with self._lock:
                self._down.add(node.name)
            self._record(fault, "killed")
        elif fault.action == "stop":
            node.process.stop()
            with self._lock:
                self._down.add(node.name)
            self._record(fault, "stopped")
        elif fault.action == "pause":
            count = node.process.signal_tree(signal.SIGSTOP)
            with self._lock:
                self._paused.add(node.name)
            self._record(fault, "paused", processes=count)
        elif fault.action == "latency":
            assert fault.delay_ms is not None
            self._proxy(node.name).delay(fault.delay_ms)
            self._delays.add(node.name)
            self._record(fault, "latency_on", delay_ms=fault.delay_ms)
        self.progress(f"fault: {fault.action} {node.name}")

    def _end(self, fault: Fault) -> None:
        node = self._node(fault.node)
        if fault.action in ("kill", "stop"):
            self._restart(fault, node)
        elif fault.action == "pause":
            node.process.signal_tree(signal.SIGCONT)
            with self._lock:
                self._paused.discard(node.name)
            self._record(fault, "resumed")
            self.progress(f"fault over: {node.name} resumed")
        elif fault.action == "latency":
            self._proxy(node.name).no_delay()
            self._delays.discard(node.name)
            self._record(fault, "latency_off")
            self.progress(f"fault over: no added latency on {node.name}")

    def _restart(self, fault: Fault, node: Node, *, action: str = "restarted") -> None:
        started = time.monotonic()
        node.process.start()
        self._record(fault, action, pid=node.process.pid)
        deadline = started + self.settings.ready_timeout_s
        while time.monotonic() < deadline and (action == "restored" or not self._stop.is_set()):
            if node.healthy():
                with self._lock:
                    self._down.discard(node.name)
                ready_s = time.monotonic() - started
                self._record(fault, "ready", ready_after_s=round(ready_s, 3))
                self.progress(f"fault over: {node.name} is back after {ready_s:.1f} s")
                self.deployment.node_restarted(node)
                return
            if not node.process.alive():
                raise ScalesimError(f"{node.name} exited while restarting: {node.process.last_log_line()}")
            time.sleep(self.settings.ready_poll_s)
        raise ScalesimError(f"{node.name} did not answer within {self.settings.ready_timeout_s:.0f} s of its restart")

    # -- the end --------------------------------------------------------------------------------

    def finish(self) -> None:
        """Stop the schedule, resume paused nodes and remove delays (before the deployment stops)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.ready_timeout_s + 5)
        for name in list(self._paused):
            with contextlib.suppress(ScalesimError):
                self._node(name).process.signal_tree(signal.SIGCONT)
        self._paused.clear()
        for name in list(self._delays):
            with contextlib.suppress(ScalesimError, OSError):
                self._proxy(name).no_delay()
        self._delays.clear()

    def restore(self) -> None:
        """After the load: end every fault still in force and start again every node a fault left
        down, so that the integrity audit can check every node (a replica killed for good must
        still have converged once it is back)."""
        self.finish()
        for fault in self.plan.faults:
            if fault.action in ("kill", "stop") and self.node_is_down(fault.node):
                with contextlib.suppress(ScalesimError):
                    self._restart(fault, self._node(fault.node), action="restored")

    def to_list(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.actions)
