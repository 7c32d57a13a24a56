"""What the reports say: one run (the capacity curve and its reasons), or several runs compared.

`run_report` answers an architect's three questions about one stage: how much it carries within
the latency objective, which node limits it, and how latency grows with load. `comparison_report`
puts stages side by side: throughput within the objective at each stage and its ratio to the first,
the product's headline picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scalesim.report import plots
from scalesim.report.document import Report
from scalesim.report.faults import add_fault_section


def _fmt(value: Any, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def _error_rate(total: dict[str, Any]) -> float:
    return total.get("failures", 0) / total["requests"] if total.get("requests") else 0.0


def cache_hit_ratio(step: dict[str, Any]) -> float | None:
    cache = step.get("app_counters", {}).get("cache", {})
    hits, misses = cache.get("hits", 0), cache.get("misses", 0)
    return hits / (hits + misses) if hits + misses else None


def max_replication_lag_ms(step: dict[str, Any]) -> float | None:
    sampled = step.get("replication_lag")
    if sampled:
        return float(sampled["max_ms"])
    lags = [entry.get("replay_lag_ms", 0.0) for entry in step.get("replication", [])]
    return max(lags) if lags else None


def run_report(results: dict[str, Any], run_dir: Path) -> tuple[Path, Path]:
    scenario, summary, facts = results["scenario"], results["summary"], results["machine"]
    report = Report(
        title=f"scalesim {scenario['name']}: {scenario['title']}",
        subtitle=f"{scenario['description']} Run {results['run_id']}, {results['profile']['name']} profile, "
                 f"{facts.get('cores')} cores, {facts.get('components')} components.",
    )
    peak = max(results["steps"], key=lambda step: step["total"]["rps"])
    faults = (results.get("faults") or {}).get("assessment") or []
    report.headline([
        (f"Max throughput with p95 ≤ {summary['objective_p95_ms']:.0f} ms",
         f"{summary['max_rps_within_objective']:.0f} req/s",
         f"at {summary['users_at_max']} users" if summary.get("users_at_max") else "no step met the objective")
        if not faults else
        ("Faults injected", f"{len(faults)}", f"{sum(1 for f in faults if f.get('recovered'))} recovered; see Faults"),
        ("Bottleneck", summary.get("bottleneck_at_max") or "-", "highest utilization of its CPU budget"),
        ("Peak measured", f"{peak['total']['rps']:.0f} req/s", f"p95 {_fmt(peak['total'].get('p95_ms'))} ms"),
        ("Errors", f"{sum(s['total'].get('failures', 0) for s in results['steps'])}",
         f"of {sum(s['total'].get('requests', 0) for s in results['steps'])} requests"),
    ])
    if not facts.get("budgets_enforced") and facts.get("components") != "remote":
        report.text(f"CPU budgets were not enforced ({facts.get('budgets_note')}): nodes shared the machine's "
                    "cores freely, so utilization is shown in cores, not against a budget.", css="warn")
    add_fault_section(report, results, run_dir)
    report.heading("Capacity curve")
    report.image(plots.capacity_curve(results, run_dir / "capacity.png"), alt="capacity curve")
    rows = []
    for step, verdict in zip(results["steps"], summary["steps"], strict=False):
        total = step["total"]
        hit = cache_hit_ratio(step)
        lag = max_replication_lag_ms(step)
        rows.append([step["users"], _fmt(total["rps"]), _fmt(total.get("mean_ms")), _fmt(total.get("p50_ms")),
                     _fmt(total.get("p95_ms")), _fmt(total.get("p99_ms")), f"{_error_rate(total) * 100:.2f}%",
                     _bottleneck_cell(verdict),
                     f"{hit * 100:.0f}%" if hit is not None else "-", _fmt(lag, 2) if lag is not None else "-"])
    report.table(["users", "req/s", "mean ms", "p50 ms", "p95 ms", "p99 ms", "errors", "bottleneck",
                  "cache hits", "repl. lag ms"], rows)
    model = results.get("model")
    if model and model.get("steps"):
        report.heading("Model against measurement")
        report.text(model.get("note", ""))
        report.table(["users", "measured req/s", "model req/s", "error", "measured mean ms", "model mean ms", "error"],
                     [[m["users"], _fmt(m["measured_rps"]), _fmt(m["model_rps"]), f"{m['rps_error'] * 100:+.1f}%",
                       _fmt(m["measured_mean_ms"]), _fmt(m["model_mean_ms"]), f"{m['mean_error'] * 100:+.1f}%"]
                      for m in model["steps"]])
    _audit_section(report, results.get("audit"))
    report.heading("Latency per endpoint")
    report.image(plots.endpoint_latency(results, run_dir / "endpoints.png"), alt="latency per endpoint")
    report.table(["endpoint", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors"],
                 [[f"{e.get('method', '')} {e['name']}".strip(), e["requests"], _fmt(e["rps"]), _fmt(e.get("p50_ms")),
                   _fmt(e.get("p95_ms")), _fmt(e.get("p99_ms")), f"{_error_rate(e) * 100:.2f}%"]
                  for e in sorted(peak.get("endpoints", []), key=lambda e: -e["requests"])])
    report.heading("Per-node CPU")
    names = list(results["steps"][0]["nodes"])
    if not names:
        report.text(f"No local node metrics exist: {facts.get('budgets_note')}. Latency and throughput are as the "
                    "load generator measured them.", css="warn")
        return report.write(run_dir)
    report.image(plots.node_utilization(results, run_dir / "nodes.png"), alt="utilization per node")
    report.table(["users", *names, "load generator"],
                 [[step["users"], *[_node_cell(step["nodes"][name]) for name in names],
                   f"{_fmt(step.get('loadgen_cpu_seconds'), 2)} s"] for step in results["steps"]])
    report.text("Each cell: CPU-seconds used by the node's whole process tree during the step's measurement "
                "window, and its share of the node's CPU budget.", css="note")
    report.heading("Machine")
    versions = ", ".join(f"{k}: {v}" for k, v in facts.get("versions", {}).items())
    report.text(f"{facts.get('platform')}; Python {facts.get('python')}; load average {facts.get('load_average')}; "
                f"{versions}.")
    return report.write(run_dir)


def _audit_section(report: Report, audit: dict[str, Any] | None) -> None:
    """What the integrity audit checked after the load (acknowledged writes, replicas, charges) and found."""
    if audit is None:
        return
    from scalesim.audit import audit_lines

    report.heading("Integrity audit")
    report.text("; ".join(audit_lines(audit)) + ".")
    for problem in audit.get("problems", []):
        report.text(problem, css="warn")


def _bottleneck_cell(verdict: dict[str, Any]) -> str:
    utilization = verdict.get("bottleneck_utilization")
    share = f" ({utilization * 100:.0f}%)" if utilization is not None else ""
    return f"{verdict.get('bottleneck') or '-'}{share}"


def _model_cells(run: dict[str, Any]) -> list[str]:
    accuracy = (run.get("model") or {}).get("accuracy") or {}
    saturation = accuracy.get("saturation") or {}
    error = accuracy.get("max_abs_rps_error")
    return [_fmt(saturation.get("model_max_rps"), 0), f"{error * 100:.1f}%" if error is not None else "-"]


def _node_cell(node: dict[str, Any]) -> str:
    share = f" ({node['utilization'] * 100:.0f}%)" if node.get("utilization") is not None else ""
    return f"{node['cpu_seconds']:.2f} s{share}"


def comparison_report(runs: list[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    base = runs[0]["summary"]["max_rps_within_objective"] or None
    report = Report(title="scalesim: stages compared",
                    subtitle="Throughput within each run's p95 latency objective, stage by stage, on this machine.")
    best = max(runs, key=lambda run: run["summary"]["max_rps_within_objective"])
    report.headline([
        ("Best stage", best["scenario"]["name"], best["scenario"]["title"]),
        ("Its throughput", f"{best['summary']['max_rps_within_objective']:.0f} req/s",
         f"{best['summary']['max_rps_within_objective'] / base:.2f}x {runs[0]['scenario']['name']}" if base else ""),
    ])
    report.image(plots.stage_comparison(runs, out_dir / "stages.png"), alt="throughput by stage")
    rows = []
    for run in runs:
        summary = run["summary"]
        value = summary["max_rps_within_objective"]
        peak = max(run["steps"], key=lambda step: step["total"]["rps"])
        hits = [h for h in (cache_hit_ratio(step) for step in run["steps"]) if h is not None]
        lags = [lag for lag in (max_replication_lag_ms(step) for step in run["steps"]) if lag is not None]
        rows.append([run["scenario"]["name"], run["scenario"]["title"], f"{value:.0f}",
                     f"{value / base:.2f}x" if base else "-", summary.get("users_at_max") or "-",
                     summary.get("bottleneck_at_max") or "-", f"{peak['total']['rps']:.0f}",
                     _fmt(peak["total"].get("p95_ms")), f"{max(hits) * 100:.0f}%" if hits else "-",
                     _fmt(max(lags), 2) if lags else "-", *_model_cells(run),
                     "yes" if run["machine"].get("budgets_enforced") else "no", run["run_id"]])
    report.table(["stage", "", "req/s within objective", "ratio", "users", "bottleneck", "peak req/s",
                  "p95 at peak ms", "cache hits", "repl. lag ms", "model max req/s", "model error < 80%",
                  "budgets", "run"], rows)
    report.text("Model columns: the capacity model calibrated from each run predicts its maximum throughput; "
                "the error is the largest throughput error at the steps below 80% of the bottleneck's budget.",
                css="note")
    return report.write(out_dir)
