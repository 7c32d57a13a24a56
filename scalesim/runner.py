"""One run: bring a stage up, drive it step by step, measure every node, write the results.

`Run` holds the state of one measured run (the deployment, the step records, the output folder).
The load generator reports the edges of each measurement window as events; at each edge the run
snapshots every node's CPU seconds and the app and database counters, so a step's record says not
only how fast the system answered but what each node spent doing it: the service demand per
request that the capacity model is calibrated from.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scalesim.deploy.local import DeploymentSettings, LocalDeployment, Node
from scalesim.errors import ScalesimError
from scalesim.measure.counters import app_stats, database_snapshot, numeric_delta, sum_counters
from scalesim.model.accuracy import compare_with_measurement
from scalesim.results import machine_facts, save_results
from scalesim.topology import LoadProfile, Scenario

EventHandler = Callable[[dict[str, Any]], None]


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so the same clean-up runs for all three."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass(kw_only=True)
class Snapshot:
    at: float
    cpu: dict[str, float]
    apps: dict[str, dict[str, Any]]
    database: dict[str, Any]


@dataclass(kw_only=True)
class Run:
    scenario: Scenario
    run_dir: Path
    quick: bool = False
    settings: DeploymentSettings = field(default_factory=DeploymentSettings)
    progress: Callable[[str], None] = field(default=lambda message: None)
    on_load_event: EventHandler | None = None
    # An existing deployment to drive instead of starting one (compose, Kubernetes, anything seeded
    # with the scenario's data): only what the load generator sees is measured then.
    target: str | None = None
    locust_workers: int = 0
    deployment: LocalDeployment | None = field(init=False)
    steps: list[dict[str, Any]] = field(default_factory=list, init=False)
    loadgen_files: dict[str, str] = field(default_factory=dict, init=False)
    _window_start: Snapshot | None = field(default=None, init=False)
    _lag_samples: list[dict[str, Any]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.deployment = None if self.target else LocalDeployment(
            scenario=self.scenario, run_dir=self.run_dir, settings=self.settings, progress=self.progress)

    @property
    def nodes(self) -> list[Node]:
        return self.deployment.nodes if self.deployment is not None else []

    @property
    def profile(self) -> LoadProfile:
        return self.scenario.profile(quick=self.quick)

    def snapshot(self) -> Snapshot:
        nodes = self.nodes
        apps = {node.name: app_stats(node.url) for node in nodes if node.role == "app" and node.url}
        databases = {node.name: node.url for node in nodes if node.role in ("primary", "replica") and node.url}
        return Snapshot(at=time.monotonic(), cpu={node.name: node.cpu_seconds() for node in nodes}, apps=apps,
                        database=database_snapshot(databases, primary="primary"))

    def handle_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "measure_start":
            self._window_start = self.snapshot()
            self._lag_samples = []
        elif kind == "progress" and self._window_start is not None and self.deployment is not None \
                and self.deployment.cluster is not None and self.deployment.cluster.replicas:
            # About once a second while measuring: how far behind the primary each replica is.
            primary = self.deployment.cluster.primary
            self._lag_samples += database_snapshot({"primary": primary.url}, primary="primary")["replication"]
        elif kind == "step_end" and self._window_start is not None:
            self.steps.append(self.step_record(event, self._window_start, self.snapshot()))
            self._window_start = None
        if self.on_load_event is not None:
            self.on_load_event(event)

    def step_record(self, event: dict[str, Any], start: Snapshot, end: Snapshot) -> dict[str, Any]:
        window = max(end.at - start.at, 1e-9)
        nodes = {}
        for node in self.nodes:
            cpu = end.cpu.get(node.name, 0.0) - start.cpu.get(node.name, 0.0)
            cores = cpu / window
            nodes[node.name] = {
                "role": node.role,
                "cpu_seconds": round(cpu, 4),
                "cores_used": round(cores, 4),
                "cpu_budget": node.cpu_budget,
                "utilization": round(cores / node.cpu_budget, 4) if node.cpu_budget else None,
            }
        app_counters = sum_counters(numeric_delta(start.apps.get(name, {}), after) for name, after in end.apps.items())
        transactions = numeric_delta(start.database.get("transactions", {}), end.database.get("transactions", {}))
        lags = end.database.get("replication", [])
        samples = self._lag_samples + lags
        record = {key: value for key, value in event.items() if key != "event"}
        record.update({
            "measured_window_s": round(window, 3),
            "nodes": nodes,
            "app_counters": app_counters,
            "db_transactions": transactions,
            "replication": lags,
            "replication_lag": {
                "samples": len(samples),
                "max_ms": round(max((s["replay_lag_ms"] for s in samples), default=0.0), 3),
                "mean_ms": round(sum(s["replay_lag_ms"] for s in samples) / len(samples), 3) if samples else 0.0,
                "max_bytes": max((s["lag_bytes"] for s in samples), default=0),
            } if samples else None,
        })
        return record

    def execute(self) -> dict[str, Any]:
        """Bring up, load, measure, tear down; returns the results document (also saved)."""
        from scalesim.loadgen.driver import run_load

        started_at = time.time()
        with terminate_as_interrupt():
            try:
                if self.deployment is not None:
                    self.deployment.up()
                    self.progress(f"{self.scenario.name} is up in {self.deployment.timings['up_seconds']:.1f} s "
                                  f"at {self.deployment.entry_url}")
                host = self.deployment.entry_url if self.deployment is not None else str(self.target)
                load = run_load(host=host, workload=self.scenario.workload.to_dict(), load=self.profile.to_dict(),
                                seeded_users=self.scenario.data.users, out_dir=self.run_dir / "locust",
                                on_event=self.handle_event, locust_workers=self.locust_workers)
                self.loadgen_files = {key: str(value) for key, value in getattr(load, "files", {}).items()}
                facts = self.facts()
            finally:
                if self.deployment is not None:
                    self.progress("stopping every node")
                    self.deployment.down()
        if not self.steps:
            raise ScalesimError("the load generator finished without measuring a single step "
                                f"(see {self.run_dir / 'locust'})")
        results = self.document(started_at=started_at, facts=facts)
        results["model"] = compare_with_measurement(results)  # calibrated from this run, checked against it
        save_results(results, self.run_dir)
        return results

    def facts(self) -> dict[str, Any]:
        if self.deployment is None:
            return {**machine_facts(), "budgets_enforced": False, "components": "remote",
                    "budgets_note": f"remote target {self.target}: no local node metrics exist", "versions": {}}
        return {
            **machine_facts(),
            "budgets_enforced": self.deployment.budgets.enforced,
            "budgets_note": self.deployment.budgets.reason,
            "components": self.settings.components,
            "versions": self.deployment.component_versions(),
        }

    def document(self, *, started_at: float, facts: dict[str, Any]) -> dict[str, Any]:
        scenario = self.scenario
        profile = self.profile
        return {
            "run_id": self.run_dir.name,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "scenario": {
                "name": scenario.name, "title": scenario.title, "description": scenario.description,
                "source": str(scenario.source),
                "nodes": {role: {"count": scenario.nodes.role(role).count, "cpu": scenario.nodes.role(role).cpu}
                          for role in ("app", "balancer", "keyvalue", "primary", "replicas", "workers")},
                "app": vars(scenario.app),
                "data": vars(scenario.data),
                "workload": scenario.workload.to_dict(),
            },
            "profile": {"name": "quick" if self.quick else "full", **profile.to_dict()},
            "machine": facts,
            "deployment": {"target": self.target, "locust_workers": self.locust_workers,
                           "timings": {k: round(v, 3) for k, v in (self.deployment.timings if self.deployment
                                                                    else {}).items()},
                           "nodes": [{"name": n.name, "role": n.role, "cpu_budget": n.cpu_budget, "pid": n.process.pid}
                                     for n in self.nodes]},
            "loadgen_files": self.loadgen_files,
            "steps": self.steps,
            "summary": summarize(self.steps, objective_p95_ms=scenario.workload.objective_p95_ms),
        }


def summarize(steps: list[dict[str, Any]], *, objective_p95_ms: float) -> dict[str, Any]:
    """The headline: best throughput whose p95 met the objective, and the bottleneck per step."""
    per_step = []
    for step in steps:
        total = step.get("total", {})
        utilizations = {name: node["utilization"] for name, node in step["nodes"].items()
                        if node.get("utilization") is not None}
        bottleneck = max(utilizations, key=lambda name: utilizations[name]) if utilizations else None
        requests = total.get("requests", 0)
        per_step.append({
            "users": step.get("users"),
            "rps": total.get("rps", 0.0),
            "p95_ms": total.get("p95_ms"),
            "error_rate": (total.get("failures", 0) / requests) if requests else 0.0,
            "bottleneck": bottleneck,
            "bottleneck_utilization": utilizations.get(bottleneck) if bottleneck else None,
            "meets_objective": total.get("p95_ms") is not None and total["p95_ms"] <= objective_p95_ms,
        })
    passing = [s for s in per_step if s["meets_objective"] and s["error_rate"] < 0.01]
    best = max(passing, key=lambda s: s["rps"]) if passing else None
    return {
        "objective_p95_ms": objective_p95_ms,
        "max_rps_within_objective": best["rps"] if best else 0.0,
        "users_at_max": best["users"] if best else None,
        "bottleneck_at_max": best["bottleneck"] if best else (per_step[-1]["bottleneck"] if per_step else None),
        "steps": per_step,
    }
