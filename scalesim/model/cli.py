"""``scalesim model``: solve a network file from the command line.

    scalesim model solve NETWORK.yaml --users 1,10,100
    scalesim model solve NETWORK.yaml --users 100..20000 --method simulate --replications 10 --json
    scalesim model whatif NETWORK.yaml --users 100..20000 --scale app=40,replicas=6
    scalesim model stage4 --from RUN_DIR --app-servers 40 --replicas 6 --users 100..20000 -o curve.png

``solve`` prints, per user count, throughput, mean response time (with p50/p95/p99 and 95%
confidence half-widths when simulating) and each station's utilization and queue length; ``--json``
prints the same as one JSON document, ``--plot FILE.png`` draws the capacity curve. ``whatif`` changes
server counts first and says where the bottleneck sits and what to add next; with ``--from RUN_DIR``
it calibrates a stage from a measured run instead (``scalesim model STAGE --from RUN_DIR`` for short).

Every mistake in the input ends the command with one line on stderr (``Error: ...``) and exit status
1: usage errors included, which click would otherwise print with the usage text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from scalesim.model.mva import Bounds, MvaCurve, asymptotic_bounds, mva_curve, solve_mva
from scalesim.model.network import Distribution, ModelError, Network, load_network
from scalesim.model.simulate import SimulationSettings, simulate
from scalesim.model.solution import Solution
from scalesim.model.users import parse_users
from scalesim.model.whatif import (
    RunWhatIf,
    bottlenecks,
    capacity_curve,
    next_upgrade,
    what_if,
    what_if_from_run,
)

__all__ = ["model"]


class _OneLineCommand(click.Command):
    """A command whose usage errors are one line, like every other error here."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise click.ClickException(_one_line(exc.format_message())) from None


class _ModelGroup(click.Group):
    """``scalesim model STAGE --from RUN`` is short for ``scalesim model whatif STAGE --from RUN``.

    An unknown first word that names a bundled stage or a YAML file is taken as the what-if's
    target; anything else is an unknown command, said in one line.
    """

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                               list[str]]:
        name = args[0] if args else ""
        if name and name not in self.commands and _names_a_stage(name):
            return "whatif", self.commands["whatif"], list(args)
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            raise click.ClickException(_one_line(exc.format_message())) from None


def _names_a_stage(text: str) -> bool:
    from scalesim.topology import bundled_stages

    return text in bundled_stages() or text.endswith((".yaml", ".yml"))


@click.group(name="model", cls=_ModelGroup)
def model() -> None:
    """Capacity model: exact MVA and simulation of a closed queueing network.

    \b
    scalesim model solve NETWORK.yaml --users 1,10,100
    scalesim model stage4 --from RUN_DIR --app-servers 40 --replicas 6 --users 100..20000
    """


@model.command(cls=_OneLineCommand)
@click.argument("network_file", metavar="NETWORK", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--users", "-u", "users_text", required=True,
              help="User counts: 1,10,100 or ranges 100..20000 (geometric), A..B:K (K points), A..B+S.")
@click.option("--method", default="mva", show_default=True, help="mva (exact means) or simulate.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--replications", type=int, default=None, help="Simulation: replications [10].")
@click.option("--seed", type=int, default=None, help="Simulation: random seed [1].")
@click.option("--requests", type=int, default=None,
              help="Simulation: measured requests per replication [20000].")
@click.option("--duration", type=float, default=None,
              help="Simulation: measured simulated seconds per replication (instead of --requests).")
@click.option("--warmup", type=float, default=None,
              help="Simulation: simulated seconds discarded first [automatic].")
@click.option("--workers", type=int, default=None, help="Simulation: parallel processes [2].")
@click.option("--service", default=None,
              help="Simulation: service distribution for every station: exponential, deterministic, "
                   "lognormal or uniform [as in the file].")
@click.option("--cv", type=float, default=None,
              help="Simulation: coefficient of variation for --service (alone: lognormal).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write throughput and response time vs users to this PNG.")
def solve(network_file: Path, users_text: str, method: str, as_json: bool, replications: int | None,
          seed: int | None, requests: int | None, duration: float | None, warmup: float | None,
          workers: int | None, service: str | None, cv: float | None, plot_path: Path | None) -> None:
    """Solve NETWORK (YAML or JSON) at each user count."""
    network = _load(network_file)
    users = _users(users_text)
    simulation_options = {"--replications": replications, "--seed": seed, "--requests": requests,
                          "--duration": duration, "--warmup": warmup, "--workers": workers,
                          "--service": service, "--cv": cv}
    curve: MvaCurve | None = None
    try:
        if method == "mva":
            given = [name for name, value in simulation_options.items() if value is not None]
            if given:
                raise ModelError(f"{given[0]}: applies to --method simulate only")
            if network.class_mode == "mix":
                curve = mva_curve(network, max(users))
                solutions = [curve.at(n) for n in users]
            else:
                solutions = solve_mva(network, users)
        elif method == "simulate":
            settings = _simulation_settings(replications=replications, seed=seed, requests=requests,
                                            duration=duration, warmup=warmup, workers=workers,
                                            service=service, cv=cv)
            solutions = simulate(network, users, settings)
        else:
            raise ModelError(f"--method: must be mva or simulate, got {method!r}")
        bounds = asymptotic_bounds(network) if network.class_mode == "mix" else None
        if plot_path is not None:
            _plot(network, solutions, curve, bounds, plot_path, method=method,
                  title=f"{network.name or network_file.name}")
    except ModelError as exc:
        raise click.ClickException(_one_line(str(exc))) from None

    if as_json:
        document = {"network": str(network_file), "method": method,
                    "bounds": bounds.to_dict() if bounds else None,
                    "results": [solution.to_dict() for solution in solutions]}
        if plot_path is not None:
            document["plot"] = str(plot_path)
        click.echo(json.dumps(_jsonable(document), indent=2))
        return
    click.echo(_header(network, network_file, method, bounds))
    click.echo(_summary_table(solutions, simulated=method == "simulate"))
    click.echo("")
    click.echo(_station_table(network, solutions))
    if plot_path is not None:
        click.echo(f"\nplot: {plot_path}")


@model.command(name="whatif", cls=_OneLineCommand)
@click.argument("target", metavar="STAGE|NETWORK")
@click.option("--from", "run_dir", type=click.Path(path_type=Path), default=None,
              help="A run folder (or its results.json) to calibrate STAGE from.")
@click.option("--users", "-u", "users_text", required=True, help="User counts, as for solve.")
@click.option("--app-servers", type=int, default=None, help="With --from: app servers (each keeps its budget).")
@click.option("--replicas", type=int, default=None, help="With --from: database replicas.")
@click.option("--scale", default=None,
              help="Capacity per station in its scaling unit (servers, or copies for replicated "
                   "stations): app=40,replicas=6.")
@click.option("--speedup", default=None, help="Divide service times of stations: app=2 (network files).")
@click.option("--think-time", type=float, default=None, help="Replace the users' think time (seconds).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("-o", "--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the capacity curve to this PNG.")
def whatif_command(target: str, run_dir: Path | None, users_text: str, app_servers: int | None,
                   replicas: int | None, scale: str | None, speedup: str | None, think_time: float | None,
                   as_json: bool, plot_path: Path | None) -> None:
    """What if: change a network file, or a stage calibrated from a run (--from), and solve it.

    \b
    scalesim model whatif NETWORK.yaml --users 100..20000 --scale app=40,replicas=6
    scalesim model stage4 --from RUN_DIR --app-servers 40 --replicas 6 --users 100..20000 -o curve.png
    """
    if run_dir is not None:
        if speedup or think_time is not None:
            raise click.ClickException("--speedup and --think-time apply to network files, not to --from runs")
        counts = _assignments_or_fail(scale, "--scale", int)
        unknown = set(counts) - {"app", "replicas"}
        if unknown:
            raise click.ClickException(f"--scale: with --from only app and replicas can be scaled, not "
                                       f"{', '.join(sorted(unknown))}")
        _whatif_from_run(target, run_dir, users_text=users_text,
                         app_servers=app_servers if app_servers is not None else counts.get("app"),
                         replicas=replicas if replicas is not None else counts.get("replicas"),
                         as_json=as_json, plot_path=plot_path)
        return
    if _names_a_stage(target) and not Path(target).is_file():
        raise click.ClickException(f"{target}: a stage needs --from RUN_DIR, a run of it to calibrate from")
    if app_servers is not None or replicas is not None:
        raise click.ClickException("--app-servers and --replicas need --from RUN_DIR; for a network file use "
                                   "--scale app=N,replicas=R")
    network_file = Path(target)
    network = _load(network_file)
    users = _users(users_text)
    try:
        changed = what_if(network, scale=_assignments(scale, "--scale", int),
                          speedup=_assignments(speedup, "--speedup", float), think_time=think_time)
        points = capacity_curve(changed, users)
        upgrade = next_upgrade(changed)
        if plot_path is not None:
            _plot(changed, solve_mva(changed, users), None, asymptotic_bounds(changed)
                  if changed.class_mode == "mix" else None, plot_path, method="mva",
                  title=f"{network.name or network_file.name}: what if")
    except ModelError as exc:
        raise click.ClickException(_one_line(str(exc))) from None
    moves = bottlenecks(points)
    if as_json:
        document = {
            "network": str(network_file),
            "stations": [s.to_dict() for s in changed.stations],
            "curve": [vars(p) for p in points],
            "bottlenecks": [{"from_users": n, "station": name} for n, name in moves],
            "next_upgrade": vars(upgrade) if upgrade else None,
        }
        if plot_path is not None:
            document["plot"] = str(plot_path)
        click.echo(json.dumps(_jsonable(document), indent=2))
        return
    click.echo("stations: " + ", ".join(
        f"{s.name} ({s.servers} server{'s' if s.servers > 1 else ''}"
        + (f" x {s.copies} copies" if s.copies > 1 else "") + ")" if s.is_queue else f"{s.name} (delay)"
        for s in changed.stations))
    rows = [[str(p.users), _num(p.throughput), _num(p.response_time * 1000),
             f"{p.bottleneck} ({p.bottleneck_utilization:.0%})"] for p in points]
    click.echo(_table(["users", "throughput/s", "response ms", "bottleneck (utilization)"], rows))
    click.echo("bottleneck: " + "; ".join(f"{name} from {n} users" for n, name in moves))
    if upgrade is not None:
        click.echo(f"add next: {upgrade.describe()}")
    if plot_path is not None:
        click.echo(f"plot: {plot_path}")


def _whatif_from_run(target: str, run_dir: Path, *, users_text: str, app_servers: int | None,
                     replicas: int | None, as_json: bool, plot_path: Path | None) -> None:
    """Calibrate from the run, change the counts, print the curve and what to add next."""
    from scalesim.errors import ScalesimError
    from scalesim.results import load_results
    from scalesim.topology import load_scenario

    try:
        scenario = load_scenario(target)
        results = load_results(run_dir)
    except ScalesimError as exc:
        raise click.ClickException(_one_line(str(exc))) from None
    users = _users(users_text)
    try:
        answer = what_if_from_run(results, users=users, app_servers=app_servers, replicas=replicas)
        if plot_path is not None:
            _plot_run_whatif(answer, results, plot_path, title=f"{scenario.name}: what if")
    except ModelError as exc:
        raise click.ClickException(_one_line(str(exc))) from None
    run_name = str((results.get("scenario") or {}).get("name") or "?")
    measured, changed = answer.measured, answer.model
    caps = changed.caps()
    if as_json:
        document = {
            "stage": scenario.name,
            "run": str(results.get("_path", run_dir)),
            "run_scenario": run_name,
            "measured": measured.to_dict(),
            "model": changed.to_dict(),
            "network": changed.network_dict(),
            "curve": [p.to_dict() for p in answer.points],
            "bottlenecks": [{"from_users": n, "station": name} for n, name in answer.bottlenecks],
            "max_throughput": caps[0].throughput if caps else None,
            "knee_users": changed.knee_users if caps else None,
            "next_upgrade": vars(answer.upgrade) if answer.upgrade else None,
        }
        if plot_path is not None:
            document["plot"] = str(plot_path)
        click.echo(json.dumps(_jsonable(document), indent=2))
        return
    same = "" if run_name == scenario.name else f" (the run measured {run_name})"
    click.echo(f"{scenario.name}: calibrated from {results.get('run_id', run_dir)}{same}, "
               f"{len(measured.steps_used)} step(s); think time {changed.think_time * 1000:.0f} ms per request, "
               f"latency {changed.latency * 1000:.2f} ms")
    changes = [f"{s.name} {ms.node_count} -> {s.node_count}" for s, ms in zip(changed.stations, measured.stations,
                                                                               strict=True)
               if s.node_count != ms.node_count]
    click.echo("what if: " + (", ".join(changes) if changes else "the deployment as measured")
               + "; each node its own host with its CPU budget")
    click.echo("stations: " + ", ".join(
        f"{s.name} {s.node_count} x {s.budget:g} core" if s.budget is not None else f"{s.name} {s.node_count}"
        for s in changed.stations))
    rows = [[str(p.users), _num(p.throughput), _num(p.response_time * 1000),
             f"{p.bottleneck} ({p.bottleneck_utilization:.0%})"] for p in answer.points]
    click.echo(_table(["users", "throughput/s", "response ms", "bottleneck (utilization)"], rows))
    click.echo("bottleneck: " + "; ".join(f"{name} from {n} users" for n, name in answer.bottlenecks))
    if caps:
        click.echo(f"max throughput: {_num(caps[0].throughput)}/s ({caps[0].name} saturates first: "
                   f"{caps[0].why}), knee near {changed.knee_users:,.0f} users")
    if answer.upgrade is not None:
        click.echo(f"add next: {answer.upgrade.describe()}")
    if plot_path is not None:
        click.echo(f"plot: {plot_path}")


def _plot_run_whatif(answer: RunWhatIf, results: Mapping[str, Any], path: Path, *, title: str) -> None:
    """The what-if curve as a line (dense), its cap dashed, and the run's measured steps as points."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lowest, highest = answer.points[0].users, answer.points[-1].users
    grid = sorted({int(round(u)) for u in np.geomspace(max(lowest, 1), max(highest, 2), 300)})
    dense = answer.model.curve(grid)
    figure = Figure(figsize=(11, 4.2), constrained_layout=True)
    FigureCanvasAgg(figure)
    ax_x, ax_r = figure.subplots(1, 2)
    ax_x.plot([p.users for p in dense], [p.throughput for p in dense], label="model")
    ax_r.plot([p.users for p in dense], [p.response_time * 1000 for p in dense], label="model")
    cap = answer.model.max_throughput
    if np.isfinite(cap):
        ax_x.axhline(cap, color="k", ls="--", lw=0.8, label=f"cap: {answer.model.caps()[0].name}")
    steps = [s for s in results.get("steps") or [] if (s.get("total") or {}).get("requests")]
    if steps:
        style = {"marker": "o", "ms": 4, "ls": ":", "lw": 0.8, "label": "measured (as run)"}
        ax_x.plot([s["users"] for s in steps], [s["total"]["rps"] for s in steps], **style)
        ax_r.plot([s["users"] for s in steps], [s["total"]["mean_ms"] for s in steps], **style)
    for axis, ylabel in ((ax_x, "throughput (requests/s)"), (ax_r, "mean response time (ms)")):
        axis.set_xlabel("users")
        axis.set_ylabel(ylabel)
        axis.grid(True, alpha=0.3)
        if highest / max(lowest, 1) > 100:
            axis.set_xscale("log")
        axis.legend(fontsize="small")
    ax_r.set_yscale("log")
    figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def _assignments_or_fail(text: str | None, option: str, convert: Callable[[str], Any]) -> dict[str, Any]:
    try:
        return _assignments(text, option, convert)
    except ModelError as exc:
        raise click.ClickException(_one_line(str(exc))) from None


# --------------------------------------------------------------------------------------------
# Input helpers
# --------------------------------------------------------------------------------------------


def _load(path: Path) -> Network:
    try:
        return load_network(path)
    except ModelError as exc:
        raise click.ClickException(_one_line(str(exc))) from None


def _users(text: str) -> list[int]:
    try:
        return parse_users(text, field="--users")
    except ModelError as exc:
        raise click.ClickException(_one_line(str(exc))) from None


def _assignments(text: str | None, option: str, convert: Callable[[str], Any]) -> dict[str, Any]:
    """``app=40,replicas=6`` → ``{"app": 40, "replicas": 6}``."""
    out: dict[str, Any] = {}
    if not text:
        return out
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = convert(value.strip())
        except ValueError:
            raise ModelError(f"{option}: cannot read {item.strip()!r} (expected NAME=NUMBER)") from None
    return out


def _simulation_settings(*, replications: int | None, seed: int | None, requests: int | None,
                         duration: float | None, warmup: float | None, workers: int | None,
                         service: str | None, cv: float | None) -> SimulationSettings:
    distribution = None
    if service is not None or cv is not None:
        try:
            distribution = Distribution(kind=service or "lognormal", cv=cv)  # type: ignore[arg-type]
        except ModelError as exc:
            raise ModelError(f"--service: {exc}") from None
    defaults = SimulationSettings()
    return SimulationSettings(
        replications=defaults.replications if replications is None else replications,
        seed=defaults.seed if seed is None else seed,
        requests=requests, duration=duration, warmup=warmup,
        workers=defaults.workers if workers is None else workers,
        service=distribution)


def _plot(network: Network, solutions: Sequence[Solution], curve: MvaCurve | None, bounds: Bounds | None,
          path: Path, *, method: str, title: str) -> None:
    from scalesim.model.plot import plot_capacity

    series: dict[str, Sequence[Solution] | MvaCurve] = {}
    if method == "simulate":
        series["simulation (95% CI)"] = solutions
        if network.class_mode == "mix":
            curve = mva_curve(network, max(s.users for s in solutions))
    if curve is not None:
        series["exact MVA"] = curve
    elif method == "mva":
        series["exact MVA"] = solutions
    plot_capacity(series, path, title=title, bounds=bounds)


# --------------------------------------------------------------------------------------------
# Output helpers
# --------------------------------------------------------------------------------------------


def _header(network: Network, path: Path, method: str, bounds: Bounds | None) -> str:
    what = "exact MVA" if method == "mva" else "simulation (means over replications, ± 95% CI)"
    lines = [f"{network.name or path.name}: {what}"]
    if bounds is not None and bounds.bottleneck is not None:
        lines.append(f"bounds: max throughput {_num(bounds.max_throughput)}/s ({bounds.bottleneck} "
                     f"saturates first), knee N* = {bounds.knee_users:,.1f} users, "
                     f"minimum response time {_num(bounds.total_demand * 1000)} ms")
    return "\n".join(lines) + "\n"


def _summary_table(solutions: Sequence[Solution], *, simulated: bool) -> str:
    headers = ["users", "throughput/s", "response ms"]
    if simulated:
        headers += ["p50 ms", "p95 ms", "p99 ms"]
    headers.append("bottleneck")
    rows = []
    for s in solutions:
        row = [str(s.users), _with_ci(s.throughput, s.ci.get("throughput")),
               _with_ci(s.response_time * 1000, _scaled(s.ci.get("response_time"), 1000))]
        if simulated:
            row += [_with_ci(s.percentiles[f"p{p}"] * 1000, _scaled(s.ci.get(f"p{p}"), 1000))
                    for p in (50, 95, 99)]
        bottleneck = s.bottleneck
        row.append(f"{bottleneck} ({s.station(bottleneck).utilization:.0%})")
        rows.append(row)
    return _table(headers, rows)


def _station_table(network: Network, solutions: Sequence[Solution]) -> str:
    headers = ["users"] + [s.name for s in network.stations]
    rows = []
    for solution in solutions:
        row = [str(solution.users)]
        for station in solution.stations:
            if station.kind == "queue":
                row.append(f"{station.utilization:6.1%} / {_num(station.queue_length)}")
            else:
                row.append(f"delay / {_num(station.queue_length)}")
        rows.append(row)
    return "stations: utilization / mean queue length\n" + _table(headers, rows)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def _decimals(value: float) -> int:
    """Decimals that show about four significant figures, fewer for large numbers."""
    magnitude = abs(value)
    return 0 if magnitude >= 1000 else 1 if magnitude >= 100 else 2 if magnitude >= 1 else 4


def _num(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:,.{_decimals(value)}f}"


def _with_ci(value: float, half_width: float | None) -> str:
    if half_width is None or not math.isfinite(value):
        return _num(value)
    # The half-width is shown to the value's precision: more digits would be noise.
    return f"{_num(value)} ± {half_width:,.{_decimals(value)}f}"


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _jsonable(value: Any) -> Any:
    """JSON has no NaN or infinity: those become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _one_line(text: str) -> str:
    return " ".join(text.split())
