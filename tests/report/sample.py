"""Synthetic results documents for the report's unit tests (the real ones come from end-to-end runs)."""

from __future__ import annotations

from typing import Any

from scalesim.runner import summarize


def sample_results(name: str = "stage1", *, scale: float = 1.0, budgets: bool = True) -> dict[str, Any]:
    steps = []
    for index, users in enumerate((10, 20, 40, 80)):
        rps = min(users, 50 * scale) * 0.95
        p95 = 20 + (users / (50 * scale)) ** 3 * 200
        endpoints = [
            {"name": "/api/books", "method": "GET", "requests": int(rps * 20), "failures": 0, "rps": rps * 0.6,
             "mean_ms": p95 / 3, "p50_ms": p95 / 4, "p95_ms": p95, "p99_ms": p95 * 1.3, "max_ms": p95 * 2},
            {"name": "/api/books/{id}", "method": "GET", "requests": int(rps * 10), "failures": 1, "rps": rps * 0.4,
             "mean_ms": p95 / 4, "p50_ms": p95 / 5, "p95_ms": p95 * 0.8, "p99_ms": p95, "max_ms": p95 * 1.5},
        ]
        total = {"name": "total", "method": "", "requests": int(rps * 30), "failures": 1, "rps": rps,
                 "mean_ms": p95 / 3, "p50_ms": p95 / 4, "p95_ms": p95, "p99_ms": p95 * 1.2, "max_ms": p95 * 2}
        nodes = {node: {"role": node.rstrip("0123456789"), "cpu_seconds": rps * 0.002 * 30,
                        "cores_used": rps * 0.002, "cpu_budget": 0.25 if budgets else None,
                        "utilization": rps * 0.002 / 0.25 if budgets else None}
                 for node in ("app1", "primary")}
        steps.append({"index": index, "users": users, "window_s": 30.0, "measured_window_s": 30.0, "total": total,
                      "endpoints": endpoints, "errors": {}, "loadgen_cpu_seconds": 1.2, "nodes": nodes,
                      "app_counters": {"cache": {"hits": 90, "misses": 10}},
                      "replication": [{"replica": "replica1", "replay_lag_ms": 0.4}]})
    return {
        "schema": "scalesim.results", "schema_version": 1, "run_id": f"20261130-000000-{name}-abcd",
        "scenario": {"name": name, "title": "load balancer", "description": "A test stage.", "source": "x.yaml",
                     "nodes": {}, "app": {}, "data": {}, "workload": {"objective_p95_ms": 250}},
        "profile": {"name": "quick", "steps": [10, 20, 40, 80], "step_seconds": 30, "warmup_seconds": 5},
        "machine": {"cores": 2, "load_average": [1, 1, 1], "platform": "Linux", "python": "3.11",
                    "budgets_enforced": budgets, "budgets_note": "" if budgets else "not root",
                    "components": "embedded", "versions": {"postgres": "postgres (PostgreSQL) 18.6"}},
        "deployment": {"timings": {}, "nodes": []},
        "steps": steps,
        "summary": summarize(steps, objective_p95_ms=250),
    }
