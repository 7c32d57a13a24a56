"""The run and comparison reports: files written, pictures embedded, figures that match the results."""

from __future__ import annotations

import re
from pathlib import Path

from scalesim.report.build import comparison_report, run_report
from tests.report.sample import sample_results


def test_run_report_writes_self_contained_html_markdown_and_pngs(tmp_path: Path) -> None:
    results = sample_results()
    html_path, md_path = run_report(results, tmp_path)
    html = html_path.read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 3 and all(len(data) > 1000 for data in images)
    assert "src=\"capacity.png\"" not in html  # embedded, not linked
    for png in ("capacity.png", "endpoints.png", "nodes.png"):
        assert (tmp_path / png).read_bytes().startswith(b"\x89PNG")
    best = results["summary"]["max_rps_within_objective"]
    assert f"{best:.0f} req/s" in html
    markdown = md_path.read_text()
    assert "| users | req/s |" in markdown and "![capacity curve](capacity.png)" in markdown
    assert results["summary"]["bottleneck_at_max"] in markdown


def test_unenforced_budgets_are_called_out(tmp_path: Path) -> None:
    html_path, _ = run_report(sample_results(budgets=False), tmp_path)
    assert "CPU budgets were not enforced" in html_path.read_text()


def test_comparison_report_shows_ratios_to_the_first_stage(tmp_path: Path) -> None:
    runs = [sample_results("stage0", scale=1.0), sample_results("stage1", scale=2.0)]
    html_path, md_path = comparison_report(runs, tmp_path)
    base = runs[0]["summary"]["max_rps_within_objective"]
    second = runs[1]["summary"]["max_rps_within_objective"]
    assert f"{second / base:.2f}x" in md_path.read_text()
    assert (tmp_path / "stages.png").exists()
    assert "data:image/png;base64" in html_path.read_text()
