"""The command line: help, and one-line errors with a non-zero exit for every kind of bad input."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from scalesim.cli import main


def _scalesim(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scalesim", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120, check=False)


def test_help_lists_the_commands() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "up", "status", "down", "report", "compare", "bench"):
        assert f"  {command} " in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "stage9"], "unknown stage 'stage9'"),
        (["run", "missing.yaml"], "missing.yaml: no such scenario file"),
        (["run", "stage0", "--app-servers", "3"], "need a balancer"),
        (["run", "stage4", "--replicas", "0"], "must be at least 1"),
        (["up", "stage9"], "unknown stage"),
        (["status"], "nothing is up"),
        (["down"], "nothing is up"),
        (["report", "."], "no such results file"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(tmp_path: Path, args: list[str], message: str) -> None:
    result = _scalesim(*args, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr


def test_malformed_scenario_file_names_file_and_field(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("extends: stage0\nnodes: {app: {count: many}}\n")
    result = _scalesim("run", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert "bad.yaml: field 'nodes.app.count' must be a number" in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_busy_port_is_reported_by_the_component(tmp_path: Path) -> None:
    from scalesim.components.binaries import find_binaries
    from scalesim.components.keyvalue import start_keyvalue
    from scalesim.errors import ComponentError

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(ComponentError, match="already in use"):
            start_keyvalue(binary=find_binaries("embedded").keyvalue_server, run_dir=tmp_path,
                           port=sock.getsockname()[1])
