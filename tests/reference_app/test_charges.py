"""The charge arithmetic: days, minimum day, late fees and their rounding."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from reference_app.charges import (
    ChargeTotals,
    charged_days,
    divide_round_half_up,
    rental_charge,
    total_charges,
)

D0 = date(2025, 3, 1)


def days_later(n: int) -> date:
    return D0 + timedelta(days=n)


@pytest.mark.parametrize(
    ("numerator", "denominator", "expected"),
    [(0, 100, 0), (49, 100, 0), (50, 100, 1), (51, 100, 1), (149, 100, 1), (150, 100, 2), (250, 100, 3), (7, 2, 4)],
)
def test_divide_round_half_up(numerator: int, denominator: int, expected: int) -> None:
    assert divide_round_half_up(numerator, denominator) == expected


def test_divide_round_half_up_rejects_negative_input() -> None:
    with pytest.raises(ValueError, match="numerator >= 0"):
        divide_round_half_up(-1, 2)


def test_a_rental_costs_at_least_one_day() -> None:
    assert charged_days(rented_on=D0, returned_on=D0, today=days_later(10)) == 1
    charge = rental_charge(rented_on=D0, returned_on=D0, daily_price_cents=120, today=days_later(10))
    assert (charge.days, charge.rental_cents, charge.late_fee_cents) == (1, 120, 0)


def test_an_open_rental_runs_until_today() -> None:
    charge = rental_charge(rented_on=D0, returned_on=None, daily_price_cents=100, today=days_later(5))
    assert (charge.days, charge.rental_cents, charge.late_fee_cents) == (5, 500, 0)


def test_fourteen_days_are_not_late_but_fifteen_are() -> None:
    on_time = rental_charge(rented_on=D0, returned_on=days_later(14), daily_price_cents=100, today=D0)
    late = rental_charge(rented_on=D0, returned_on=days_later(15), daily_price_cents=100, today=D0)
    assert (on_time.rental_cents, on_time.late_fee_cents) == (1400, 0)
    assert (late.rental_cents, late.late_fee_cents) == (1500, 50)
    assert late.total_cents == 1550


def test_late_fee_is_rounded_half_up_on_the_whole_late_period() -> None:
    # 3 late days at 25 cents: 3 * 25 * 50% = 37.5 -> 38 (not 3 * round(12.5) = 39 or 36).
    charge = rental_charge(rented_on=D0, returned_on=days_later(17), daily_price_cents=25, today=D0)
    assert charge.late_fee_cents == 38
    # 1 late day at 33 cents: 16.5 -> 17.
    assert rental_charge(rented_on=D0, returned_on=days_later(15), daily_price_cents=33, today=D0).late_fee_cents == 17


def test_rules_are_parameters() -> None:
    charge = rental_charge(
        rented_on=D0,
        returned_on=days_later(10),
        daily_price_cents=10,
        today=D0,
        late_after_days=7,
        late_fee_percent=100,
    )
    assert (charge.rental_cents, charge.late_fee_cents) == (100, 30)


def test_negative_price_is_refused() -> None:
    with pytest.raises(ValueError, match="daily price"):
        rental_charge(rented_on=D0, returned_on=None, daily_price_cents=-1, today=D0)


def test_total_charges_sums_every_rental() -> None:
    rentals = [
        (D0, days_later(3), 100),  # 300
        (D0, days_later(20), 30),  # 600 + 6 late days * 15 = 90
        (days_later(2), None, 50),  # open: today is days_later(4) -> 2 days = 100
    ]
    totals = total_charges(rentals, today=days_later(4))
    assert totals == ChargeTotals(rentals=3, rental_cents=1000, late_fee_cents=90)
    assert totals.total_cents == 1090


def test_totals_add_up() -> None:
    a = ChargeTotals(rentals=1, rental_cents=10, late_fee_cents=1)
    b = ChargeTotals(rentals=2, rental_cents=5, late_fee_cents=0)
    assert a.plus(b) == ChargeTotals(rentals=3, rental_cents=15, late_fee_cents=1)
    assert total_charges([], today=D0) == ChargeTotals()
