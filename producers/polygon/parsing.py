"""Pure conversion of Polygon.io / Massive stock messages into our records.

No I/O, no clock: the caller passes the time it received the bytes (``received_ns``), which
becomes ``ts_init``; the vendor's timestamp becomes ``ts_event``. Both UTC nanoseconds.

WebSocket (``wss://socket.massive.com/stocks``): every frame is a JSON array of messages,
told apart by ``ev``:

==========  ===========================================================================
``T``       trade → :class:`Trade` (``p`` price, ``s``/``ds`` size, ``x`` exchange id,
            ``i`` trade id, ``c`` condition ids, ``t`` SIP time in **ms**)
``Q``       NBBO quote → :class:`Quote` (``bp``/``bs`` bid, ``ap``/``as`` ask, ``bx``/``ax``
            exchange ids, ``c`` condition, ``i`` indicators, ``t`` **ms**)
``A``/``AM``  second / minute aggregate → :class:`Bar` (``o h l c v vw``; ``s``/``e``
            window start/end in **ms**, ``interval_ms = e - s``)
``status``  control (connected, auth_success, auth_failed, success ...) → :class:`Status`
==========  ===========================================================================

Exact decimals: the frame is decoded with the shared exact reader
(:func:`producers._fields.loads_exact`, ``parse_float=Decimal``), so ``161.87`` stays
``Decimal("161.87")`` and becomes exactly 161_870_000_000 fixed-point units; no float ever
holds a price (a float that reaches a field is refused, ``bad_decimal``). Anything that
cannot become a record raises :class:`~core.errors.FeedParseError`, which
:func:`parse_ws_frame` turns into a :class:`Malformed` carrying the frame's raw bytes and the
error's reason; :func:`parse_ws_frame` never raises.

Units and vendor quirks worth knowing:

* Quote sizes ``bs``/``as`` are taken as **shares**. The WebSocket spec text still says
  "round lots (normally 100 shares)", but since 2025-11-03 Polygon/Massive publish bid/ask
  sizes in shares on REST, WebSocket and flat files (SEC MDI round-lot rules; Polygon blog
  "Upcoming Changes to Bid and Ask Sizes in Stocks Quotes", 2025-10-27).
* WebSocket aggregates carry no trade count; ``Bar.trade_count`` is ``n`` when present,
  else 0 (unknown). Their ``z`` is the average trade size, not the tape.
* Fractional-share sizes arrive as decimal strings (``ds`` on trades, ``dv`` on
  aggregates, ``decimal_size`` on REST trades) and are preferred over the integer field.
* Condition ids are Polygon's unified ids, kept verbatim as strings (``[14, 41]`` →
  ``["14", "41"]``); quote indicators go to ``flags`` as ``indicator:<id>``.
* Quotes and aggregates are consolidated (SIP) data: their venue is ``SIP``; the NBBO's
  bid/ask exchanges go to ``flags`` as ``bid_venue:<MIC>`` / ``ask_venue:<MIC>``.

REST (``/v2/aggs/ticker/...`` results and ``/v3/trades/...`` results) have their own
functions: :func:`bar_from_rest_agg` (``t`` = bar start in ms) and :func:`trade_from_rest`
(``sip_timestamp`` in **ns**).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from core.errors import FeedParseError
from producers._fields import (
    build,
    fixed_field,
    int_field,
    loads_exact,
    message_list,
    optional_fixed_field,
    optional_int_field,
    text_field,
)
from producers.base import Malformed
from schemas.models import Bar, Quote, Trade

__all__ = [
    "CONSOLIDATED_VENUE",
    "EXCHANGE_MIC",
    "SOURCE",
    "Status",
    "WsItem",
    "bar_from_rest_agg",
    "bar_from_ws_agg",
    "interval_ms",
    "parse_ws_frame",
    "quote_from_ws",
    "trade_from_rest",
    "trade_from_ws",
    "venue_for_exchange",
]

SOURCE: Final = "polygon"
CONSOLIDATED_VENUE: Final = "SIP"
_NS_PER_MS: Final = 1_000_000

#: Polygon/Massive stock exchange id → ISO 10383 MIC, copied from the vendor's reference data
#: ``GET /v3/reference/exchanges`` (asset_class=stocks, locale=us) as recorded in
#: polygon-io/client-python@5d9c756 ``test_rest/mocks/v3/reference/exchanges.json``.
#: Ids 5 (UTP SIP) and 13 (CTA SIP) have no MIC there and fall back to ``POLYGON:<id>``.
EXCHANGE_MIC: Final[Mapping[int, str]] = MappingProxyType(
    {
        1: "XASE",  # NYSE American
        2: "XBOS",  # Nasdaq BX
        3: "XCIS",  # NYSE National
        # Id 4 is shared by every FINRA facility (NYSE TRF FINY, Nasdaq TRFs FINN/FINC, ADF
        # XADF); the message does not say which, so we use FINRA's operating MIC.
        4: "FINR",
        6: "XISE",  # Nasdaq ISE (stocks)
        7: "EDGA",  # Cboe EDGA
        8: "EDGX",  # Cboe EDGX
        9: "XCHI",  # NYSE Chicago
        10: "XNYS",  # New York Stock Exchange
        11: "ARCX",  # NYSE Arca
        12: "XNAS",  # Nasdaq
        14: "LTSE",  # Long-Term Stock Exchange
        15: "IEXG",  # Investors Exchange
        16: "CBSX",  # Cboe Stock Exchange
        17: "XPHL",  # Nasdaq PHLX
        18: "BATY",  # Cboe BYX
        19: "BATS",  # Cboe BZX
        20: "EPRL",  # MIAX Pearl
        21: "MEMX",  # Members Exchange
    }
)

_TIMESPAN_MS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "second": 1_000,
        "minute": 60_000,
        "hour": 3_600_000,
        "day": 86_400_000,
        "week": 7 * 86_400_000,
    }
)


@dataclass(frozen=True, slots=True)
class Status:
    """A WebSocket control message (``ev: status``): not data, never produced to Kafka."""

    status: str  # connected, auth_success, auth_failed, success, error, max_connections ...
    message: str


WsItem = Trade | Quote | Bar | Status | Malformed


def venue_for_exchange(exchange_id: int) -> str:
    """ISO MIC for a Polygon exchange id; ``POLYGON:<id>`` when we have no MIC for it."""
    return EXCHANGE_MIC.get(exchange_id, f"POLYGON:{exchange_id}")


def interval_ms(multiplier: int, timespan: str) -> int:
    """Bar length of a REST aggregate request (``1, "minute"`` → 60000).

    Months, quarters and years have no fixed length and are rejected with ValueError.
    """
    if multiplier < 1:
        raise ValueError(f"multiplier must be >= 1, got {multiplier}")
    try:
        return multiplier * _TIMESPAN_MS[timespan]
    except KeyError:
        raise ValueError(
            f"timespan {timespan!r} has no fixed length; use one of {sorted(_TIMESPAN_MS)}"
        ) from None


def _fixed_preferring(msg: Mapping[str, Any], exact_key: str, key: str) -> int:
    """``exact_key`` (a fractional decimal string) when present, else ``key``."""
    return fixed_field(msg, exact_key if msg.get(exact_key) is not None else key)


def _ms_to_ns(msg: Mapping[str, Any], key: str) -> int:
    return int_field(msg, key) * _NS_PER_MS


def _condition_ids(msg: Mapping[str, Any], key: str) -> list[str]:
    value = msg.get(key)
    if value is None:
        return []
    items: Sequence[Any] = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise FeedParseError("bad_field", f"field {key!r} must hold integer ids: {value!r}")
        out.append(str(item))
    return out


def _venue(msg: Mapping[str, Any], key: str) -> str:
    return venue_for_exchange(int_field(msg, key))


# ---- WebSocket messages ------------------------------------------------------------------
def trade_from_ws(msg: Mapping[str, Any], *, received_ns: int) -> Trade:
    """``ev: T`` → Trade. Raises :class:`~core.errors.FeedParseError`."""
    trade_id = msg.get("i")
    if trade_id is not None and (isinstance(trade_id, bool) or not isinstance(trade_id, str | int)):
        raise FeedParseError("bad_field", f"field 'i' must be a string id, got {trade_id!r}")
    return build(
        Trade,
        symbol=text_field(msg, "sym"),
        venue=_venue(msg, "x"),
        price=fixed_field(msg, "p"),
        size=_fixed_preferring(msg, "ds", "s"),
        trade_id=None if trade_id is None else str(trade_id),
        conditions=_condition_ids(msg, "c"),
        source=SOURCE,
        ts_event=_ms_to_ns(msg, "t"),
        ts_init=received_ns,
    )


def quote_from_ws(msg: Mapping[str, Any], *, received_ns: int) -> Quote:
    """``ev: Q`` (NBBO) → Quote. A zero price means an empty side (price and size None)."""
    bid_price, ask_price = optional_fixed_field(msg, "bp"), optional_fixed_field(msg, "ap")
    bid_size, ask_size = optional_fixed_field(msg, "bs"), optional_fixed_field(msg, "as")
    if not bid_price:
        bid_price = bid_size = None
    if not ask_price:
        ask_price = ask_size = None
    flags = [f"indicator:{i}" for i in _condition_ids(msg, "i")]
    for side, key in (("bid", "bx"), ("ask", "ax")):
        if msg.get(key) is not None:
            flags.append(f"{side}_venue:{_venue(msg, key)}")
    return build(
        Quote,
        symbol=text_field(msg, "sym"),
        venue=CONSOLIDATED_VENUE,
        bid_price=bid_price,
        bid_size=bid_size,
        ask_price=ask_price,
        ask_size=ask_size,
        conditions=_condition_ids(msg, "c"),
        flags=flags,
        source=SOURCE,
        ts_event=_ms_to_ns(msg, "t"),
        ts_init=received_ns,
    )


def bar_from_ws_agg(msg: Mapping[str, Any], *, received_ns: int) -> Bar:
    """``ev: A`` (second) or ``ev: AM`` (minute) aggregate → Bar; interval from ``e - s``."""
    start_ms, end_ms = int_field(msg, "s"), int_field(msg, "e")
    if end_ms <= start_ms:
        raise FeedParseError("bad_value", f"aggregate window end {end_ms} <= start {start_ms}")
    return build(
        Bar,
        symbol=text_field(msg, "sym"),
        venue=CONSOLIDATED_VENUE,
        interval_ms=end_ms - start_ms,
        open=fixed_field(msg, "o"),
        high=fixed_field(msg, "h"),
        low=fixed_field(msg, "l"),
        close=fixed_field(msg, "c"),
        volume=_fixed_preferring(msg, "dv", "v"),
        trade_count=optional_int_field(msg, "n") or 0,
        vwap=optional_fixed_field(msg, "vw"),
        source=SOURCE,
        ts_event=start_ms * _NS_PER_MS,
        ts_init=received_ns,
    )


def _status(msg: Mapping[str, Any]) -> Status:
    status = msg.get("status")
    if not isinstance(status, str):
        raise FeedParseError("bad_field", f"status message without a status string: {status!r}")
    message = msg.get("message")
    return Status(status=status, message=message if isinstance(message, str) else "")


_WsParser = Callable[..., Trade | Quote | Bar]
_WS_PARSERS: Final[Mapping[str, _WsParser]] = MappingProxyType(
    {"T": trade_from_ws, "Q": quote_from_ws, "A": bar_from_ws_agg, "AM": bar_from_ws_agg}
)


def _ws_message(msg: Any, received_ns: int) -> Trade | Quote | Bar | Status:
    if not isinstance(msg, dict):
        raise FeedParseError("bad_message", f"not an object: {msg!r:.200}")
    event = msg.get("ev")
    if event == "status":
        return _status(msg)
    parser = _WS_PARSERS.get(event) if isinstance(event, str) else None
    if parser is None:
        raise FeedParseError("unknown_message", f"unknown ev {event!r:.50}")
    return parser(msg, received_ns=received_ns)


def parse_ws_frame(raw: bytes | str, *, received_ns: int) -> list[WsItem]:
    """One WebSocket frame → one item per message, in order. Never raises.

    A frame that is not JSON is one :class:`Malformed`; a bad message inside a good frame is
    a :class:`Malformed` in its place (carrying the whole frame, which is what was received)
    and the other messages still convert.
    """
    raw_bytes = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
    try:
        messages = message_list(loads_exact(raw_bytes))
    except FeedParseError as exc:
        return [Malformed.from_error(SOURCE, raw_bytes, exc, received_ns)]
    items: list[WsItem] = []
    for index, msg in enumerate(messages):
        try:
            items.append(_ws_message(msg, received_ns))
        except FeedParseError as exc:
            where = f"message {index + 1} of {len(messages)}"
            if isinstance(msg, dict):
                where += f" (ev {msg.get('ev')!r:.10})"
            items.append(Malformed.from_error(SOURCE, raw_bytes, exc, received_ns, where=where))
    return items


# ---- REST results ------------------------------------------------------------------------
def bar_from_rest_agg(
    result: Mapping[str, Any], *, symbol: str, interval_ms: int, received_ns: int
) -> Bar:
    """One ``results[]`` item of ``/v2/aggs/ticker/{sym}/range/...`` → Bar.

    ``t`` is the bar start in ms; ``n`` the trade count (0 when absent). Raises
    :class:`~core.errors.FeedParseError`.
    """
    return build(
        Bar,
        symbol=symbol,
        venue=CONSOLIDATED_VENUE,
        interval_ms=interval_ms,
        open=fixed_field(result, "o"),
        high=fixed_field(result, "h"),
        low=fixed_field(result, "l"),
        close=fixed_field(result, "c"),
        volume=fixed_field(result, "v"),
        trade_count=optional_int_field(result, "n") or 0,
        vwap=optional_fixed_field(result, "vw"),
        source=SOURCE,
        ts_event=_ms_to_ns(result, "t"),
        ts_init=received_ns,
    )


def trade_from_rest(result: Mapping[str, Any], *, symbol: str, received_ns: int) -> Trade:
    """One ``results[]`` item of ``/v3/trades/{sym}`` → Trade (``sip_timestamp`` is ns).

    A non-zero ``correction`` indicator is kept in ``flags`` as ``correction:<code>``.
    """
    trade_id = result.get("id")
    correction = optional_int_field(result, "correction")
    return build(
        Trade,
        symbol=symbol,
        venue=_venue(result, "exchange"),
        price=fixed_field(result, "price"),
        size=_fixed_preferring(result, "decimal_size", "size"),
        trade_id=None if trade_id is None else str(trade_id),
        conditions=_condition_ids(result, "conditions"),
        flags=[f"correction:{correction}"] if correction else [],
        source=SOURCE,
        ts_event=int_field(result, "sip_timestamp"),
        ts_init=received_ns,
    )
