"""Loading, validating and building networks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from scalesim.model import Distribution, ModelError, Network, RequestClass, Station, Visit, load_network
from scalesim.model.network import network_from_dict

DATA = Path(__file__).parent / "data"


def _write(tmp_path: Path, text: str, name: str = "net.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_the_issue_example_loads():
    network = load_network(DATA / "three_tier.yaml")
    assert network.name == "three-tier"
    assert network.think_time == 1.0
    assert [(s.name, s.kind, s.servers) for s in network.stations] == [
        ("lb", "queue", 1), ("app", "queue", 3), ("db", "queue", 1)]
    assert network.demands() == {"lb": 0.0002, "app": 0.004, "db": 0.003}
    assert network.class_mode == "mix" and len(network.classes) == 1


def test_classes_with_routes_average_into_demands():
    network = load_network(DATA / "stage4.yaml")
    demands = network.demands()
    assert demands["replicas"] == pytest.approx(0.8 * 0.3 * 0.003)
    assert demands["primary"] == pytest.approx(0.2 * 2 * 0.002)
    assert demands["app"] == pytest.approx(0.8 * 0.004 + 0.2 * 0.005)
    replicas = network.station("replicas")
    assert replicas.copies == 2 and replicas.capacity == 2 and replicas.scale_unit == "copies"
    assert network.station("app").scale_unit == "servers"


def test_json_and_dict_round_trip(tmp_path):
    network = load_network(DATA / "stage4.yaml")
    path = _write(tmp_path, json.dumps(network.to_dict()), "net.json")
    assert load_network(path) == network


def test_built_in_code_with_keyword_arguments():
    network = Network.from_demands({"lb": 0.0002, "app": 0.004}, servers={"app": 3}, copies={"app": 2},
                                   delays={"wan": 0.02}, think_time=1.0, name="coded")
    assert network.station("app").capacity == 6
    assert network.station("wan").kind == "delay"
    assert network.demands()["wan"] == 0.02
    by_hand = Network(
        stations=(Station(name="cpu"), Station(name="disk", service=Distribution(kind="lognormal", cv=2))),
        classes=(RequestClass(name="q", route=(Visit(station="cpu", service_time=0.01, count=3),
                                               Visit(station="disk", service_time=0.02, probability=0.5))),),
        think_time=2.0)
    assert by_hand.demands() == {"cpu": pytest.approx(0.03), "disk": pytest.approx(0.01)}
    with pytest.raises(TypeError):
        Station("cpu")  # type: ignore[misc]  # keyword-only
    with pytest.raises(ModelError, match="servers: no demand"):
        Network.from_demands({"a": 0.1}, servers={"b": 2}, think_time=1)


def test_populations_split_by_largest_remainder():
    network = network_from_dict({
        "class_mode": "populations", "stations": [{"name": "a"}],
        "classes": [{"name": "x", "weight": 1, "demands": {"a": 0.1}},
                    {"name": "y", "weight": 2, "demands": {"a": 0.1}}]})
    assert network.populations(10) == (3, 7)
    assert network.populations(3) == (1, 2)
    assert sum(network.populations(1001)) == 1001


@pytest.mark.parametrize(("text", "message"), [
    ("stations: [ {name: a, demand: 1}\n", r"^net\.yaml: not valid YAML \(line \d+, column \d+\): "),
    ("think_time: 1\n", r"^net\.yaml: stations: missing field$"),
    ("stations:\n  - {name: a}\n", r"^net\.yaml: stations\[0\]\.demand: missing field"),
    ("stations:\n  - {name: a, demand: -0.5}\n",
     r"^net\.yaml: stations\[0\]\.demand: must be a number >= 0, got -0\.5$"),
    ("stations:\n  - {name: a, demand: 1}\n  - {name: b, kind: tape, demand: 1}\n",
     r"^net\.yaml: stations\[1\]\.kind: unknown station kind 'tape' \(expected one of: queue, delay\)$"),
    ("stations:\n  - {name: a, servers: 0, demand: 1}\n", r"stations\[0\]\.servers: must be an integer >= 1"),
    ("stations:\n  - {name: a, servers: 2.5, demand: 1}\n", r"stations\[0\]\.servers: must be an integer"),
    ("stations:\n  - {name: a, demand: fast}\n", r"stations\[0\]\.demand: must be a number"),
    ("stations:\n  - {name: a, demnad: 1}\n", r"stations\[0\]\.demnad: unknown field"),
    ("stations:\n  - {name: a, demand: 1}\n  - {name: a, demand: 2}\n", r"stations\[1\]\.name: duplicate"),
    ("stations:\n  - {name: d, kind: delay, servers: 2, demand: 1}\n", r"stations\[0\]\.servers: a delay"),
    ("think_time: -1\nstations:\n  - {name: a, demand: 1}\n", r"^net\.yaml: think_time: must be a number >= 0"),
    ("stations: {a: 1}\n", r"^net\.yaml: stations: must be a non-empty list, got a mapping$"),
    ("- a\n- b\n", r"^net\.yaml: expected a mapping with 'stations' at the top level, got a list$"),
    ("", r"^net\.yaml: expected a mapping with 'stations' at the top level, got nothing$"),
    ("stations:\n  - {name: a, demand: 1}\nclasses: []\n", r"stations\[0\]\.demand: give demands either"),
    ("stations:\n  - {name: a}\nclasses:\n  - {name: r, demands: {b: 1}}\n",
     r"^net\.yaml: classes\[0\]\.demands\.b: unknown station 'b' \(stations: a\)$"),
    ("stations:\n  - {name: a}\nclasses:\n  - {name: r, route: [{station: a}]}\n",
     r"classes\[0\]\.route\[0\]\.service_time: missing field"),
    ("stations:\n  - {name: a}\nclasses:\n  - {name: r, route: [{station: a, service_time: 1, probability: 2}]}\n",
     r"classes\[0\]\.route\[0\]\.probability: must be a number in \[0, 1\]"),
    ("stations:\n  - {name: a}\nclasses:\n  - {name: r, weight: 0, demands: {a: 1}}\n",
     r"classes\[0\]\.weight: must be a number > 0"),
    ("stations:\n  - {name: a}\nclasses:\n  - {name: r}\n", r"classes\[0\]: give exactly one of 'route'"),
    ("stations:\n  - {name: a, demand: 1, service: {kind: weibull}}\n",
     r"stations\[0\]\.service\.kind: unknown distribution 'weibull'"),
    ("stations:\n  - {name: a, demand: 1, service: {kind: uniform, cv: 0.9}}\n",
     r"stations\[0\]\.service\.cv: a uniform distribution has cv <= 0.577"),
    ("class_mode: teams\nstations:\n  - {name: a, demand: 1}\n", r"class_mode: must be one of mix, populations"),
    ("stations:\n  - {name: a, demand: 0}\n", r"demand: every demand and think time is zero"),
])
def test_file_errors_are_one_line_and_name_the_field(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ModelError) as caught:
        load_network(path)
    text_of_error = str(caught.value)
    assert "\n" not in text_of_error
    assert text_of_error.startswith(str(path))
    assert isinstance(caught.value, ValueError)
    assert re.search(message, text_of_error.replace(str(tmp_path) + "/", ""))


def test_unreadable_and_bad_json_files(tmp_path):
    with pytest.raises(ModelError, match=r"missing\.yaml: cannot read"):
        load_network(tmp_path / "missing.yaml")
    path = _write(tmp_path, '{"stations": [', "net.json")
    with pytest.raises(ModelError, match=r"net\.json: not valid JSON \(line 1, column \d+\)"):
        load_network(path)


def test_changing_a_station():
    network = load_network(DATA / "three_tier.yaml")
    bigger = network.with_station("app", servers=40)
    assert bigger.station("app").servers == 40 and network.station("app").servers == 3
    with pytest.raises(ModelError, match="unknown station 'cache'"):
        network.with_station("cache", servers=2)
    with pytest.raises(ModelError, match="servers"):
        network.with_station("app", servers=0)
