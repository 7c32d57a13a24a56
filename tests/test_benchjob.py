"""The CI benchmark's figures and its regression check against a baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from scalesim.benchjob import BENCH_SCHEMA, bench_document, parse_tolerance, regressions
from scalesim.cli import main
from scalesim.errors import ScalesimError
from tests.report.sample import sample_results


def test_figures_and_no_regression_against_itself() -> None:
    document = bench_document({"stage0": sample_results("stage0")})
    figures = document["stages"]["stage0"]
    assert figures["peak_rps"] > 0 and figures["app_cpu_ms_per_request"] > 0
    assert regressions(document, document, tolerance=0.1) == []


def test_each_worse_figure_is_one_line() -> None:
    baseline = bench_document({"stage0": sample_results("stage0", scale=2.0)})
    current = bench_document({"stage0": sample_results("stage0", scale=1.0)})
    problems = regressions(current, baseline, tolerance=0.1)
    assert problems and all("\n" not in line and line.startswith("stage0 ") for line in problems)
    assert any("peak_rps" in line for line in problems)
    assert regressions(current, baseline, tolerance=5.0) == []


def test_lower_is_better_figures() -> None:
    baseline = bench_document({"stage0": sample_results("stage0")})
    current = json.loads(json.dumps(baseline))
    current["stages"]["stage0"]["app_cpu_ms_per_request"] *= 1.5
    [line] = regressions(current, baseline, tolerance=0.1)
    assert "app_cpu_ms_per_request" in line and "+50.0%" in line


@pytest.mark.parametrize(("text", "value"), [("10%", 0.10), ("0.25", 0.25), ("0%", 0.0)])
def test_tolerance_parsing(text: str, value: float) -> None:
    assert parse_tolerance(text) == pytest.approx(value)


def test_bad_tolerance_and_baseline_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ScalesimError, match="--tolerance must look like"):
        parse_tolerance("lots")
    bad = tmp_path / "baseline.json"
    bad.write_text("{not json")
    result = CliRunner().invoke(main, ["bench", "--baseline", str(bad)])
    assert result.exit_code == 1
    assert "not a readable bench file" in result.output and "Traceback" not in result.output
    bad.write_text(json.dumps({"schema": "other"}))
    result = CliRunner().invoke(main, ["bench", "--baseline", str(bad)])
    assert f"schema {BENCH_SCHEMA}" in result.output
