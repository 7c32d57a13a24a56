"""Calibration from measured runs, the comparison with measurement, and the what-if from a run.

The fixtures in data/ are real results documents (trimmed of log paths): the two quick-profile runs
of stage0 and stage4 (10 and 30 users), a stage0 run stepped past its app server's budget
(300 to 1000 users) so that the saturation is measured, and a full stage3 run (25 to 450 users)
whose three app servers got cheaper per request past their budgets.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from scalesim.model.accuracy import compare_with_measurement
from scalesim.model.calibrate import calibrate, fit_demand
from scalesim.model.cli import model as model_command
from scalesim.model.network import ModelError, network_from_dict
from scalesim.model.whatif import next_upgrade, what_if_from_run

DATA = Path(__file__).parent / "data"


def _results(name: str) -> dict:
    return json.loads((DATA / f"results_{name}.json").read_text())


@pytest.fixture(scope="module")
def stage0() -> dict:
    return _results("stage0_quick")


@pytest.fixture(scope="module")
def stage4() -> dict:
    return _results("stage4_quick")


@pytest.fixture(scope="module")
def stage0_knee() -> dict:
    return _results("stage0_knee")


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------


def test_stage0_has_an_app_server_and_a_primary(stage0):
    model = calibrate(stage0)
    assert [s.name for s in model.stations] == ["app", "primary"]
    app = model.station("app")
    assert (app.servers, app.copies, app.budget) == (1, 1, 0.25)
    assert all(s.demand > 0 for s in model.stations)
    assert model.budgets_enforced and model.cores == 2


def test_stage4_has_every_station_of_the_replicated_stage(stage4):
    model = calibrate(stage4)
    assert [s.name for s in model.stations] == ["balancer", "app", "keyvalue", "primary", "replicas"]
    assert model.station("app").servers == 3
    replicas = model.station("replicas")
    assert (replicas.servers, replicas.copies) == (1, 2)
    assert all(s.demand > 0 for s in model.stations)
    # Workers are not on the request path: reported, not a station.
    assert [n.name for n in model.background_nodes] == ["worker1"]
    assert 0 < model.cache_hit_ratio < 1


def _with_cache_node(results: dict, *, share: float, budget: float = 0.2) -> dict:
    """``results`` as if a cache server had taken ``share`` of the key-value server's CPU (stage3+ since the split)."""
    split = copy.deepcopy(results)
    for step in split["steps"]:
        keyvalue = step["nodes"]["keyvalue"]
        cpu = float(keyvalue["cpu_seconds"])
        cache = {**keyvalue, "role": "cache", "cpu_budget": budget, "cpu_seconds": cpu * share}
        keyvalue["cpu_seconds"] = cpu * (1 - share)
        for node in (keyvalue, cache):
            node["cores_used"] = node["cpu_seconds"] / float(step["measured_window_s"])
            node["utilization"] = node["cores_used"] / node["cpu_budget"]
        step["nodes"]["cache"] = cache
    return split


def test_the_cache_server_is_a_station_next_to_the_keyvalue_server(stage3_full):
    shared = calibrate(stage3_full)
    model = calibrate(_with_cache_node(stage3_full, share=0.6))
    assert [s.name for s in model.stations] == ["balancer", "app", "keyvalue", "cache", "primary"]
    cache, keyvalue = model.station("cache"), model.station("keyvalue")
    assert (cache.nodes, cache.servers, cache.copies, cache.budget) == (("cache",), 1, 1, 0.2)
    # Cached reads visit it as they visited the shared server: the demands split, their sum stays.
    assert cache.demand == pytest.approx(0.6 * shared.station("keyvalue").demand)
    assert keyvalue.demand == pytest.approx(0.4 * shared.station("keyvalue").demand)
    assert model.total_demand == pytest.approx(shared.total_demand)
    # The app tier still binds first (the calibrated latency moves a little: two queues instead of one).
    assert model.caps()[0].name == "app" and model.max_throughput == pytest.approx(shared.max_throughput, rel=1e-3)
    assert any(cap.name == "cache" for cap in model.caps())
    # A what-if scales app servers and replicas; the cache server keeps its one node and budget.
    bigger = model.with_counts(app_servers=40)
    assert bigger.station("cache").node_count == 1 and bigger.station("cache").budget == 0.2
    # Without quotas it is one single-threaded Valkey: one core at most, like the key-value server.
    unbudgeted = _with_cache_node(stage3_full, share=0.6)
    unbudgeted["machine"]["budgets_enforced"] = False
    assert calibrate(unbudgeted).station("cache").budget == 1.0


def test_a_starved_cache_server_is_the_bottleneck_and_what_to_add_next_says_so(stage3_full):
    model = calibrate(_with_cache_node(stage3_full, share=0.9, budget=0.01))
    assert model.caps()[0].name == "cache"
    assert model.curve([450])[0].bottleneck == "cache"
    upgrade = next_upgrade(model.network())
    assert upgrade is not None and upgrade.station == "cache"


def test_model_command_reads_a_run_with_a_cache_server(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(_with_cache_node(_results("stage3_full"), share=0.6)))
    result = CliRunner().invoke(model_command, ["stage3", "--from", str(run), "--app-servers", "6",
                                                "--users", "100,1000"])
    assert result.exit_code == 0, result.output
    stations = next(line for line in result.output.splitlines() if line.startswith("stations: "))
    assert "app 6 x 0.1 core" in stations and "cache 1 x 0.2 core" in stations and "keyvalue 1 x" in stations


def test_demands_follow_the_utilization_law(stage0):
    """One step: D = CPU seconds / requests exactly; several: the slope, below the plain ratio."""
    step = stage0["steps"][1]
    single = calibrate(stage0, step=1)
    # cores over the CPU window, throughput over Locust's window
    cores = step["nodes"]["app1"]["cpu_seconds"] / step["measured_window_s"]
    assert single.station("app").demand == pytest.approx(cores / (step["total"]["requests"] / step["window_s"]))
    fitted = calibrate(stage0)
    assert fitted.station("app").background > 0  # the idle cost is separated
    assert fitted.station("app").demand < single.station("app").demand


def test_fit_demand_separates_background_from_per_request_cost():
    # 0.05 core of background plus 2 ms per request, at 10, 50 and 100 req/s over 10 s windows.
    points = [(r * 10, 10.0, 0.5 + r * 10 * 0.002) for r in (10, 50, 100)]
    demand, background, method = fit_demand(points)
    assert method == "regression"
    assert demand == pytest.approx(0.002) and background == pytest.approx(0.05)
    # A single step, or a line with a negative background, falls back to the ratio.
    assert fit_demand(points[:1]) == (pytest.approx(0.5 / 100 + 0.002), 0.0, "ratio")
    assert fit_demand([(100, 10.0, 0.1), (1000, 10.0, 2.0)])[2] == "ratio"


def test_think_time_is_per_request(stage0):
    """Rent-and-return sends two requests per think: Z per request is the task's Z over requests per task."""
    model = calibrate(stage0)
    assert model.think_time_per_task == 1.0
    assert 1.02 < model.requests_per_task < 1.12
    assert model.think_time == pytest.approx(1.0 / model.requests_per_task)


def test_model_reproduces_the_measured_throughput_at_low_load(stage0, stage4):
    """Light load: X ≈ N / (Z + R), so the throughput is the think time's to get right."""
    for results in (stage0, stage4):
        model = calibrate(results)
        for step, point in zip(results["steps"], model.curve([s["users"] for s in results["steps"]]), strict=True):
            assert point.throughput == pytest.approx(step["total"]["rps"], rel=0.05)
            assert point.throughput == pytest.approx(step["users"] / (model.think_time + point.response_time))
            assert not point.capped


def test_response_time_below_the_budget_is_full_speed_plus_latency(stage0):
    """A CFS quota lets a node burst: below its budget a request costs D, not D / b."""
    model = calibrate(stage0)
    light = model.curve([1])[0]
    assert light.response_time == pytest.approx(model.latency + model.total_demand, rel=0.01)
    assert light.response_time < sum(s.demand / s.budget for s in model.stations)


def test_saturation_is_the_smallest_budget_cap(stage0_knee):
    model = calibrate(stage0_knee)
    # The fit leaves out the steps where the app server was at 90% of its budget or more.
    assert model.steps_used == (300, 550)
    app = model.station("app")
    assert model.caps()[0].name == "app"
    # The cap is the budget over the CPU per request with a deep queue (fitted on the saturated steps).
    assert model.saturation_steps == (650, 750, 850, 1000)
    assert app.saturated_demand is not None
    assert model.max_throughput == pytest.approx(app.budget / app.saturated_demand)
    far = model.curve([5000])[0]
    assert far.capped and far.throughput == pytest.approx(model.max_throughput, rel=1e-3)
    assert far.response_time == pytest.approx(5000 / far.throughput - model.think_time)
    assert far.bottleneck == "app" and far.bottleneck_utilization == pytest.approx(1.0)
    # Without the saturated steps the demand is constant: the cap is budget / light-load demand.
    constant = calibrate(stage0_knee, use_saturated=False)
    assert constant.station("app").saturated_demand is None and constant.saturation_steps == ()
    assert constant.max_throughput == pytest.approx(app.budget / constant.station("app").demand)


@pytest.fixture(scope="module")
def stage3_full() -> dict:
    return _results("stage3_full")


def test_load_dependent_demand_reproduces_a_saturated_runs_cap(stage3_full):
    """stage3, 25..450 users: three app servers at 0.1 core each got cheaper per request past their budget.

    At 300 users (99% of the budget) they spent 0.96 ms per request, at 450 (100%) 0.72 ms and
    carried 408 req/s. A constant demand fitted below 90% (1.14 ms) says 263 req/s.
    """
    constant = calibrate(stage3_full, use_saturated=False)
    model = calibrate(stage3_full)
    app = model.station("app")
    assert model.saturation_steps == (300, 450)
    assert app.saturated_demand is not None and app.saturated_demand < app.demand
    assert app.demand_at(0) == pytest.approx(app.onset_demand)
    assert app.demand_at(1) > app.demand_at(10) > app.demand_at(1000) > app.saturated_demand
    measured = stage3_full["steps"][-1]["total"]["rps"]
    assert constant.curve([450])[0].throughput < 0.7 * measured  # the old miss: -35%
    point = model.curve([450])[0]
    assert point.capped and point.bottleneck == "app"
    assert point.throughput == pytest.approx(measured, rel=0.05)
    # The saturated throughput keeps growing with the queue, towards nodes x b / D_sat.
    curve = [p.throughput for p in model.curve([300, 450, 600, 2000])]
    assert curve == sorted(curve) and curve[-1] < model.max_throughput
    # Below 80% of the budget nothing changed: full speed plus latency, within 5% of the measurement.
    for step, point in zip(stage3_full["steps"][:3], model.curve([25, 50, 100]), strict=True):
        assert point.throughput == pytest.approx(step["total"]["rps"], rel=0.05) and not point.capped


def test_accuracy_reports_in_sample_and_predicted_saturation(stage3_full):
    saturation = compare_with_measurement(stage3_full)["accuracy"]["saturation"]
    assert saturation["measured"] and abs(saturation["max_rps_error"]) <= 0.10 and saturation["within_target"]
    predicted = saturation["predicted_from_unsaturated"]
    assert predicted["steps_used"] == [25, 50, 100, 200]
    assert predicted["max_rps_error"] < -0.3  # constant demands: the app saturates too early


def test_fit_saturated_demand_recovers_the_form():
    from scalesim.model.calibrate import fit_saturated_demand
    onset, saturated = 0.001, 0.0006
    points = [(q, saturated + (onset - saturated) / (1 + q), 100.0) for q in (0.5, 3.0, 20.0)]
    assert fit_saturated_demand(onset, points) == pytest.approx(saturated)
    assert fit_saturated_demand(onset, []) is None
    dearer = [(q, 0.0012 + (onset - 0.0012) / (1 + q), 1.0) for q in (5.0, 50.0)]
    assert fit_saturated_demand(onset, dearer) == pytest.approx(0.0012)


def test_fit_load_dependence_finds_contention_only_when_it_is_there():
    from scalesim.model.calibrate import fit_load_dependence
    onset, saturated, cost = 0.001, 0.0006, 2e-6
    points = [(q, saturated + (onset - saturated) / (1 + q) + cost * q, 100.0) for q in (1.0, 10.0, 60.0, 200.0)]
    fitted, fitted_cost = fit_load_dependence(onset, points)
    assert fitted == pytest.approx(saturated) and fitted_cost == pytest.approx(cost)
    flat = [(q, saturated + (onset - saturated) / (1 + q), 100.0) for q in (1.0, 10.0, 60.0)]
    assert fit_load_dependence(onset, flat)[1] == pytest.approx(0.0, abs=1e-12)
    assert fit_load_dependence(onset, flat[:2]) == (pytest.approx(saturated), 0.0)  # two points: one parameter


def test_contention_makes_the_saturated_throughput_peak(stage3_full):
    from dataclasses import replace
    model = calibrate(stage3_full)
    app = model.station("app")
    crowded = replace(app, queue_cost=2e-6, queue_limit=100.0)
    assert crowded.demand_at(100.0) == crowded.demand_at(1000.0)  # held beyond the measured queue
    best = crowded.best_queue()
    assert 0 < best < 100 and crowded.cap == pytest.approx(crowded.cap_at(best))
    assert crowded.cap_at(best) > crowded.cap_at(best / 4) and crowded.cap_at(best) > crowded.cap_at(best * 4)
    stations = tuple(crowded if s.name == "app" else s for s in model.stations)
    curve = [p.throughput for p in replace(model, stations=stations).curve([450, 2000])]
    assert curve[1] < curve[0]


def test_what_if_keeps_the_load_dependent_demand(stage3_full):
    answer = what_if_from_run(stage3_full, users=[100, 20000], app_servers=40)
    app = answer.model.station("app")
    assert app.saturated_demand == answer.measured.station("app").saturated_demand
    assert app.node_count == 40 and app.cap == pytest.approx(40 * 0.1 / app.saturated_demand)
    assert answer.points[-1].capped and answer.points[-1].bottleneck != "app"


def test_unbudgeted_runs_are_capped_by_the_machine_and_single_processes(stage0):
    results = copy.deepcopy(stage0)
    results["machine"]["budgets_enforced"] = False
    model = calibrate(results)
    assert model.station("app").budget == 1.0  # one uvicorn process: one core at most
    assert model.station("primary").budget is None
    assert any("not enforced" in note for note in model.notes)
    assert {cap.name for cap in model.caps()} >= {"app", "machine", "load generator"}


def test_network_is_loadable_and_states_budgets_as_slower_servers(stage4):
    model = calibrate(stage4)
    document = json.loads(json.dumps(model.network_dict()))
    network = network_from_dict(document)
    demands = network.demands()
    app = model.station("app")
    assert demands["app"] == pytest.approx(app.demand / app.budget)
    assert demands["latency"] == pytest.approx(model.latency)
    assert network.station("replicas").copies == 2 and network.station("app").servers == 3


def test_bad_results_raise_model_errors(stage0):
    with pytest.raises(ModelError, match="no step"):
        calibrate({"steps": []})
    with pytest.raises(ModelError, match="step"):
        calibrate(stage0, step=7)
    broken = copy.deepcopy(stage0)
    del broken["scenario"]["workload"]["think_time"]
    with pytest.raises(ModelError, match="think_time"):
        calibrate(broken)


# --------------------------------------------------------------------------------------------
# Against the measurement
# --------------------------------------------------------------------------------------------


def test_compare_with_measurement_has_what_the_report_reads(stage4):
    section = compare_with_measurement(stage4)
    assert set(section) == {"note", "curve", "steps", "accuracy", "network"}
    assert isinstance(section["note"], str) and "balancer" in section["note"]
    curve = section["curve"]
    assert set(curve) == {"users", "throughput", "response_time"}
    assert curve["users"][0] == 1 and curve["users"][-1] >= 1.5 * 30
    assert len(curve["users"]) == len(curve["throughput"]) == len(curve["response_time"])
    assert all(0 < r < 1 for r in curve["response_time"])  # seconds
    keys = {"users", "measured_rps", "model_rps", "rps_error", "measured_mean_ms", "model_mean_ms", "mean_error",
            "bottleneck_utilization"}
    assert [row["users"] for row in section["steps"]] == [10, 30]
    for row, step in zip(section["steps"], stage4["steps"], strict=True):
        assert keys <= set(row)
        assert row["measured_rps"] == step["total"]["rps"]
        assert row["rps_error"] == pytest.approx((row["model_rps"] - row["measured_rps"]) / row["measured_rps"])
        assert row["mean_error"] == pytest.approx((row["model_mean_ms"] - row["measured_mean_ms"])
                                                  / row["measured_mean_ms"])
    accuracy = section["accuracy"]
    assert accuracy["max_abs_rps_error"] <= 0.05
    assert accuracy["saturation"]["measured"] is False
    network_from_dict(section["network"])
    json.dumps(section, allow_nan=False)  # it goes into results.json


def test_measured_saturation_is_predicted_from_the_steps_below_it(stage0_knee):
    accuracy = compare_with_measurement(stage0_knee)["accuracy"]
    saturation = accuracy["saturation"]
    assert saturation["measured"] is True
    assert abs(saturation["max_rps_error"]) <= 0.10
    assert abs(saturation["knee_error"]) <= 0.10
    assert accuracy["max_abs_rps_error"] <= 0.05


def test_a_run_without_node_cpu_gives_a_note_not_an_error(stage0):
    results = copy.deepcopy(stage0)
    for step in results["steps"]:
        step["nodes"] = {}
    section = compare_with_measurement(results)
    assert section["steps"] == [] and section["curve"] is None and "No model" in section["note"]


# --------------------------------------------------------------------------------------------
# What if, from a run
# --------------------------------------------------------------------------------------------


def test_what_if_scales_nodes_that_keep_their_budgets(stage4):
    answer = what_if_from_run(stage4, users=[100, 20_000], app_servers=40, replicas=6)
    app = answer.model.station("app")
    assert (app.servers, app.budget) == (40, answer.measured.station("app").budget)
    assert answer.model.station("replicas").copies == 6
    assert app.background == pytest.approx(answer.measured.station("app").background * 40 / 3)
    assert not answer.model.on_one_machine and "machine" not in {c.name for c in answer.model.caps()}
    assert answer.points[-1].capped and answer.points[-1].bottleneck == answer.model.caps()[0].name
    assert answer.upgrade is not None and answer.upgrade.station == answer.points[-1].bottleneck


def _run_folder(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(DATA / f"results_{name}.json", folder / "results.json")
    return folder


def test_whatif_command_prints_a_curve_and_writes_a_plot(tmp_path):
    run = _run_folder(tmp_path, "stage4_quick")
    plot = tmp_path / "curve.png"
    result = CliRunner().invoke(model_command, ["stage4", "--from", str(run), "--app-servers", "40",
                                                "--replicas", "6", "--users", "100..20000", "-o", str(plot)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("stage4: calibrated from")
    assert "app 3 -> 40" in lines[1] and "replicas 2 -> 6" in lines[1]
    assert any(line.split()[:1] == ["20000"] for line in lines)
    assert any(line.startswith("bottleneck: ") for line in lines)
    assert any(line.startswith("max throughput: ") for line in lines)
    assert any(line.startswith("add next: ") for line in lines)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_whatif_subcommand_and_json(tmp_path):
    run = _run_folder(tmp_path, "stage0_quick")
    result = CliRunner().invoke(model_command, ["whatif", "stage0", "--from", str(run), "--users", "10,100,1000",
                                                "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert [p["users"] for p in document["curve"]] == [10, 100, 1000]
    assert document["curve"][-1]["bottleneck"] == "app" and document["curve"][-1]["capped"]
    assert math.isclose(document["max_throughput"], document["curve"][-1]["throughput"])
    network_from_dict(document["network"])


@pytest.mark.parametrize("args, message", [
    (["stage4", "--from", "/nonexistent/run", "--users", "10"], "no such results file"),
    (["stage4", "--users", "10"], "needs --from"),
    (["stage9", "--from", "/nonexistent/run", "--users", "10"], "No such command"),
])
def test_bad_input_is_one_line(args, message):
    result = CliRunner().invoke(model_command, args)
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output


def test_bad_from_folder_content_is_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text("{not json")
    result = CliRunner().invoke(model_command, ["stage4", "--from", str(run), "--users", "10"])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and "not a readable results file" in result.output


def test_scale_for_a_run_accepts_app_and_replicas_only(tmp_path):
    run = _run_folder(tmp_path, "stage4_quick")
    ok = CliRunner().invoke(model_command, ["stage4", "--from", str(run), "--scale", "app=6", "--users", "50"])
    assert ok.exit_code == 0 and "app 3 -> 6" in ok.output
    bad = CliRunner().invoke(model_command, ["stage4", "--from", str(run), "--scale", "primary=2", "--users", "50"])
    assert bad.exit_code == 1 and len(bad.output.strip().splitlines()) == 1
