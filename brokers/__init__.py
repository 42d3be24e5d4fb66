"""Brokers behind one interface (:class:`brokers.base.Broker`), one package per venue.

Core logic sees only the domain types of :mod:`brokers.base` (OrderSubmission in,
BrokerOrder / BrokerEvent out, BrokerRejected = final, BrokerUnavailable = retry), never a
vendor SDK's; quantities and prices are raw fixed-point ints, times UTC ns. The venue
packages do not import each other (import-linter), and reuse the feed parsers of
``producers`` for the vendor's objects.

===========  ===============================================================================
venue        how
===========  ===============================================================================
``PAPER``    :class:`brokers.paper.PaperBroker` ``(settings.execution)``: fills simulated
             against our own trades and quotes, in event time only. An order is priced as of
             ``ts_event + paper_latency_ms`` from a bounded per-symbol history, so the fills
             do not depend on when the order arrives among the market data; quotes limit the
             size (partial fills), prints fill the whole order. Events are delivered inside
             the call that caused them. ``live = False``.
``ALPACA``   :class:`brokers.alpaca.AlpacaBroker` ``(settings)``: alpaca-py TradingClient for
             orders (exact decimal text; a duplicate client order id returns the existing
             order), ``trade_updates`` on a thread of its own for events.
``KITE``     :class:`brokers.kite.KiteBroker` ``(settings)``: kiteconnect for orders (whole
             shares; ``tag`` = :func:`brokers.kite.kite_tag` of the client order id),
             checksum-verified postbacks plus an order-book poll for events, each state
             reported once whichever saw it first.
===========  ===============================================================================

Credentials come from ``settings.feeds`` (a missing one fails at construction naming its
variable); endpoints, timeouts and venue options from ``settings.execution``. The tests
run the real SDKs against loopback servers in ``tests/loopback``.
"""
