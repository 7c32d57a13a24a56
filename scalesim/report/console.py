"""What a run prints: a live progress line while it loads, and the summary table at the end."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class LiveProgress:
    """Stage, step, users, live requests/s and errors, on one line that rewrites itself on a terminal."""

    def __init__(self, *, scenario: str, quiet: bool = False, stream: TextIO | None = None,
                 interval: float = 1.0) -> None:
        self.scenario = scenario
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        # A terminal line rewrites itself every second; a log (CI) gets a line every 10 seconds.
        self.interval = interval if self.interactive else max(interval, 10.0)
        self.step = "-"
        self.phase = "starting"
        self._last_line = 0.0
        self._open_line = False

    def handle(self, event: dict[str, Any]) -> None:
        if self.quiet:
            return
        kind = event.get("event")
        if kind == "step_start":
            self.step = f"{event.get('step', 0) + 1}"
            self.phase = f"warming up to {event.get('users')} users"
            self._line(self.phase, force=True)
        elif kind == "measure_start":
            self.phase = "measuring"
        elif kind == "progress":
            failures = event.get("failures", 0)
            self._line(f"{self.phase}: {event.get('users', 0)} users, {event.get('rps', 0.0):7.1f} req/s, "
                       f"{failures} errors")
        elif kind == "step_end":
            total = event.get("total", {})
            self._line(f"step done: {event.get('users')} users, {total.get('rps', 0.0):.1f} req/s, "
                       f"p95 {total.get('p95_ms', 0.0):.1f} ms, {total.get('failures', 0)} errors", force=True,
                       keep=True)

    def _line(self, text: str, *, force: bool = False, keep: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_line < self.interval:
            return
        self._last_line = now
        line = f"{self.scenario} step {self.step}: {text}"
        if self.interactive:
            self.stream.write("\r\033[K" + line + ("\n" if keep else ""))
            self._open_line = not keep
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._open_line and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False


def _ms(value: Any) -> str:
    return f"{value:8.1f}" if isinstance(value, int | float) else f"{'-':>8}"


def summary_table(results: dict[str, Any]) -> str:
    """Per step: users, req/s, latency percentiles, errors, busiest node; then per endpoint at the top step."""
    lines = []
    scenario = results["scenario"]["name"]
    facts = results["machine"]
    budgets = "CPU budgets enforced" if facts.get("budgets_enforced") else "CPU budgets NOT enforced"
    lines.append(f"\n{scenario} ({results['profile']['name']} profile, {budgets})")
    header = (f"{'users':>6} {'req/s':>9} {'mean ms':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>7}"
              f"  busiest node")
    lines.append(header)
    lines.append("-" * len(header))
    for step, summary in zip(results["steps"], results["summary"]["steps"], strict=False):
        total = step["total"]
        rate = summary["error_rate"] * 100
        busiest = summary.get("bottleneck") or "-"
        if summary.get("bottleneck_utilization") is not None:
            busiest += f" ({summary['bottleneck_utilization'] * 100:.0f}% of budget)"
        lines.append(f"{step['users']:>6} {total['rps']:>9.1f} {_ms(total.get('mean_ms'))} {_ms(total.get('p50_ms'))} "
                     f"{_ms(total.get('p95_ms'))} {_ms(total.get('p99_ms'))} {rate:>6.2f}%  {busiest}")
    top = max(results["steps"], key=lambda step: step["total"]["rps"])
    lines.append(f"\nper endpoint at {top['users']} users")
    header = f"{'endpoint':<34} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>7}"
    lines.append(header)
    lines.append("-" * len(header))
    rows = sorted(top.get("endpoints", []), key=lambda e: -e.get("requests", 0))
    for entry in [*rows, {**top["total"], "name": "total", "method": ""}]:
        requests = entry.get("requests", 0)
        rate = entry.get("failures", 0) / requests * 100 if requests else 0.0
        name = f"{entry.get('method', '')} {entry['name']}".strip()
        lines.append(f"{name:<34} {entry.get('rps', 0.0):>8.1f} {_ms(entry.get('p50_ms'))} "
                     f"{_ms(entry.get('p95_ms'))} {_ms(entry.get('p99_ms'))} {rate:>6.2f}%")
    summary = results["summary"]
    if not results.get("faults"):  # a fault run's capacity is not the stage's: its failures are by design
        lines.append(f"\nbest throughput with p95 <= {summary['objective_p95_ms']:.0f} ms: "
                     f"{summary['max_rps_within_objective']:.1f} req/s"
                     + (f" at {summary['users_at_max']} users" if summary.get("users_at_max") else "")
                     + (f"; bottleneck {summary['bottleneck_at_max']}" if summary.get("bottleneck_at_max") else ""))
    audit = results.get("audit")
    if audit is not None:
        from scalesim.audit import audit_lines

        lines.append("\nintegrity audit")
        lines += [f"  {line}" for line in audit_lines(audit)]
        lines += [f"  PROBLEM {problem}" for problem in audit.get("problems", [])]
    return "\n".join(lines)
