"""Alpaca venue: alpaca-py TradingClient for orders, TradingStream trade_updates for fills."""
