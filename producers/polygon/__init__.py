"""Polygon.io / Massive adapter: US stock trades, NBBO quotes and aggregate bars.

- :mod:`~producers.polygon.config` — :class:`PolygonConfig` (``from_settings`` needs
  ``MASSIVE_API_KEY``)
- :mod:`~producers.polygon.parsing` — pure functions, vendor messages → our records
- :mod:`~producers.polygon.feed` — :class:`PolygonFeed`, the WebSocket feed for the runner
- :mod:`~producers.polygon.backfill` — :func:`backfill_aggs`, REST history as bars

Vendor SDK objects never leave this package.
"""

from producers.polygon.backfill import backfill_aggs
from producers.polygon.config import PolygonConfig
from producers.polygon.feed import PolygonFeed

__all__ = ["PolygonConfig", "PolygonFeed", "backfill_aggs"]
