"""What a fault is, as a user writes it on the command line.

A fault names an action, a node, when it happens and, optionally, how long it lasts::

    kill:app2@30s          SIGKILL app2 30 s into the load (a crash); it stays down
    kill:app2@30s+20s      ... and is started again 20 s later
    stop:cache@60s+20s     stop the cache server cleanly (its own shutdown), start it again after 20 s
    pause:primary@40s+10s  freeze the primary (SIGSTOP): connections stay open, nothing answers --
                           a hung host; it resumes (SIGCONT) after 10 s
    latency:primary=20ms@30s+30s
                           everything the app servers and workers send to the primary waits 20 ms
                           more, for 30 s (through a delay proxy, see ``delayproxy.py``)

Times count from the start of the load (the load generator's ``run_start``), in seconds (``30``,
``30s``), minutes (``1m``, ``1m30s``) or milliseconds (``500ms``). Node names are the deployment's:
``app1``..``appN`` (``app-1`` is accepted), ``balancer``, ``keyvalue`` (sessions and the job queue),
``cache``, ``primary``, ``replica1``..``replicaR``, ``worker1``..``workerW``. A fault without a
duration lasts until the end of the run.

Parsing and validation happen here, before anything starts, so a typo costs one line and no
bring-up. `FaultPlan` holds a run's faults in time order and checks them against the stage's nodes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from scalesim.errors import ScalesimError
from scalesim.topology import Scenario

ACTIONS = ("kill", "stop", "pause", "latency")
SYNTAX = "ACTION:NODE@START[+DURATION] (ACTION kill|stop|pause) or latency:NODE=DELAY@START[+DURATION]"

_DURATION = re.compile(r"^(?:(?P<m>\d+(?:\.\d+)?)m(?!s))?(?:(?P<s>\d+(?:\.\d+)?)s?)?$|^(?P<ms>\d+(?:\.\d+)?)ms$")
_FAULT = re.compile(r"^(?P<action>[a-z]+):(?P<node>[A-Za-z0-9_-]+)(?:=(?P<delay>[0-9.a-z]+))?"
                    r"@(?P<start>[0-9.a-z]+)(?:\+(?P<duration>[0-9.a-z]+))?$")
#: No fault may start later than this into a run (a typo like 3000s would hold the machine for an hour).
MAX_START_S = 3600.0
MAX_LATENCY_MS = 10_000.0


class FaultError(ScalesimError):
    """A fault the user wrote that cannot be used (one line, names the fault and the problem)."""


def parse_seconds(text: str, *, what: str) -> float:
    """``30``, ``30s``, ``1m``, ``1m30s``, ``500ms`` -> seconds."""
    match = _DURATION.match(text.strip())
    if match is None or not text.strip():
        raise FaultError(f"{what}: {text!r} is not a time (write 30s, 1m30s or 500ms)")
    if match.group("ms") is not None:
        return float(match.group("ms")) / 1000.0
    minutes, seconds = match.group("m"), match.group("s")
    if minutes is None and seconds is None:
        raise FaultError(f"{what}: {text!r} is not a time (write 30s, 1m30s or 500ms)")
    return float(minutes or 0) * 60.0 + float(seconds or 0)


def canonical_node(name: str) -> str:
    """``app-1`` -> ``app1``, ``replica-2`` -> ``replica2``; other names as written (lower case)."""
    return re.sub(r"^([a-z]+)-(\d+)$", r"\1\2", name.strip().lower())


@dataclass(frozen=True, kw_only=True)
class Fault:
    """One fault: `action` on `node` at `start_s` for `duration_s` (None: until the run ends)."""

    action: str
    node: str
    start_s: float
    duration_s: float | None = None
    delay_ms: float | None = None  # latency faults only
    text: str = ""

    @property
    def end_s(self) -> float | None:
        return None if self.duration_s is None else self.start_s + self.duration_s

    @property
    def label(self) -> str:
        return self.text or self.to_text()

    def to_text(self) -> str:
        delay = f"={self.delay_ms:g}ms" if self.delay_ms is not None else ""
        duration = f"+{self.duration_s:g}s" if self.duration_s is not None else ""
        return f"{self.action}:{self.node}{delay}@{self.start_s:g}s{duration}"

    def to_dict(self) -> dict[str, object]:
        return {"fault": self.label, "action": self.action, "node": self.node, "start_s": self.start_s,
                "duration_s": self.duration_s, "delay_ms": self.delay_ms}

    def overlaps(self, other: Fault) -> bool:
        end = self.end_s if self.end_s is not None else float("inf")
        other_end = other.end_s if other.end_s is not None else float("inf")
        return self.start_s < other_end and other.start_s < end


def parse_fault(text: str) -> Fault:
    match = _FAULT.match(text.strip())
    if match is None:
        raise FaultError(f"fault {text!r}: write {SYNTAX}, e.g. kill:app1@30s+20s")
    action = match.group("action")
    if action not in ACTIONS:
        raise FaultError(f"fault {text!r}: unknown action {action!r} (choose from {', '.join(ACTIONS)})")
    what = f"fault {text!r}"
    start = parse_seconds(match.group("start"), what=what)
    if start > MAX_START_S:
        raise FaultError(f"{what}: starts {start:g} s into the run, later than the {MAX_START_S:g} s allowed")
    duration = parse_seconds(match.group("duration"), what=what) if match.group("duration") else None
    if duration is not None and duration <= 0:
        raise FaultError(f"{what}: the duration must be more than 0 s")
    delay_text = match.group("delay")
    delay_ms = None
    if action == "latency":
        if delay_text is None:
            raise FaultError(f"{what}: say how much latency, e.g. latency:primary=20ms@30s+30s")
        delay_ms = parse_seconds(delay_text if delay_text.endswith(("ms", "s", "m")) else delay_text + "ms",
                                 what=what) * 1000.0
        if not 0 < delay_ms <= MAX_LATENCY_MS:
            raise FaultError(f"{what}: the delay must be between 0 and {MAX_LATENCY_MS:g} ms")
    elif delay_text is not None:
        raise FaultError(f"{what}: only latency faults take '=DELAY'")
    return Fault(action=action, node=canonical_node(match.group("node")), start_s=start, duration_s=duration,
                 delay_ms=delay_ms, text=text.strip())


def stage_node_names(scenario: Scenario) -> list[str]:
    """The names the local deployment gives the nodes of `scenario`, in bring-up order."""
    nodes = scenario.nodes
    names = ["primary", *(f"replica{i}" for i in range(1, nodes.replicas.count + 1))]
    if nodes.keyvalue.count:
        names.append("keyvalue")
    cache = getattr(nodes, "cache", None)
    if cache is not None and cache.count:
        names.append("cache")
    names += [f"app{i}" for i in range(1, nodes.app.count + 1)]
    names += [f"worker{i}" for i in range(1, nodes.workers.count + 1)]
    if nodes.balancer.count:
        names.append("balancer")
    return names


@dataclass(frozen=True, kw_only=True)
class FaultPlan:
    """A run's faults, in time order, checked against the stage they will hit."""

    faults: tuple[Fault, ...]

    @classmethod
    def parse(cls, texts: Iterable[str], *, scenario: Scenario) -> FaultPlan:
        faults = sorted((parse_fault(text) for text in texts), key=lambda fault: fault.start_s)
        names = stage_node_names(scenario)
        for fault in faults:
            if fault.node not in names:
                raise FaultError(f"fault {fault.label!r}: {scenario.name} has no node {fault.node!r} "
                                 f"(its nodes: {', '.join(names)})")
            if fault.action == "latency" and not fault.node.startswith(("primary", "replica", "keyvalue", "cache")):
                raise FaultError(f"fault {fault.label!r}: latency applies to the servers the app calls "
                                 "(primary, replicaN, keyvalue, cache)")
        for index, fault in enumerate(faults):
            for other in faults[index + 1:]:
                if other.node == fault.node and fault.overlaps(other):
                    raise FaultError(f"faults {fault.label!r} and {other.label!r} overlap on {fault.node}: "
                                     "one fault per node at a time")
        return cls(faults=tuple(faults))

    def __bool__(self) -> bool:
        return bool(self.faults)

    @property
    def delayed_nodes(self) -> tuple[str, ...]:
        """The nodes a latency fault slows down: the app reaches them through a delay proxy."""
        return tuple(sorted({fault.node for fault in self.faults if fault.action == "latency"}))

    def __len__(self) -> int:
        return len(self.faults)

    @property
    def last_event_s(self) -> float:
        """When the last fault starts or ends (its recovery is measured after that)."""
        return max((fault.end_s if fault.end_s is not None else fault.start_s for fault in self.faults), default=0.0)

    def to_list(self) -> list[dict[str, object]]:
        return [fault.to_dict() for fault in self.faults]


def describe(faults: Sequence[Fault]) -> str:
    return ", ".join(fault.label for fault in faults)
