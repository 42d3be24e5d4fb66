"""Alpaca feeds for the runner: stock market data and the account's trade updates.

Both speak through the alpaca-py SDK's stream objects (:mod:`producers.alpaca.client` says
why and how: the SDK connects and authenticates, we read the frames), and normalize with the
pure functions of :mod:`producers.alpaca.parsing`. Nothing of the SDK leaves this package.

* :class:`AlpacaStockFeed` — ``StockDataStream`` (msgpack): trades, quotes and bars of the
  subscribed symbols on the configured channels.
* :class:`AlpacaTradeUpdates` — ``TradingStream``: ``trade_updates`` → ExecutionReport for
  every event (unknown ones as ``OTHER`` with ``raw_event``) and a Fill per (partial) fill.

Errors: bad credentials, an insufficient plan or a refused request raise
:class:`~producers.base.FeedError` (the runner stops); a dropped or refused-for-now connection
raises :class:`~producers.base.FeedDisconnected` (the runner reconnects). A frame or message
that does not parse is yielded as :class:`~producers.base.Malformed` with its raw bytes: the
whole frame when it cannot be decoded or holds one message, else that one message
re-encoded in the frame's codec.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final

from core.errors import FeedParseError
from producers.alpaca.client import MarketDataSession, TradingSession
from producers.alpaca.config import AlpacaConfig
from producers.alpaca.parsing import (
    StreamControl,
    decode_market_frame,
    decode_trading_frame,
    encode_like,
    listening_streams,
    parse_market_message,
    parse_trade_update,
    parse_trading_message,
)
from producers.base import FeedDisconnected, FeedError, FeedEvent, Malformed, MarketDataFeed

__all__ = ["AlpacaStockFeed", "AlpacaTradeUpdates"]

log = logging.getLogger(__name__)

Clock = Callable[[], int]  # UTC ns; stamps ts_init and Malformed.received_ns

# Market-data error codes (docs: real-time stock data, "Errors") once connected.
# Retryable: a new connection may work. Ignored: informational. Anything else: fatal.
_RETRYABLE_CODES: Final = frozenset({404, 406, 500})  # auth timeout, connection limit, internal
_IGNORED_CODES: Final = frozenset({403, 407})  # already authenticated, slow client (warning)
TRADE_UPDATES: Final = "trade_updates"


def _raw(frame: bytes | str) -> bytes:
    return frame.encode() if isinstance(frame, str) else bytes(frame)


class AlpacaStockFeed(MarketDataFeed):
    """Alpaca real-time stock data (IEX or SIP) as Trade / Quote / Bar records."""

    source = "alpaca"

    def __init__(self, config: AlpacaConfig, *, clock: Clock = time.time_ns) -> None:
        self.config = config
        self._clock = clock
        self._session: MarketDataSession | None = None
        self._symbols: dict[str, None] = {}  # insertion-ordered set
        self._closing = False
        #: symbols per channel as last confirmed by the server's subscription message
        self.confirmed: dict[str, tuple[str, ...]] = {}
        #: data messages of types we do not model (statuses, corrections, ...), by type
        self.ignored: dict[str, int] = {}

    @property
    def subscribed(self) -> frozenset[str]:
        return frozenset(self._symbols)

    async def connect(self) -> None:
        await self._drop_session()
        self._closing = False
        session = MarketDataSession(self.config)
        await session.open()
        self._session = session
        self.confirmed = {}

    async def subscribe(self, symbols: Sequence[str]) -> None:
        self._symbols.update(dict.fromkeys(symbols))
        await self._require_session().subscribe(list(self._symbols))

    async def unsubscribe(self, symbols: Sequence[str]) -> None:
        for symbol in symbols:
            self._symbols.pop(symbol, None)
        if self._session is not None:
            await self._session.unsubscribe(symbols)

    async def close(self) -> None:
        self._closing = True
        await self._drop_session()

    async def events(self) -> AsyncIterator[FeedEvent]:
        session = self._require_session()
        feed = self.config.data_feed
        while True:
            try:
                frame = await session.recv()
            except FeedDisconnected:
                if self._closing or session is not self._session:
                    return
                raise
            received = self._clock()
            try:
                messages = decode_market_frame(frame)
            except FeedParseError as exc:
                yield Malformed.from_error(self.source, _raw(frame), exc, received)
                continue
            for message in messages:
                try:
                    parsed = parse_market_message(message, data_feed=feed, ts_init=received)
                except FeedParseError as exc:
                    raw = _raw(frame) if len(messages) == 1 else encode_like(frame, message)
                    yield Malformed.from_error(self.source, raw, exc, received)
                    continue
                if parsed is None:
                    kind = str(message.get("T"))
                    self.ignored[kind] = self.ignored.get(kind, 0) + 1
                elif isinstance(parsed, StreamControl):
                    self._on_control(parsed)
                else:
                    yield parsed

    def _on_control(self, control: StreamControl) -> None:
        if control.kind == "subscription":
            self.confirmed = dict(control.subscriptions)
            log.info("alpaca subscriptions confirmed", extra={"subscriptions": self.confirmed})
        elif control.kind == "error":
            text = f"alpaca market data error {control.code}: {control.message}"
            if control.code in _IGNORED_CODES:
                log.warning(text)
            elif control.code in _RETRYABLE_CODES:
                raise FeedDisconnected(text)
            else:  # invalid syntax, auth failed, symbol limit, plan ...
                raise FeedError(text)

    def _require_session(self) -> MarketDataSession:
        if self._session is None:
            raise FeedDisconnected("alpaca market data: not connected")
        return self._session

    async def _drop_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


class AlpacaTradeUpdates(MarketDataFeed):
    """The account's ``trade_updates`` stream as ExecutionReport / Fill records.

    The stream is account-wide: :meth:`subscribe` records the symbols for the interface but
    filters nothing, and :attr:`subscribed` stays empty so the runner never calls a quiet
    account stale. ``connect()`` authenticates and asks to listen; a ``listening`` reply
    without ``trade_updates`` (or an ``unauthorized`` one) ends ``events()`` with FeedError.
    """

    source = "alpaca-trading"

    def __init__(self, config: AlpacaConfig, *, clock: Clock = time.time_ns) -> None:
        self.config = config
        self._clock = clock
        self._session: TradingSession | None = None
        self._closing = False
        #: streams the server last confirmed we listen to
        self.listening: tuple[str, ...] = ()

    async def connect(self) -> None:
        await self._drop_session()
        self._closing = False
        session = TradingSession(self.config)
        await session.open()
        self._session = session
        self.listening = ()

    async def subscribe(self, symbols: Sequence[str]) -> None:
        """Nothing to do: trade updates cover the whole account."""

    async def unsubscribe(self, symbols: Sequence[str]) -> None:
        """Nothing to do: trade updates cover the whole account."""

    async def close(self) -> None:
        self._closing = True
        await self._drop_session()

    async def events(self) -> AsyncIterator[FeedEvent]:
        if self._session is None:
            raise FeedDisconnected("alpaca trade updates: not connected")
        session = self._session
        while True:
            try:
                frame = await session.recv()
            except FeedDisconnected:
                if self._closing or session is not self._session:
                    return
                raise
            received = self._clock()
            try:
                stream, data = parse_trading_message(decode_trading_frame(frame))
                if stream == TRADE_UPDATES:
                    records = parse_trade_update(
                        data, account=self.config.account, ts_init=received
                    )
                else:
                    self._on_control(stream, data)
                    continue
            except FeedParseError as exc:
                yield Malformed.from_error(self.source, _raw(frame), exc, received)
                continue
            for record in records:
                yield record

    def _on_control(self, stream: str, data: Any) -> None:
        if stream == "authorization":
            status = data.get("status") if isinstance(data, dict) else None
            if status != "authorized":
                action = data.get("action") if isinstance(data, dict) else None
                raise FeedError(f"alpaca trade updates: {status} (action {action})")
        elif stream == "listening":
            self.listening = tuple(listening_streams(data))
            if TRADE_UPDATES not in self.listening:
                raise FeedError(f"alpaca: {TRADE_UPDATES} not available: {self.listening}")
        else:
            log.debug("alpaca trading stream %r ignored", stream)

    async def _drop_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
