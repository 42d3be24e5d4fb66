"""Paper venue: fills simulated against our own market data (see :mod:`.broker`)."""

from brokers.paper.broker import PaperBroker

__all__ = ["PaperBroker"]
