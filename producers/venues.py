"""Builds a venue's feed from the platform settings (what `omniquant produce` runs).

Credentials come from the settings (environment); a missing one raises
MissingCredentialError naming the variable before anything connects.
"""

from __future__ import annotations

from pathlib import Path

from core.config import Settings
from producers.base import MarketDataFeed

# Every venue `omniquant produce` offers; the CLI reads this list.
VENUES: tuple[str, ...] = ("polygon", "alpaca", "alpaca-trading", "kite")


async def create_feed(
    venue: str, settings: Settings, *, instruments_csv: Path | None = None
) -> MarketDataFeed:
    """The feed for ``venue``; Kite needs its instrument dump (a file, or fetched)."""
    if venue == "polygon":
        from producers.polygon import PolygonConfig, PolygonFeed

        return PolygonFeed(PolygonConfig.from_settings(settings))
    if venue == "alpaca":
        from producers.alpaca import AlpacaConfig, AlpacaStockFeed

        return AlpacaStockFeed(AlpacaConfig.from_settings(settings))
    if venue == "alpaca-trading":
        from producers.alpaca import AlpacaConfig, AlpacaTradeUpdates

        return AlpacaTradeUpdates(AlpacaConfig.from_settings(settings))
    if venue == "kite":
        from producers.kite import InstrumentMap, KiteConfig, KiteFeed, fetch_instruments

        config = KiteConfig.from_settings(settings, require_api_secret=False)
        instruments = (
            InstrumentMap.from_csv(instruments_csv)
            if instruments_csv is not None
            else await fetch_instruments(config)
        )
        return KiteFeed(config, instruments)
    raise ValueError(f"unknown venue {venue!r}; choose one of {', '.join(VENUES)}")
