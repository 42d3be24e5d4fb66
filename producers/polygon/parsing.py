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

Exact decimals: the frame is decoded with ``parse_float=Decimal``, so ``161.87`` stays
``Decimal("161.87")`` and becomes exactly 161_870_000_000 fixed-point units; no float ever
holds a price. Anything that cannot become a record is a :class:`Malformed` carrying the
frame's raw bytes; :func:`parse_ws_frame` never raises.

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

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any, Final, TypeVar

from pydantic import ValidationError

from producers.base import Malformed
from schemas.fixedpoint import FixedPointError, to_fixed
from schemas.models import Bar, Quote, Trade

__all__ = [
    "CONSOLIDATED_VENUE",
    "EXCHANGE_MIC",
    "SOURCE",
    "ParseError",
    "Status",
    "WsItem",
    "bar_from_rest_agg",
    "bar_from_ws_agg",
    "interval_ms",
    "loads_exact",
    "parse_ws_frame",
    "quote_from_ws",
    "trade_from_rest",
    "trade_from_ws",
    "venue_for_exchange",
]

SOURCE: Final = "polygon"
CONSOLIDATED_VENUE: Final = "SIP"
_NS_PER_MS: Final = 1_000_000
_R = TypeVar("_R", Trade, Quote, Bar)

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


class ParseError(ValueError):
    """A vendor message that cannot become a record. Turned into :class:`Malformed`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


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


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number we accept")


def loads_exact(raw: bytes | str) -> Any:
    """JSON → Python with every non-integer number as an exact :class:`Decimal`.

    NaN and ±Infinity are rejected (ValueError), as is invalid JSON or UTF-8.
    """
    return json.loads(raw, parse_float=Decimal, parse_constant=_reject_constant)


# ---- field readers (raise ParseError) -----------------------------------------------------
def _field(msg: Mapping[str, Any], key: str) -> Any:
    value = msg.get(key)
    if value is None:
        raise ParseError("missing_field", f"field {key!r} is missing")
    return value


def _int(msg: Mapping[str, Any], key: str) -> int:
    value = _field(msg, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParseError("bad_field", f"field {key!r} must be an integer, got {value!r}")
    return value


def _opt_int(msg: Mapping[str, Any], key: str) -> int | None:
    return None if msg.get(key) is None else _int(msg, key)


def _str(msg: Mapping[str, Any], key: str) -> str:
    value = _field(msg, key)
    if not isinstance(value, str) or not value:
        raise ParseError("bad_field", f"field {key!r} must be a non-empty string, got {value!r}")
    return value


def _decimal(msg: Mapping[str, Any], key: str) -> Decimal:
    """A number as an exact Decimal.

    Accepts int, Decimal (our JSON decoding) and decimal strings. A float only reaches here
    from an SDK model object; it becomes ``Decimal(repr(x))``, the shortest decimal that
    round-trips, which equals the JSON text the float was parsed from (≤ 15 digits).
    """
    value = _field(msg, key)
    if isinstance(value, bool):
        raise ParseError("bad_field", f"field {key!r} must be a number, got {value!r}")
    if isinstance(value, float):
        value = repr(value)
    if isinstance(value, int | Decimal | str):
        try:
            dec = Decimal(value)
        except InvalidOperation:
            raise ParseError("bad_field", f"field {key!r} is not a decimal: {value!r}") from None
        if dec.is_finite():
            return dec
    raise ParseError("bad_field", f"field {key!r} must be a finite number, got {value!r}")


def _fixed(msg: Mapping[str, Any], key: str) -> int:
    try:
        return to_fixed(_decimal(msg, key))
    except FixedPointError as exc:
        raise ParseError("bad_value", f"field {key!r}: {exc}") from None


def _opt_fixed(msg: Mapping[str, Any], key: str) -> int | None:
    return None if msg.get(key) is None else _fixed(msg, key)


def _fixed_preferring(msg: Mapping[str, Any], exact_key: str, key: str) -> int:
    """``exact_key`` (a fractional decimal string) when present, else ``key``."""
    return _fixed(msg, exact_key if msg.get(exact_key) is not None else key)


def _ms_to_ns(msg: Mapping[str, Any], key: str) -> int:
    return _int(msg, key) * _NS_PER_MS


def _condition_ids(msg: Mapping[str, Any], key: str) -> list[str]:
    value = msg.get(key)
    if value is None:
        return []
    items: Sequence[Any] = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise ParseError("bad_field", f"field {key!r} must hold integer ids, got {value!r}")
        out.append(str(item))
    return out


def _venue(msg: Mapping[str, Any], key: str) -> str:
    return venue_for_exchange(_int(msg, key))


def _build(model: type[_R], **fields: Any) -> _R:
    try:
        return model(**fields)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ParseError("bad_value", f"{model.__name__}.{where}: {first['msg']}") from None


# ---- WebSocket messages ------------------------------------------------------------------
def trade_from_ws(msg: Mapping[str, Any], *, received_ns: int) -> Trade:
    """``ev: T`` → Trade. Raises :class:`ParseError`."""
    trade_id = msg.get("i")
    if trade_id is not None and (isinstance(trade_id, bool) or not isinstance(trade_id, str | int)):
        raise ParseError("bad_field", f"field 'i' must be a string id, got {trade_id!r}")
    return _build(
        Trade,
        symbol=_str(msg, "sym"),
        venue=_venue(msg, "x"),
        price=_fixed(msg, "p"),
        size=_fixed_preferring(msg, "ds", "s"),
        trade_id=None if trade_id is None else str(trade_id),
        conditions=_condition_ids(msg, "c"),
        source=SOURCE,
        ts_event=_ms_to_ns(msg, "t"),
        ts_init=received_ns,
    )


def quote_from_ws(msg: Mapping[str, Any], *, received_ns: int) -> Quote:
    """``ev: Q`` (NBBO) → Quote. A zero price means an empty side (price and size None)."""
    bid_price, ask_price = _opt_fixed(msg, "bp"), _opt_fixed(msg, "ap")
    bid_size, ask_size = _opt_fixed(msg, "bs"), _opt_fixed(msg, "as")
    if not bid_price:
        bid_price = bid_size = None
    if not ask_price:
        ask_price = ask_size = None
    flags = [f"indicator:{i}" for i in _condition_ids(msg, "i")]
    for side, key in (("bid", "bx"), ("ask", "ax")):
        if msg.get(key) is not None:
            flags.append(f"{side}_venue:{_venue(msg, key)}")
    return _build(
        Quote,
        symbol=_str(msg, "sym"),
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
    start_ms, end_ms = _int(msg, "s"), _int(msg, "e")
    if end_ms <= start_ms:
        raise ParseError("bad_value", f"aggregate window end {end_ms} <= start {start_ms}")
    return _build(
        Bar,
        symbol=_str(msg, "sym"),
        venue=CONSOLIDATED_VENUE,
        interval_ms=end_ms - start_ms,
        open=_fixed(msg, "o"),
        high=_fixed(msg, "h"),
        low=_fixed(msg, "l"),
        close=_fixed(msg, "c"),
        volume=_fixed_preferring(msg, "dv", "v"),
        trade_count=_opt_int(msg, "n") or 0,
        vwap=_opt_fixed(msg, "vw"),
        source=SOURCE,
        ts_event=start_ms * _NS_PER_MS,
        ts_init=received_ns,
    )


def _status(msg: Mapping[str, Any]) -> Status:
    status = msg.get("status")
    if not isinstance(status, str):
        raise ParseError("bad_field", f"status message without a status string: {status!r}")
    message = msg.get("message")
    return Status(status=status, message=message if isinstance(message, str) else "")


_WsParser = Callable[..., Trade | Quote | Bar]
_WS_PARSERS: Final[Mapping[str, _WsParser]] = MappingProxyType(
    {"T": trade_from_ws, "Q": quote_from_ws, "A": bar_from_ws_agg, "AM": bar_from_ws_agg}
)


def parse_ws_frame(raw: bytes | str, *, received_ns: int) -> list[WsItem]:
    """One WebSocket frame → one item per message, in order. Never raises.

    A frame that is not JSON is one :class:`Malformed`; a bad message inside a good frame is
    a :class:`Malformed` in its place (carrying the whole frame, which is what was received)
    and the other messages still convert.
    """
    raw_bytes = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)

    def malformed(reason: str, error: str) -> Malformed:
        return Malformed(
            source=SOURCE, raw=raw_bytes, reason=reason, error=error, received_ns=received_ns
        )

    try:
        decoded = loads_exact(raw_bytes)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError too
        return [malformed("bad_json", f"not JSON: {exc}")]
    if isinstance(decoded, dict):
        decoded = [decoded]
    if not isinstance(decoded, list):
        return [malformed("bad_frame", f"frame is a JSON {type(decoded).__name__}, not a list")]

    items: list[WsItem] = []
    count = len(decoded)
    for index, msg in enumerate(decoded):
        where = f"message {index + 1} of {count}"
        if not isinstance(msg, dict):
            items.append(malformed("bad_message", f"{where} is not an object: {msg!r:.200}"))
            continue
        event = msg.get("ev")
        try:
            if event == "status":
                items.append(_status(msg))
                continue
            parser = _WS_PARSERS.get(event) if isinstance(event, str) else None
            if parser is None:
                items.append(malformed("unknown_event", f"{where}: unknown ev {event!r:.50}"))
                continue
            items.append(parser(msg, received_ns=received_ns))
        except ParseError as exc:
            items.append(malformed(exc.reason, f"{where} (ev {event!r:.10}): {exc}"))
    return items


# ---- REST results ------------------------------------------------------------------------
def bar_from_rest_agg(
    result: Mapping[str, Any], *, symbol: str, interval_ms: int, received_ns: int
) -> Bar:
    """One ``results[]`` item of ``/v2/aggs/ticker/{sym}/range/...`` → Bar.

    ``t`` is the bar start in ms; ``n`` the trade count (0 when absent). Raises ParseError.
    """
    return _build(
        Bar,
        symbol=symbol,
        venue=CONSOLIDATED_VENUE,
        interval_ms=interval_ms,
        open=_fixed(result, "o"),
        high=_fixed(result, "h"),
        low=_fixed(result, "l"),
        close=_fixed(result, "c"),
        volume=_fixed(result, "v"),
        trade_count=_opt_int(result, "n") or 0,
        vwap=_opt_fixed(result, "vw"),
        source=SOURCE,
        ts_event=_ms_to_ns(result, "t"),
        ts_init=received_ns,
    )


def trade_from_rest(result: Mapping[str, Any], *, symbol: str, received_ns: int) -> Trade:
    """One ``results[]`` item of ``/v3/trades/{sym}`` → Trade (``sip_timestamp`` is ns).

    A non-zero ``correction`` indicator is kept in ``flags`` as ``correction:<code>``.
    """
    trade_id = result.get("id")
    correction = _opt_int(result, "correction")
    return _build(
        Trade,
        symbol=symbol,
        venue=_venue(result, "exchange"),
        price=_fixed(result, "price"),
        size=_fixed_preferring(result, "decimal_size", "size"),
        trade_id=None if trade_id is None else str(trade_id),
        conditions=_condition_ids(result, "conditions"),
        flags=[f"correction:{correction}"] if correction else [],
        source=SOURCE,
        ts_event=_int(result, "sip_timestamp"),
        ts_init=received_ns,
    )
