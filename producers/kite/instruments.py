"""Instrument token ↔ symbol, from Kite's instrument master dump (``GET /instruments``).

Our symbol for a Kite instrument is ``"EXCHANGE:TRADINGSYMBOL"`` (``"NSE:INFY"``,
``"NFO:BANKNIFTY18JAN23500CE"``, ``"NSE:NIFTY 50"``): Kite's own notation for its quote APIs,
and unique, unlike the bare trading symbol (INFY trades on NSE and BSE under two tokens).
Records carry it as ``symbol`` and the exchange alone as ``venue``. Lookups by symbol ignore
case and surrounding blanks; the symbol we emit is spelled exactly as in the dump.

The dump is a CSV with the columns ``instrument_token, exchange_token, tradingsymbol, name,
last_price, expiry, strike, tick_size, lot_size, instrument_type, segment, exchange``.
Tokens change for derivatives at expiry and may be reassigned, so load the dump every day
(Kite publishes it once a day, before the open).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from os import PathLike
from pathlib import Path

from producers.base import FeedError

__all__ = ["Instrument", "InstrumentMap", "UnknownInstrumentError"]

log = logging.getLogger(__name__)

_REQUIRED_COLUMNS = ("instrument_token", "tradingsymbol", "exchange")


class UnknownInstrumentError(FeedError):
    """A symbol or token that is not in the instrument dump (a bad request: not retried)."""


@dataclass(frozen=True, slots=True)
class Instrument:
    """One row of the instrument dump (the fields we use)."""

    token: int
    exchange: str
    tradingsymbol: str
    segment: str = ""
    instrument_type: str = ""
    name: str = ""
    tick_size: Decimal | None = None
    lot_size: int | None = None
    expiry: str | None = None  # "YYYY-MM-DD" for derivatives

    @property
    def symbol(self) -> str:
        return f"{self.exchange}:{self.tradingsymbol}"


def _key(symbol: str) -> str:
    return symbol.strip().upper()


def _decimal_or_none(text: str | None) -> Decimal | None:
    if not text:
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


class InstrumentMap:
    """Both directions of the token ↔ symbol mapping. Immutable once built."""

    def __init__(self, instruments: Iterable[Instrument]) -> None:
        by_token: dict[int, Instrument] = {}
        by_symbol: dict[str, Instrument] = {}
        for inst in instruments:
            key = _key(inst.symbol)
            if inst.token in by_token or key in by_symbol:
                log.warning(
                    "duplicate instrument in dump ignored",
                    extra={"token": inst.token, "symbol": inst.symbol},
                )
                continue
            by_token[inst.token] = inst
            by_symbol[key] = inst
        self._by_token = by_token
        self._by_symbol = by_symbol

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def from_csv(cls, path: str | PathLike[str]) -> InstrumentMap:
        """Read a dump saved to disk (``instruments.csv``)."""
        return cls.from_csv_text(Path(path).read_text(encoding="utf-8"))

    @classmethod
    def from_csv_text(cls, text: str) -> InstrumentMap:
        """Parse the dump as returned by ``GET /instruments[/:exchange]``.

        Raises ``ValueError`` when the header lacks a required column or a token is not an
        integer (a broken dump must not half-load).
        """
        reader = csv.DictReader(io.StringIO(text))
        columns = reader.fieldnames or []
        missing = [c for c in _REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ValueError(f"instrument dump lacks column(s) {', '.join(missing)}")
        return cls(_rows(reader))

    # ---- lookups -----------------------------------------------------------------------
    def symbol(self, token: int) -> str:
        """``"NSE:INFY"`` for 408065; raises :class:`UnknownInstrumentError`."""
        return self.by_token(token).symbol

    def token(self, symbol: str) -> int:
        """408065 for ``"NSE:INFY"``; raises :class:`UnknownInstrumentError`."""
        inst = self._by_symbol.get(_key(symbol))
        if inst is None:
            raise UnknownInstrumentError(f"{symbol!r} is not in the Kite instrument dump")
        return inst.token

    def tokens(self, symbols: Sequence[str]) -> list[int]:
        """Tokens of ``symbols``, in order; names every unknown symbol at once."""
        unknown = [s for s in symbols if _key(s) not in self._by_symbol]
        if unknown:
            raise UnknownInstrumentError(
                f"not in the Kite instrument dump: {', '.join(map(repr, unknown))} "
                "(symbols are EXCHANGE:TRADINGSYMBOL, e.g. NSE:INFY)"
            )
        return [self._by_symbol[_key(s)].token for s in symbols]

    def by_token(self, token: int) -> Instrument:
        inst = self._by_token.get(token)
        if inst is None:
            raise UnknownInstrumentError(f"instrument token {token} is not in the dump")
        return inst

    def get(self, token: int) -> Instrument | None:
        return self._by_token.get(token)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, int):
            return item in self._by_token
        if isinstance(item, str):
            return _key(item) in self._by_symbol
        return False

    def __len__(self) -> int:
        return len(self._by_token)

    def __iter__(self) -> Iterator[Instrument]:
        return iter(self._by_token.values())


def _rows(reader: csv.DictReader[str]) -> Iterator[Instrument]:
    for line, row in enumerate(reader, start=2):
        raw_token = (row.get("instrument_token") or "").strip()
        try:
            token = int(raw_token)
        except ValueError:
            raise ValueError(
                f"instrument dump line {line}: instrument_token {raw_token!r} is not an integer"
            ) from None
        exchange = (row.get("exchange") or "").strip()
        tradingsymbol = (row.get("tradingsymbol") or "").strip()
        if not exchange or not tradingsymbol:
            raise ValueError(f"instrument dump line {line}: empty exchange or tradingsymbol")
        lot = (row.get("lot_size") or "").strip()
        yield Instrument(
            token=token,
            exchange=exchange,
            tradingsymbol=tradingsymbol,
            segment=(row.get("segment") or "").strip(),
            instrument_type=(row.get("instrument_type") or "").strip(),
            name=(row.get("name") or "").strip(),
            tick_size=_decimal_or_none(row.get("tick_size")),
            lot_size=int(lot) if lot.isdigit() else None,
            expiry=(row.get("expiry") or "").strip() or None,
        )
