"""Capacity plots: throughput and response time against users, side by side, as a PNG.

``plot_capacity`` draws any number of series — an exact MVA curve, simulated points with their
confidence intervals, measured runs — on the same two panels, optionally with the asymptotic bounds
as dashed lines, so that model and measurement can be read against each other. Matplotlib (with the
Agg canvas, without pyplot's global state) is imported only when a plot is drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scalesim.model.mva import Bounds, MvaCurve
from scalesim.model.solution import Solution

__all__ = ["plot_capacity"]


def plot_capacity(
    series: Mapping[str, Sequence[Solution] | MvaCurve],
    path: str | Path,
    *,
    title: str = "",
    bounds: Bounds | None = None,
    log_users: bool | None = None,
) -> Path:
    """Write throughput and mean response time vs users for each series to ``path`` (PNG).

    A series is a list of ``Solution`` (points; error bars where they carry a ``ci``) or an
    ``MvaCurve`` (a line through every population). ``log_users`` picks a log scale for the users
    axis; by default it is used when the users span more than two decades.
    """
    # The Agg canvas directly, not pyplot: no global backend switch, no figure registry to leak.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    figure = Figure(figsize=(11, 4.2), constrained_layout=True)
    FigureCanvasAgg(figure)
    ax_x, ax_r = figure.subplots(1, 2)
    lowest, highest = np.inf, 0.0
    for label, data in series.items():
        users, throughput, response, x_err, r_err = _columns(data)
        if users.size == 0:
            continue
        lowest, highest = min(lowest, float(users.min())), max(highest, float(users.max()))
        if isinstance(data, MvaCurve):
            ax_x.plot(users, throughput, label=label)
            ax_r.plot(users, response * 1000, label=label)
        else:
            # Points, joined only by a faint line: straight segments would suggest values between them.
            style = {"marker": "o", "ms": 4, "capsize": 3, "ls": ":", "lw": 0.8, "label": label}
            ax_x.errorbar(users, throughput, yerr=x_err, **style)
            ax_r.errorbar(users, response * 1000, yerr=None if r_err is None else r_err * 1000, **style)
    if bounds is not None and highest > 0:
        grid = np.geomspace(max(lowest, 1.0), highest, 200) if np.isfinite(lowest) else np.array([])
        if grid.size:
            ax_x.plot(grid, [bounds.throughput(n) for n in grid], "k--", lw=0.8, label="bound")
            ax_r.plot(grid, [bounds.response_time(n) * 1000 for n in grid], "k--", lw=0.8, label="bound")
    if log_users is None:
        log_users = bool(np.isfinite(lowest) and lowest > 0 and highest / lowest > 100)
    for axis, ylabel in ((ax_x, "throughput (requests/s)"), (ax_r, "mean response time (ms)")):
        axis.set_xlabel("users")
        axis.set_ylabel(ylabel)
        axis.grid(True, alpha=0.3)
        if log_users:
            axis.set_xscale("log")
        axis.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def _columns(data: Sequence[Solution] | MvaCurve) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                             Any, Any]:
    if isinstance(data, MvaCurve):
        users = np.arange(1, data.max_users + 1)
        return users, data.throughput[1:], data.response_time[1:], None, None
    points = sorted(data, key=lambda s: s.users)
    users = np.array([s.users for s in points], dtype=float)
    throughput = np.array([s.throughput for s in points])
    response = np.array([s.response_time for s in points])
    x_err = r_err = None
    if points and all("throughput" in s.ci for s in points):
        x_err = np.array([s.ci["throughput"] for s in points])
    if points and all("response_time" in s.ci for s in points):
        r_err = np.array([s.ci["response_time"] for s in points])
    return users, throughput, response, x_err, r_err
