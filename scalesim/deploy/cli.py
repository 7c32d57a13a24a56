"""``scalesim deploy``: a stage as files for real container engines.

    scalesim deploy compose STAGE [-o FILE] [--app-servers N] [--replicas R] [--image IMAGE]
    scalesim deploy k8s STAGE [-o DIR] [--app-servers N] [--replicas R] [--image IMAGE]

Both read the same stage spec as ``scalesim up`` (a stage name or a scenario file, with the same
``--app-servers`` and ``--replicas`` overrides) and write what an engine needs to run that stage:
a self-contained compose file, or a multi-document Kubernetes manifest (``DIR/<stage>.yaml``).
Without ``-o`` the result goes to standard output. Nothing is started here; see docs/deploy.md.

The group is registered by ``scalesim.cli``; every `ScalesimError` (an unknown stage, an impossible
override, a file that cannot be written) reaches the user as one line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from scalesim.commandline import friendly_errors
from scalesim.errors import ScalesimError

F = TypeVar("F", bound=Callable[..., Any])



def _stage_options(command: F) -> F:
    for option in reversed([
        click.argument("stage"),
        click.option("--app-servers", type=int, default=None, help="Override the number of app servers."),
        click.option("--replicas", type=int, default=None, help="Override the number of read replicas."),
        click.option("--image", default=None, metavar="IMAGE",
                     help="The scalesim image for app servers, workers and the seeder "
                          "(default scalesim:latest; e.g. gcr.io/PROJECT/scalesim:SHA)."),
    ]):
        command = option(command)
    return command


def _load(stage: str, *, app_servers: int | None, replicas: int | None) -> Any:
    from scalesim.topology import load_scenario

    return load_scenario(stage).with_overrides(app_servers=app_servers, replicas=replicas)


def _settings(image: str | None) -> Any:
    from scalesim.deploy.containers import ContainerSettings, Images

    if image is None:
        return ContainerSettings()
    return ContainerSettings(images=dataclasses.replace(Images(), app=image))


def _write(text: str, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise ScalesimError(f"cannot write {path}: {exc.strerror or exc}") from None


@click.group()
def deploy() -> None:
    """Write deployment files for a stage: a compose file or Kubernetes manifests."""


@deploy.command()
@_stage_options
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the compose file here (default: standard output).")
@click.option("--check", is_flag=True, help="Check the written file with `docker compose config -q` (needs -o).")
@friendly_errors
def compose(stage: str, app_servers: int | None, replicas: int | None, image: str | None,
            output: Path | None, check: bool) -> None:
    """A Docker Compose file for STAGE (a stage name or a scenario file).

    Start it with `docker compose -f FILE up -d`; the balancer answers on 127.0.0.1:8080
    (SCALESIM_HTTP_PORT changes the port).
    """
    from scalesim.deploy.compose import check_compose_file, compose_project, render_compose

    if check and output is None:
        raise click.UsageError("--check needs -o FILE")
    scenario = _load(stage, app_servers=app_servers, replicas=replicas)
    text = render_compose(compose_project(scenario, settings=_settings(image)))
    if output is None:
        click.echo(text, nl=False)
        return
    _write(text, output)
    if check:
        check_compose_file(output)
    checked = " (checked by docker compose)" if check else ""
    click.echo(f"wrote {output}{checked} for {scenario.name}: docker compose -f {output} up -d", err=True)


@deploy.command("k8s")
@_stage_options
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write DIR/<stage>.yaml (default: standard output).")
@friendly_errors
def kubernetes(stage: str, app_servers: int | None, replicas: int | None, image: str | None,
               output: Path | None) -> None:
    """Kubernetes manifests for STAGE (a stage name or a scenario file), as one multi-document file.

    Create the Secret `scalesim-db` first (see docs/deploy.md), then `kubectl apply -f DIR`.
    """
    from scalesim.deploy.containers import dns_label
    from scalesim.deploy.kubernetes import kubernetes_manifests, render_manifests

    scenario = _load(stage, app_servers=app_servers, replicas=replicas)
    text = render_manifests(kubernetes_manifests(scenario, settings=_settings(image)))
    if output is None:
        click.echo(text, nl=False)
        return
    path = output / f"{dns_label(scenario.name)}.yaml"
    _write(text, path)
    click.echo(f"wrote {path} for {scenario.name}: kubectl apply -f {output}", err=True)
