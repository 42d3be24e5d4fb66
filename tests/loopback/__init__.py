"""Loopback venues for tests: real HTTP / websocket servers on 127.0.0.1 that speak a
vendor's protocol, answer with the vendor's recorded payloads and keep a small order book.

- :mod:`loopback.alpaca` — :class:`~loopback.alpaca.AlpacaLoopback`: Trading API v2 orders
  and the ``trade_updates`` websocket.
- :mod:`loopback.kite` — :class:`~loopback.kite.KiteLoopback`: Kite Connect order routes,
  and postbacks (with their checksum) to the broker's listener.

They run in the test process on free ports, so a subprocess under test reaches them over
TCP (each has an ``env()`` with the variables that point the platform at it). Import them
as ``from loopback.alpaca import AlpacaLoopback`` (``tests/`` is on the test path).
"""
