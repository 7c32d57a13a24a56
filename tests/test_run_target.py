"""`scalesim run --target URL`: drive a deployment scalesim did not start, with Locust's distributed mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scalesim.deploy.local import LocalDeployment
from scalesim.results import load_results
from scalesim.topology import load_scenario

SCENARIO = """\
extends: stage0
name: small
data: {users: 40, authors: 20, books: 80, rentals_per_user: 3}
quick: {steps: [4, 8], step_seconds: 4, warmup_seconds: 1, spawn_rate: 50}
"""


def test_target_run_measures_what_the_load_generator_sees(tmp_path: Path) -> None:
    scenario_file = tmp_path / "small.yaml"
    scenario_file.write_text(SCENARIO)
    deployment = LocalDeployment(scenario=load_scenario(str(scenario_file)), run_dir=tmp_path / "target")
    deployment.up()
    try:
        runs = tmp_path / "runs"
        done = subprocess.run([sys.executable, "-m", "scalesim", "run", str(scenario_file), "--quick", "--quiet",
                               "--target", deployment.entry_url, "--locust-workers", "2", "--runs-dir", str(runs)],
                              capture_output=True, text=True, timeout=240, check=False)
    finally:
        deployment.down()
    assert done.returncode == 0, done.stderr[-3000:]
    [run_dir] = list(runs.iterdir())
    results = load_results(run_dir)
    assert results["deployment"]["target"] == deployment.entry_url
    assert results["deployment"]["nodes"] == [] and results["machine"]["components"] == "remote"
    for step in results["steps"]:
        assert step["total"]["requests"] > 0 and step["total"]["failures"] == 0
        assert step["nodes"] == {}
        assert step["workers_reporting"] == 2
    assert "No local node metrics exist" in (run_dir / "report.html").read_text()


def test_bad_target_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "scalesim", "run", "stage0", "--target", "ftp://x"],
                          capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path)
    assert done.returncode == 1 and "--target must be an http(s) URL" in done.stderr
    assert "Traceback" not in done.stderr
