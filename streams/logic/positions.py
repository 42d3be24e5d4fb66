"""Position ledger of one account and symbol: fills and marks → positions with exact PnL.

Pure: no I/O, no clock. Average-cost method:

- a fill on the side of the position (or from flat) adds its quantity and its cost;
- a fill against the position closes part of it at the average cost: realized PnL is the
  fill's value minus the closed share of the cost basis; the average price is unchanged;
- a fill larger than the position closes it and opens the remainder at the fill price;
- commissions are subtracted from realized PnL (a negative commission, a rebate, adds).

Exactness: money is kept internally at scale 1e-18 (raw price × raw quantity), so fills
and marks are exact; the only division is the closed share of the cost basis
(``cost × closed / position``), rounded half-even at 1e-18, and since that same amount
leaves the cost basis, ``realized + unrealized`` always equals the cash-flow PnL
``-Σ signed_qty × price - Σ commission + position × mark`` exactly. The emitted
:class:`~schemas.models.Position` rounds to the raw unit (1e-9) half-even: ``realized_pnl``
is realized PnL rounded, and ``unrealized_pnl`` is the rounded total minus that, so the two
fields always sum to the rounded cash-flow PnL (unrealized is within one raw unit of its
own rounding). ``avg_price`` is the cost basis / position, rounded half-even (0 when flat).

Fills do not mark: unrealized PnL uses the last price passed to :meth:`PositionLedger.mark`
(0 and ``last_price`` None until the first mark).

Snapshots keep the 1e-18 amounts as decimal strings: they can exceed int64, and the Quix
state serializer (orjson) refuses larger ints.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from schemas.fixedpoint import FACTOR
from schemas.models import Fill, Position, Side

__all__ = ["PositionLedger"]

SNAPSHOT_VERSION: Final = 1


def _div_half_even(numerator: int, denominator: int) -> int:
    if denominator < 0:
        numerator, denominator = -numerator, -denominator
    quotient, remainder = divmod(numerator, denominator)
    if remainder * 2 > denominator or (remainder * 2 == denominator and quotient % 2 == 1):
        quotient += 1
    return quotient


class PositionLedger:
    """Average-cost position of one (account, symbol); snapshot/restore between records."""

    def __init__(self, account: str, symbol: str) -> None:
        self.account = account
        self.symbol = symbol
        self._quantity = 0  # signed raw quantity (scale 1e-9)
        self._cost = 0  # signed cost basis of the open position, scale 1e-18
        self._realized = 0  # realized PnL net of commissions, scale 1e-18
        self._last_price: int | None = None  # last mark, raw
        self._ts_event: int | None = None  # event time of the last fill or mark

    # -- reading ------------------------------------------------------------------------

    @property
    def quantity(self) -> int:
        """Signed raw position (long > 0, short < 0)."""
        return self._quantity

    @property
    def last_price(self) -> int | None:
        return self._last_price

    def position(self, ts_event: int | None = None, ts_init: int | None = None) -> Position:
        """The current position record. ``ts_event`` defaults to the last fill or mark's
        event time (0 before any), ``ts_init`` to ``ts_event``."""
        event = ts_event if ts_event is not None else (self._ts_event or 0)
        realized = _div_half_even(self._realized, FACTOR)
        unrealized = 0
        if self._last_price is not None:
            exact_unrealized = self._last_price * self._quantity - self._cost
            unrealized = _div_half_even(self._realized + exact_unrealized, FACTOR) - realized
        avg_price = _div_half_even(self._cost, self._quantity) if self._quantity else 0
        return Position(
            account=self.account,
            symbol=self.symbol,
            quantity=self._quantity,
            avg_price=avg_price,
            realized_pnl=realized,
            last_price=self._last_price,
            unrealized_pnl=unrealized,
            ts_event=event,
            ts_init=ts_init if ts_init is not None else event,
        )

    # -- transitions --------------------------------------------------------------------

    def apply_fill(self, fill: Fill, ts_init: int | None = None) -> Position:
        """Book a fill; return the position after it (``ts_init`` defaults to the fill's)."""
        if fill.account != self.account or fill.symbol != self.symbol:
            raise ValueError(
                f"fill {fill.fill_id} is for {fill.account}/{fill.symbol}, "
                f"not this ledger's {self.account}/{self.symbol}"
            )
        signed = fill.quantity if fill.side == Side.BUY else -fill.quantity
        price = fill.price
        position = self._quantity
        if position == 0 or (position > 0) == (signed > 0):
            self._cost += signed * price
            self._quantity += signed
        else:
            closing = -signed if abs(signed) <= abs(position) else position  # sign of position
            closed_cost = (
                self._cost
                if closing == position
                else _div_half_even(self._cost * closing, position)
            )
            self._realized += closing * price - closed_cost
            self._cost -= closed_cost
            self._quantity -= closing
            opening = signed + closing  # remainder past flat, on the fill's side
            if opening:
                self._cost += opening * price
                self._quantity += opening
        self._realized -= fill.commission * FACTOR
        self._ts_event = fill.ts_event
        return self.position(fill.ts_event, ts_init if ts_init is not None else fill.ts_init)

    def mark(self, price: int, ts: int, ts_init: int | None = None) -> Position:
        """Mark to ``price`` (raw) at event time ``ts``; return the position with unrealized
        PnL (``ts_init`` defaults to ``ts``)."""
        self._last_price = price
        self._ts_event = ts
        return self.position(ts, ts_init)

    # -- state --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The whole state as a JSON-able dict (big amounts as decimal strings)."""
        return {
            "version": SNAPSHOT_VERSION,
            "account": self.account,
            "symbol": self.symbol,
            "quantity": self._quantity,
            "cost_e18": str(self._cost),
            "realized_e18": str(self._realized),
            "last_price": self._last_price,
            "ts_event": self._ts_event,
        }

    @classmethod
    def restore(cls, data: Mapping[str, Any]) -> PositionLedger:
        """Rebuild from :meth:`snapshot` output; raises ValueError on a foreign snapshot."""
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported PositionLedger snapshot version {data.get('version')!r}")
        ledger = cls(account=str(data["account"]), symbol=str(data["symbol"]))
        ledger._quantity = int(data["quantity"])
        ledger._cost = int(data["cost_e18"])
        ledger._realized = int(data["realized_e18"])
        if ledger._quantity == 0 and ledger._cost != 0:
            raise ValueError("PositionLedger snapshot has a cost basis but no position")
        last_price = data.get("last_price")
        ledger._last_price = int(last_price) if last_price is not None else None
        ts_event = data.get("ts_event")
        ledger._ts_event = int(ts_event) if ts_event is not None else None
        return ledger
