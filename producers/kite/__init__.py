"""Zerodha Kite Connect adapter: KiteTicker market data, order updates and postbacks.

- :mod:`~producers.kite.config` — :class:`KiteConfig` (credentials from ``KITE_*``)
- :mod:`~producers.kite.instruments` — :class:`InstrumentMap` (token ↔ ``"NSE:INFY"``)
- :mod:`~producers.kite.parsing` — pure decoding of ticks, order updates, postback checksum
- :mod:`~producers.kite.feed` — :class:`KiteFeed`, the :class:`~producers.base.MarketDataFeed`
- :mod:`~producers.kite.postback` — :class:`KitePostbackServer` (webhook receiver)
- :mod:`~producers.kite.client` — :func:`fetch_instruments` (the day's instrument dump)

Kite's own types (ticks, order dicts) stay inside this package; only our records leave it.
"""

from producers.kite.client import fetch_instruments
from producers.kite.config import KiteConfig
from producers.kite.feed import KiteFeed
from producers.kite.instruments import InstrumentMap, UnknownInstrumentError
from producers.kite.parsing import OrderTracker, verify_postback_checksum
from producers.kite.postback import KitePostbackServer, PostbackRejected, parse_postback

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
