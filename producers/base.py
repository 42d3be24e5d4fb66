"""One interface for every market-data or broker feed; one module per venue implements it.

A feed speaks its vendor's protocol and yields OUR records only (Trade, Quote, Bar,
ExecutionReport, Fill) — vendor SDK types never leave the venue's package. A frame the
feed cannot parse is yielded as :class:`Malformed` with the raw bytes, never raised: the
runner sends it to the dead-letter topic and the feed carries on. A venue's parsing raises
:class:`~core.errors.FeedParseError` (one error for every venue, with a machine-readable
``reason``); :meth:`Malformed.from_error` carries that reason and message over.

Lifecycle (all async; a runner drives it, see :mod:`producers.runner`)::

    await feed.connect()
    await feed.subscribe(["AAPL", "MSFT"])
    async for event in feed.events():   # ends when the connection drops or close() is called
        ...
    await feed.close()

A dropped connection ends ``events()`` by raising :class:`FeedDisconnected`; the runner
reconnects with backoff and subscribes again to what was subscribed.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from core.errors import FeedParseError, OmniquantError
from schemas.models import Bar, ExecutionReport, Fill, Quote, Trade


class FeedError(OmniquantError):
    """A feed failed in a way reconnecting will not fix (bad credentials, bad request)."""


class FeedDisconnected(OmniquantError):
    """The connection dropped; reconnecting may help."""


@dataclass(frozen=True, slots=True)
class Malformed:
    """A vendor frame or message we could not turn into a record. Goes to dead letters."""

    source: str
    raw: bytes
    reason: str  # short snake_case label: FeedParseError's reasons, "unknown_instrument", ...
    error: str  # human-readable detail
    received_ns: int

    @classmethod
    def from_error(
        cls, source: str, raw: bytes, error: FeedParseError, received_ns: int, *, where: str = ""
    ) -> Malformed:
        """The dead letter of a parse error: its reason, its message (after ``where``)."""
        detail = f"{where}: {error}" if where else str(error)
        return cls(source, raw, error.reason, detail, received_ns)


FeedEvent = Trade | Quote | Bar | ExecutionReport | Fill | Malformed


class MarketDataFeed(abc.ABC):
    """A vendor's real-time feed, normalized to our records."""

    #: short name used in metrics labels, Trade.source and topic headers ("polygon", ...)
    source: str

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the connection and authenticate. Raise FeedError on bad credentials."""

    @abc.abstractmethod
    async def subscribe(self, symbols: Sequence[str]) -> None:
        """Start receiving data for ``symbols`` (our symbols; the feed maps them)."""

    @abc.abstractmethod
    async def unsubscribe(self, symbols: Sequence[str]) -> None:
        """Stop receiving data for ``symbols``."""

    @abc.abstractmethod
    def events(self) -> AsyncIterator[FeedEvent]:
        """Normalized events as they arrive; raises FeedDisconnected when the link drops."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection; ``events()`` then ends."""

    @property
    def subscribed(self) -> frozenset[str]:
        """Symbols currently subscribed (the runner re-subscribes them after a reconnect)."""
        return frozenset()
