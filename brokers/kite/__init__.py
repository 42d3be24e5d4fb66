"""Kite venue: kiteconnect place / modify / cancel, postbacks and order-book polls."""

from brokers.kite.broker import KiteBroker
from brokers.kite.parsing import kite_tag

__all__ = ["KiteBroker", "kite_tag"]
