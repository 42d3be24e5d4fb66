"""Exact money: every price, quantity and money amount is an int64 fixed-point number.

Why fixed-point int64 at scale 10**-9 (and not Avro ``decimal``):
- it is exact and sums exactly in Python ints (no float anywhere in a PnL ledger);
- it maps 1:1 onto ClickHouse ``Decimal64(9)`` (an Int64 scaled by 10**9), so the sink
  stores the raw integer and Grafana/SQL see real decimals;
- 9 places hold every venue's tick size we ingest (equities 0.0001, Kite currency 1e-7,
  crypto 1e-8, CME via Databento 1e-9) and fractional crypto quantities;
- a plain Avro ``long`` is cheap to encode and every language's Avro library reads it
  (Avro ``decimal`` on ``bytes`` is big-endian two's complement, awkward for consumers).
Range: |value| < 9.22e9 units per field, ample for prices, quantities and per-order notionals.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation, localcontext
from typing import Final

SCALE: Final[int] = 9
FACTOR: Final[int] = 10**SCALE
INT64_MAX: Final[int] = 2**63 - 1
_QUANT = Decimal(1).scaleb(-SCALE)


class FixedPointError(ValueError):
    """A value cannot be represented exactly at scale 1e-9 in an int64."""


def to_fixed(value: Decimal | int | str) -> int:
    """Decimal (or int, or decimal string) → raw int64 units. Never accepts float."""
    if isinstance(value, float):
        raise FixedPointError("floats are not accepted for money; pass Decimal or str")
    try:
        dec = Decimal(value)
    except InvalidOperation as exc:
        raise FixedPointError(f"not a decimal number: {value!r}") from exc
    if not dec.is_finite():
        raise FixedPointError(f"{value} is not a finite number")
    if dec and dec.adjusted() > 18 - SCALE:  # |value| >= 1e10 cannot fit: fail before scaling
        raise FixedPointError(f"{value} is outside the int64 fixed-point range")
    with localcontext() as ctx:  # enough digits that scaling is exact, never rounded
        ctx.prec = len(dec.as_tuple().digits) + SCALE + 2
        raw = dec.scaleb(SCALE)
    if raw != raw.to_integral_value():
        raise FixedPointError(f"{value} has more than {SCALE} decimal places")
    result = int(raw)
    if abs(result) > INT64_MAX:
        raise FixedPointError(f"{value} is outside the int64 fixed-point range")
    return result


def from_fixed(raw: int) -> Decimal:
    """Raw int64 units → exact Decimal."""
    return (Decimal(raw).scaleb(-SCALE)).quantize(_QUANT).normalize()


def mul(price_raw: int, quantity_raw: int) -> int:
    """price × quantity in raw units (exact; rounds half-even below 1e-9)."""
    product, remainder = divmod(price_raw * quantity_raw, FACTOR)
    if remainder * 2 > FACTOR or (remainder * 2 == FACTOR and product % 2 == 1):
        product += 1
    return product


def round_to_tick(raw: int, tick_raw: int) -> int:
    """Round a raw price to the nearest multiple of the tick (half away from zero)."""
    if tick_raw <= 0:
        raise FixedPointError("tick must be positive")
    sign = -1 if raw < 0 else 1
    return sign * ((abs(raw) + tick_raw // 2) // tick_raw) * tick_raw
