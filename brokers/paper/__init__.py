"""Paper venue: fills simulated against our own market data (see :mod:`.broker`)."""
