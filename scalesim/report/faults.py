"""The report's fault section: what users felt second by second, and what each fault cost.

A run with faults (``scalesim run stage4 --fault kill:primary@30s+10s``) is one constant load level,
so its story is told over time: throughput, p95 latency and failed requests per second, with each
fault drawn as a shaded span from its beginning to the moment its node answered again, and a table
per fault: failed requests, seconds degraded, time back to full throughput, worst p95.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from scalesim.report.plots import DPI, _pyplot

if TYPE_CHECKING:
    from scalesim.report.document import Report

_COLORS = ("tab:red", "tab:purple", "tab:brown", "tab:olive", "tab:cyan", "tab:pink")


def _fmt(value: Any, digits: int = 1, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def fault_timeline(results: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    points = results.get("timeline", [])
    times = [p["t_s"] for p in points]
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(11, 7.5), sharex=True)
    top.plot(times, [p["rps"] for p in points], "-", color="tab:blue", linewidth=1.2)
    middle.plot(times, [p.get("p95_ms") for p in points], "-", color="tab:orange", linewidth=1.2, label="p95")
    middle.plot(times, [p.get("mean_ms") for p in points], "-", color="tab:green", linewidth=1, label="mean")
    bottom.bar(times, [p["failures"] for p in points], width=0.9, color="tab:red")
    for index, fault in enumerate(results.get("faults", {}).get("assessment", [])):
        color = _COLORS[index % len(_COLORS)]
        end = fault.get("ended_s") or (fault["began_s"] + fault["duration_s"] if fault.get("duration_s") else
                                       (times[-1] if times else fault["began_s"]))
        for axis in (top, middle, bottom):
            axis.axvspan(fault["began_s"], end, color=color, alpha=0.12)
            axis.axvline(fault["began_s"], color=color, linewidth=1)
        top.annotate(fault["fault"], xy=(fault["began_s"], 1.0), xycoords=("data", "axes fraction"),
                     xytext=(3, -12), textcoords="offset points", fontsize=8, color=color)
        if fault.get("recovered_at_s") is not None:
            top.axvline(fault["recovered_at_s"], color=color, linestyle=":", linewidth=1)
    top.set(ylabel="requests / s", title="Throughput")
    middle.set(ylabel="ms", title="Latency")
    middle.set_yscale("symlog", linthresh=10)
    middle.legend(fontsize=8, loc="upper left")
    bottom.set(ylabel="failed / s", xlabel="seconds since the load started", title="Failed requests")
    for axis in (top, middle, bottom):
        axis.grid(alpha=0.3)
        axis.set_ylim(bottom=0)
    fig.suptitle(f"{results['scenario']['name']}: faults over time (shaded: fault in force; dotted: recovered)")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def add_fault_section(report: Report, results: dict[str, Any], run_dir: Path) -> None:
    faults = results.get("faults")
    if not faults:
        return
    report.heading("Faults")
    steps = results.get("steps") or [{}]
    report.text(f"One constant load of {steps[0].get('users')} users; times count from the start of the load. "
                "A fault ends when its node answers again (restart, resume) or its delay is removed; it is "
                "recovered once throughput (3 s average) is back to 90% of the 10 s before the fault (less when those "
                "seconds themselves varied more), with no failed request, for 3 s.")
    report.image(fault_timeline(results, run_dir / "faults.png"), alt="throughput, latency and failures over time")
    report.table(
        ["fault", "began s", "node back s", "failed requests", "degraded s", "time to recover s", "baseline req/s",
         "lowest req/s", "p95 before ms", "worst p95 ms"],
        [[f["fault"], _fmt(f["began_s"]), _fmt(f.get("ended_s")), f["failed_requests"], f.get("degraded_s", "-"),
          _fmt(f.get("time_to_recover_s")) if f.get("recovered") else "not recovered",
          _fmt(f.get("baseline_rps")), _fmt(f.get("min_rps")), _fmt(f.get("p95_before_ms")),
          _fmt(f.get("worst_p95_ms"))] for f in faults.get("assessment", [])])
    rows = [[f["fault"], reason, count] for f in faults.get("assessment", []) for reason, count in
            (f.get("errors") or {}).items()]
    if rows:
        report.text("The failed requests each fault caused, by reason:")
        report.table(["fault", "failed request (reason)", "count"], rows)
    failed_actions = [a for a in faults.get("actions", []) if a.get("action") == "failed"]
    for action in failed_actions:
        report.text(f"{action['fault']}: {action.get('detail')}", css="warn")


def fault_table_text(results: dict[str, Any]) -> str:
    """The per-fault figures for the terminal ('' for a run without faults)."""
    assessment = (results.get("faults") or {}).get("assessment") or []
    if not assessment:
        return ""
    width = max(len("fault"), *(len(f["fault"]) for f in assessment))
    header = (f"{'fault':<{width}} {'failed':>7} {'degraded s':>10} {'recover s':>9} {'base req/s':>10} "
              f"{'low req/s':>9} {'worst p95':>9}")
    lines = ["\nfaults", header, "-" * len(header)]
    for f in assessment:
        recover = _fmt(f.get("time_to_recover_s")) if f.get("recovered") else "never"
        lines.append(f"{f['fault']:<{width}} {f['failed_requests']:>7} {f.get('degraded_s', 0):>10} {recover:>9} "
                     f"{_fmt(f.get('baseline_rps')):>10} {_fmt(f.get('min_rps')):>9} {_fmt(f.get('worst_p95_ms')):>9}")
    return "\n".join(lines)
