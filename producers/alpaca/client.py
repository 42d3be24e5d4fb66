"""The alpaca-py SDK's websocket clients, driven one step at a time from our event loop.

Why not ``StockDataStream.run()`` / ``TradingStream.run()``: ``run()`` calls ``asyncio.run``
(it wants its own thread and loop), reconnects forever inside (a bad key is logged and
retried, never reported), hands each message to a callback as an SDK model whose ``t`` is a
``datetime`` (microseconds: the nanoseconds are gone) and whose prices are floats, drops
error and subscription messages after logging them, and loses the raw bytes we owe the
dead-letter topic. Subscribing while it runs blocks the calling loop on
``run_coroutine_threadsafe(...).result()``. Our :class:`~producers.base.MarketDataFeed`
needs the opposite: connect/auth errors raised (fatal vs. retryable), reconnects left to
the runner, every frame's bytes.

So the SDK does what it is good at, the protocol's handshake — connect with its headers
(``Content-Type: application/msgpack``, its User-Agent), the ``connected``/``auth`` exchange,
the ``listen`` request, and building (and splitting into frames) the subscribe message —
and we read the frames. The SDK members used beyond its public ``subscribe_*``/
``unsubscribe_*``/``close`` are exactly these (checked at import, exercised by the
loopback-server tests, so an SDK upgrade that moves them fails loudly):

* ``_start_ws()`` — connect + authenticate (+ ``listen`` on the trading stream);
* ``_ws`` — the open websocket, whose ``recv()`` we call;
* ``_send_subscribe_msg()`` / ``_send_unsubscribe_msg(channel, symbols)`` — market data.

The public ``subscribe_*``/``unsubscribe_*`` calls only edit the SDK's symbol table here:
they touch the network only when the SDK's own run loop is running (``_running``), which
we never start. The handler they require is never called.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Final

import websockets.exceptions

from producers.alpaca.config import AlpacaConfig, Channel
from producers.base import FeedDisconnected, FeedError

# alpaca-py's streams import websockets.legacy, which warns on import since websockets 14.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from alpaca.data.enums import DataFeed as _SdkDataFeed
    from alpaca.data.live.stock import StockDataStream
    from alpaca.trading.stream import TradingStream

__all__ = ["MarketDataSession", "TradingSession"]

log = logging.getLogger(__name__)

_SDK_MEMBERS: Final = {
    StockDataStream: ("_start_ws", "_send_subscribe_msg", "_send_unsubscribe_msg", "close"),
    TradingStream: ("_start_ws", "subscribe_trade_updates", "close"),
}
for _cls, _names in _SDK_MEMBERS.items():
    _gone = [n for n in _names if not hasattr(_cls, n)]
    if _gone:  # pragma: no cover - only with an incompatible alpaca-py
        raise ImportError(f"alpaca-py {_cls.__name__} lacks {_gone}; see producers.alpaca.client")

# SDK defaults (ping every 10 s, generous pong timeout, bounded queue) plus our open timeout.
_WS_PARAMS: Final = {"ping_interval": 10, "ping_timeout": 180, "max_queue": 1024}

# Market-data error messages (docs: real-time stock data, "Errors") after which a new
# connection may succeed; every other error at connect/auth time is fatal (FeedError).
_RETRYABLE_AUTH_ERRORS: Final = frozenset(
    {
        "connection limit exceeded",
        "auth timeout",
        "internal error",
        "connected message not received",
    }
)


async def _never_called(_: object) -> None:  # pragma: no cover - the SDK's dispatch is unused
    """Handler the SDK's subscribe_* insist on; we read frames ourselves."""


def _connect_error(where: str, exc: BaseException) -> Exception:
    """Map what the SDK/websockets raise while connecting to our two feed errors."""
    if isinstance(exc, websockets.exceptions.InvalidURI):
        return FeedError(f"{where}: bad URL: {exc}")
    if isinstance(exc, ValueError):  # the SDK's way of saying the server refused us
        text = str(exc)
        if text in _RETRYABLE_AUTH_ERRORS:
            return FeedDisconnected(f"{where}: {text}")
        return FeedError(f"{where}: {text}")
    if isinstance(exc, KeyError | IndexError | TypeError | AttributeError):
        # the server's handshake reply lacks what the protocol promises: not a blip
        return FeedError(f"{where}: unexpected handshake reply ({type(exc).__name__}: {exc})")
    return FeedDisconnected(f"{where}: {type(exc).__name__}: {exc}")


_CONNECT_ERRORS: Final = (
    OSError,
    TimeoutError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,  # e.g. a reply without the fields the SDK reads
    websockets.exceptions.WebSocketException,
)


_SEND_ERRORS: Final = (OSError, websockets.exceptions.WebSocketException)


class _Session:
    """One websocket connection opened by an SDK stream object (single use)."""

    _stream: Any
    _where: str

    async def open(self) -> None:
        """Connect and authenticate. FeedError: fatal (bad keys, plan); FeedDisconnected: retry."""
        try:
            await self._stream._start_ws()
        except _CONNECT_ERRORS as exc:
            await self.close()
            raise _connect_error(self._where, exc) from exc

    async def recv(self) -> bytes | str:
        """The next frame as received; FeedDisconnected when the connection is gone."""
        ws = self._stream._ws
        if ws is None:
            raise FeedDisconnected(f"{self._where}: not connected")
        try:
            frame: bytes | str = await ws.recv()
        except websockets.exceptions.ConnectionClosed as exc:
            raise FeedDisconnected(f"{self._where}: connection closed: {exc}") from exc
        return frame

    def _require_open(self) -> None:
        if self._stream._ws is None:
            raise FeedDisconnected(f"{self._where}: not connected")

    async def close(self) -> None:
        try:
            await self._stream.close()
        except _SEND_ERRORS as exc:
            log.debug("closing %s: %s", self._where, exc)


class MarketDataSession(_Session):
    """A market-data websocket (``StockDataStream``): msgpack frames of message arrays."""

    def __init__(self, config: AlpacaConfig) -> None:
        self._channels: tuple[Channel, ...] = config.channels
        self._symbols: set[str] = set()
        self._stream = StockDataStream(
            api_key=config.api_key_id.get_secret_value(),
            secret_key=config.api_secret_key.get_secret_value(),
            raw_data=True,
            feed=_SdkDataFeed(config.data_feed),
            websocket_params={**_WS_PARAMS, "open_timeout": config.open_timeout_s},
            url_override=config.data_stream_url,
        )
        self._where = f"alpaca market data ({config.data_feed})"
        self._subscribe_fns: dict[Channel, Callable[..., None]] = {
            "trades": self._stream.subscribe_trades,
            "quotes": self._stream.subscribe_quotes,
            "bars": self._stream.subscribe_bars,
            "updatedBars": self._stream.subscribe_updated_bars,
            "dailyBars": self._stream.subscribe_daily_bars,
        }
        self._unsubscribe_fns: dict[Channel, Callable[..., None]] = {
            "trades": self._stream.unsubscribe_trades,
            "quotes": self._stream.unsubscribe_quotes,
            "bars": self._stream.unsubscribe_bars,
            "updatedBars": self._stream.unsubscribe_updated_bars,
            "dailyBars": self._stream.unsubscribe_daily_bars,
        }

    async def subscribe(self, symbols: Sequence[str]) -> None:
        """Add ``symbols`` on every configured channel (the SDK sends the whole table)."""
        self._require_open()
        for channel in self._channels:
            self._subscribe_fns[channel](_never_called, *symbols)
        self._symbols.update(symbols)
        try:
            await self._stream._send_subscribe_msg()
        except _SEND_ERRORS as exc:
            raise FeedDisconnected(f"{self._where}: subscribe failed: {exc}") from exc

    async def unsubscribe(self, symbols: Sequence[str]) -> None:
        """Drop ``symbols`` (those subscribed on this connection) from every channel."""
        self._require_open()
        present = [s for s in dict.fromkeys(symbols) if s in self._symbols]
        if not present:
            return
        self._symbols.difference_update(present)
        for channel in self._channels:
            self._unsubscribe_fns[channel](*present)
            try:
                await self._stream._send_unsubscribe_msg(channel, present)
            except _SEND_ERRORS as exc:
                raise FeedDisconnected(f"{self._where}: unsubscribe failed: {exc}") from exc


class TradingSession(_Session):
    """The trading websocket (``TradingStream``): JSON ``{"stream", "data"}`` messages.

    :meth:`open` authenticates and asks to listen to ``trade_updates``; the ``listening``
    acknowledgement arrives as an ordinary frame.
    """

    def __init__(self, config: AlpacaConfig) -> None:
        self._stream = TradingStream(
            api_key=config.api_key_id.get_secret_value(),
            secret_key=config.api_secret_key.get_secret_value(),
            paper=config.paper,
            raw_data=True,
            url_override=config.trading_stream_url,  # type: ignore[arg-type]  # SDK hint: str
            websocket_params={**_WS_PARAMS, "open_timeout": config.open_timeout_s},
        )
        self._stream.subscribe_trade_updates(_never_called)  # makes _start_ws send "listen"
        self._where = f"alpaca trade updates ({'paper' if config.paper else 'live'})"
