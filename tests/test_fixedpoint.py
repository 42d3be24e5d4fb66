"""to_fixed is exact or refuses: no rounding, no float, no uncaught decimal signal."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.fixedpoint import INT64_MAX, FixedPointError, from_fixed, to_fixed


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("NaN", "not a finite number"),
        ("Infinity", "not a finite number"),
        ("-Infinity", "not a finite number"),
        ("1e999999", "outside the int64"),  # once an uncaught decimal.Overflow
        ("9223372036.854775808", "outside the int64"),
        # 31 significant digits: the default 28-digit context once rounded this to 1
        ("1.0000000000000000000000000000001", "more than 9 decimal places"),
        ("0.0000000001", "more than 9 decimal places"),
        ("abc", "not a decimal number"),
    ],
)
def test_values_that_cannot_be_exact_int64_units_are_refused(value: str, message: str) -> None:
    with pytest.raises(FixedPointError, match=message):
        to_fixed(value)


def test_floats_are_refused() -> None:
    with pytest.raises(FixedPointError, match="floats"):
        to_fixed(0.1)  # type: ignore[arg-type]


@given(st.integers(-INT64_MAX, INT64_MAX))
def test_every_int64_unit_count_round_trips_through_its_decimal(units: int) -> None:
    assert to_fixed(from_fixed(units)) == units
    assert to_fixed(str(Decimal(units).scaleb(-9))) == units
