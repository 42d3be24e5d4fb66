"""The one Kite REST call the feed needs: the instrument dump (``GET /instruments``).

Speaks Kite Connect v3 over httpx like the SDK does (``X-Kite-Version: 3``,
``Authorization: token api_key:access_token``; kiteconnect/connect.py ``_request``), so it
runs in the feed's event loop instead of the SDK's blocking ``requests`` session.
"""

from __future__ import annotations

import httpx

from producers.base import FeedDisconnected, FeedError
from producers.kite.config import KiteConfig
from producers.kite.instruments import InstrumentMap

__all__ = ["fetch_instruments"]

KITE_API_VERSION = "3"


async def fetch_instruments(
    config: KiteConfig,
    exchange: str | None = None,
    *,
    timeout_s: float = 30.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> InstrumentMap:
    """Download the day's instrument dump (all exchanges, or one: ``"NSE"``).

    Raises FeedError on 4xx (bad credentials: Kite answers 403 TokenException), and
    FeedDisconnected on 5xx, timeouts and network errors (worth retrying).
    """
    path = "/instruments" + (f"/{exchange.upper()}" if exchange else "")
    auth = f"{config.api_key.get_secret_value()}:{config.access_token.get_secret_value()}"
    headers = {"X-Kite-Version": KITE_API_VERSION, "Authorization": f"token {auth}"}
    try:
        async with httpx.AsyncClient(
            base_url=config.rest_url, timeout=timeout_s, transport=transport
        ) as client:
            response = await client.get(path, headers=headers)
    except httpx.HTTPError as exc:
        raise FeedDisconnected(f"kite GET {path} failed: {type(exc).__name__}: {exc}") from None
    if response.status_code >= 500:
        raise FeedDisconnected(f"kite GET {path}: HTTP {response.status_code}")
    if response.status_code >= 400:
        raise FeedError(f"kite GET {path}: HTTP {response.status_code} {_kite_error(response)}")
    try:
        return InstrumentMap.from_csv_text(response.text)
    except ValueError as exc:
        raise FeedError(f"kite GET {path}: bad instrument dump: {exc}") from None


def _kite_error(response: httpx.Response) -> str:
    """Kite's error envelope ``{"status": "error", "error_type": ..., "message": ...}``."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    return f"{body.get('error_type', '')}: {body.get('message', '')}".strip(": ")
