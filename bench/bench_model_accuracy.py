"""How well the calibrated model reproduces measured runs; prints figures.

    python bench/bench_model_accuracy.py RUN_DIR [RUN_DIR ...] [--json]

For each run folder (or results.json): the calibration (think time per request, latency, demand,
background and cap per station), then per step the measured and modelled throughput and mean
response time with their signed errors and the measured bottleneck's share of its budget, then
the accuracy summary (largest errors below 80% of the bottleneck's budget, and the saturation
point when the run reached it) against the issue's targets. Steps whose mean response time fed the
latency calibration are marked ``*``: their error there is not a prediction.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from scalesim.errors import ScalesimError
from scalesim.model.accuracy import ACCURACY_UTILIZATION, TARGETS, compare_with_measurement
from scalesim.model.calibrate import calibrate
from scalesim.results import load_results


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:+.1f}%"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("ok" if ok else "MISSED")


def report(results: dict[str, Any]) -> dict[str, Any]:
    section = compare_with_measurement(results)
    name = results.get("scenario", {}).get("name", "?")
    load = results.get("machine", {}).get("load_average")
    print(f"\n== {name}  run {results.get('run_id')}  load average {load}  "
          f"budgets {'enforced' if results.get('machine', {}).get('budgets_enforced') else 'NOT enforced'}")
    if not section["steps"]:
        print(section["note"])
        return section
    model = calibrate(results)
    print(f"think time {model.think_time * 1000:.1f} ms/request ({model.requests_per_task:.3f} requests per task), "
          f"latency {model.latency * 1000:.2f} ms (from steps {list(model.latency_steps)}), "
          f"demands fitted on steps {list(model.steps_used)}")
    for station in model.stations:
        budget = f"{station.budget:g}" if station.budget is not None else "-"
        saturated = ("" if station.saturated_demand is None else
                     f"  saturated D {station.saturated_demand * 1000:6.3f} ms"
                     + (f" + {station.queue_cost * 1e6:.2f} us x q (q <= {station.queue_limit:.0f})"
                        if station.queue_cost > 0 else "")
                     + " (q/node " + ", ".join(f"{q:.1f}" for q, _ in station.saturation_points) + ")")
        print(f"  {station.name:9s} nodes {station.node_count}  budget {budget:>5s} core  "
              f"D {station.demand * 1000:7.3f} ms  background {station.background:6.3f} core  "
              f"cap {station.onset_cap:8.1f}/s .. {station.cap:8.1f}/s{saturated}")
    if model.load_generator is not None:
        print(f"  {'locust':9s} D {model.load_generator.demand * 1000:7.3f} ms  "
              f"background {model.load_generator.background:6.3f} core  cap {model.load_generator.cap:8.1f}/s")
    header = (f"{'users':>6} {'util':>5} {'req/s':>8} {'model':>8} {'error':>7}   "
              f"{'mean ms':>8} {'model':>8} {'error':>8}")
    print(header)
    latency_steps = set(model.latency_steps)
    for row in section["steps"]:
        util = row["bottleneck_utilization"]
        mark = "*" if row["users"] in latency_steps else " "
        print(f"{row['users']:>6} {(util or 0) * 100:4.0f}% {row['measured_rps']:8.1f} {row['model_rps']:8.1f} "
              f"{_pct(row['rps_error']):>7}   {row['measured_mean_ms']:8.2f} {row['model_mean_ms']:8.2f} "
              f"{_pct(row['mean_error']):>8}{mark}")
    accuracy = section["accuracy"]
    meets = accuracy["meets"]
    print(f"below {ACCURACY_UTILIZATION:.0%} of the bottleneck budget (steps {accuracy['steps_below']}):")
    print(f"  max |throughput error|  {_pct(accuracy['max_abs_rps_error'])}  target {TARGETS['throughput']:.0%}: "
          f"{_verdict(meets['throughput'])}")
    print(f"  max |mean error|        {_pct(accuracy['max_abs_mean_error'])}  "
          f"target {TARGETS['mean_response_time']:.0%}: {_verdict(meets['mean_response_time'])}")
    print(f"every step: max |throughput error| {_pct(accuracy['max_abs_rps_error_all_steps'])}  "
          f"target {TARGETS['throughput_everywhere']:.0%}: {_verdict(meets['throughput_everywhere'])}")
    saturation = accuracy["saturation"]
    if saturation["measured"]:
        print(f"saturation: measured {saturation['measured_max_rps']:.0f} req/s, model "
              f"{saturation['model_max_rps']:.0f} req/s ({_pct(saturation['max_rps_error'])}, "
              f"{saturation['model_bottleneck']}); knee {saturation['measured_knee_users']:.0f} users measured, "
              f"{saturation['model_knee_users']:.0f} model ({_pct(saturation['knee_error'])}): "
              f"{_verdict(saturation['within_target'])}")
        predicted = saturation.get("predicted_from_unsaturated")
        if predicted and predicted.get("max_rps_error") is not None:
            print(f"  predicted from the steps below 90% only (constant demands, steps {predicted['steps_used']}): "
                  f"{predicted['model_max_rps']:.0f} req/s ({_pct(predicted['max_rps_error'])}, "
                  f"{predicted['model_bottleneck']})")
    elif saturation["model_max_rps"] is not None:
        print(f"saturation: not reached in this run; model {saturation['model_max_rps']:.0f} req/s "
              f"({saturation['model_bottleneck']}), knee near {saturation['model_knee_users']:.0f} users")
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders or results.json files")
    parser.add_argument("--json", action="store_true", help="print the model sections as JSON instead")
    args = parser.parse_args(argv)
    sections = {}
    for path in args.runs:
        try:
            results = load_results(path)
        except ScalesimError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            return 1
        if args.json:
            sections[str(path)] = compare_with_measurement(results)
        else:
            report(results)
    if args.json:
        print(json.dumps({k: {"steps": v["steps"], "accuracy": v["accuracy"]} for k, v in sections.items()},
                         indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
