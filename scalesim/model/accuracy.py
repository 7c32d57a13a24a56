"""The model against the measurement: how well the calibrated model reproduces the run it came from.

``compare_with_measurement(results)`` calibrates the model from a run's results document
(``scalesim.model.calibrate``), solves it at every measured step and along a curve from one user to
1.5 times the last step, and returns what the run report shows (``results["model"]``)::

    {"note": str,
     "curve": {"users": [...], "throughput": [req/s], "response_time": [s]},
     "steps": [{"users", "measured_rps", "model_rps", "rps_error", "measured_mean_ms",
                "model_mean_ms", "mean_error", "bottleneck_utilization", ...}],
     "accuracy": {...},
     "network": the calibrated network as a dict that network.py loads}

Errors are signed fractions, ``(model - measured) / measured``. ``bottleneck_utilization`` is the
*measured* share of its budget used by the busiest node on the request path, the yardstick of the
accuracy summary:

* throughput and mean response time: the largest error among the steps below 80% of the
  bottleneck's budget (targets: 5% and 10%), and the largest throughput error over all steps;
* saturation, when the run reached it (a node at 95% of its budget or more): the measured maximum
  throughput against the model's cap, and the users at the knee, X_max × (Z + R at light load),
  measured against predicted (target 10%).

A run the model cannot be calibrated from (no node CPU, no think time) gives a section with only a
``note`` saying why, so that a run's report never fails on its model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from scalesim.model.calibrate import BACKGROUND_ROLES, CalibratedModel, CurvePoint, calibrate
from scalesim.model.network import ModelError

__all__ = ["ACCURACY_UTILIZATION", "SATURATION_UTILIZATION", "TARGETS", "compare_with_measurement",
           "measured_bottleneck"]

#: The accuracy summary judges steps whose bottleneck is below this share of its budget.
ACCURACY_UTILIZATION = 0.8
#: A run reached saturation when some node on the request path used this share of its budget.
SATURATION_UTILIZATION = 0.95
#: The issue's targets, as fractions.
TARGETS = {"throughput": 0.05, "throughput_everywhere": 0.10, "mean_response_time": 0.10, "saturation": 0.10}
#: The model curve reaches this multiple of the largest measured step.
CURVE_SPAN = 1.5
CURVE_POINTS = 120


def compare_with_measurement(results: Mapping[str, Any]) -> dict[str, Any]:
    """The ``model`` section of a results document (see the module docstring)."""
    if results.get("faults"):
        # CPU per request while servers crash and restart is not the steady-state cost the model needs.
        return _no_model("its load was disturbed by injected faults; calibrate from a run without them")
    try:
        model = calibrate(results)
    except ModelError as exc:
        return _no_model(str(exc))
    # Steps with nothing measured have no error to show (and JSON has no NaN).
    steps = [s for s in results.get("steps") or []
             if (s.get("total") or {}).get("requests") and s["total"].get("rps") and s["total"].get("mean_ms")]
    users = [max(int(s.get("users") or 1), 1) for s in steps]
    points = model.curve(users)
    rows = [_step_row(step, point) for step, point in zip(steps, points, strict=True)]
    accuracy = _accuracy(model, steps, rows, results)
    return {
        "note": _note(model, accuracy),
        "curve": _curve(model, max(users, default=1)),
        "steps": rows,
        "accuracy": accuracy,
        "network": model.network_dict(),
    }


def _no_model(reason: str) -> dict[str, Any]:
    return {"note": f"No model for this run: {reason}.", "curve": None, "steps": [], "accuracy": None,
            "network": None}


def measured_bottleneck(step: Mapping[str, Any]) -> tuple[str | None, float | None]:
    """The node on the request path using the largest share of its budget, and that share."""
    shares = {name: node["utilization"] for name, node in (step.get("nodes") or {}).items()
              if node.get("utilization") is not None and node.get("role") not in BACKGROUND_ROLES}
    if not shares:
        return None, None
    name = max(shares, key=lambda n: shares[n])
    return name, float(shares[name])


def _step_row(step: Mapping[str, Any], point: CurvePoint) -> dict[str, Any]:
    total = step["total"]
    measured_rps = float(total.get("rps") or 0.0)
    measured_mean_ms = float(total.get("mean_ms") or 0.0)
    model_mean_ms = point.response_time * 1000
    node, share = measured_bottleneck(step)
    return {
        "users": int(step.get("users") or point.users),
        "measured_rps": measured_rps,
        "model_rps": point.throughput,
        "rps_error": _error(point.throughput, measured_rps),
        "measured_mean_ms": measured_mean_ms,
        "model_mean_ms": model_mean_ms,
        "mean_error": _error(model_mean_ms, measured_mean_ms),
        "bottleneck_utilization": share,
        "bottleneck": node,
        "model_bottleneck": point.bottleneck,
        "model_bottleneck_utilization": point.bottleneck_utilization,
    }


def _error(model: float, measured: float) -> float:
    return (model - measured) / measured if measured else math.nan


def _curve(model: CalibratedModel, largest_step: int) -> dict[str, list[float]]:
    top = max(int(math.ceil(largest_step * CURVE_SPAN)), 2)
    users = sorted({int(round(u)) for u in np.linspace(1, top, CURVE_POINTS)} | {1, top})
    points = model.curve(users)
    return {"users": [p.users for p in points], "throughput": [p.throughput for p in points],
            "response_time": [p.response_time for p in points]}


def _accuracy(model: CalibratedModel, steps: Sequence[Mapping[str, Any]],
              rows: Sequence[Mapping[str, Any]], results: Mapping[str, Any] | None = None) -> dict[str, Any]:
    below = [r for r in rows if r["bottleneck_utilization"] is not None
             and r["bottleneck_utilization"] < ACCURACY_UTILIZATION]
    if not any(r["bottleneck_utilization"] is not None for r in rows):
        below = list(rows)  # no budgets: judge every step
    rps_below = _max_abs(r["rps_error"] for r in below)
    mean_below = _max_abs(r["mean_error"] for r in below)
    rps_all = _max_abs(r["rps_error"] for r in rows)
    saturation = _saturation(model, steps, rows, results)
    meets = {
        "throughput": None if rps_below is None else rps_below <= TARGETS["throughput"],
        "throughput_everywhere": None if rps_all is None else rps_all <= TARGETS["throughput_everywhere"],
        "mean_response_time": None if mean_below is None else mean_below <= TARGETS["mean_response_time"],
        "saturation": saturation.get("within_target"),
    }
    return {
        "below_utilization": ACCURACY_UTILIZATION,
        "steps_below": [r["users"] for r in below],
        # The latency is fitted on these steps, so their mean response time is not a prediction.
        "latency_calibrated_on": list(model.latency_steps),
        "max_abs_rps_error": rps_below,
        "max_abs_mean_error": mean_below,
        "max_abs_rps_error_all_steps": rps_all,
        "saturation": saturation,
        "targets": dict(TARGETS),
        "meets": meets,
    }


def _max_abs(values: Any) -> float | None:
    finite = [abs(v) for v in values if v is not None and math.isfinite(v)]
    return max(finite) if finite else None


def _saturation(model: CalibratedModel, steps: Sequence[Mapping[str, Any]],
                rows: Sequence[Mapping[str, Any]], results: Mapping[str, Any] | None = None) -> dict[str, Any]:
    caps = model.caps()
    light_cycle = model.think_time + model.latency + model.total_demand
    # The model's saturation over the measured range: its largest throughput at the measured
    # steps' users (with load-dependent demands the saturated throughput still grows with N).
    in_range = max(rows, key=lambda r: r["model_rps"]) if rows else None
    model_max = in_range["model_rps"] if in_range is not None and caps else None
    predicted = _predicted_saturation(results, rows) if results is not None else None
    out: dict[str, Any] = {
        "model_max_rps": model_max,
        "model_bottleneck": (in_range["model_bottleneck"] if in_range is not None else None) if caps else None,
        "model_knee_users": model_max * light_cycle if model_max is not None else None,
        "model_cap_rps": caps[0].throughput if caps else None,
        "model_cap_bottleneck": caps[0].name if caps else None,
        "saturation_steps": list(model.saturation_steps),
        "predicted_from_unsaturated": predicted,
        "measured": False,
        "measured_max_rps": None,
        "measured_knee_users": None,
        "max_rps_error": None,
        "knee_error": None,
        "within_target": None,
    }
    saturated = [r for r in rows if (r["bottleneck_utilization"] or 0.0) >= SATURATION_UTILIZATION]
    if not saturated or not caps or model_max is None:
        # Not reached: the model's saturation is its cap (the most its bottleneck carries).
        out.update({"model_max_rps": out["model_cap_rps"], "model_bottleneck": out["model_cap_bottleneck"],
                    "model_knee_users": model.knee_users if caps else None})
        return out
    light = [r for r in rows if (r["bottleneck_utilization"] or 0.0) < ACCURACY_UTILIZATION] or [rows[0]]
    light_requests = {id(r): float(s["total"]["requests"]) for r, s in zip(rows, steps, strict=True)}
    weight = sum(light_requests[id(r)] for r in light)
    light_mean = sum(light_requests[id(r)] * r["measured_mean_ms"] for r in light) / weight / 1000
    measured_max = max(r["measured_rps"] for r in rows)
    measured_knee = measured_max * (model.think_time + light_mean)
    rps_error = _error(model_max, measured_max)
    knee_error = _error(model_max * light_cycle, measured_knee)
    if predicted is not None and predicted.get("model_max_rps") is not None:
        predicted["max_rps_error"] = _error(predicted["model_max_rps"], measured_max)
    out.update({
        "measured": True,
        "measured_max_rps": measured_max,
        "measured_bottleneck": saturated[-1]["bottleneck"],
        "measured_knee_users": measured_knee,
        "max_rps_error": rps_error,
        "knee_error": knee_error,
        "within_target": abs(rps_error) <= TARGETS["saturation"] and abs(knee_error) <= TARGETS["saturation"],
    })
    return out


def _predicted_saturation(results: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The saturation predicted from the steps below 90% of every budget alone (constant demands).

    What a run that stopped before saturating (the quick profile) would have predicted: the
    honest out-of-sample figure, next to the in-sample one that uses the saturated steps.
    """
    try:
        model = calibrate(results, use_saturated=False)
    except ModelError:
        return None
    if not model.caps() or not rows:
        return None
    points = model.curve([max(int(r["users"]), 1) for r in rows])
    best = max(points, key=lambda p: p.throughput)
    return {"model_max_rps": best.throughput, "model_bottleneck": best.bottleneck,
            "model_cap_rps": model.max_throughput, "steps_used": list(model.steps_used),
            "max_rps_error": None}


def _note(model: CalibratedModel, accuracy: Mapping[str, Any]) -> str:
    caps = model.caps()
    parts = [
        f"Closed queueing network calibrated from this run: Z = {model.think_time * 1000:.0f} ms think time per "
        f"request ({model.think_time_per_task:g} s per task, {model.requests_per_task:.3f} requests per task), "
        f"{model.latency * 1000:.2f} ms latency off-CPU, demands per request "
        + ", ".join(f"{s.name} {s.demand * 1000:.3f} ms" for s in model.stations)
        + " (CPU seconds at light load; background CPU fitted out). Below the CPU budgets requests run at "
          "full speed (CFS quotas allow bursts); at a budget the throughput is what the budget buys at the CPU "
          "per request measured with the queue the station then holds"
    ]
    load_dependent = [s for s in model.stations if s.saturated_demand is not None]
    if load_dependent:
        parts[-1] += " (" + ", ".join(
            f"{s.name} {s.onset_demand * 1000:.3f} ms with no queue to {s.deep_demand * 1000:.3f} ms with a "
            "deep one" for s in load_dependent) + f", fitted on the saturated steps {list(model.saturation_steps)})"
    else:
        parts[-1] += " (no step saturated a budget, so the light-load demands are taken as constant: a pessimistic "
        "cap for app servers, which get cheaper per request with a queue)"
    if caps:
        parts[-1] += f"; the smallest cap is {caps[0].name} at {caps[0].throughput:.0f} req/s ({caps[0].why})."
    else:
        parts[-1] += "."
    if accuracy.get("max_abs_rps_error") is not None:
        parts.append(f"Below {ACCURACY_UTILIZATION:.0%} of the bottleneck's budget the model is within "
                     f"{accuracy['max_abs_rps_error']:.1%} on throughput and "
                     f"{accuracy['max_abs_mean_error']:.1%} on mean response time.")
    saturation = accuracy.get("saturation") or {}
    if saturation.get("measured"):
        parts.append(f"Saturation: measured {saturation['measured_max_rps']:.0f} req/s, model "
                     f"{saturation['model_max_rps']:.0f} req/s ({saturation['max_rps_error']:+.1%}); knee at "
                     f"{saturation['measured_knee_users']:.0f} users measured, {saturation['model_knee_users']:.0f} "
                     "predicted.")
        predicted = saturation.get("predicted_from_unsaturated") or {}
        if predicted.get("max_rps_error") is not None:
            parts.append(f"From the steps below 90% of every budget alone (constant demands) the model would have "
                         f"predicted {predicted['model_max_rps']:.0f} req/s ({predicted['max_rps_error']:+.1%}).")
    elif saturation.get("model_max_rps") is not None:
        parts.append(f"The run did not reach saturation; the model puts it at "
                     f"{saturation['model_max_rps']:.0f} req/s (knee near {saturation['model_knee_users']:.0f} users).")
    parts.extend(note.rstrip(".") + "." for note in model.notes)
    return " ".join(parts)
