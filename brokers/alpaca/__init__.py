"""Alpaca venue: alpaca-py TradingClient for orders, TradingStream trade_updates for fills."""

from brokers.alpaca.broker import AlpacaBroker

__all__ = ["AlpacaBroker"]
