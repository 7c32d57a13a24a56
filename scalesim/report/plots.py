"""The report's pictures, drawn with matplotlib (Agg backend, chosen when a plot is first drawn).

Each function takes results documents and a target path and writes one PNG: the capacity curve
(throughput and latency against users, with the model's curve over the measured points when the
run has one), latency percentiles per endpoint, per-node utilization per step, and, across runs,
the stage comparison: throughput within the latency objective at each stage, with its ratio to the
first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DPI = 110


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def capacity_curve(results: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    steps = results["steps"]
    users = [step["users"] for step in steps]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(users, [step["total"]["rps"] for step in steps], "o-", color="tab:blue", label="measured")
    right.plot(users, [step["total"].get("p95_ms") for step in steps], "o-", color="tab:red", label="p95 measured")
    right.plot(users, [step["total"].get("mean_ms") for step in steps], "s--", color="tab:orange",
               label="mean measured")
    model = results.get("model", {}).get("curve")
    if model:
        left.plot(model["users"], model["throughput"], "-", color="tab:gray", alpha=0.8, label="model")
        right.plot(model["users"], [r * 1000 for r in model["response_time"]], "-", color="tab:gray", alpha=0.8,
                   label="mean model")
    objective = results["summary"]["objective_p95_ms"]
    right.axhline(objective, color="tab:red", linestyle=":", linewidth=1, label=f"objective {objective:.0f} ms")
    left.set(title="Throughput", xlabel="users", ylabel="requests / s")
    right.set(title="Latency", xlabel="users", ylabel="ms")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.set_xlim(left=0)
        axis.set_ylim(bottom=0)
        axis.legend(loc="best", fontsize=8)
    fig.suptitle(f"{results['scenario']['name']}: {results['scenario']['title']}")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def endpoint_latency(results: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    top = max(results["steps"], key=lambda step: step["total"]["rps"])
    endpoints = sorted(top.get("endpoints", []), key=lambda e: e["name"])
    labels = [f"{e.get('method', '')} {e['name']}".strip() for e in endpoints]
    fig, axis = plt.subplots(figsize=(11, 0.45 * max(len(labels), 3) + 1.2))
    positions = range(len(labels))
    height = 0.27
    for offset, key, color in ((-height, "p50_ms", "tab:green"), (0.0, "p95_ms", "tab:orange"),
                               (height, "p99_ms", "tab:red")):
        axis.barh([p + offset for p in positions], [e.get(key) or 0 for e in endpoints], height=height,
                  color=color, label=key.replace("_ms", ""))
    axis.set_yticks(list(positions), labels, fontsize=8)
    axis.invert_yaxis()
    axis.set(xlabel="ms", title=f"Latency per endpoint at {top['users']} users")
    axis.grid(axis="x", alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def node_utilization(results: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    steps = results["steps"]
    users = [step["users"] for step in steps]
    names = list(steps[0]["nodes"]) if steps else []
    fig, axis = plt.subplots(figsize=(11, 4))
    budgeted = all(steps[0]["nodes"][name].get("utilization") is not None for name in names) if steps else False
    for name in names:
        key = "utilization" if budgeted else "cores_used"
        values = [(step["nodes"].get(name, {}).get(key) or 0) * (100 if budgeted else 1) for step in steps]
        axis.plot(users, values, "o-", label=name)
    if budgeted:
        axis.axhline(100, color="black", linestyle=":", linewidth=1)
        axis.set(ylabel="% of CPU budget", title="Utilization per node (CPU used / budget)")
    else:
        axis.set(ylabel="cores", title="CPU per node (budgets not enforced)")
    axis.set(xlabel="users")
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def stage_comparison(runs: list[dict[str, Any]], path: Path) -> Path:
    plt = _pyplot()
    names = [run["scenario"]["name"] for run in runs]
    within = [run["summary"]["max_rps_within_objective"] for run in runs]
    peak = [max(step["total"]["rps"] for step in run["steps"]) for run in runs]
    fig, axis = plt.subplots(figsize=(11, 4.5))
    positions = list(range(len(names)))
    axis.bar([p - 0.2 for p in positions], within, width=0.4, color="tab:blue", label="within p95 objective")
    axis.bar([p + 0.2 for p in positions], peak, width=0.4, color="tab:gray", alpha=0.6, label="peak measured")
    base = within[0] or None
    for position, value in zip(positions, within, strict=True):
        label = f"{value:.0f}" + (f"\n{value / base:.2f}x" if base else "")
        axis.annotate(label, (position - 0.2, value), ha="center", va="bottom", fontsize=8)
    axis.set_xticks(positions, [f"{run['scenario']['name']}\n{run['scenario']['title']}" for run in runs],
                    fontsize=8)
    axis.set(ylabel="requests / s", title="Throughput by stage (ratio to the first)")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
