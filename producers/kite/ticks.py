"""KiteTicker binary market data → our Trade / Quote records. Pure: no I/O, no clock.

Binary messages
---------------
A binary websocket message is ``uint16 packet count`` then, per packet, ``uint16 length`` +
the packet; big-endian. A 1-byte message is the server's heartbeat (ignored). The packet's
length gives its mode (kiteconnect/ticker.py ``KiteTicker._parse_binary``; Kite Connect v3
websocket docs, "Message structure")::

    8    ltp          token, last price
    28   index quote  token, last, high, low, open, close, change (bytes 24-28, unused)
    32   index full   index quote + exchange timestamp
    44   quote        token, last, last qty, avg price, volume, buy qty, sell qty, o, h, l, c
    184  full         quote + last trade time, OI, OI day high/low, exchange timestamp,
                      10 depth entries of 12 bytes (qty u32, price i32, orders u16, 2 pad):
                      5 bids then 5 asks

Prices are int32 in the segment's minor unit. The segment is ``instrument_token & 0xff``;
its constants are ``KiteTicker.EXCHANGE_MAP`` in kiteconnect 5.2 ``kiteconnect/ticker.py``
(nse 1, nfo 2, cds 3, bse 4, bfo 5, bcd 6, mcx 7, mcxsx 8, indices 9, nco 12) and the
divisor rule is the SDK's: CDS (NSE currency) ÷10 000 000, BCD (BSE currency) and NCO
÷10 000, everything else ÷100 (paise). We divide exactly (``Decimal.scaleb``), never with
floats. Prices are read **signed** (the docs say int32; the index packet's change field and
MCX's negative crude prices of April 2020 need the sign) while the SDK reads them unsigned
(``">I"``); the two agree on every non-negative price. Quantities are unsigned.

Timestamps (last trade time, exchange timestamp) are Unix epoch seconds. They are already
UTC-based: 1625461887 is 2021-07-05T05:11:27Z, which the SDK and the mock decode
(``ticker_full.json``) render in IST as ``2021-07-05T10:41:27+05:30``. So ``ns = s × 10⁹``
and no IST offset is subtracted. 0 means "absent".

A frame whose lengths do not add up raises :class:`~core.errors.FeedParseError`
(``truncated_packet`` / ``bad_frame``), as does a packet of no known length
(``bad_packet``); :func:`decode_frame` turns them into :class:`Malformed`.

From ticks to records (:class:`TickNormalizer`, one state machine per feed)
---------------------------------------------------------------------------
- A tick is a snapshot, not a print. A **Trade** (last price, last traded quantity, last
  trade time) is emitted only from a full-mode tick with a last trade time and a positive
  last quantity, and only when ``(last_trade_time, volume)`` differs from the previous
  tick's for that instrument: the time alone would miss a second trade within the same
  second, the volume alone would re-emit after a volume-only correction. The first tick of
  an instrument emits its last trade (with its own, possibly older, event time). Trades
  between two ticks (~1 tick/s) are not seen: the Trade stream samples the tape, it is not
  the tape; such trades carry the flag ``LTP_SNAPSHOT`` and a trade id of our own,
  ``"<token>-<last_trade_time>-<volume>"``.
- A **Quote** (depth level 1: best bid/ask price and quantity) is emitted from a full-mode
  tick when the top of book differs from the previous one; an empty level (price 0) is
  ``None``; bid ≥ ask gets the flag ``CROSSED``. ts_event = exchange timestamp (else
  ts_init).
- ltp/quote-mode and index packets yield no record (no size, no book; indices are not
  tradable). The feed asks for full mode.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, Literal

from core.errors import FeedParseError
from producers.base import Malformed
from producers.kite.instruments import InstrumentMap
from schemas.fixedpoint import to_fixed
from schemas.models import Quote, Trade

__all__ = [
    "FULL_LENGTH",
    "INDEX_FULL_LENGTH",
    "INDEX_QUOTE_LENGTH",
    "LTP_LENGTH",
    "MODE_FULL",
    "QUOTE_LENGTH",
    "SEGMENT_BCD",
    "SEGMENT_CDS",
    "SEGMENT_INDICES",
    "SEGMENT_MCX",
    "SEGMENT_NCO",
    "SEGMENT_NSE",
    "SOURCE",
    "DepthLevel",
    "KiteTick",
    "TickNormalizer",
    "decode_frame",
    "parse_packet",
    "price_exponent",
    "split_frame",
]

SOURCE: Final = "kite"

# KiteTicker.EXCHANGE_MAP (kiteconnect/ticker.py); the low byte of an instrument token.
SEGMENT_NSE: Final = 1
SEGMENT_NFO: Final = 2
SEGMENT_CDS: Final = 3
SEGMENT_BSE: Final = 4
SEGMENT_BFO: Final = 5
SEGMENT_BCD: Final = 6
SEGMENT_MCX: Final = 7
SEGMENT_MCXSX: Final = 8
SEGMENT_INDICES: Final = 9
SEGMENT_NCO: Final = 12

MODE_LTP: Final = "ltp"
MODE_QUOTE: Final = "quote"
MODE_FULL: Final = "full"
Mode = Literal["ltp", "quote", "full"]

FLAG_LTP_SNAPSHOT: Final = "LTP_SNAPSHOT"
FLAG_CROSSED: Final = "CROSSED"

_NS: Final = 1_000_000_000

_LTP = struct.Struct(">Ii")  # 8
_INDEX = struct.Struct(">Iiiiiii")  # 28: token, last, high, low, open, close, change
_INDEX_TS = struct.Struct(">I")  # bytes 28-32 of the 32-byte index packet
_QUOTE = struct.Struct(">IiIiIIIiiii")  # 44: token, last, ltq, atp, vol, buy, sell, o h l c
_FULL_EXTRA = struct.Struct(">IIIII")  # 44-64: ltt, oi, oi high, oi low, exchange ts
_DEPTH = struct.Struct(">IiH2x")  # 12: quantity, price, orders, padding
_U16 = struct.Struct(">H")
_DEPTH_OFFSET: Final = 64
_DEPTH_LEVELS: Final = 5
LTP_LENGTH: Final = _LTP.size
INDEX_QUOTE_LENGTH: Final = _INDEX.size
INDEX_FULL_LENGTH: Final = _INDEX.size + _INDEX_TS.size
QUOTE_LENGTH: Final = _QUOTE.size
FULL_LENGTH: Final = _DEPTH_OFFSET + 2 * _DEPTH_LEVELS * _DEPTH.size


# ---- binary ticks ---------------------------------------------------------------------
def price_exponent(instrument_token: int) -> int:
    """Decimal places of the token's prices: CDS 7, BCD/NCO 4, else 2 (the SDK's divisors)."""
    segment = instrument_token & 0xFF
    if segment == SEGMENT_CDS:
        return 7
    if segment in (SEGMENT_BCD, SEGMENT_NCO):
        return 4
    return 2


@dataclass(frozen=True, slots=True)
class DepthLevel:
    price: Decimal
    quantity: int
    orders: int


@dataclass(frozen=True, slots=True)
class KiteTick:
    """One decoded packet (venue type: never leaves ``producers.kite``)."""

    instrument_token: int
    mode: Mode
    tradable: bool
    last_price: Decimal
    is_index: bool = False
    last_traded_quantity: int | None = None
    average_traded_price: Decimal | None = None
    volume_traded: int | None = None
    total_buy_quantity: int | None = None
    total_sell_quantity: int | None = None
    open: Decimal | None = None
    high: Decimal | None = None
    low: Decimal | None = None
    close: Decimal | None = None
    last_trade_time: int | None = None  # Unix epoch seconds; None when 0 / absent
    oi: int | None = None
    oi_day_high: int | None = None
    oi_day_low: int | None = None
    exchange_timestamp: int | None = None  # Unix epoch seconds
    bids: tuple[DepthLevel, ...] = ()
    asks: tuple[DepthLevel, ...] = ()
    raw: bytes = field(default=b"", repr=False, compare=False)

    @property
    def segment(self) -> int:
        return self.instrument_token & 0xFF


def split_frame(frame: bytes) -> list[bytes]:
    """The packets of one binary message; ``[]`` for a heartbeat (< 2 bytes).

    Raises :class:`~core.errors.FeedParseError` when the declared lengths do not match the
    bytes: ``truncated_packet`` when the frame ends inside a packet (or its length prefix),
    ``bad_frame`` when bytes are left over.
    """
    if len(frame) < 2:
        return []
    (count,) = _U16.unpack_from(frame, 0)
    packets: list[bytes] = []
    pos = 2
    for i in range(count):
        if pos + 2 > len(frame):
            raise FeedParseError(
                "truncated_packet", f"frame ends before packet {i + 1} of {count} (length prefix)"
            )
        (length,) = _U16.unpack_from(frame, pos)
        pos += 2
        if pos + length > len(frame):
            raise FeedParseError(
                "truncated_packet",
                f"packet {i + 1} of {count} declares {length} bytes, "
                f"{len(frame) - pos} left in the frame",
            )
        packets.append(frame[pos : pos + length])
        pos += length
    if pos != len(frame):
        raise FeedParseError(
            "bad_frame", f"{len(frame) - pos} trailing bytes after {count} packet(s)"
        )
    return packets


def _secs(value: int) -> int | None:
    return value or None


def parse_packet(packet: bytes) -> KiteTick:
    """Decode one packet (without its length prefix); the length selects the mode."""
    n = len(packet)
    if n < 4:
        raise FeedParseError(
            "bad_packet", f"packet of {n} bytes is shorter than an instrument token"
        )
    (token,) = struct.unpack_from(">I", packet, 0)
    exp = -price_exponent(token)

    def px(raw: int) -> Decimal:
        return Decimal(raw).scaleb(exp)

    tradable = token & 0xFF != SEGMENT_INDICES
    if n == LTP_LENGTH:
        _, last = _LTP.unpack(packet)
        return KiteTick(token, MODE_LTP, tradable, px(last), is_index=not tradable, raw=packet)
    more: dict[str, Any] = {}  # what only quote/full packets carry
    if n in (INDEX_QUOTE_LENGTH, INDEX_FULL_LENGTH):
        _, last, high, low, open_, close, _change = _INDEX.unpack_from(packet, 0)
        ts = _INDEX_TS.unpack_from(packet, _INDEX.size)[0] if n == INDEX_FULL_LENGTH else 0
        full, is_index = n == INDEX_FULL_LENGTH, True
    elif n in (QUOTE_LENGTH, FULL_LENGTH):
        (_, last, ltq, atp, volume, buy_qty, sell_qty, open_, high, low, close) = (
            _QUOTE.unpack_from(packet, 0)
        )
        full, is_index = n == FULL_LENGTH, not tradable
        ltt = ts = 0
        more.update(
            last_traded_quantity=ltq,
            average_traded_price=px(atp),
            volume_traded=volume,
            total_buy_quantity=buy_qty,
            total_sell_quantity=sell_qty,
        )
        if full:
            ltt, oi, oi_high, oi_low, ts = _FULL_EXTRA.unpack_from(packet, _QUOTE.size)
            levels = [
                DepthLevel(px(p), q, o)
                for q, p, o in (
                    _DEPTH.unpack_from(packet, _DEPTH_OFFSET + i * _DEPTH.size)
                    for i in range(2 * _DEPTH_LEVELS)
                )
            ]
            more.update(
                oi=oi,
                oi_day_high=oi_high,
                oi_day_low=oi_low,
                bids=tuple(levels[:_DEPTH_LEVELS]),
                asks=tuple(levels[_DEPTH_LEVELS:]),
            )
        more["last_trade_time"] = _secs(ltt)
    else:
        raise FeedParseError(
            "bad_packet",
            f"packet of {n} bytes (token {token}) matches no mode (8, 28, 32, 44 or 184)",
        )
    return KiteTick(
        token,
        MODE_FULL if full else MODE_QUOTE,
        tradable,
        px(last),
        is_index=is_index,
        open=px(open_),
        high=px(high),
        low=px(low),
        close=px(close),
        exchange_timestamp=_secs(ts),
        raw=packet,
        **more,
    )


def decode_frame(frame: bytes, *, received_ns: int) -> list[KiteTick | Malformed]:
    """Ticks of one binary message. A framing error → one Malformed with the whole frame;
    a packet of unknown layout → a Malformed with that packet, the others still decode."""
    try:
        packets = split_frame(frame)
    except FeedParseError as exc:
        return [Malformed.from_error(SOURCE, frame, exc, received_ns)]
    out: list[KiteTick | Malformed] = []
    for packet in packets:
        try:
            out.append(parse_packet(packet))
        except FeedParseError as exc:
            out.append(Malformed.from_error(SOURCE, packet, exc, received_ns))
    return out


class TickNormalizer:
    """Ticks → Trade/Quote records, with the per-instrument state the rules above need.

    State: last ``(last_trade_time, volume)`` and last top of book per token; see
    :meth:`snapshot` / :meth:`restore`.
    """

    def __init__(self, instruments: InstrumentMap, *, source: str = SOURCE) -> None:
        self.instruments = instruments
        self.source = source
        self._last_trade: dict[int, tuple[int, int]] = {}
        self._last_top: dict[int, tuple[Decimal, int, Decimal, int]] = {}

    def normalize(self, tick: KiteTick, ts_init: int) -> list[Trade | Quote | Malformed]:
        if tick.mode != MODE_FULL or tick.is_index:
            return []
        inst = self.instruments.get(tick.instrument_token)
        if inst is None:
            return [
                Malformed(
                    self.source,
                    tick.raw,
                    "unknown_instrument",
                    f"instrument token {tick.instrument_token} is not in the instrument dump",
                    ts_init,
                )
            ]
        out: list[Trade | Quote | Malformed] = []
        trade = self._trade(tick, inst.symbol, inst.exchange, ts_init)
        if trade is not None:
            out.append(trade)
        quote = self._quote(tick, inst.symbol, inst.exchange, ts_init)
        if quote is not None:
            out.append(quote)
        return out

    def _trade(self, tick: KiteTick, symbol: str, venue: str, ts_init: int) -> Trade | None:
        ltt, ltq, volume = tick.last_trade_time, tick.last_traded_quantity, tick.volume_traded
        if ltt is None or not ltq or volume is None:
            return None
        key = (ltt, volume)
        if self._last_trade.get(tick.instrument_token) == key:
            return None
        self._last_trade[tick.instrument_token] = key
        return Trade(
            symbol=symbol,
            venue=venue,
            price=to_fixed(tick.last_price),
            size=to_fixed(ltq),
            trade_id=f"{tick.instrument_token}-{ltt}-{volume}",
            flags=[FLAG_LTP_SNAPSHOT],
            source=self.source,
            ts_event=ltt * _NS,
            ts_init=ts_init,
        )

    def _quote(self, tick: KiteTick, symbol: str, venue: str, ts_init: int) -> Quote | None:
        if not tick.bids or not tick.asks:
            return None
        bid, ask = tick.bids[0], tick.asks[0]
        top = (bid.price, bid.quantity, ask.price, ask.quantity)
        if self._last_top.get(tick.instrument_token) == top:
            return None
        self._last_top[tick.instrument_token] = top
        has_bid, has_ask = bid.price != 0, ask.price != 0
        if not has_bid and not has_ask:
            return None
        crossed = has_bid and has_ask and bid.price >= ask.price
        ts = tick.exchange_timestamp
        return Quote(
            symbol=symbol,
            venue=venue,
            bid_price=to_fixed(bid.price) if has_bid else None,
            bid_size=to_fixed(bid.quantity) if has_bid else None,
            ask_price=to_fixed(ask.price) if has_ask else None,
            ask_size=to_fixed(ask.quantity) if has_ask else None,
            flags=[FLAG_CROSSED] if crossed else [],
            source=self.source,
            ts_event=ts * _NS if ts is not None else ts_init,
            ts_init=ts_init,
        )

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state (Decimals as strings)."""
        return {
            "last_trade": {str(k): list(v) for k, v in self._last_trade.items()},
            "last_top": {
                str(k): [str(bp), bq, str(ap), aq] for k, (bp, bq, ap, aq) in self._last_top.items()
            },
        }

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        self._last_trade = {
            int(k): (int(v[0]), int(v[1])) for k, v in snapshot.get("last_trade", {}).items()
        }
        self._last_top = {
            int(k): (Decimal(v[0]), int(v[1]), Decimal(v[2]), int(v[3]))
            for k, v in snapshot.get("last_top", {}).items()
        }
