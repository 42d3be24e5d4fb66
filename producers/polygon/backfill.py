"""Historical aggregate bars from Polygon/Massive REST, through the SDK's ``RESTClient``.

``backfill_aggs`` calls ``RESTClient.list_aggs`` (``GET /v2/aggs/ticker/{sym}/range/
{multiplier}/{timespan}/{from}/{to}``) on ``config.rest_base_url`` and follows ``next_url``
pages the way the SDK does (``pagination=True``: it keeps the path and query of
``next_url`` and puts them on its own base URL, so pagination also works against a loopback
server).

Exact prices: the SDK's ``Agg`` model is annotated with floats, but it copies whatever its
JSON decoder produced. We give it, through its documented ``custom_json`` parameter, a
decoder that reads every non-integer number as ``Decimal`` (``parse_float=Decimal``), so
``1.5032`` reaches :func:`~producers.polygon.parsing.bar_from_rest_agg` as
``Decimal("1.5032")``. Should a float ever arrive (another decoder), the row is refused
(``bad_decimal``): a price is never read through a binary float.

The SDK swallows a page that is not JSON (it logs and stops iterating); our decoder notes the
failure and the backfill raises :class:`FeedError` instead of returning a truncated series.

Blocking (urllib3): from async code run it with ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import date
from typing import Any, Literal

import urllib3
from massive import RESTClient
from massive.exceptions import BadResponse

from core.errors import FeedParseError
from producers._fields import loads_exact
from producers.base import FeedDisconnected, FeedError, Malformed
from producers.polygon.config import PolygonConfig
from producers.polygon.parsing import SOURCE, bar_from_rest_agg, interval_ms
from schemas.models import Bar

__all__ = ["Timespan", "backfill_aggs"]

log = logging.getLogger(__name__)

Clock = Callable[[], int]  # UTC ns
Timespan = Literal["second", "minute", "hour", "day", "week"]

#: Largest page the aggregates endpoint serves; fewer round trips for long ranges.
_PAGE_LIMIT = 50_000


class _ExactJson:
    """``custom_json`` for the SDK: exact decimals, and remembers pages it could not decode."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def loads(self, text: str | bytes) -> Any:
        try:
            return loads_exact(text)
        except FeedParseError as exc:
            self.failures.append(str(exc))
            raise ValueError(str(exc)) from exc  # what the SDK catches around its decoder

    @staticmethod
    def dumps(obj: Any) -> str:
        return json.dumps(obj)


def _agg_fields(agg: Any) -> Mapping[str, Any]:
    """The SDK's ``Agg`` back to the wire field names our parser reads."""
    return {
        "o": agg.open,
        "h": agg.high,
        "l": agg.low,
        "c": agg.close,
        "v": agg.volume,
        "vw": agg.vwap,
        "n": agg.transactions,
        "t": agg.timestamp,
    }


def backfill_aggs(
    config: PolygonConfig,
    symbol: str,
    start: date | str,
    end: date | str,
    *,
    multiplier: int = 1,
    timespan: Timespan = "minute",
    adjusted: bool = True,
    clock: Clock = time.time_ns,
    on_malformed: Callable[[Malformed], None] | None = None,
) -> list[Bar]:
    """Bars of ``multiplier × timespan`` for ``symbol`` from ``start`` to ``end`` (inclusive
    dates, ``YYYY-MM-DD`` or :class:`date`), oldest first.

    ``ts_event`` is the bar start, ``ts_init`` the clock when the row was converted. A row that
    cannot become a Bar goes to ``on_malformed`` (its ``raw`` is the decoded row as JSON);
    without a callback it raises :class:`FeedError`, so a backfill never silently has gaps.

    Raises :class:`FeedError` on an HTTP error answer (bad key, bad request, exhausted
    retries on 429/5xx) or an undecodable page, :class:`FeedDisconnected` when the server
    cannot be reached, ValueError for a timespan without a fixed length.
    """
    bar_ms = interval_ms(multiplier, timespan)
    decoder = _ExactJson()
    client = RESTClient(
        api_key=config.api_key.get_secret_value(),
        base=config.rest_base_url,
        connect_timeout=config.rest_timeout_s,
        read_timeout=config.rest_timeout_s,
        retries=config.rest_retries,
        pagination=True,
        custom_json=decoder,
    )
    bars: list[Bar] = []
    where = f"{config.rest_base_url} aggs {symbol} {multiplier}/{timespan} {start}..{end}"
    try:
        for agg in client.list_aggs(
            symbol,
            multiplier,
            timespan,
            str(start),
            str(end),
            adjusted=adjusted,
            sort="asc",
            limit=_PAGE_LIMIT,
        ):
            received_ns = clock()
            fields = _agg_fields(agg)
            try:
                bars.append(
                    bar_from_rest_agg(
                        fields, symbol=symbol, interval_ms=bar_ms, received_ns=received_ns
                    )
                )
            except FeedParseError as exc:
                raw = json.dumps(fields, default=str).encode()
                bad = Malformed.from_error(SOURCE, raw, exc, received_ns, where=where)
                if on_malformed is None:
                    raise FeedError(f"polygon: malformed aggregate in {where}: {exc}") from None
                on_malformed(bad)
    except BadResponse as exc:
        raise FeedError(f"polygon: {where} answered with an error: {str(exc)[:500]}") from None
    except urllib3.exceptions.HTTPError as exc:
        raise FeedDisconnected(f"polygon: {where} unreachable: {exc}") from exc
    finally:
        client.client.clear()
    if decoder.failures:
        raise FeedError(f"polygon: {where}: a page was not JSON: {decoder.failures[0]}")
    log.info("polygon backfill done", extra={"symbol": symbol, "bars": len(bars), "where": where})
    return bars
