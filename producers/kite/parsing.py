"""Kite Connect wire formats → our records. Pure: no I/O, no clock (``ts_init`` is passed in).

KiteTicker binary market data
-----------------------------
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

From ticks to records (:class:`TickNormalizer`, one state machine per feed)
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

Text messages (``{"type": "order"|"error"|"message", "data": ...}``) and postbacks
- An order update (the same object as a postback, ``postback.json``) → one
  :class:`ExecutionReport`, ``raw_event`` = Kite's status verbatim; status mapping in
  :data:`_FIXED_STATUS` / :data:`_WORKING_STATUS`; unknown statuses → OTHER/UNKNOWN.
- A **Fill** when ``filled_quantity`` grows over what :class:`OrderTracker` last saw for the
  order: quantity = the increase; price = the price implied by the change of
  ``average_price × filled_quantity`` (Kite sends no per-fill price; the order's first
  fill is exact, later ones are as exact as Kite's rounded average), fill id
  ``"<order_id>-<filled_quantity>"`` (deterministic, so a duplicate via websocket and
  postback is idempotent downstream).
- Postback checksum = SHA-256 hex of ``order_id + order_timestamp + api_secret``
  (:func:`verify_postback_checksum`, constant-time compare).
- Order times are IST wall-clock strings ``"YYYY-MM-DD HH:MM:SS"`` (India has no DST:
  fixed +05:30) → UTC ns. ``client_order_id`` = the order's ``tag`` when set (our OMS
  places orders with ``tag=client_order_id``, ≤ 20 chars), else Kite's order id.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Final, Literal

from pydantic import SecretStr, ValidationError

from core.errors import OmniquantError
from producers.base import Malformed
from producers.kite.instruments import InstrumentMap
from schemas.fixedpoint import FixedPointError, to_fixed
from schemas.models import (
    ExecType,
    ExecutionReport,
    Fill,
    LiquiditySide,
    OrderStatus,
    Quote,
    Side,
    Trade,
)

__all__ = [
    "SEGMENT_BCD",
    "SEGMENT_CDS",
    "SEGMENT_INDICES",
    "SEGMENT_NCO",
    "SEGMENT_NSE",
    "SOURCE",
    "DepthLevel",
    "KiteParseError",
    "KiteTick",
    "OrderProgress",
    "OrderTracker",
    "OrderUpdate",
    "TickNormalizer",
    "VenueError",
    "VenueNotice",
    "decode_frame",
    "kite_time_to_ns",
    "order_to_records",
    "parse_packet",
    "parse_text_message",
    "postback_checksum",
    "price_exponent",
    "split_frame",
    "verify_postback_checksum",
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

IST: Final = timezone(timedelta(hours=5, minutes=30), "IST")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_NS: Final = 1_000_000_000
_NANO: Final = Decimal("1e-9")

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


class KiteParseError(OmniquantError):
    """A Kite frame, packet or message we cannot decode (the feed turns it into Malformed)."""


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

    Raises :class:`KiteParseError` when the declared lengths do not match the bytes.
    """
    if len(frame) < 2:
        return []
    (count,) = _U16.unpack_from(frame, 0)
    packets: list[bytes] = []
    pos = 2
    for i in range(count):
        if pos + 2 > len(frame):
            raise KiteParseError(f"frame ends before packet {i + 1} of {count} (length prefix)")
        (length,) = _U16.unpack_from(frame, pos)
        pos += 2
        if pos + length > len(frame):
            raise KiteParseError(
                f"packet {i + 1} of {count} declares {length} bytes, "
                f"{len(frame) - pos} left in the frame"
            )
        packets.append(frame[pos : pos + length])
        pos += length
    if pos != len(frame):
        raise KiteParseError(f"{len(frame) - pos} trailing bytes after {count} packet(s)")
    return packets


def _secs(value: int) -> int | None:
    return value or None


def parse_packet(packet: bytes) -> KiteTick:
    """Decode one packet (without its length prefix); the length selects the mode."""
    n = len(packet)
    if n < 4:
        raise KiteParseError(f"packet of {n} bytes is shorter than an instrument token")
    (token,) = struct.unpack_from(">I", packet, 0)
    exp = -price_exponent(token)

    def px(raw: int) -> Decimal:
        return Decimal(raw).scaleb(exp)

    is_index = token & 0xFF == SEGMENT_INDICES
    if n == LTP_LENGTH:
        _, last = _LTP.unpack(packet)
        return KiteTick(token, MODE_LTP, not is_index, px(last), is_index=is_index, raw=packet)
    if n in (INDEX_QUOTE_LENGTH, INDEX_FULL_LENGTH):
        _, last, high, low, open_, close, _change = _INDEX.unpack_from(packet, 0)
        ts = _INDEX_TS.unpack_from(packet, _INDEX.size)[0] if n == INDEX_FULL_LENGTH else 0
        return KiteTick(
            token,
            MODE_FULL if n == INDEX_FULL_LENGTH else MODE_QUOTE,
            not is_index,
            px(last),
            is_index=True,
            open=px(open_),
            high=px(high),
            low=px(low),
            close=px(close),
            exchange_timestamp=_secs(ts),
            raw=packet,
        )
    if n in (QUOTE_LENGTH, FULL_LENGTH):
        (_, last, ltq, atp, volume, buy_qty, sell_qty, open_, high, low, close) = (
            _QUOTE.unpack_from(packet, 0)
        )
        ltt = oi = oi_high = oi_low = ts = 0
        bids: tuple[DepthLevel, ...] = ()
        asks: tuple[DepthLevel, ...] = ()
        if n == FULL_LENGTH:
            ltt, oi, oi_high, oi_low, ts = _FULL_EXTRA.unpack_from(packet, _QUOTE.size)
            levels = [
                DepthLevel(px(p), q, o)
                for q, p, o in (
                    _DEPTH.unpack_from(packet, _DEPTH_OFFSET + i * _DEPTH.size)
                    for i in range(2 * _DEPTH_LEVELS)
                )
            ]
            bids, asks = tuple(levels[:_DEPTH_LEVELS]), tuple(levels[_DEPTH_LEVELS:])
        full = n == FULL_LENGTH
        return KiteTick(
            token,
            MODE_FULL if full else MODE_QUOTE,
            not is_index,
            px(last),
            is_index=is_index,
            last_traded_quantity=ltq,
            average_traded_price=px(atp),
            volume_traded=volume,
            total_buy_quantity=buy_qty,
            total_sell_quantity=sell_qty,
            open=px(open_),
            high=px(high),
            low=px(low),
            close=px(close),
            last_trade_time=_secs(ltt),
            oi=oi if full else None,
            oi_day_high=oi_high if full else None,
            oi_day_low=oi_low if full else None,
            exchange_timestamp=_secs(ts),
            bids=bids,
            asks=asks,
            raw=packet,
        )
    raise KiteParseError(
        f"packet of {n} bytes (token {token}) matches no mode (8, 28, 32, 44 or 184)"
    )


def decode_frame(frame: bytes, *, received_ns: int) -> list[KiteTick | Malformed]:
    """Ticks of one binary message. A framing error → one Malformed with the whole frame;
    a packet of unknown layout → a Malformed with that packet, the others still decode."""
    try:
        packets = split_frame(frame)
    except KiteParseError as exc:
        return [Malformed(SOURCE, frame, "bad_frame", str(exc), received_ns)]
    out: list[KiteTick | Malformed] = []
    for packet in packets:
        try:
            out.append(parse_packet(packet))
        except KiteParseError as exc:
            out.append(Malformed(SOURCE, packet, "bad_packet", str(exc), received_ns))
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


# ---- text messages --------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OrderUpdate:
    """``{"type": "order", "data": {...}}``: the order object (same shape as a postback)."""

    order: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class VenueError:
    """``{"type": "error", "data": "..."}``: an error Kite reports on the connection."""

    message: str


@dataclass(frozen=True, slots=True)
class VenueNotice:
    """``{"type": "message", "data": "..."}``: a broadcast text message from Kite."""

    message: str


def parse_text_message(text: str | bytes) -> OrderUpdate | VenueError | VenueNotice:
    """Decode a text frame. JSON numbers with a fraction become Decimal (exact money)."""
    try:
        msg = json.loads(text, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        raise KiteParseError(f"text frame is not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise KiteParseError("text frame is not a JSON object")
    kind, data = msg.get("type"), msg.get("data")
    if kind == "order":
        if not isinstance(data, dict) or not data:
            raise KiteParseError("order update without an order object")
        return OrderUpdate(data)
    if kind == "error":
        return VenueError(str(data))
    if kind == "message":
        return VenueNotice(str(data))
    raise KiteParseError(f"unknown text message type {kind!r}")


# ---- orders → ExecutionReport / Fill --------------------------------------------------
# Kite status → (exec type, order status) when the status alone decides.
_FIXED_STATUS: Final[Mapping[str, tuple[ExecType, OrderStatus]]] = {
    "PUT ORDER REQ RECEIVED": (ExecType.PENDING_NEW, OrderStatus.PENDING_NEW),
    "VALIDATION PENDING": (ExecType.PENDING_NEW, OrderStatus.PENDING_NEW),
    "OPEN PENDING": (ExecType.PENDING_NEW, OrderStatus.PENDING_NEW),
    "AMO REQ RECEIVED": (ExecType.PENDING_NEW, OrderStatus.PENDING_NEW),
    "TRIGGER PENDING": (ExecType.NEW, OrderStatus.NEW),  # a stop order resting untriggered
    "CANCEL PENDING": (ExecType.PENDING_CANCEL, OrderStatus.PENDING_CANCEL),
    "COMPLETE": (ExecType.FILL, OrderStatus.FILLED),
    "CANCELLED": (ExecType.CANCELED, OrderStatus.CANCELED),
    "CANCELLED AMO": (ExecType.CANCELED, OrderStatus.CANCELED),
    "REJECTED": (ExecType.REJECTED, OrderStatus.REJECTED),
}
# Working-order statuses: exec type when no new fill came with it; the order status then
# follows the quantities (NEW / PARTIALLY_FILLED / FILLED). UPDATE = modified or partly
# filled (Kite postback docs).
_WORKING_STATUS: Final[Mapping[str, ExecType]] = {
    "OPEN": ExecType.NEW,
    "UPDATE": ExecType.REPLACED,
    "MODIFIED": ExecType.REPLACED,
    "MODIFY VALIDATION PENDING": ExecType.OTHER,
    "MODIFY PENDING": ExecType.OTHER,
}
_TERMINAL: Final = frozenset({OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.REJECTED})
_SIDES: Final[Mapping[str, Side]] = {"BUY": Side.BUY, "SELL": Side.SELL}


@dataclass(frozen=True, slots=True)
class OrderProgress:
    """What we last saw filled on an order (for the fill-delta rule)."""

    filled: Decimal
    average_price: Decimal


def _dec(value: Any, name: str) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise KiteParseError(f"{name} is {value!r}")
    if isinstance(value, float):
        value = repr(value)  # a float from json.loads: its shortest repr is the JSON text
    try:
        result = Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise KiteParseError(f"{name} is not a number: {value!r}") from None
    if not result.is_finite():
        raise KiteParseError(f"{name} is not finite: {value!r}")
    return result


def _qty(order: Mapping[str, Any], name: str, default: int | None = None) -> Decimal:
    value = order.get(name)
    if value is None:
        if default is None:
            raise KiteParseError(f"order update lacks {name}")
        return Decimal(default)
    result = _dec(value, name)
    if result < 0:
        raise KiteParseError(f"{name} is negative: {value!r}")
    return result


def _text(order: Mapping[str, Any], name: str) -> str:
    value = order.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise KiteParseError(f"order update lacks {name}")
    return value.strip()


def kite_time_to_ns(text: str) -> int:
    """``"2022-03-03 09:24:25"`` (IST wall clock) or ISO-8601 with an offset → UTC ns."""
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise KiteParseError(f"not a Kite timestamp: {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=IST)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * _NS + delta.microseconds * 1_000


def _event_time(order: Mapping[str, Any], ts_init: int) -> int:
    for name in ("exchange_update_timestamp", "exchange_timestamp", "order_timestamp"):
        value = order.get(name)
        if isinstance(value, str) and value.strip():
            return kite_time_to_ns(value)
    return ts_init


def _status(
    status: str, filled: Decimal, quantity: Decimal, new_fill: bool
) -> tuple[ExecType, OrderStatus]:
    fixed = _FIXED_STATUS.get(status)
    if fixed is not None:
        return fixed
    working = _WORKING_STATUS.get(status)
    if working is None:
        return ExecType.OTHER, OrderStatus.UNKNOWN
    if filled <= 0:
        order_status = OrderStatus.NEW
    elif filled < quantity:
        order_status = OrderStatus.PARTIALLY_FILLED
    else:
        order_status = OrderStatus.FILLED
    if new_fill:
        exec_type = ExecType.FILL if order_status is OrderStatus.FILLED else ExecType.PARTIAL_FILL
    elif working is ExecType.NEW and filled > 0:
        exec_type = ExecType.OTHER  # an OPEN restatement of a partly filled order
    else:
        exec_type = working
    return exec_type, order_status


def _int_text(value: Decimal) -> str:
    return str(int(value)) if value == value.to_integral_value() else str(value.normalize())


def order_to_records(
    order: Mapping[str, Any], *, previous: OrderProgress | None, ts_init: int
) -> tuple[ExecutionReport, Fill | None]:
    """One Kite order object → its ExecutionReport and, if ``filled_quantity`` grew past
    ``previous``, the Fill. Raises :class:`KiteParseError` on a missing/invalid field."""
    order_id = _text(order, "order_id")
    status = _text(order, "status")
    side = _SIDES.get(_text(order, "transaction_type").upper())
    if side is None:
        raise KiteParseError(f"transaction_type {order.get('transaction_type')!r}")
    exchange = _text(order, "exchange")
    symbol = f"{exchange}:{_text(order, 'tradingsymbol')}"
    quantity = _qty(order, "quantity")
    filled = _qty(order, "filled_quantity", 0)
    cancelled = _qty(order, "cancelled_quantity", 0)
    average = _qty(order, "average_price", 0)
    pending_raw = order.get("pending_quantity")
    ts_event = _event_time(order, ts_init)

    before = previous.filled if previous is not None else Decimal(0)
    delta = filled - before
    fill_price: Decimal | None = None
    if delta > 0 and average > 0:
        fill_price = average
        if previous is not None and previous.filled > 0:
            implied = (average * filled - previous.average_price * previous.filled) / delta
            if implied > 0:
                fill_price = implied
        fill_price = fill_price.quantize(_NANO, rounding=ROUND_HALF_EVEN)
    exec_type, order_status = _status(status, filled, quantity, fill_price is not None)

    if order_status in _TERMINAL:
        leaves = Decimal(0)
    elif pending_raw is not None:
        leaves = _qty(order, "pending_quantity")
    else:
        leaves = max(quantity - filled - cancelled, Decimal(0))
    tag = order.get("tag")
    client_order_id = tag.strip() if isinstance(tag, str) and tag.strip() else order_id
    account = order.get("user_id") or order.get("placed_by") or "kite"
    reason = order.get("status_message")
    digest = hashlib.sha256(
        "|".join(
            str(order.get(k))
            for k in (
                "status",
                "quantity",
                "filled_quantity",
                "pending_quantity",
                "cancelled_quantity",
                "price",
                "trigger_price",
                "average_price",
                "exchange_update_timestamp",
            )
        ).encode()
    ).hexdigest()[:16]
    try:
        report = ExecutionReport(
            report_id=f"{order_id}-{digest}",
            client_order_id=client_order_id,
            venue_order_id=order_id,
            account=str(account),
            symbol=symbol,
            side=side,
            exec_type=exec_type,
            order_status=order_status,
            quantity=to_fixed(quantity),
            last_quantity=to_fixed(delta) if fill_price is not None else 0,
            last_price=to_fixed(fill_price) if fill_price is not None else None,
            cum_quantity=to_fixed(filled),
            leaves_quantity=to_fixed(leaves),
            avg_price=to_fixed(average) if filled > 0 and average > 0 else None,
            reason=str(reason) if reason else None,
            venue=exchange,
            raw_event=status,
            ts_event=ts_event,
            ts_init=ts_init,
        )
        fill = None
        if fill_price is not None:
            fill = Fill(
                fill_id=f"{order_id}-{_int_text(filled)}",
                client_order_id=client_order_id,
                venue_order_id=order_id,
                account=str(account),
                symbol=symbol,
                side=side,
                quantity=to_fixed(delta),
                price=to_fixed(fill_price),
                liquidity_side=LiquiditySide.NONE,
                venue=exchange,
                ts_event=ts_event,
                ts_init=ts_init,
            )
    except (FixedPointError, ValidationError) as exc:
        raise KiteParseError(f"order {order_id}: {exc}") from None
    return report, fill


class OrderTracker:
    """Per-order fill progress so each increase of ``filled_quantity`` becomes one Fill.

    Thread-safe: the websocket feed and the postback receiver may share one tracker, so an
    update delivered by both yields its Fill once. Entries are kept for the session (a
    trading day's orders); an update arriving out of order (a lower filled quantity than
    already seen) yields its report and no Fill.
    """

    def __init__(self) -> None:
        self._progress: dict[str, OrderProgress] = {}
        self._lock = threading.Lock()

    def apply(self, order: Mapping[str, Any], ts_init: int) -> tuple[ExecutionReport, Fill | None]:
        order_id = _text(order, "order_id")
        with self._lock:
            report, fill = order_to_records(
                order, previous=self._progress.get(order_id), ts_init=ts_init
            )
            if fill is not None:
                self._progress[order_id] = OrderProgress(
                    filled=_qty(order, "filled_quantity", 0),
                    average_price=_qty(order, "average_price", 0),
                )
            return report, fill

    def progress(self, order_id: str) -> OrderProgress | None:
        with self._lock:
            return self._progress.get(order_id)

    def snapshot(self) -> dict[str, list[str]]:
        with self._lock:
            return {k: [str(p.filled), str(p.average_price)] for k, p in self._progress.items()}

    def restore(self, snapshot: Mapping[str, list[str]]) -> None:
        with self._lock:
            self._progress = {
                k: OrderProgress(Decimal(v[0]), Decimal(v[1])) for k, v in snapshot.items()
            }


# ---- postback checksum ----------------------------------------------------------------
def _secret(api_secret: str | SecretStr) -> str:
    return api_secret.get_secret_value() if isinstance(api_secret, SecretStr) else api_secret


def postback_checksum(order_id: str, order_timestamp: str, api_secret: str | SecretStr) -> str:
    """SHA-256 hex of ``order_id + order_timestamp + api_secret`` (Kite postback docs)."""
    material = order_id + order_timestamp + _secret(api_secret)
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def verify_postback_checksum(payload: Mapping[str, Any], api_secret: str | SecretStr) -> bool:
    """True only if ``payload["checksum"]`` is the checksum of its order_id/order_timestamp
    under ``api_secret`` (constant-time compare). Missing fields → False."""
    order_id, order_ts = payload.get("order_id"), payload.get("order_timestamp")
    checksum = payload.get("checksum")
    if not (isinstance(order_id, str) and isinstance(order_ts, str) and isinstance(checksum, str)):
        return False
    expected = postback_checksum(order_id, order_ts, api_secret)
    return hmac.compare_digest(expected.encode("ascii"), checksum.encode("utf-8"))
