"""The CI benchmark: a fixed short profile, its figures, and a regression check against a baseline.

``scalesim bench`` runs the stages it is given with their quick profile, reduces each run to a few
figures, and writes them (``bench.json``) with the runs' reports. Given a baseline file, it compares
figure by figure: a figure worse than the baseline by more than the tolerance is a regression, and
each one is reported on its own line. Which way is "worse" is part of each figure's definition.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scalesim.errors import ScalesimError

BENCH_SCHEMA = "scalesim.bench/1"


@dataclass(frozen=True, kw_only=True)
class Figure:
    key: str
    unit: str
    higher_is_better: bool
    description: str


FIGURES = (
    Figure(key="max_rps_within_objective", unit="req/s", higher_is_better=True,
           description="best step throughput whose p95 met the objective"),
    Figure(key="peak_rps", unit="req/s", higher_is_better=True, description="highest step throughput"),
    Figure(key="p95_ms_first_step", unit="ms", higher_is_better=False, description="p95 latency at the lightest step"),
    Figure(key="app_cpu_ms_per_request", unit="ms", higher_is_better=False,
           description="app servers' CPU per request at the heaviest step"),
    Figure(key="error_rate", unit="", higher_is_better=False, description="failed / all requests"),
)


def figures_from_results(results: dict[str, Any]) -> dict[str, float]:
    steps = results["steps"]
    heaviest = steps[-1]
    requests = sum(step["total"]["requests"] for step in steps)
    failures = sum(step["total"].get("failures", 0) for step in steps)
    app_cpu = sum(node["cpu_seconds"] for node in heaviest["nodes"].values() if node["role"] == "app")
    heaviest_requests = heaviest["total"]["requests"] or 1
    return {
        "max_rps_within_objective": round(results["summary"]["max_rps_within_objective"], 2),
        "peak_rps": round(max(step["total"]["rps"] for step in steps), 2),
        "p95_ms_first_step": round(steps[0]["total"].get("p95_ms") or 0.0, 2),
        "app_cpu_ms_per_request": round(app_cpu / heaviest_requests * 1000, 4),
        "error_rate": round(failures / requests, 5) if requests else 0.0,
    }


def parse_tolerance(text: str) -> float:
    value = text.strip()
    try:
        fraction = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise ScalesimError(f"--tolerance must look like 10% or 0.1, got {text!r}") from None
    if not 0 <= fraction < 10:
        raise ScalesimError(f"--tolerance out of range: {text!r}")
    return fraction


def load_bench(path: Path) -> dict[str, Any]:
    try:
        document: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise ScalesimError(f"{path}: no such baseline file") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ScalesimError(f"{path}: not a readable bench file: {exc}") from None
    if document.get("schema") != BENCH_SCHEMA or not isinstance(document.get("stages"), dict):
        raise ScalesimError(f"{path}: not a scalesim bench file (schema {BENCH_SCHEMA})")
    return document


def regressions(current: dict[str, Any], baseline: dict[str, Any], *, tolerance: float) -> list[str]:
    """One line per figure that is worse than the baseline by more than `tolerance`."""
    problems = []
    for stage, base_figures in baseline["stages"].items():
        figures = current["stages"].get(stage)
        if figures is None:
            continue
        for figure in FIGURES:
            if figure.key not in base_figures or figure.key not in figures:
                continue
            old, new = float(base_figures[figure.key]), float(figures[figure.key])
            if figure.key == "error_rate":
                worse = new > old + tolerance / 10  # an absolute allowance: 10% tolerance lets 1% more errors
            elif figure.higher_is_better:
                worse = new < old * (1 - tolerance)
            else:
                worse = old > 0 and new > old * (1 + tolerance)
            if worse:
                change = (new - old) / old * 100 if old else float("inf")
                problems.append(f"{stage} {figure.key}: {new:g} {figure.unit} against baseline {old:g} "
                                f"({change:+.1f}%, tolerance {tolerance * 100:.0f}%)".replace("  ", " "))
    return problems


def bench_document(stage_results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    any_run = next(iter(stage_results.values()))
    return {
        "schema": BENCH_SCHEMA,
        "machine": any_run["machine"],
        "profile": "quick",
        "stages": {stage: figures_from_results(results) for stage, results in stage_results.items()},
        "runs": {stage: results["run_id"] for stage, results in stage_results.items()},
    }
