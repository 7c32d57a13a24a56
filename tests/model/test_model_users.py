"""The --users parser."""

from __future__ import annotations

import pytest

from scalesim.model import ModelError
from scalesim.model.users import parse_users


@pytest.mark.parametrize(("text", "expected"), [
    ("1,10,100", [1, 10, 100]),
    ("100, 10,10", [10, 100]),
    ("20k,2_500", [2500, 20000]),
    ("10..100+25", [10, 35, 60, 85, 100]),
    ("5..50:4", [5, 11, 23, 50]),
    ("7..7", [7]),
    ("1..3:10", [1, 2, 3]),
])
def test_lists_and_ranges(text, expected):
    assert parse_users(text) == expected


def test_a_range_alone_gives_a_geometric_series_with_both_ends():
    counts = parse_users("100..20000")
    assert counts[0] == 100 and counts[-1] == 20000
    assert 10 <= len(counts) <= 15
    ratios = [b / a for a, b in zip(counts, counts[1:], strict=False)]
    assert max(ratios) / min(ratios) < 1.05
    assert len(parse_users("1..1000000")) == 31


@pytest.mark.parametrize(("text", "message"), [
    ("", "give user counts"),
    ("ten", "cannot read 'ten'"),
    ("0", "start at 1"),
    ("50..5", "runs backwards"),
    ("1..10:0", "point count"),
    ("1..10+0", "step"),
    ("1..1000000+1", "more than"),
    ("-3", "cannot read"),
])
def test_errors(text, message):
    with pytest.raises(ModelError, match=message) as caught:
        parse_users(text, field="--users")
    assert str(caught.value).startswith("--users: ")
