"""What a rental costs: pure arithmetic, no I/O.

A rental is charged per day at the daily price recorded when the book was rented. The clock runs
from the day of renting to the day of returning -- or to today while the book is still out -- and a
rental always costs at least one day, even when the book comes back the same day.

A rental kept longer than ``late_after_days`` (14 by default) also pays a late fee: every day beyond
that limit costs an extra ``late_fee_percent`` (50 by default) of the daily price. The fee is computed
on the whole late period at once and rounded half up to whole cents, so a 3-day-late rental at 25
cents a day pays ``round_half_up(3 * 25 * 50 / 100) = 38`` cents, not three times a rounded 12.5.

Every part of the app that needs a charge -- the charges endpoint at read time, the stage5 workers
that fold returned rentals into a stored total, the seed that precomputes those totals -- calls
these functions, so the figures agree by construction. All amounts are integer cents.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

DEFAULT_LATE_AFTER_DAYS = 14
DEFAULT_LATE_FEE_PERCENT = 50


@dataclass(frozen=True, slots=True)
class RentalCharge:
    """The charge of one rental, split into its two parts."""

    days: int
    rental_cents: int
    late_fee_cents: int

    @property
    def total_cents(self) -> int:
        return self.rental_cents + self.late_fee_cents


@dataclass(frozen=True, slots=True)
class ChargeTotals:
    """The sum of several rentals' charges."""

    rentals: int = 0
    rental_cents: int = 0
    late_fee_cents: int = 0

    @property
    def total_cents(self) -> int:
        return self.rental_cents + self.late_fee_cents

    def plus(self, other: ChargeTotals) -> ChargeTotals:
        return ChargeTotals(
            rentals=self.rentals + other.rentals,
            rental_cents=self.rental_cents + other.rental_cents,
            late_fee_cents=self.late_fee_cents + other.late_fee_cents,
        )


def divide_round_half_up(numerator: int, denominator: int) -> int:
    """Integer division of non-negative numbers, rounding halves up (2.5 -> 3)."""
    if numerator < 0 or denominator <= 0:
        raise ValueError("divide_round_half_up needs numerator >= 0 and denominator > 0")
    return (2 * numerator + denominator) // (2 * denominator)


def charged_days(*, rented_on: date, returned_on: date | None, today: date) -> int:
    """Days billed for a rental: at least one, counted up to the return (or today while open)."""
    end = returned_on if returned_on is not None else today
    return max(1, (end - rented_on).days)


def rental_charge(
    *,
    rented_on: date,
    returned_on: date | None,
    daily_price_cents: int,
    today: date,
    late_after_days: int = DEFAULT_LATE_AFTER_DAYS,
    late_fee_percent: int = DEFAULT_LATE_FEE_PERCENT,
) -> RentalCharge:
    """The charge of one rental (see the module docstring for the rules)."""
    if daily_price_cents < 0:
        raise ValueError(f"daily price must not be negative, not {daily_price_cents}")
    days = charged_days(rented_on=rented_on, returned_on=returned_on, today=today)
    late_days = max(0, days - late_after_days)
    late_fee = divide_round_half_up(late_days * daily_price_cents * late_fee_percent, 100)
    return RentalCharge(days=days, rental_cents=days * daily_price_cents, late_fee_cents=late_fee)


def total_charges(
    rentals: Iterable[tuple[date, date | None, int]],
    *,
    today: date,
    late_after_days: int = DEFAULT_LATE_AFTER_DAYS,
    late_fee_percent: int = DEFAULT_LATE_FEE_PERCENT,
) -> ChargeTotals:
    """Sum the charges of ``(rented_on, returned_on, daily_price_cents)`` triples."""
    count = rental_cents = late_cents = 0
    for rented_on, returned_on, daily_price_cents in rentals:
        charge = rental_charge(
            rented_on=rented_on,
            returned_on=returned_on,
            daily_price_cents=daily_price_cents,
            today=today,
            late_after_days=late_after_days,
            late_fee_percent=late_fee_percent,
        )
        count += 1
        rental_cents += charge.rental_cents
        late_cents += charge.late_fee_cents
    return ChargeTotals(rentals=count, rental_cents=rental_cents, late_fee_cents=late_cents)
