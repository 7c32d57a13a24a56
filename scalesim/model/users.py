"""Parse user counts written the way people write them on a command line.

``parse_users("1,10,100")`` → ``[1, 10, 100]``. Items are separated by commas and may be:

``N``
    one count; ``20k`` means 20,000 and underscores are allowed (``20_000``).
``A..B``
    a geometric series from A to B, both included, about five points per decade (at most 50):
    capacity curves bend on a log scale, so that is where the points should be.
``A..B:K``
    K points, geometric, from A to B.
``A..B+S``
    every S users from A to B (A, A+S, ..., and B).

The result is sorted and without duplicates. Anything else raises ``ModelError`` (a ``ValueError``)
with a one-line message, so callers can show it as it is.
"""

from __future__ import annotations

import math
import re

from scalesim.model.network import ModelError

__all__ = ["parse_users"]

POINTS_PER_DECADE = 5
MAX_DEFAULT_POINTS = 50
MAX_POINTS = 10_000

_COUNT = r"\d[\d_]*k?"
_ITEM = re.compile(rf"^(?P<a>{_COUNT})(?:\.\.(?P<b>{_COUNT})(?:(?P<op>[:+])(?P<n>{_COUNT}))?)?$")


def parse_users(text: str, *, field: str = "users") -> list[int]:
    """The sorted, distinct user counts that ``text`` describes (see the module docstring)."""
    if not isinstance(text, str) or not text.strip():
        raise ModelError(f"{field}: give user counts such as 1,10,100 or 100..20000")
    counts: set[int] = set()
    for raw in text.split(","):
        item = raw.strip().replace(" ", "")
        match = _ITEM.match(item.lower())
        if match is None:
            raise ModelError(f"{field}: cannot read {raw.strip()!r} (expected N, A..B, A..B:K or A..B+S)")
        start = _count(match["a"])
        if match["b"] is None:
            counts.add(_positive(start, field))
            continue
        stop = _count(match["b"])
        _positive(start, field)
        if stop < start:
            raise ModelError(f"{field}: range {raw.strip()!r} runs backwards")
        if match["op"] == "+":
            step = _count(match["n"])
            if step < 1:
                raise ModelError(f"{field}: step in {raw.strip()!r} must be at least 1")
            if (stop - start) // step + 2 > MAX_POINTS:
                raise ModelError(f"{field}: {raw.strip()!r} gives more than {MAX_POINTS:,} points")
            counts.update(range(start, stop + 1, step))
            counts.add(stop)
            continue
        if match["op"] == ":":
            points = _count(match["n"])
            if not 1 <= points <= MAX_POINTS:
                raise ModelError(f"{field}: point count in {raw.strip()!r} must be 1..{MAX_POINTS:,}")
        else:
            decades = math.log10(stop / start) if stop > start else 0.0
            points = min(MAX_DEFAULT_POINTS, max(2, round(POINTS_PER_DECADE * decades) + 1))
        counts.update(_geometric(start, stop, points))
    return sorted(counts)


def _geometric(start: int, stop: int, points: int) -> list[int]:
    if points == 1 or start == stop:
        return [start] if points == 1 else [start, stop]
    ratio = (stop / start) ** (1 / (points - 1))
    values = {round(start * ratio**i) for i in range(points)}
    return sorted(values | {start, stop})


def _count(text: str) -> int:
    text = text.replace("_", "")
    if text.endswith("k"):
        return int(text[:-1]) * 1000
    return int(text)


def _positive(value: int, field: str) -> int:
    if value < 1:
        raise ModelError(f"{field}: user counts start at 1, got {value}")
    return value
