"""Hostile input to the toolkit: every bad scenario file is one clear line and a non-zero exit.

Scenario files travel between users, so each kind of bad file (wrong types, absurd numbers, YAML
tags, alias bombs, files that are not text or not files, `extends` that loops or wanders off) is
refused by `load_scenario` with one line naming the file and the problem, and the command line
turns that into one line on stderr: no traceback, nothing started, nothing written. A full disk
under the run folder is met the same way, with every server stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from scalesim.cli import main
from scalesim.deploy.machine import MachineNeeds, check_fits_machine
from scalesim.errors import ScenarioError
from scalesim.topology import LoadProfile, load_scenario
from scalesim.yamlfile import YamlLimits, read_yaml_file


def _billion_laughs(levels: int = 16) -> str:
    text = 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for level in range(1, levels):
        text += f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]\n"
    return text


BOMB = "extends: stage0\n" + _billion_laughs() + "title: *a15\n"

CASES = [
    # wrong types
    ("string_count", "extends: stage1\nnodes: {app: {count: '3'}}\n",
     "field 'nodes.app.count' must be a number, got '3'"),
    ("list_for_mapping", "extends: stage0\nnodes: [app, primary]\n", "field 'nodes' must be a mapping, got list"),
    ("list_for_node", "extends: stage0\nnodes: {app: [1]}\n", "field 'nodes.app' must be a mapping"),
    ("bool_for_number", "extends: stage0\nnodes: {app: {cpu: true}}\n",
     "field 'nodes.app.cpu' must be a number, got True"),
    ("bool_for_users", "extends: stage0\nload: {steps: [yes]}\n", "must hold positive whole numbers, got True"),
    ("mapping_for_title", "extends: stage0\ntitle: {a: 1}\n", "field 'title' must be a string, got dict"),
    ("fraction_count", "extends: stage1\nnodes: {app: {count: 2.5}}\n",
     "field 'nodes.app.count' must be a whole number"),
    # negative and zero
    ("negative_count", "extends: stage4\nnodes: {replicas: {count: -2}}\n",
     "'nodes.replicas.count' must be at least 0"),
    ("zero_apps", "extends: stage0\nnodes: {app: {count: 0}}\n", "field 'nodes.app.count' must be at least 1"),
    ("zero_step_seconds", "extends: stage0\nload: {step_seconds: 0}\n", "'load.step_seconds' must be at least 1"),
    ("negative_think", "extends: stage0\nworkload: {think_time: -1}\n", "think_time.min' must be at least 0"),
    # huge numbers
    ("huge_float", "extends: stage0\nnodes: {app: {cpu: 1e308}}\n",
     "'nodes.app.cpu' must be at most 1,024, got 1e+308"),
    ("huge_users", f"extends: stage0\nload: {{steps: [{10**30}]}}\n",
     "'load.steps' must hold at most 1,000,000 users per step, got 1e+30"),
    ("million_apps", "extends: stage1\nnodes: {app: {count: 1000000}}\n",
     "'nodes.app.count' must be at most 1,000, got 1,000,000 (no single machine runs more"),
    ("huge_data", "extends: stage0\ndata: {users: 1e12}\n", "'data.users' must be at most 100,000,000"),
    ("huge_int_seed", f"extends: stage0\ndata: {{seed: {10**400}}}\n", "'data.seed' must be at most"),
    ("endless_profile", "extends: stage0\nload: {steps: [1, 2, 3, 4, 5, 6, 7, 8], step_seconds: 86400}\n",
     "field 'load' would run for 8.0 days"),
    # NaN and infinities
    ("nan_cpu", "extends: stage0\nnodes: {app: {cpu: .nan}}\n", "'nodes.app.cpu' must be a finite number, got nan"),
    ("inf_count", "extends: stage0\nnodes: {app: {count: .inf}}\n",
     "'nodes.app.count' must be a finite number, got inf"),
    ("inf_think", "extends: stage0\nworkload: {think_time: {min: 0, max: .inf}}\n", "must be a finite number, got inf"),
    ("nan_weight", "extends: stage0\nworkload: {mix: {view_book: .NaN}}\n", "mix.view_book' must be a finite number"),
    # unknown keys
    ("typo_top", "extends: stage0\nnodez: {}\n", "field 'nodez' is not a known field (did you mean 'nodes'?"),
    ("typo_node", "extends: stage0\nnodes: {app: {cout: 2}}\n",
     "'nodes.app.cout' is not a known field (did you mean 'count'?"),
    ("typo_task", "extends: stage0\nworkload: {mix: {veiw_book: 1}}\n", "did you mean 'view_book'?"),
    ("unknown_far", "extends: stage0\nzzz: 1\n", "field 'zzz' is not a known field (known: name"),
    # YAML tags
    ("python_tag", "!!python/object/apply:os.system ['touch {canary}']\n",
     "the tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed"),
    ("python_tag_in_field", "extends: stage0\nname: !!python/object/apply:os.system ['touch {canary}']\n",
     "is not allowed: the file may hold plain data only"),
    ("custom_tag", "extends: stage0\ntitle: !include /etc/passwd\n", "the tag '!include' is not allowed"),
    # anchors and aliases
    ("billion_laughs", BOMB, "holds more than 100,000 values"),
    ("recursive_alias", "extends: stage0\ntitle: &loop [*loop]\n", "an alias refers to a node that contains it"),
    ("deep_nesting", "extends: stage0\ntitle: " + "[" * 200 + "]" * 200 + "\n", "nested more than 64 levels deep"),
    ("very_deep_nesting", "extends: stage0\ntitle: " + "[" * 600 + "]" * 600 + "\n", "nested more than 64 levels"),
    ("duplicate_key", "extends: stage0\nname: a\nname: b\n", "(line 3, column 1): key 'name' appears twice"),
    # not a mapping, empty
    ("list_document", "- a\n- b\n", "a scenario must be a mapping of fields, got list"),
    ("string_document", "just words\n", "a scenario must be a mapping of fields, got str"),
    ("empty", "", "is empty; a scenario is a mapping of fields"),
    ("comments_only", "# nothing here\n", "is empty"),
    ("two_documents", "extends: stage0\n---\nextends: stage1\n", "expected a single document"),
    ("control_character", "extends: stage0\ntitle: \"a\x07b\"\n", "not valid YAML"),
    # names that would leave the runs folder
    ("escaping_name", "extends: stage0\nname: ../../../etc\n", "field 'name' must be up to 64 letters"),
    # extends
    ("extends_outside", "extends: ../outside.yaml\n", "field 'extends' points outside"),
    ("extends_absolute", "extends: /etc/passwd\n", "field 'extends' points outside"),
    ("extends_missing", "extends: nowhere.yaml\n", "field 'extends': nowhere.yaml: no such scenario file"),
    ("extends_directory", "extends: sub/\n", "field 'extends': sub/: is a directory, not a scenario file"),
    ("extends_device", "extends: /dev/zero\n", "field 'extends': /dev/zero: is not a regular file"),
    ("extends_number", "extends: 3\n", "field 'extends' must be a stage name or a file path, got 3"),
    ("extends_itself", "extends: scenario.yaml\n", "'extends' makes a cycle"),
    ("extends_nul", "extends: \"stage0\\0\"\n", "not a stage name or a file path"),
    ("extends_unknown_stage", "extends: stage99\n", "unknown stage 'stage99'"),
]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A scenario folder with a sibling outside it and a subfolder, for the `extends` cases."""
    (tmp_path / "outside.yaml").write_text("extends: stage0\n")
    inner = tmp_path / "scenarios"
    (inner / "sub").mkdir(parents=True)
    return inner


def _write(folder: Path, text: str) -> Path:
    path = folder / "scenario.yaml"
    path.write_text(text.replace("{canary}", str(folder / "CANARY")))
    return path


@pytest.mark.parametrize(("label", "text", "message"), CASES, ids=[case[0] for case in CASES])
def test_each_hostile_file_is_one_line_naming_file_and_problem(folder: Path, label: str, text: str,
                                                               message: str) -> None:
    path = _write(folder, text)
    started = time.monotonic()
    with pytest.raises(ScenarioError) as caught:
        load_scenario(str(path))
    assert time.monotonic() - started < 5
    line = str(caught.value)
    assert message in line
    assert str(path) in line and "\n" not in line and len(line) < 400
    assert not (folder / "CANARY").exists()  # no tag ever runs


@pytest.mark.parametrize(("target", "message"), [
    ("binary.yaml", "binary.yaml: is not a UTF-8 text file (byte 0x80 at offset 128)"),
    ("a-folder/", "a-folder/: is a directory, not a scenario file"),
    ("a-folder.yaml", "a-folder.yaml: is a directory, not a scenario file"),
    ("missing.yaml", "missing.yaml: no such scenario file"),
    ("/dev/null", "/dev/null: is not a regular file"),
])
def test_binary_file_directory_device_and_missing_file(tmp_path: Path, target: str, message: str) -> None:
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-folder.yaml").mkdir()
    path = target if target.startswith("/") else str(tmp_path / target) + ("/" if target.endswith("/") else "")
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_what_is_not_hostile_still_loads(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folder)  # a file below the current folder may extend another one in it
    (folder / "base.yaml").write_text("extends: stage3\nnodes: &apps\n  app: {count: 4, cpu: 2.5e-1}\n")
    (folder / "sub" / "deep.yaml").write_text("extends: ../base.yaml\nname: wide.1_x\ntitle: 2025\n"
                                              "load: {steps: [10, 20], step_seconds: 1e1}\n")
    scenario = load_scenario(str(folder / "sub" / "deep.yaml"))
    assert scenario.nodes.app.count == 4 and scenario.nodes.app.cpu == 0.25  # 2.5e-1 is a number
    assert scenario.load.step_seconds == 10.0 and scenario.title == "2025" and scenario.name == "wide.1_x"
    odd = folder / "my scenario (copy).yaml"
    odd.write_text("extends: stage0\n")
    assert load_scenario(str(odd)).name == "stage0"
    odd.write_text("extends: stage0\nname: null\n")
    assert load_scenario(str(odd)).name == "my-scenario--copy-"  # named after a file: made safe


def test_an_extends_chain_may_not_be_endless(folder: Path) -> None:
    for index in range(30):
        (folder / f"s{index}.yaml").write_text(f"extends: s{index + 1}.yaml\n" if index < 29 else "extends: stage0\n")
    with pytest.raises(ScenarioError, match="'extends' goes more than 16 files deep"):
        load_scenario(str(folder / "s0.yaml"))


def test_yaml_limits_are_enforced_before_parsing(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("title: '" + "x" * 200_000 + "'\n")
    with pytest.raises(ValueError, match="is 200,010 bytes, more than the 100,000"):
        read_yaml_file(big)
    started = time.monotonic()
    with pytest.raises(ValueError, match="holds more than 50 values"):
        read_yaml_file(_write_text(tmp_path / "b.yaml", _billion_laughs(3)), limits=YamlLimits(max_values=50))
    assert time.monotonic() - started < 1
    assert read_yaml_file(_write_text(tmp_path / "ok.yaml", "a: &x [1, 2]\nb: *x\nc: 1e3\n")) == {
        "a": [1, 2], "b": [1, 2], "c": 1000.0}


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_what_this_machine_cannot_hold_is_refused_with_the_reason() -> None:
    stage1 = load_scenario("stage1")
    check_fits_machine(stage1, profile=stage1.load)  # the bundled stages fit
    many = stage1.with_overrides(app_servers=1000)
    tiny = MachineNeeds(memory_per_role_mb=(("app", 1e9),))
    with pytest.raises(ScenarioError, match=r"1,000 app servers.*GB of memory; this machine has .* GB available"):
        check_fits_machine(many, profile=None, needs=tiny)
    crowd = LoadProfile(steps=(900_000,), step_seconds=10, warmup_seconds=0)
    with pytest.raises(ScenarioError, match="Locust"):
        check_fits_machine(stage1, profile=crowd, servers=False)


# -- the command line ----------------------------------------------------------------------------------


def _files(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture
def sandbox(tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, str]]:
    """The scenario folder as the current folder, with home, state and runs folders of its own."""
    env = {"HOME": str(tmp_path / "home"), "XDG_STATE_HOME": str(tmp_path / "state"),
           "SCALESIM_STATE_DIR": str(tmp_path / "ledger"), "SCALESIM_RUNS_DIR": str(tmp_path / "runs")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(folder)
    return folder, {**os.environ, **env}


def _commands(path: Path) -> list[list[str]]:
    return [["run", str(path), "--quick"], ["model", str(path), "--from", str(path.parent), "--users", "10"]]


@pytest.mark.parametrize(("label", "text", "message"), CASES, ids=[case[0] for case in CASES])
def test_run_and_model_refuse_each_hostile_file_in_one_line(sandbox: tuple[Path, dict[str, str]], label: str,
                                                            text: str, message: str) -> None:
    folder, _ = sandbox
    path = _write(folder, text)
    before = _files(folder.parent)
    for args in _commands(path):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (args, result.output)
        assert message in _one_error_line(result.stderr) and result.stdout == ""
    assert _files(folder.parent) == before  # no run folder, no ledger entry, nothing else
    assert not (folder / "CANARY").exists()


@pytest.mark.parametrize("label", ["python_tag", "billion_laughs", "huge_users", "million_apps", "extends_outside"])
def test_hostile_files_in_a_scalesim_process(sandbox: tuple[Path, dict[str, str]], label: str) -> None:
    folder, env = sandbox
    text, message = next((text, message) for name, text, message in CASES if name == label)
    path = _write(folder, text)
    before = _files(folder.parent)
    for args in _commands(path):
        done = subprocess.run([sys.executable, "-m", "scalesim", *args], capture_output=True, text=True, cwd=folder,
                              timeout=120, check=False, env=env)
        assert done.returncode == 1 and done.stdout == ""
        assert message in _one_error_line(done.stderr)
    assert _files(folder.parent) == before
    assert not (folder / "CANARY").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["run", "stage1", "--app-servers", "1000000", "--quick"], "--app-servers must be at most 1000, got 1000000"),
    (["up", "stage4", "--replicas", str(10**20)], "--replicas must be at most 1000"),
    (["run", "sub"], "unknown stage 'sub'"),
    (["run", "sub/"], "sub/: is a directory, not a scenario file"),
    (["run", "binary.yaml"], "binary.yaml: is not a UTF-8 text file (byte 0xff at offset 1)"),
    (["up", "binary.yaml"], "binary.yaml: is not a UTF-8 text file"),
    (["model", "binary.yaml", "--users", "10"], "binary.yaml: is not a UTF-8 text file"),
    (["model", "bomb.yaml", "--users", "10"], "holds more than 100,000 values"),
    (["model", "solve", "tagged.yaml", "--users", "10"], "the tag '!include' is not allowed"),
    (["model", "solve", "/dev/zero", "--users", "10"], "/dev/zero: is not a regular file"),
])
def test_other_hostile_command_lines(sandbox: tuple[Path, dict[str, str]], args: list[str], message: str) -> None:
    folder, _ = sandbox
    (folder / "binary.yaml").write_bytes(b"\x00\xff\xfe" * 100)
    (folder / "bomb.yaml").write_text(_billion_laughs() + "stations: *a15\n")
    (folder / "tagged.yaml").write_text("stations: !include x.yaml\n")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert message in _one_error_line(result.stderr)
    assert not (folder.parent / "runs").exists()


def test_a_scenario_bigger_than_this_machine_is_refused_before_anything_starts(
        sandbox: tuple[Path, dict[str, str]]) -> None:
    folder, env = sandbox
    path = _write(folder, "extends: stage1\nnodes: {app: {count: 1000}}\n")  # ~60 GB of app servers
    if psutil.virtual_memory().available > 1000 * 60 * 2**20:
        pytest.skip("this machine has the memory for 1,000 app servers")
    done = subprocess.run([sys.executable, "-m", "scalesim", "run", str(path), "--quick"], capture_output=True,
                          text=True, cwd=folder, timeout=120, check=False, env=env)
    assert done.returncode == 1
    line = _one_error_line(done.stderr)
    assert "1,000 app servers" in line and "GB of memory; this machine has" in line
    result = CliRunner().invoke(main, ["up", str(path)])
    assert result.exit_code == 1 and "GB available" in _one_error_line(result.stderr)
    assert not (folder.parent / "runs").exists()


# -- a full disk under the run folder --------------------------------------------------------------------


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs, filled up (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point = tmp_path / "full"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        with open(mount_point / "filler", "wb") as filler, contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


def test_a_full_disk_is_one_line_naming_the_path_and_every_server_is_stopped(full_disk: Path,
                                                                             tmp_path: Path) -> None:
    runs = full_disk / "runs"
    ledger = tmp_path / "ledger"
    env = {**os.environ, "SCALESIM_STATE_DIR": str(ledger)}
    before = {process.pid for process in psutil.process_iter()}
    done = subprocess.run([sys.executable, "-m", "scalesim", "run", "stage0", "--quick", "--quiet",
                           "--runs-dir", str(runs)], capture_output=True, text=True, timeout=300, check=False, env=env)
    assert done.returncode == 1, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert str(runs) in lines[0] and "no space left" in lines[0].lower() and "Traceback" not in done.stderr
    time.sleep(0.5)
    left = []
    for process in psutil.process_iter(["cmdline", "environ"]):
        with contextlib.suppress(psutil.Error, TypeError, OSError):
            if process.pid in before or process.status() == psutil.STATUS_ZOMBIE:
                continue
            described = " ".join(process.info["cmdline"] or []) + json.dumps(process.info["environ"] or {})
            outputs = [os.readlink(f"/proc/{process.pid}/fd/{fd}") for fd in (1, 2)]
            if any(str(full_disk) in text for text in (described, *outputs)):
                left.append(described[:200])
    assert left == []
    assert not list(ledger.glob("*.json"))  # the run ended cleanly: its ledger entry is gone
