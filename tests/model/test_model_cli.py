"""`scalesim model` commands, driven through click's test runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from scalesim.model.cli import model

DATA = Path(__file__).parent / "data"
THREE_TIER = str(DATA / "three_tier.yaml")
STAGE4 = str(DATA / "stage4.yaml")


def _run(*args: str):
    return CliRunner().invoke(model, list(args))


def test_solve_prints_a_table_per_user_count():
    result = _run("solve", THREE_TIER, "--users", "1,10,100")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "three-tier: exact MVA"
    assert "max throughput 333.3/s (db saturates first)" in lines[1]
    header = next(line for line in lines if line.strip().startswith("users") and "throughput/s" in line)
    assert "response ms" in header
    rows = [line.split() for line in lines if line.split() and line.split()[0] in {"1", "10", "100"}]
    assert [row[0] for row in rows] == ["1", "10", "100", "1", "10", "100"]  # summary, then stations
    assert rows[0][1] == "0.9929" and rows[0][2] == "7.20"
    station_header = lines[lines.index("stations: utilization / mean queue length") + 1].split()
    assert station_header == ["users", "lb", "app", "db"]


def test_solve_json_is_valid_and_complete():
    result = _run("solve", THREE_TIER, "--users", "1..1000:4", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["method"] == "mva"
    assert document["bounds"]["bottleneck"] == "db"
    assert [r["users"] for r in document["results"]] == [1, 10, 100, 1000]
    last = document["results"][-1]
    assert last["throughput"] == pytest.approx(1 / 0.003)
    assert last["bottleneck"] == "db"
    assert {s["name"] for s in last["stations"]} == {"lb", "app", "db"}
    assert all({"utilization", "queue_length", "residence_time"} <= set(s) for s in last["stations"])


def test_simulate_reports_percentiles_and_confidence_intervals(tmp_path):
    plot = tmp_path / "curve.png"
    result = _run("solve", STAGE4, "--users", "5,50", "--method", "simulate", "--replications", "4",
                  "--requests", "2000", "--seed", "3", "--plot", str(plot))
    assert result.exit_code == 0, result.output
    assert "p95 ms" in result.output and "p99 ms" in result.output and "±" in result.output
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    as_json = _run("solve", STAGE4, "--users", "5", "--method", "simulate", "--replications", "3",
                   "--requests", "1000", "--json")
    document = json.loads(as_json.output)
    result_5 = document["results"][0]
    assert set(result_5["percentiles"]) == {"p50", "p95", "p99"}
    assert result_5["ci"]["throughput"] > 0
    assert result_5["info"]["replications"] == 3
    assert [c["name"] for c in result_5["classes"]] == ["read", "write"]


@pytest.mark.parametrize(("args", "message"), [
    (["solve", "missing.yaml", "--users", "1"], "missing.yaml: cannot read"),
    (["solve", THREE_TIER, "--users", "lots"], "--users: cannot read 'lots'"),
    (["solve", THREE_TIER], "Missing option '--users'"),
    (["solve", THREE_TIER, "--users", "5", "--method", "guess"], "--method: must be mva or simulate"),
    (["solve", THREE_TIER, "--users", "5", "--replications", "x"], "'x' is not a valid integer"),
    (["solve", THREE_TIER, "--users", "5", "--replications", "3"], "--replications: applies to --method simulate"),
    (["solve", THREE_TIER, "--users", "5", "--method", "simulate", "--replications", "0"], "replications"),
    (["solve", THREE_TIER, "--users", "5", "--method", "simulate", "--service", "weibull"], "--service"),
    (["whatif", THREE_TIER, "--users", "5", "--scale", "app"], "--scale: cannot read 'app'"),
    (["whatif", THREE_TIER, "--users", "5", "--scale", "cache=3"], "unknown station 'cache'"),
])
def test_bad_input_is_one_line_without_traceback(args, message):
    result = _run(*args)
    assert result.exit_code == 1
    assert result.output.count("\n") == 1, result.output
    assert result.output.startswith("Error: ")
    assert message in result.output
    assert "Traceback" not in result.output


def test_bad_network_file_is_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("stations:\n  - {name: a, kind: tape, demand: 1}\n")
    result = _run("solve", str(path), "--users", "1")
    assert result.exit_code == 1
    expected = f"{path}: stations[0].kind: unknown station kind 'tape' (expected one of: queue, delay)"
    assert result.output == f"Error: {expected}\n"


def test_whatif_shows_the_curve_and_what_to_add_next():
    result = _run("whatif", STAGE4, "--users", "100..20000:5", "--scale", "app=40,replicas=6")
    assert result.exit_code == 0, result.output
    assert "app (40 servers)" in result.output and "replicas (1 server x 6 copies)" in result.output
    assert "bottleneck: primary from 100 users" in result.output
    assert "add next: primary: servers 1 -> " in result.output
    document = json.loads(_run("whatif", STAGE4, "--users", "1000", "--json").output)
    assert document["next_upgrade"]["station"] == "app"
    assert document["curve"][0]["bottleneck"] == "app"
