"""Zerodha Kite Connect adapter: KiteTicker market data, order updates and postbacks.

- :mod:`~producers.kite.config` — :class:`KiteConfig` (credentials from ``KITE_*``)
- :mod:`~producers.kite.instruments` — :class:`InstrumentMap` (token ↔ ``"NSE:INFY"``)
- :mod:`~producers.kite.ticks` — KiteTicker binary packets → ticks → Trade / Quote
- :mod:`~producers.kite.messages` — websocket text messages (order updates, errors, notices)
- :mod:`~producers.kite.orders` — order objects → ExecutionReport / Fill (:class:`OrderTracker`)
- :mod:`~producers.kite.feed` — :class:`KiteFeed`, the :class:`~producers.base.MarketDataFeed`
- :mod:`~producers.kite.postback` — checksum, :class:`KitePostbackServer` (webhook receiver)
- :mod:`~producers.kite.client` — :func:`fetch_instruments` (the day's instrument dump)

Kite's own types (ticks, order dicts) stay inside this package; only our records leave it.
"""

from producers.kite.client import fetch_instruments
from producers.kite.config import KiteConfig
from producers.kite.feed import KiteFeed
from producers.kite.instruments import InstrumentMap, UnknownInstrumentError
from producers.kite.orders import OrderTracker
from producers.kite.postback import (
    KitePostbackServer,
    PostbackRejected,
    parse_postback,
    verify_postback_checksum,
)

__all__ = [
    "InstrumentMap",
    "KiteConfig",
    "KiteFeed",
    "KitePostbackServer",
    "OrderTracker",
    "PostbackRejected",
    "UnknownInstrumentError",
    "fetch_instruments",
    "parse_postback",
    "verify_postback_checksum",
]
