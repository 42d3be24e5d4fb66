"""Portfolio logic in two scopes: per symbol (positions of every account, marked on the
symbol's trades) and per account (the whole book: equity, exposures, leverage).

Pure: no I/O, no clock. The portfolio app wires :class:`SymbolBook` to the symbol-keyed
fills and trades, and :class:`AccountBook` to the same positions re-keyed by account.

Symbol scope (:class:`SymbolBook`)
    One :class:`~streams.logic.positions.PositionLedger` per account that traded the symbol
    (exact average cost, realized PnL). A fill updates its account's ledger and marks it at
    the latest known price (the last trade when it is not older than the fill, else the
    fill's own price). A trade marks every ledger of the symbol, but positions are
    *published* at most once per ``mark_interval_ns`` of event time (the first trade of
    each interval; 0 = every trade): the marks are exact at the trade that publishes them,
    and a day of ticks does not become a day of position records per account.

    Per trade, the app first asks :class:`MarkSchedule` (a three-number state) whether a
    mark is due, so a trade of a symbol nobody holds, or one inside the current interval,
    touches only that small state, never the ledgers.

Account scope (:class:`AccountBook`)
    The latest position of each symbol, from which, exactly in fixed point:

    - ``equity = starting_cash + Σ realized + Σ unrealized``
    - ``value(symbol) = quantity × last_price`` (rounded half-even to 1e-9; 0 before a mark)
    - ``cash = equity − Σ value`` (so ``equity = cash + Σ marked positions`` holds exactly)
    - gross exposure ``Σ |value|``, net exposure ``Σ value``
    - leverage ``gross / equity`` and largest concentration ``max |value| / equity``, ratios at
      scale 1e-9 rounded half-even; with equity ≤ 0 and any exposure they are reported as
      the int64 maximum (unbounded), and 0 when flat.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Final

from schemas.fixedpoint import FACTOR, INT64_MAX, mul
from schemas.models import Fill, PortfolioSnapshot, Position
from streams.logic.positions import PositionLedger

__all__ = ["AccountBook", "AccountTotals", "Holding", "MarkSchedule", "SymbolBook"]

SNAPSHOT_VERSION: Final = 1


def _ratio(numerator: int, denominator: int) -> int:
    """numerator / denominator at scale 1e-9, rounded half-even; denominator > 0."""
    quotient, remainder = divmod(numerator * FACTOR, denominator)
    if remainder * 2 > denominator or (remainder * 2 == denominator and quotient % 2 == 1):
        quotient += 1
    return min(quotient, INT64_MAX)


@dataclass(frozen=True, slots=True)
class MarkSchedule:
    """When the next trade of a held symbol must publish marks: a tiny per-symbol state.

    ``last_price``/``last_ts`` is the latest trade seen; ``next_due_ns`` the event time from
    which the next trade publishes (the start of the next mark interval).
    """

    last_price: int
    last_ts: int
    next_due_ns: int

    def on_trade(self, price: int, ts: int, interval_ns: int) -> tuple[MarkSchedule, bool]:
        """The schedule after this trade, and whether this trade publishes marks."""
        latest = (price, ts) if ts >= self.last_ts else (self.last_price, self.last_ts)
        if ts < self.next_due_ns:
            return MarkSchedule(latest[0], latest[1], self.next_due_ns), False
        return MarkSchedule(latest[0], latest[1], next_interval(ts, interval_ns)), True

    def to_list(self) -> list[int]:
        return [self.last_price, self.last_ts, self.next_due_ns]

    @classmethod
    def from_list(cls, data: list[int]) -> MarkSchedule:
        return cls(int(data[0]), int(data[1]), int(data[2]))


def next_interval(ts: int, interval_ns: int) -> int:
    """Start of the mark interval after the one holding ``ts`` (``ts + 1`` when 0)."""
    if interval_ns <= 0:
        return ts + 1
    return ts - ts % interval_ns + interval_ns


class SymbolBook:
    """Positions of every account in one symbol; snapshot/restore between records."""

    def __init__(self, symbol: str) -> None:
        if not symbol:
            raise ValueError("symbol must not be empty")
        self.symbol = symbol
        self._ledgers: dict[str, PositionLedger] = {}

    @property
    def accounts(self) -> tuple[str, ...]:
        return tuple(sorted(self._ledgers))

    @property
    def held(self) -> bool:
        """Some account has a non-zero position (trades then need marking)."""
        return any(ledger.quantity != 0 for ledger in self._ledgers.values())

    def on_fill(self, fill: Fill, latest: MarkSchedule | None, ts_init: int) -> Position:
        """Book ``fill`` in its account's ledger and mark it (see the module docstring)."""
        if fill.symbol != self.symbol:
            raise ValueError(f"fill {fill.fill_id} is for {fill.symbol}, not {self.symbol}")
        ledger = self._ledgers.get(fill.account)
        if ledger is None:
            ledger = self._ledgers[fill.account] = PositionLedger(fill.account, self.symbol)
        ledger.apply_fill(fill, ts_init)
        if latest is not None and latest.last_ts >= fill.ts_event:
            return ledger.mark(latest.last_price, latest.last_ts, ts_init)
        return ledger.mark(fill.price, fill.ts_event, ts_init)

    def mark(self, price: int, ts: int, ts_init: int) -> list[Position]:
        """Mark every account's ledger at ``price``; the positions, by account."""
        return [self._ledgers[a].mark(price, ts, ts_init) for a in self.accounts]

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": SNAPSHOT_VERSION,
            "symbol": self.symbol,
            "ledgers": [self._ledgers[a].snapshot() for a in self.accounts],
        }

    @classmethod
    def restore(cls, data: Mapping[str, Any]) -> SymbolBook:
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported SymbolBook snapshot version {data.get('version')!r}")
        book = cls(str(data["symbol"]))
        for item in data["ledgers"]:
            ledger = PositionLedger.restore(item)
            if ledger.symbol != book.symbol:
                raise ValueError(f"SymbolBook of {book.symbol} holds a {ledger.symbol} ledger")
            book._ledgers[ledger.account] = ledger
        return book


@dataclass(frozen=True, slots=True)
class Holding:
    """One symbol's latest position inside an account's book (raw fixed-point ints)."""

    quantity: int
    realized: int
    unrealized: int
    value: int  # quantity × last price, rounded; 0 before the first mark

    @classmethod
    def of(cls, position: Position) -> Holding:
        value = mul(position.last_price, position.quantity) if position.last_price else 0
        return cls(position.quantity, position.realized_pnl, position.unrealized_pnl, value)

    def to_list(self) -> list[int]:
        return [self.quantity, self.realized, self.unrealized, self.value]

    @classmethod
    def from_list(cls, data: list[int]) -> Holding:
        return cls(int(data[0]), int(data[1]), int(data[2]), int(data[3]))


@dataclass(frozen=True, slots=True)
class AccountTotals:
    """Running sums over an account's holdings, kept up to date one position at a time."""

    realized: int = 0
    unrealized: int = 0
    net: int = 0  # Σ value
    gross: int = 0  # Σ |value|
    open_positions: int = 0
    largest_symbol: str | None = None  # largest |value|; ties go to the first symbol
    largest_value: int = 0
    # the latest event time in the book: positions of different symbols reach the account
    # in arrival order, so a snapshot is stamped with this, never earlier than the last
    as_of: int = 0

    def to_list(self) -> list[Any]:
        return [
            self.realized,
            self.unrealized,
            self.net,
            self.gross,
            self.open_positions,
            self.largest_symbol,
            self.largest_value,
            self.as_of,
        ]

    @classmethod
    def from_list(cls, data: list[Any]) -> AccountTotals:
        largest = data[5]
        return cls(
            int(data[0]),
            int(data[1]),
            int(data[2]),
            int(data[3]),
            int(data[4]),
            None if largest is None else str(largest),
            int(data[6]),
            int(data[7]) if len(data) > 7 else 0,
        )


def _largest(holdings: Mapping[str, Holding]) -> tuple[str | None, int]:
    best: tuple[str | None, int] = (None, 0)
    for symbol, holding in holdings.items():
        size = abs(holding.value)
        if size > best[1] or (
            size == best[1] and size and best[0] is not None and symbol < best[0]
        ):
            best = (symbol, size)
    return best


class AccountBook:
    """One account's book: the latest position per symbol → a portfolio snapshot.

    The sums are updated by the difference each position makes, so a position costs O(1)
    whatever the number of symbols; only when the largest holding shrinks is the largest
    found again over every holding. ``holdings`` may be any mutable mapping (the app backs
    it with Quix state, one key per symbol, so a message reads and writes only its own)."""

    def __init__(
        self,
        account: str,
        starting_cash: int,
        holdings: MutableMapping[str, Holding] | None = None,
        totals: AccountTotals | None = None,
    ) -> None:
        if not account:
            raise ValueError("account must not be empty")
        self.account = account
        self.starting_cash = starting_cash
        self._holdings: MutableMapping[str, Holding] = {} if holdings is None else holdings
        self._totals = totals if totals is not None else AccountTotals()

    @property
    def totals(self) -> AccountTotals:
        return self._totals

    def holding(self, symbol: str) -> Holding | None:
        return self._holdings.get(symbol)

    def on_position(self, position: Position, ts_init: int) -> PortfolioSnapshot:
        if position.account != self.account:
            raise ValueError(f"position of {position.account} sent to {self.account}'s book")
        symbol = position.symbol
        old = self._holdings.get(symbol)
        new = Holding.of(position)
        self._holdings[symbol] = new
        t = self._totals
        o = old if old is not None else Holding(0, 0, 0, 0)
        size = abs(new.value)
        if t.largest_symbol == symbol and size < t.largest_value:
            largest_symbol, largest_value = _largest(self._holdings)  # the largest shrank
        elif size > t.largest_value or (
            size == t.largest_value
            and size
            and (t.largest_symbol is None or symbol <= t.largest_symbol)
        ):
            largest_symbol, largest_value = symbol, size
        else:
            largest_symbol, largest_value = t.largest_symbol, t.largest_value
        self._totals = AccountTotals(
            realized=t.realized - o.realized + new.realized,
            unrealized=t.unrealized - o.unrealized + new.unrealized,
            net=t.net - o.value + new.value,
            gross=t.gross - abs(o.value) + size,
            open_positions=t.open_positions - (o.quantity != 0) + (new.quantity != 0),
            largest_symbol=largest_symbol if largest_value else None,
            largest_value=largest_value,
            as_of=max(t.as_of, position.ts_event),
        )
        return self.portfolio(self._totals.as_of, ts_init)

    def portfolio(self, ts_event: int, ts_init: int) -> PortfolioSnapshot:
        t = self._totals
        equity = self.starting_cash + t.realized + t.unrealized
        if t.gross == 0:
            leverage = concentration = 0
        elif equity <= 0:
            leverage = concentration = INT64_MAX
        else:
            leverage = _ratio(t.gross, equity)
            concentration = _ratio(t.largest_value, equity)
        return PortfolioSnapshot(
            account=self.account,
            starting_cash=self.starting_cash,
            cash=equity - t.net,
            equity=equity,
            realized_pnl=t.realized,
            unrealized_pnl=t.unrealized,
            gross_exposure=t.gross,
            net_exposure=t.net,
            leverage=leverage,
            largest_concentration=concentration,
            largest_symbol=t.largest_symbol,
            open_positions=t.open_positions,
            ts_event=ts_event,
            ts_init=ts_init,
        )

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": SNAPSHOT_VERSION,
            "account": self.account,
            "starting_cash": self.starting_cash,
            "totals": self._totals.to_list(),
            "holdings": {s: h.to_list() for s, h in sorted(self._holdings.items())},
        }

    @classmethod
    def restore(cls, data: Mapping[str, Any]) -> AccountBook:
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported AccountBook snapshot version {data.get('version')!r}")
        holdings = {str(s): Holding.from_list(h) for s, h in data["holdings"].items()}
        totals = AccountTotals.from_list(data["totals"])
        return cls(str(data["account"]), int(data["starting_cash"]), holdings, totals)
