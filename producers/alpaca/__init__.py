"""Alpaca adapter: real-time stock data and the trading account's trade updates.

- :class:`AlpacaConfig` — credentials (``APCA_API_KEY_ID`` / ``APCA_API_SECRET_KEY``), data
  feed (iex/sip), paper/live, channels; :meth:`AlpacaConfig.from_settings`
- :class:`AlpacaStockFeed` — trades, quotes, minute/daily bars → Trade, Quote, Bar
- :class:`AlpacaTradeUpdates` — ``trade_updates`` → ExecutionReport (+ Fill)

Pure vendor → record conversion lives in :mod:`producers.alpaca.parsing`; the SDK is used
only inside :mod:`producers.alpaca.client`.
"""

from producers.alpaca.config import AlpacaConfig
from producers.alpaca.feed import AlpacaStockFeed, AlpacaTradeUpdates

__all__ = ["AlpacaConfig", "AlpacaStockFeed", "AlpacaTradeUpdates"]
