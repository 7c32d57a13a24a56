"""``scalesim model``: solve a network file from the command line.

    scalesim model solve NETWORK.yaml --users 1,10,100
    scalesim model solve NETWORK.yaml --users 100..20000 --method simulate --replications 10 --json
    scalesim model whatif NETWORK.yaml --users 100..20000 --scale app=40,replicas=6

``solve`` prints, per user count, throughput, mean response time (with p50/p95/p99 and 95%
confidence half-widths when simulating) and each station's utilization and queue length; ``--json``
prints the same as one JSON document, ``--plot FILE.png`` draws the capacity curve. ``whatif`` changes
server counts first and says where the bottleneck sits and what to add next.

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
from scalesim.model.whatif import bottlenecks, capacity_curve, next_upgrade, what_if

__all__ = ["model"]


class _OneLineCommand(click.Command):
    """A command whose usage errors are one line, like every other error here."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise click.ClickException(_one_line(exc.format_message())) from None


@click.group(name="model")
def model() -> None:
    """Capacity model: exact MVA and simulation of a closed queueing network."""


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
@click.argument("network_file", metavar="NETWORK", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--users", "-u", "users_text", required=True, help="User counts, as for solve.")
@click.option("--scale", default=None,
              help="Capacity per station in its scaling unit (servers, or copies for replicated "
                   "stations): app=40,replicas=6.")
@click.option("--speedup", default=None, help="Divide service times of stations: app=2.")
@click.option("--think-time", type=float, default=None, help="Replace the users' think time (seconds).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def whatif_command(network_file: Path, users_text: str, scale: str | None, speedup: str | None,
                   think_time: float | None, as_json: bool) -> None:
    """Change NETWORK, then show its capacity curve, bottlenecks and what to add next."""
    network = _load(network_file)
    users = _users(users_text)
    try:
        changed = what_if(network, scale=_assignments(scale, "--scale", int),
                          speedup=_assignments(speedup, "--speedup", float), think_time=think_time)
        points = capacity_curve(changed, users)
        upgrade = next_upgrade(changed)
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
