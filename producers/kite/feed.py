"""KiteFeed: Zerodha Kite Connect market data and order updates as our records.

Why not the SDK's ``KiteTicker``: it runs on Twisted/autobahn. Its reactor is global to
the process, runs on its own thread (``connect(threaded=True)``) and cannot be restarted
once stopped (``ReactorNotRestartable``), its callbacks fire on that thread, it reconnects
by itself (the runner already does, with our backoff and metrics), and its parser turns
prices into floats. Driving that from asyncio means a thread bridge around a second
event loop. The protocol is small and documented (Kite Connect v3 "WebSocket streaming"),
so this feed speaks it with ``websockets``::

    connect   wss://ws.kite.trade?api_key=…&access_token=…   (403 → bad/expired token)
    send      {"a": "subscribe", "v": [tokens]}, {"a": "mode", "v": ["full", [tokens]]},
              {"a": "unsubscribe", "v": [tokens]}
    receive   binary: ticks (1-byte messages are heartbeats); text: JSON order updates,
              errors and broadcast messages

and decodes with :mod:`producers.kite.ticks` (binary; the tests check its output against
``KiteTicker._parse_binary`` itself), :mod:`producers.kite.messages` (text) and
:mod:`producers.kite.orders` (order updates → records). Whatever they refuse is yielded as
a ``Malformed`` with the reason of their :class:`~core.errors.FeedParseError`. Dead links
are found by websocket pings (``ping_interval_s``), as the SDK does.

Symbols are ``"EXCHANGE:TRADINGSYMBOL"`` (``"NSE:INFY"``), mapped to instrument tokens
through the day's :class:`~producers.kite.instruments.InstrumentMap`. Every instrument is
subscribed in full mode: only full ticks carry the last trade time and the depth that the
Trade and Quote rules need. Up to 3000 instruments per connection (Kite's limit).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    InvalidStatus,
    InvalidURI,
    WebSocketException,
)

from core.errors import FeedParseError
from producers.base import FeedDisconnected, FeedError, FeedEvent, Malformed, MarketDataFeed
from producers.kite.config import KiteConfig
from producers.kite.instruments import InstrumentMap
from producers.kite.messages import OrderUpdate, VenueError, parse_text_message
from producers.kite.orders import OrderTracker
from producers.kite.ticks import MODE_FULL, SOURCE, TickNormalizer, decode_frame

__all__ = ["MAX_INSTRUMENTS", "KiteFeed"]

log = logging.getLogger(__name__)

MAX_INSTRUMENTS: Final = 3000  # per websocket connection (Kite Connect docs)
_AUTH_STATUSES: Final = frozenset({400, 401, 403})
Clock = Callable[[], int]  # UTC ns


class KiteFeed(MarketDataFeed):
    """Kite ticks → Trade/Quote, order updates → ExecutionReport/Fill, junk → Malformed."""

    source = SOURCE

    def __init__(
        self,
        config: KiteConfig,
        instruments: InstrumentMap,
        *,
        clock: Clock = time.time_ns,
        tracker: OrderTracker | None = None,
        open_timeout_s: float = 10.0,
        ping_interval_s: float | None = 20.0,
    ) -> None:
        self.config = config
        self.instruments = instruments
        self.tracker = tracker if tracker is not None else OrderTracker()
        self._normalizer = TickNormalizer(instruments, source=self.source)
        self._clock = clock
        self._open_timeout_s = open_timeout_s
        self._ping_interval_s = ping_interval_s
        self._ws: ClientConnection | None = None
        self._closing = False
        self._tokens: dict[str, int] = {}  # subscribed symbol (dump spelling) → token

    # ---- lifecycle -------------------------------------------------------------------
    async def connect(self) -> None:
        if self._ws is not None:
            await self.close()
        self._closing = False
        query = urlencode(
            {
                "api_key": self.config.api_key.get_secret_value(),
                "access_token": self.config.access_token.get_secret_value(),
            }
        )
        try:
            self._ws = await connect(
                f"{self.config.ws_url}?{query}",
                open_timeout=self._open_timeout_s,
                ping_interval=self._ping_interval_s,
                compression=None,  # like the SDK; ticks are small binary packets
                max_size=4 * 1024 * 1024,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in _AUTH_STATUSES:
                raise FeedError(
                    f"kite refused the websocket login (HTTP {status}): check KITE_API_KEY "
                    "and KITE_ACCESS_TOKEN (access tokens expire every morning)"
                ) from None
            raise FeedDisconnected(f"kite websocket handshake failed: HTTP {status}") from None
        except InvalidURI:
            raise FeedError(f"invalid kite ws_url {self.config.ws_url!r}") from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise FeedDisconnected(
                f"kite websocket connect failed: {type(exc).__name__}: {exc}"
            ) from None
        log.info("kite websocket connected", extra={"source": self.source})

    async def close(self) -> None:
        self._closing = True
        ws, self._ws = self._ws, None
        self._tokens.clear()
        if ws is not None:
            await ws.close()

    # ---- subscriptions ---------------------------------------------------------------
    @property
    def subscribed(self) -> frozenset[str]:
        return frozenset(self._tokens)

    async def subscribe(self, symbols: Sequence[str]) -> None:
        if not symbols:
            return
        tokens = self.instruments.tokens(symbols)
        canonical = [self.instruments.symbol(t) for t in tokens]  # as spelled in the dump
        if len(self._tokens.keys() | set(canonical)) > MAX_INSTRUMENTS:
            raise FeedError(f"kite allows at most {MAX_INSTRUMENTS} instruments per connection")
        await self._send({"a": "subscribe", "v": tokens})
        await self._send({"a": "mode", "v": [MODE_FULL, tokens]})
        self._tokens.update(zip(canonical, tokens, strict=True))

    async def unsubscribe(self, symbols: Sequence[str]) -> None:
        canonical = [
            self.instruments.symbol(self.instruments.token(s))
            for s in symbols
            if s in self.instruments
        ]
        tokens = [self._tokens[s] for s in canonical if s in self._tokens]
        if not tokens:
            return
        await self._send({"a": "unsubscribe", "v": tokens})
        for s in canonical:
            self._tokens.pop(s, None)

    async def _send(self, message: dict[str, Any]) -> None:
        if self._ws is None:
            raise FeedDisconnected("kite websocket is not connected")
        try:
            await self._ws.send(json.dumps(message))
        except ConnectionClosed as exc:
            raise FeedDisconnected(f"kite websocket closed while sending: {exc}") from None

    # ---- events ----------------------------------------------------------------------
    async def events(self) -> AsyncIterator[FeedEvent]:
        ws = self._ws
        if ws is None:
            raise FeedDisconnected("kite websocket is not connected")
        try:
            async for message in ws:
                ts_init = self._clock()
                if isinstance(message, bytes):
                    batch = self._on_binary(message, ts_init)
                else:
                    batch = self._on_text(message, ts_init)
                for event in batch:
                    yield event
        except ConnectionClosedError as exc:
            if self._closing:
                return
            raise FeedDisconnected(f"kite websocket dropped: {exc}") from None
        if not self._closing:
            raise FeedDisconnected("kite closed the websocket")

    def _on_binary(self, message: bytes, ts_init: int) -> list[FeedEvent]:
        out: list[FeedEvent] = []
        for item in decode_frame(message, received_ns=ts_init):  # [] for a heartbeat
            if isinstance(item, Malformed):
                out.append(item)
            else:
                out.extend(self._normalizer.normalize(item, ts_init))
        return out

    def _on_text(self, message: str, ts_init: int) -> list[FeedEvent]:
        raw = message.encode("utf-8")
        try:
            parsed = parse_text_message(message)
            if isinstance(parsed, OrderUpdate):
                report, fill = self.tracker.apply(parsed.order, ts_init)
                return [report] if fill is None else [report, fill]
        except FeedParseError as exc:
            return [Malformed.from_error(self.source, raw, exc, ts_init)]
        if isinstance(parsed, VenueError):
            log.warning("kite websocket error message", extra={"error": parsed.message})
            return [Malformed(self.source, raw, "venue_error", parsed.message, ts_init)]
        log.info("kite websocket message", extra={"text": parsed.message})
        return []
