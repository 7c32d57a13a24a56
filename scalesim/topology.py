"""The stage spec: what runs, how much CPU it gets, how the app behaves, and how it is loaded.

A scenario file (``scenarios/stage3.yaml``) describes one stage of the scaling guide. It is loaded
into a frozen `Scenario`, which every other part reads: the local deployment starts its nodes, the
load generator takes its workload and load steps, the capacity model takes its topology.

A file may say ``extends: stage2`` (a stage name or a path relative to the file): it is then read as
a set of changes on top of that scenario, merged key by key. That keeps each stage file to what the
stage changes and lets a user write ``extends: stage3`` plus ``nodes: {app: {count: 6}}``.

Validation happens here, once, and every problem is reported as a `ScenarioError` whose one line
names the file, the field and what is wrong. Files are read as untrusted input (`scalesim.yamlfile`:
plain data only, no tags, bounded size, depth and alias expansion); `extends` may not leave the
folder of the file named on the command line or the current folder; every number must be finite
and within `ScenarioLimits`, so a typo's ``10**30`` is refused here. Whether this machine can hold
a valid scenario is for `scalesim.deploy.machine` to say.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scalesim.errors import ScenarioError
from scalesim.yamlfile import YamlFileError, read_yaml_file


def _scenario_dir() -> Path:
    """The bundled stage files: the checkout's top-level ``scenarios/``, or their copy in an installed wheel."""
    checkout = Path(__file__).resolve().parent.parent / "scenarios"
    if checkout.is_dir():
        return checkout
    return Path(__file__).resolve().parent / "scenarios"


SCENARIO_DIR = _scenario_dir()

NODE_ROLES = ("app", "balancer", "keyvalue", "cache", "primary", "replicas", "workers")
WORKLOAD_TASKS = ("browse_catalog", "view_book", "profile", "my_rentals", "charges", "rent_and_return")
# A scenario's name becomes part of its run folder's name: nothing that could leave the runs folder.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True, kw_only=True)
class ScenarioLimits:
    """What a scenario may ask for on any machine: far above every real run, they turn a typo (10**30
    users, a count of 1e308) into a one-line error instead of a hang or an overflow."""

    max_nodes_per_role: int = 1000
    max_cpu_per_node: float = 1024.0
    max_users_per_step: int = 1_000_000
    max_steps: int = 1000
    max_seconds: float = 86_400.0          # one step, one warm-up, one think time
    max_run_seconds: float = 7 * 86_400.0  # a whole load profile
    max_spawn_rate: float = 100_000.0
    max_rows: int = 100_000_000            # users, authors, books
    max_rentals_per_user: int = 10_000
    max_seed: int = 2**63 - 1
    max_weight: float = 1e9
    max_objective_ms: float = 3_600_000.0
    max_text_length: int = 2000           # title, description
    max_extends_depth: int = 16


LIMITS = ScenarioLimits()


@dataclass(frozen=True, kw_only=True)
class NodeSpec:
    """How many processes of one role run, and the CPU budget (in cores) of each; None: no limit."""

    count: int
    cpu: float | None = None


@dataclass(frozen=True, kw_only=True)
class Nodes:
    app: NodeSpec
    balancer: NodeSpec
    keyvalue: NodeSpec
    cache: NodeSpec  # the caches' own key-value server; with count 0 the caches live in `keyvalue`
    primary: NodeSpec
    replicas: NodeSpec
    workers: NodeSpec

    def role(self, name: str) -> NodeSpec:
        spec: NodeSpec = getattr(self, name)
        return spec


@dataclass(frozen=True, kw_only=True)
class AppBehaviour:
    """The app's switches for this stage (see docs/CONTRACTS.md for their meaning)."""

    sessions: str = "memory"
    joins: str = "sql"
    query_cache: bool = False
    object_cache: bool = False
    reads: str = "primary"
    charges: str = "computed"


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    users: int = 1000
    authors: int = 400
    books: int = 2000
    rentals_per_user: int = 20
    seed: int = 42


@dataclass(frozen=True, kw_only=True)
class Workload:
    think_time_min: float = 0.5
    think_time_max: float = 1.5
    mix: Mapping[str, float] = field(default_factory=dict)
    objective_p95_ms: float = 250.0

    def to_dict(self) -> dict[str, Any]:
        """The scenario file's shape (what the load generator and the results read)."""
        return {"think_time": {"min": self.think_time_min, "max": self.think_time_max}, "mix": dict(self.mix),
                "objective_p95_ms": self.objective_p95_ms}


@dataclass(frozen=True, kw_only=True)
class LoadProfile:
    """Users step up through `steps`; each step warms up, then is measured for `step_seconds`."""

    steps: tuple[int, ...]
    step_seconds: float
    warmup_seconds: float
    spawn_rate: float = 50.0

    def to_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "step_seconds": self.step_seconds, "warmup_seconds": self.warmup_seconds,
                "spawn_rate": self.spawn_rate}

    @property
    def expected_seconds(self) -> float:
        return sum(self.warmup_seconds + self.step_seconds + users / self.spawn_rate for users in self.steps)


@dataclass(frozen=True, kw_only=True)
class Scenario:
    name: str
    title: str
    description: str
    source: Path
    nodes: Nodes
    app: AppBehaviour
    data: DataSpec
    workload: Workload
    load: LoadProfile
    quick: LoadProfile

    def with_overrides(self, *, app_servers: int | None = None, replicas: int | None = None) -> Scenario:
        """The same scenario with other node counts (the command line's --app-servers/--replicas)."""
        nodes = self.nodes
        if app_servers is not None:
            if app_servers < 1:
                raise ScenarioError(f"--app-servers must be at least 1, got {app_servers}")
            if app_servers > LIMITS.max_nodes_per_role:
                raise ScenarioError(f"--app-servers must be at most {LIMITS.max_nodes_per_role}, got {app_servers} "
                                    f"({_TOO_MANY_NODES})")
            if app_servers > 1 and nodes.balancer.count == 0:
                raise ScenarioError(
                    f"{self.name}: {app_servers} app servers need a balancer, which this stage has not "
                    "(use stage1 or later)"
                )
            nodes = dataclasses.replace(nodes, app=dataclasses.replace(nodes.app, count=app_servers))
        if replicas is not None:
            if replicas < 0:
                raise ScenarioError(f"--replicas must be 0 or more, got {replicas}")
            if replicas > LIMITS.max_nodes_per_role:
                raise ScenarioError(f"--replicas must be at most {LIMITS.max_nodes_per_role}, got {replicas} "
                                    f"({_TOO_MANY_NODES})")
            if replicas == 0 and self.app.reads == "replicas":
                raise ScenarioError(f"{self.name}: reads go to replicas, so --replicas must be at least 1")
            nodes = dataclasses.replace(nodes, replicas=dataclasses.replace(nodes.replicas, count=replicas))
        return dataclasses.replace(self, nodes=nodes)

    def profile(self, *, quick: bool) -> LoadProfile:
        return self.quick if quick else self.load


def bundled_stages() -> list[str]:
    return sorted(path.stem for path in SCENARIO_DIR.glob("stage*.yaml"))


_TOO_MANY_NODES = "no single machine runs more; `scalesim model` answers for bigger clusters"


def _shown(value: Any, *, width: int = 40) -> str:
    """A value as it appears in an error message: short, on one line."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _number_text(value: float) -> str:
    """A number for an error message: 1,000,000 or 1e+308, never 1e+06 or 400 digits."""
    if isinstance(value, int) and abs(value) >= 10**15:
        digits = str(abs(value))
        fraction = digits[1:3].rstrip("0")
        return f"{'-' if value < 0 else ''}{digits[0]}{'.' + fraction if fraction else ''}e+{len(digits) - 1}"
    if isinstance(value, int) or (value.is_integer() and abs(value) < 1e15):
        return f"{int(value):,}"
    return f"{value:,.6g}"


def resolve(name_or_path: str | Path, *, relative_to: Path | None = None) -> Path:
    """A stage name (``stage3``) or a path to a scenario file, as a path to a regular file."""
    text = str(name_or_path)
    if "\x00" in text or not text.strip():
        raise ScenarioError(f"{_shown(text)}: not a stage name or a file path")
    if text.endswith((".yaml", ".yml")) or "/" in text or os.sep in text:
        path = Path(text)
        if not path.is_absolute() and relative_to is not None:
            path = relative_to / path
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise ScenarioError(f"{text}: no such scenario file") from None
        except OSError as exc:
            raise ScenarioError(f"{_shown(text)}: cannot read: {exc.strerror or exc}") from None
        if stat.S_ISDIR(mode):
            raise ScenarioError(f"{text}: is a directory, not a scenario file")
        if not stat.S_ISREG(mode):
            raise ScenarioError(f"{text}: is not a regular file")
        return path
    path = SCENARIO_DIR / f"{text}.yaml"
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", text) or text.startswith(".") or not path.is_file():
        known = ", ".join(bundled_stages())
        raise ScenarioError(f"unknown stage {_shown(text)}: choose one of {known}, or give a scenario file")
    return path


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Read, merge (``extends``) and validate one scenario."""
    path = resolve(name_or_path)
    here = Path.cwd().resolve()
    roots = (path.resolve().parent, *((here,) if here != here.parent else ()))
    raw = _read_merged(path, seen=(), roots=roots)
    return _Validator(path).scenario(raw)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = read_yaml_file(path)
    except YamlFileError as exc:
        raise ScenarioError(str(exc)) from None
    if data is None:
        raise ScenarioError(f"{path}: is empty; a scenario is a mapping of fields (name, nodes, load, ...)")
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a scenario must be a mapping of fields, got {type(data).__name__}")
    return data


def _read_merged(path: Path, *, seen: tuple[Path, ...], roots: tuple[Path, ...]) -> dict[str, Any]:
    """The file's fields on top of those of the scenario it extends. A file may extend a bundled
    stage, or a file within `roots` (the folder of the scenario named on the command line, and the
    current folder): not one elsewhere on the machine."""
    if path.resolve() in seen:
        raise ScenarioError(f"{path}: 'extends' makes a cycle")
    if len(seen) >= LIMITS.max_extends_depth:
        raise ScenarioError(f"{path}: 'extends' goes more than {LIMITS.max_extends_depth} files deep")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ScenarioError(f"{path}: field 'extends' must be a stage name or a file path, got {_shown(parent)}")
    try:
        base_path = resolve(parent, relative_to=path.parent)
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: field 'extends': {exc}") from None
    target = base_path.resolve()
    if not (target.parent == SCENARIO_DIR.resolve() or any(target.is_relative_to(root) for root in roots)):
        raise ScenarioError(f"{path}: field 'extends' points outside {roots[0]} and the current folder: "
                            f"{_shown(parent)} (extend a stage by name, or a file beside this one)")
    base = _read_merged(base_path, seen=(*seen, path.resolve()), roots=roots)
    return _deep_merge(base, data)


def _deep_merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


class _Validator:
    """Turns the merged mapping into typed objects, naming file and field in every error."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, field_name: str, problem: str) -> ScenarioError:
        return ScenarioError(f"{self.path}: field '{field_name}' {problem}")

    def section(self, raw: Mapping[str, Any], key: str, *, required: bool = True) -> Mapping[str, Any]:
        value = raw.get(key)
        if value is None:
            if required:
                raise self.fail(key, "is missing")
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(key, f"must be a mapping, got {type(value).__name__}")
        return value

    def known_keys(self, raw: Mapping[str, Any], where: str, allowed: tuple[str, ...]) -> None:
        for key in raw:
            if key not in allowed:
                shown = key if isinstance(key, str) and len(key) <= 40 else _shown(key)
                name = f"{where}.{shown}" if where else str(shown)
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6) if isinstance(key, str) else []
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise self.fail(name, f"is not a known field ({hint}known: {', '.join(allowed)})")

    def number(self, raw: Mapping[str, Any], key: str, where: str, *, default: Any = None,
               integer: bool = False, minimum: float | None = 0, maximum: float | None = None,
               allow_none: bool = False, why: str = "") -> Any:
        """A finite number within [minimum, maximum]; `why` explains the maximum."""
        name = f"{where}.{key}"
        value = raw.get(key, default)
        if value is None:
            if allow_none:
                return None
            raise self.fail(name, "is missing")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(name, f"must be a number, got {_shown(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(name, f"must be a finite number, got {value}")
        if integer and isinstance(value, float) and not value.is_integer():
            raise self.fail(name, f"must be a whole number, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.fail(name, f"must be at least {minimum}, got {_shown(value)}")
        if maximum is not None and value > maximum:
            raise self.fail(name, f"must be at most {_number_text(maximum)}, got {_number_text(value)}"
                            + (f" ({why})" if why else ""))
        return int(value) if integer else float(value)

    def text(self, raw: Mapping[str, Any], key: str, default: str) -> str:
        value = raw.get(key, default)
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {type(value).__name__}")
        if len(value) > LIMITS.max_text_length:
            raise self.fail(key, f"must be at most {LIMITS.max_text_length} characters, got {len(value):,}")
        return value

    def choice(self, raw: Mapping[str, Any], key: str, where: str, options: tuple[Any, ...], default: Any) -> Any:
        value = raw.get(key, default)
        if value not in options or (isinstance(value, bool) and not all(isinstance(o, bool) for o in options)):
            shown = ", ".join(str(o).lower() if isinstance(o, bool) else str(o) for o in options)
            raise self.fail(f"{where}.{key}", f"must be one of {shown}, got {value!r}")
        return value

    def scenario(self, raw: Mapping[str, Any]) -> Scenario:
        self.known_keys(raw, "", ("name", "title", "description", "nodes", "app", "data", "workload",
                                  "load", "quick"))
        # Named after its file unless it says otherwise (with what a run folder's name cannot hold replaced).
        default_name = re.sub(r"[^A-Za-z0-9._-]", "-", self.path.stem).lstrip(".-")[:64] or "scenario"
        name = default_name if raw.get("name") is None else raw["name"]
        if not isinstance(name, str) or not name.strip():
            raise self.fail("name", "must be a non-empty string")
        if not NAME_PATTERN.fullmatch(name):
            raise self.fail("name", f"must be up to 64 letters, digits, '.', '_' or '-' (it names the run folder), "
                                    f"got {_shown(name)}")
        load = self.load_profile(self.section(raw, "load"), "load")
        quick_raw = raw.get("quick")
        quick = self.load_profile(self.section(raw, "quick"), "quick") if quick_raw is not None else load
        scenario = Scenario(
            name=name,
            title=self.text(raw, "title", name),
            description=self.text(raw, "description", ""),
            source=self.path,
            nodes=self.nodes(self.section(raw, "nodes")),
            app=self.app(self.section(raw, "app", required=False)),
            data=self.data(self.section(raw, "data", required=False)),
            workload=self.workload(self.section(raw, "workload", required=False)),
            load=load,
            quick=quick,
        )
        self.consistency(scenario)
        return scenario

    def nodes(self, raw: Mapping[str, Any]) -> Nodes:
        self.known_keys(raw, "nodes", NODE_ROLES)
        specs: dict[str, NodeSpec] = {}
        for role in NODE_ROLES:
            where = f"nodes.{role}"
            entry = raw.get(role)
            if entry is None:
                specs[role] = NodeSpec(count=0)
                continue
            if not isinstance(entry, Mapping):
                raise self.fail(where, "must be a mapping like {count: 1, cpu: 0.25}")
            self.known_keys(entry, where, ("count", "cpu"))
            default_count = 1 if role == "primary" else 0
            count = self.number(entry, "count", where, default=default_count, integer=True,
                                maximum=LIMITS.max_nodes_per_role, why=_TOO_MANY_NODES)
            cpu = self.number(entry, "cpu", where, allow_none=True, minimum=0.01, maximum=LIMITS.max_cpu_per_node,
                              why="cores of one node")
            specs[role] = NodeSpec(count=count, cpu=cpu)
        if specs["app"].count < 1:
            raise self.fail("nodes.app.count", "must be at least 1")
        if specs["primary"].count != 1:
            raise self.fail("nodes.primary.count", "must be 1 (one primary; add replicas for reads)")
        for role in ("balancer", "keyvalue", "cache"):
            if specs[role].count > 1:
                raise self.fail(f"nodes.{role}.count", "must be 0 or 1")
        return Nodes(**specs)

    def app(self, raw: Mapping[str, Any]) -> AppBehaviour:
        self.known_keys(raw, "app", tuple(f.name for f in dataclasses.fields(AppBehaviour)))
        return AppBehaviour(
            sessions=self.choice(raw, "sessions", "app", ("memory", "keyvalue"), "memory"),
            joins=self.choice(raw, "joins", "app", ("sql", "app"), "sql"),
            query_cache=self.choice(raw, "query_cache", "app", (False, True), False),
            object_cache=self.choice(raw, "object_cache", "app", (False, True), False),
            reads=self.choice(raw, "reads", "app", ("primary", "replicas"), "primary"),
            charges=self.choice(raw, "charges", "app", ("computed", "precomputed"), "computed"),
        )

    def data(self, raw: Mapping[str, Any]) -> DataSpec:
        self.known_keys(raw, "data", tuple(f.name for f in dataclasses.fields(DataSpec)))
        defaults = DataSpec()
        values = {
            key: self.number(raw, key, "data", default=getattr(defaults, key), integer=True,
                             minimum=0 if key in ("rentals_per_user", "seed") else 1,
                             maximum={"rentals_per_user": LIMITS.max_rentals_per_user,
                                      "seed": LIMITS.max_seed}.get(key, LIMITS.max_rows))
            for key in ("users", "authors", "books", "rentals_per_user", "seed")
        }
        return DataSpec(**values)

    def workload(self, raw: Mapping[str, Any]) -> Workload:
        self.known_keys(raw, "workload", ("think_time", "mix", "objective_p95_ms"))
        think = raw.get("think_time", {"min": 0.5, "max": 1.5})
        if isinstance(think, int | float) and not isinstance(think, bool):
            think = {"min": think, "max": think}
        if not isinstance(think, Mapping):
            raise self.fail("workload.think_time", "must be seconds or a mapping {min, max}")
        self.known_keys(think, "workload.think_time", ("min", "max"))
        low = self.number(think, "min", "workload.think_time", maximum=LIMITS.max_seconds)
        high = self.number(think, "max", "workload.think_time", maximum=LIMITS.max_seconds)
        if high < low:
            raise self.fail("workload.think_time.max", f"must not be below min ({low}), got {high}")
        mix_raw = raw.get("mix") or {name: 1 for name in WORKLOAD_TASKS}
        if not isinstance(mix_raw, Mapping):
            raise self.fail("workload.mix", "must map task names to weights")
        self.known_keys(mix_raw, "workload.mix", WORKLOAD_TASKS)
        mix = {task: self.number(mix_raw, task, "workload.mix", maximum=LIMITS.max_weight) for task in mix_raw}
        if sum(mix.values()) <= 0:
            raise self.fail("workload.mix", "needs at least one task with a positive weight")
        objective = self.number(raw, "objective_p95_ms", "workload", default=250.0, minimum=1,
                                maximum=LIMITS.max_objective_ms)
        return Workload(think_time_min=low, think_time_max=high, mix=mix, objective_p95_ms=objective)

    def load_profile(self, raw: Mapping[str, Any], where: str) -> LoadProfile:
        self.known_keys(raw, where, ("steps", "step_seconds", "warmup_seconds", "spawn_rate"))
        steps = raw.get("steps")
        if not isinstance(steps, list) or not steps:
            raise self.fail(f"{where}.steps", "must be a non-empty list of user counts")
        if len(steps) > LIMITS.max_steps:
            raise self.fail(f"{where}.steps", f"must hold at most {LIMITS.max_steps} steps, got {len(steps):,}")
        for users in steps:
            if isinstance(users, bool) or not isinstance(users, int) or users < 1:
                raise self.fail(f"{where}.steps", f"must hold positive whole numbers, got {_shown(users)}")
            if users > LIMITS.max_users_per_step:
                raise self.fail(f"{where}.steps", f"must hold at most {LIMITS.max_users_per_step:,} users per step, "
                                                  f"got {_number_text(users)}")
        profile = LoadProfile(
            steps=tuple(steps),
            step_seconds=self.number(raw, "step_seconds", where, minimum=1, maximum=LIMITS.max_seconds),
            warmup_seconds=self.number(raw, "warmup_seconds", where, default=0.0, maximum=LIMITS.max_seconds),
            spawn_rate=self.number(raw, "spawn_rate", where, default=50.0, minimum=0.1,
                                   maximum=LIMITS.max_spawn_rate),
        )
        if profile.expected_seconds > LIMITS.max_run_seconds:
            raise self.fail(where, f"would run for {profile.expected_seconds / 86_400:,.1f} days; at most "
                                   f"{LIMITS.max_run_seconds / 86_400:g} days are allowed")
        return profile

    def consistency(self, scenario: Scenario) -> None:
        nodes, app = scenario.nodes, scenario.app
        if nodes.app.count > 1 and nodes.balancer.count == 0:
            raise self.fail("nodes.balancer", f"is needed in front of {nodes.app.count} app servers")
        if nodes.app.count > 1 and app.sessions == "memory":
            raise self.fail("app.sessions", "must be keyvalue when several app servers share users")
        needs_keyvalue = [flag for flag, on in (("sessions: keyvalue", app.sessions == "keyvalue"),
                                                 ("query_cache", app.query_cache),
                                                 ("object_cache", app.object_cache),
                                                 ("charges: precomputed", app.charges == "precomputed"))
                          if on]
        if needs_keyvalue and nodes.keyvalue.count == 0:
            raise self.fail("nodes.keyvalue", f"is needed by app.{needs_keyvalue[0]}")
        if nodes.cache.count and not (app.query_cache or app.object_cache):
            raise self.fail("nodes.cache", "holds app.query_cache / app.object_cache, and neither is on "
                                           "(set its count to 0)")
        if (app.object_cache or app.charges == "precomputed") and nodes.workers.count == 0:
            raise self.fail("nodes.workers", "is needed by object_cache / precomputed charges")
        if app.reads == "replicas" and nodes.replicas.count == 0:
            raise self.fail("nodes.replicas.count", "must be at least 1 when app.reads is replicas")
