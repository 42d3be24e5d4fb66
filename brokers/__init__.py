"""Brokers behind one interface (:class:`brokers.base.Broker`), one package per venue.

``brokers.paper`` simulates fills against our own market data; ``brokers.alpaca`` and
``brokers.kite`` talk to the vendors' APIs. Core logic sees only the domain types of
:mod:`brokers.base`, never a vendor SDK's.
"""
