"""One run: bring a stage up, drive it step by step, measure every node, write the results.

`Run` holds the state of one measured run (the deployment, the step records, the output folder).
The load generator reports the edges of each measurement window as events; at each edge the run
snapshots every node's CPU seconds and the app and database counters, so a step's record says not
only how fast the system answered but what each node spent doing it: the service demand per
request that the capacity model is calibrated from.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scalesim.audit import AuditFailed, audit_from_app_config
from scalesim.deploy.local import DeploymentSettings, LocalDeployment, Node
from scalesim.errors import ScalesimError
from scalesim.faults.injector import FaultInjector
from scalesim.faults.spec import FaultPlan
from scalesim.faults.timeline import Point, assess_faults, timeline_from_events
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
    # Faults to inject while loaded (local deployments only); with faults the load is one step of
    # `fault_users` users, held until `recovery_margin_s` after the last fault has ended.
    faults: FaultPlan = field(default_factory=lambda: FaultPlan(faults=()))
    fault_users: int | None = None
    recovery_margin_s: float = 30.0
    deployment: LocalDeployment | None = field(init=False)
    injector: FaultInjector | None = field(default=None, init=False)
    steps: list[dict[str, Any]] = field(default_factory=list, init=False)
    loadgen_files: dict[str, str] = field(default_factory=dict, init=False)
    _window_start: Snapshot | None = field(default=None, init=False)
    _lag_samples: list[dict[str, Any]] = field(default_factory=list, init=False)
    _progress_events: list[dict[str, Any]] = field(default_factory=list, init=False)
    _load_started_at: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.deployment = None if self.target else LocalDeployment(
            scenario=self.scenario, run_dir=self.run_dir, settings=self.settings, progress=self.progress,
            delayed=self.faults.delayed_nodes)
        if self.faults:
            if self.deployment is None:
                raise ScalesimError("faults are injected into local deployments only, not into --target")
            self.injector = FaultInjector(plan=self.faults, deployment=self.deployment, progress=self.progress)

    @property
    def nodes(self) -> list[Node]:
        return self.deployment.nodes if self.deployment is not None else []

    @property
    def profile(self) -> LoadProfile:
        profile = self.scenario.profile(quick=self.quick)
        if not self.faults:
            return profile
        # One load level for the whole run, so that a change in throughput is the fault's doing.
        users = self.fault_users or max(1, self.scenario.quick.steps[-1] // 2)
        ramp_s = users / profile.spawn_rate
        hold_s = max(30.0, self.faults.last_event_s + self.recovery_margin_s - profile.warmup_seconds - ramp_s)
        return dataclasses.replace(profile, steps=(users,), step_seconds=round(hold_s, 1))

    def snapshot(self) -> Snapshot:
        nodes = self.nodes
        down = self.injector.nodes_down() if self.injector is not None else set()
        token = self.deployment.app_config.get("stats_token") if self.deployment is not None else None
        apps = {node.name: app_stats(node.url, token=token) for node in nodes
                if node.role == "app" and node.url and node.name not in down}
        databases = {node.name: node.url for node in nodes
                     if node.role in ("primary", "replica") and node.url and node.name not in down}
        return Snapshot(at=time.monotonic(), cpu={node.name: node.cpu_seconds() for node in nodes}, apps=apps,
                        database=database_snapshot(databases, primary="primary"))

    def handle_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "run_start":
            if self.deployment is not None:  # so a `kill -9` of scalesim cannot orphan Locust either
                self.deployment.record_process_group(name="locust", pgid=event.get("pid"))
            self._load_started_at = float(event.get("time") or time.time())
            if self.injector is not None:
                self.injector.start(at=self._load_started_at)
        elif kind == "progress":
            self._progress_events.append(event)
        if kind == "measure_start":
            self._window_start = self.snapshot()
            self._lag_samples = []
        elif kind == "progress" and self._window_start is not None and self.deployment is not None \
                and self.deployment.cluster is not None and self.deployment.cluster.replicas \
                and not (self.injector is not None and self.injector.node_is_down("primary")):
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
            # A restarted node's process-tree account starts again from zero (control groups keep counting).
            cpu = max(0.0, end.cpu.get(node.name, 0.0) - start.cpu.get(node.name, 0.0))
            cores = cpu / window
            nodes[node.name] = {
                "role": node.role,
                "cpu_seconds": round(cpu, 4),
                "cores_used": round(cores, 4),
                "cpu_budget": node.cpu_budget,
                "utilization": round(cores / node.cpu_budget, 4) if node.cpu_budget else None,
            }
        app_counters = sum_counters(numeric_delta(_same_process(start.apps.get(name, {}), after), after)
                                    for name, after in end.apps.items())
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
                if self.injector is not None:
                    self.injector.restore()  # every node back up and unimpeded: the audit checks them all
                audit = self.audit()  # while every node is still up
            finally:
                if self.injector is not None:
                    self.injector.finish()
                if self.deployment is not None:
                    self.progress("stopping every node")
                    self.deployment.down()
        if not self.steps:
            raise ScalesimError("the load generator finished without measuring a single step "
                                f"(see {self.run_dir / 'locust'})")
        results = self.document(started_at=started_at, facts=facts)
        self.add_timeline(results)
        results["model"] = compare_with_measurement(results)  # calibrated from this run, checked against it
        if audit is not None:
            results["audit"] = audit
        save_results(results, self.run_dir)
        if audit is not None and not audit["ok"]:
            raise AuditFailed(results)  # after saving: a failed run keeps its results (and the CLI its report)
        return results

    def add_timeline(self, results: dict[str, Any]) -> None:
        """The per-second timeline (results and ``timeline.csv``), and what each fault cost."""
        points = timeline_from_events(self._progress_events, start_time=self._load_started_at or 0.0)
        results["timeline"] = [point.to_dict() for point in points]
        write_timeline_csv(points, self.run_dir / "timeline.csv")
        if self.injector is not None:
            actions = self.injector.to_list()
            results["faults"] = {"plan": self.faults.to_list(), "actions": actions,
                                 "assessment": assess_faults(self.faults.faults, points, actions)}

    def audit(self) -> dict[str, Any] | None:
        """The integrity audit of a local deployment after its load (`scalesim.audit`); None for a target."""
        deployment = self.deployment
        if deployment is None or deployment.cluster is None:
            return None
        self.progress("auditing acknowledged writes, replicas and precomputed charges")
        cluster = deployment.cluster
        try:
            audit = audit_from_app_config({**deployment.app_config, "database_url": cluster.primary.url,
                                           "replica_urls": [replica.url for replica in cluster.replicas]},
                                          acks_dir=self.run_dir / "locust" / "acks")
        except Exception as exc:  # noqa: BLE001 -- a broken audit must not cost the run its results
            audit = {"ok": False, "problems": [f"the audit failed: {type(exc).__name__}: {exc}"]}
        self.progress("audit: " + ("ok" if audit["ok"] else "; ".join(audit["problems"])))
        return audit

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
                          for role in ("app", "balancer", "keyvalue", "cache", "primary", "replicas", "workers")},
                "app": vars(scenario.app),
                "data": vars(scenario.data),
                "workload": scenario.workload.to_dict(),
            },
            "profile": {"name": "faults" if self.faults else "quick" if self.quick else "full", **profile.to_dict()},
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


def _same_process(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """An app server restarted within the window (a fault) counts from zero again."""
    return before if before.get("pid") == after.get("pid") else {}


def write_timeline_csv(points: list[Point], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["t_s", "users", "rps", "failures", "mean_ms", "p95_ms", "phase"])
        for point in points:
            writer.writerow([f"{point.t_s:.3f}", point.users, point.rps, point.failures, point.mean_ms, point.p95_ms,
                             point.phase])
