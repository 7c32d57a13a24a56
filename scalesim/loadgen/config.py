"""What the Locust process is told, and what the driver may tune.

The Locust process (``reference_app/locustfile.py``) is configured by one environment
variable, :data:`ENV_VAR`, holding a JSON object. :class:`LoadConfig` is that object: who
the simulated users are (how many seed users exist to log in as, their think time, the
weights of what they do) and the staircase they climb (the user count of every step, the
warm-up and measurement window of each step, the spawn rate), plus where the process writes
its event lines and the writes the app acknowledged. A scenario's ``workload`` and ``load``
(or ``quick``) sections map onto it with :meth:`LoadConfig.from_scenario`::

    cfg = LoadConfig.from_scenario(workload=spec["workload"], load=spec["quick"], seeded_users=1000)
    env = {**os.environ, ENV_VAR: cfg.to_json()}

The JSON keys are the dataclass fields below; unknown keys are rejected so that a typo does
not silently fall back to a default.

:class:`DriverConfig` holds the driver's own tunables (time limits, grace periods, which
locustfile to run, which Locust output files to write); nothing in it reaches Locust.

This module is pure Python and never imports Locust.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

__all__ = ["ENV_VAR", "TASKS", "DEFAULT_MIX", "DriverConfig", "LoadConfig", "ramp_seconds", "seed_user_index"]

#: The environment variable holding :class:`LoadConfig` as JSON.
ENV_VAR = "SCALESIM_LOAD_CONFIG"

#: The user actions a workload ``mix`` may weight.
TASKS = ("browse_catalog", "view_book", "profile", "my_rentals", "charges", "rent_and_return")

#: stage0's mix, used when a locustfile runs without configuration.
DEFAULT_MIX: dict[str, float] = {
    "browse_catalog": 30,
    "view_book": 30,
    "profile": 10,
    "my_rentals": 15,
    "charges": 10,
    "rent_and_return": 5,
}


def seed_user_index(slot: int, seeded_users: int) -> int:
    """The seed user (1-based) that the *slot*-th simulated user logs in as.

    Slots ``0 .. seeded_users-1`` map to distinct seed users, spread over the whole range
    (a multiplicative stride near the golden ratio, coprime with *seeded_users*), so that ten
    simulated users are not users 1..10 with their neighbouring data. Slots beyond wrap round.
    """
    if seeded_users <= 1:
        return 1
    stride = max(1, round(seeded_users * 0.6180339887))
    while math.gcd(stride, seeded_users) != 1:
        stride += 1
    return (slot * stride) % seeded_users + 1


def ramp_seconds(previous_users: int, users: int, spawn_rate: float) -> float:
    """Planned time to move from *previous_users* to *users* at *spawn_rate* users/s."""
    return abs(users - previous_users) / spawn_rate


@dataclass(frozen=True, kw_only=True)
class LoadConfig:
    """The Locust process's configuration (the JSON in :data:`ENV_VAR`).

    ``steps`` are user counts; each step ramps to its count at ``spawn_rate`` users/s, waits
    ``warmup_seconds`` (not measured), then measures for ``step_seconds``. ``workers`` is the
    number of Locust worker processes (0: one local process). ``events_fd`` / ``events_path``
    say where the JSON event lines go (a pipe inherited from the driver, or a file); with
    neither, events go to Locust's log. ``acks_dir`` is the folder where each Locust process
    appends the writes the app acknowledged (``<pid>.jsonl``, see :mod:`scalesim.loadgen.acks`),
    every ``acks_flush_s`` seconds and at exit; ``None`` keeps none. ``fixed_path`` switches to
    a benchmark mode in which every user only GETs that path (no login), e.g. to compare with
    ``wrk``.
    """

    seeded_users: int = 1000
    think_min_s: float = 0.5
    think_max_s: float = 1.5
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    steps: tuple[int, ...] = (10, 20, 40)
    step_seconds: float = 40.0
    warmup_seconds: float = 8.0
    spawn_rate: float = 20.0
    workers: int = 0
    events_fd: int | None = None
    events_path: str | None = None
    acks_dir: str | None = None
    acks_flush_s: float = 1.0
    progress_interval_s: float = 1.0
    #: how long a step may take to reach its user count beyond plan before going on anyway
    ramp_slack_s: float = 10.0
    #: distributed mode: how long the master waits for the workers' window data
    collect_timeout_s: float = 5.0
    request_timeout_s: float = 30.0
    per_page: int = 20
    fixed_path: str | None = None
    #: histogram precision (relative error of every percentile)
    relative_error: float = 0.01

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(int(s) for s in self.steps))
        object.__setattr__(self, "mix", {str(k): float(v) for k, v in self.mix.items()})
        problems = []
        if self.seeded_users < 1:
            problems.append("seeded_users must be >= 1")
        if not self.steps or any(s < 1 for s in self.steps):
            problems.append(f"steps must be a non-empty list of positive user counts, got {list(self.steps)}")
        if not 0 <= self.think_min_s <= self.think_max_s:
            problems.append(f"need 0 <= think_time.min <= think_time.max, got {self.think_min_s}, {self.think_max_s}")
        unknown = sorted(set(self.mix) - set(TASKS))
        if unknown:
            problems.append(f"unknown task(s) in mix: {', '.join(unknown)} (known: {', '.join(TASKS)})")
        if any(w < 0 for w in self.mix.values()) or not any(w > 0 for w in self.mix.values()):
            problems.append("mix weights must be >= 0 with at least one > 0")
        if self.step_seconds <= 0 or self.warmup_seconds < 0:
            problems.append("need step_seconds > 0 and warmup_seconds >= 0")
        if self.spawn_rate <= 0:
            problems.append("spawn_rate must be > 0")
        if self.workers < 0:
            problems.append("workers must be >= 0")
        if self.acks_flush_s <= 0:
            problems.append("acks_flush_s must be > 0")
        if problems:
            raise ValueError("invalid load configuration: " + "; ".join(problems))

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_scenario(
        cls, *, workload: Mapping[str, Any], load: Mapping[str, Any], seeded_users: int, **overrides: Any
    ) -> LoadConfig:
        """Build from a scenario's ``workload`` and ``load`` (or ``quick``) sections.

        ``load`` may carry ``spawn_rate``; ``workload`` may omit ``think_time`` or ``mix``
        (stage0's are used). *overrides* set any other field.
        """
        think = workload.get("think_time") or {}
        kwargs: dict[str, Any] = {
            "seeded_users": int(seeded_users),
            "think_min_s": float(think.get("min", 0.5)),
            "think_max_s": float(think.get("max", think.get("min", 1.5))),
            "mix": dict(workload.get("mix") or DEFAULT_MIX),
            "steps": tuple(load["steps"]),
            "step_seconds": float(load["step_seconds"]),
            "warmup_seconds": float(load.get("warmup_seconds", 0.0)),
        }
        if "spawn_rate" in load:
            kwargs["spawn_rate"] = float(load["spawn_rate"])
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoadConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown load configuration key(s): {', '.join(unknown)}")
        return cls(**dict(data))

    @classmethod
    def from_json(cls, text: str) -> LoadConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LoadConfig:
        """Read :data:`ENV_VAR`; defaults (stage0's workload) when it is unset or empty."""
        text = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
        return cls.from_json(text) if text else cls()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["steps"] = list(self.steps)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes: Any) -> LoadConfig:
        return replace(self, **changes)

    def integer_mix(self) -> dict[str, int]:
        """The mix as whole-number weights (Locust's ``tasks``), ratios kept to about 1%."""
        positive = {k: w for k, w in self.mix.items() if w > 0}
        if all(float(w).is_integer() for w in positive.values()):
            return {k: int(w) for k, w in positive.items()}
        smallest = min(positive.values())
        return {k: max(1, round(100 * w / smallest)) for k, w in positive.items()}

    # -- the plan ----------------------------------------------------------------------------

    def ramp_timeout_s(self, previous_users: int, users: int) -> float:
        """How long a step may take to reach its user count before the run goes on anyway."""
        return 2.0 * ramp_seconds(previous_users, users, self.spawn_rate) + 2.0 + self.ramp_slack_s

    def expected_duration_s(self) -> float:
        """Planned duration of the steps (ramps, warm-ups, windows), start-up excluded.

        Each ramp is rounded up to whole seconds plus one: Locust applies a shape's user
        count on a one-second tick.
        """
        total = 0.0
        previous = 0
        for users in self.steps:
            total += math.ceil(ramp_seconds(previous, users, self.spawn_rate)) + 1.0
            total += self.warmup_seconds + self.step_seconds
            previous = users
        return total


@dataclass(frozen=True, kw_only=True)
class DriverConfig:
    """The driver's tunables (see :func:`scalesim.loadgen.driver.run_load`).

    The run is bounded: if it has not finished ``timeout_factor * expected + timeout_margin_s``
    seconds after start (``expected`` from :meth:`LoadConfig.expected_duration_s`), it is
    stopped and :class:`~scalesim.loadgen.driver.LoadgenError` raised; so it is when Locust
    sends no event for ``stall_timeout_s`` (it sends progress every second), or the first
    event takes longer than ``startup_timeout_s``.
    """

    #: the locustfile to run; ``None``: ``reference_app/locustfile.py``
    locustfile: Path | None = None
    startup_timeout_s: float = 60.0
    stall_timeout_s: float = 30.0
    timeout_factor: float = 1.25
    timeout_margin_s: float = 30.0
    #: after ``done``: how long Locust may take to write its reports and exit
    exit_grace_s: float = 15.0
    #: after SIGTERM: how long before SIGKILL
    kill_grace_s: float = 5.0
    #: Locust's own output (written into ``out_dir``): CSV (``locust_stats.csv`` …), HTML, JSON
    locust_csv: bool = True
    locust_html: bool = True
    locust_json: bool = True
    loglevel: str = "INFO"
    #: extra fields for :class:`LoadConfig` (e.g. ``{"fixed_path": "/healthz"}``)
    load_overrides: Mapping[str, Any] = field(default_factory=dict)
    #: extra command-line arguments for every Locust process
    extra_args: tuple[str, ...] = ()
