"""Polygon.io / Massive stock WebSocket → our records, through the vendor's own SDK.

The SDK (``massive.WebSocketClient``) speaks the protocol: it opens
``ws[s]://<feed host>/<market>``, answers the server's ``connected`` status with
``{"action": "auth", "params": <key>}``, raises ``AuthError`` on ``auth_failed``, then sends
``{"action": "subscribe", "params": "T.AAPL,Q.AAPL,..."}`` and hands every later frame to a
callback. How we use it:

* **Loopback**: the SDK builds its URL as ``f"ws{'s' if secure else ''}://{feed}/{market}"``,
  so ``feed="127.0.0.1:<port>", secure=False`` targets a local plain-``ws://`` server with no
  TLS context (it builds one only for ``wss://``). :class:`PolygonConfig` ``ws_url`` sets both.
* **raw mode** (``raw=True``): the callback gets the frame text untouched; our
  :func:`~producers.polygon.parsing.parse_ws_frame` decodes it with exact decimals and turns
  anything odd into :class:`Malformed` (the SDK's own models would hold floats and raise).
* **Auth outcome**: in raw mode the SDK decodes only the two handshake frames, with the
  JSON module given as its documented ``custom_json`` parameter; :class:`_HandshakeWatcher`
  is that module and resolves a future on ``auth_success``, which is how :meth:`connect`
  returns only once authenticated (``auth_failed`` → the SDK's ``AuthError`` →
  :class:`FeedError`).
* **Opening the socket**: the SDK gives websockets ``process_exception=lambda exc: None``,
  i.e. every error while opening (refused, DNS, handshake) counts as transient and is
  retried with websockets' backoff; :meth:`connect` bounds that with ``connect_timeout_s``
  and raises :class:`FeedDisconnected`.
* **No SDK reconnects** (``max_reconnects=0``): a dropped connection ends :meth:`events`
  with :class:`FeedDisconnected`, and the runner reconnects with backoff and subscribes
  again (one reconnect policy for every venue).
* **Subscription latency**: the SDK reconciles subscription changes in its receive loop,
  which wakes at least once a second; symbols subscribed before :meth:`connect` go out right
  after auth, later changes within about a second.

Every record carries the vendor's event time (``ts_event``) and the clock reading taken when
the frame reached the callback (``ts_init``); the clock is passed in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from massive import WebSocketClient
from massive.exceptions import AuthError
from websockets.exceptions import InvalidURI, WebSocketException

from producers.base import FeedDisconnected, FeedError, FeedEvent, MarketDataFeed
from producers.polygon.config import PolygonConfig
from producers.polygon.parsing import SOURCE, Status, parse_ws_frame

__all__ = ["PolygonFeed"]

log = logging.getLogger(__name__)

Clock = Callable[[], int]  # UTC ns

#: Statuses that mean things work (the SDK's OK_STATUSES); others are logged as warnings.
_OK_STATUSES: Final = frozenset({"connected", "auth_success", "success"})


class _HandshakeWatcher:
    """The ``custom_json`` module handed to the SDK: plain json that notices ``auth_success``.

    In raw mode the SDK decodes only the handshake frames with it (``connected`` and the reply
    to its auth action); data frames reach our callback undecoded.
    """

    def __init__(self, authed: asyncio.Future[None]) -> None:
        self._authed = authed

    def loads(self, text: str | bytes) -> Any:
        decoded = json.loads(text)
        messages = decoded if isinstance(decoded, list) else [decoded]
        for msg in messages:
            if (
                isinstance(msg, dict)
                and msg.get("ev") == "status"
                and msg.get("status") == "auth_success"
                and not self._authed.done()
            ):
                self._authed.set_result(None)
        return decoded

    @staticmethod
    def dumps(obj: Any) -> str:
        return json.dumps(obj)


@dataclass(frozen=True, slots=True)
class _End:
    error: Exception | None  # None: closed by us


@dataclass(eq=False)
class _Session:
    """One connection: the SDK client, its task and the frames it has handed over."""

    client: Any  # massive.WebSocketClient (untyped package)
    queue: asyncio.Queue[tuple[str | bytes, int] | None]
    task: asyncio.Task[None] | None = None
    closing: bool = False
    end: _End | None = None


class PolygonFeed(MarketDataFeed):
    """Real-time US stock trades, NBBO quotes and second/minute aggregates from Polygon/Massive.

    Our symbols are Polygon tickers verbatim (``AAPL``, ``BRK.B``); each symbol is subscribed on
    every channel in ``config.channels`` (``T.AAPL,Q.AAPL,A.AAPL,AM.AAPL`` by default).
    """

    source = SOURCE

    def __init__(self, config: PolygonConfig, *, clock: Clock = time.time_ns) -> None:
        self.config = config
        self._clock = clock
        self._symbols: set[str] = set()
        self._session: _Session | None = None

    @property
    def subscribed(self) -> frozenset[str]:
        return frozenset(self._symbols)

    def channels(self, symbols: Iterable[str]) -> list[str]:
        """Polygon subscription params for our symbols: ``["T.AAPL", "Q.AAPL", ...]``."""
        return [f"{channel}.{sym}" for sym in symbols for channel in self.config.channels]

    # ---- lifecycle ---------------------------------------------------------------------
    async def connect(self) -> None:
        if self._session is not None:
            await self.close()
        authed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        client = WebSocketClient(
            api_key=self.config.api_key.get_secret_value(),
            feed=self.config.ws_host,
            market=self.config.market,
            raw=True,
            secure=self.config.ws_secure,
            max_reconnects=0,
            subscriptions=self.channels(sorted(self._symbols)),
            custom_json=_HandshakeWatcher(authed),
        )
        session = _Session(client=client, queue=asyncio.Queue(self.config.queue_frames))
        session.task = asyncio.create_task(self._run(session), name="polygon-ws")
        self._session = session
        try:
            done, _ = await asyncio.wait(
                {authed, session.task},
                timeout=self.config.connect_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        except asyncio.CancelledError:
            await self.close()
            raise
        if authed in done:
            log.info(
                "polygon feed connected",
                extra={"endpoint": self.config.ws_endpoint, "symbols": len(self._symbols)},
            )
            return
        error = session.end.error if session.end is not None else None
        await self.close()
        if error is not None:
            raise error
        raise FeedDisconnected(
            f"polygon: no connection or no auth reply from {self.config.ws_endpoint} "
            f"within {self.config.connect_timeout_s} s"
        )

    async def _run(self, session: _Session) -> None:
        """Drive the SDK's connection; record how it ended for :meth:`events`."""
        endpoint = self.config.ws_endpoint

        async def on_frame(frame: str | bytes) -> None:
            received_ns = self._clock()
            if not session.closing:
                await session.queue.put((frame, received_ns))

        error: Exception | None = None
        try:
            await session.client.connect(
                on_frame,
                close_timeout=self.config.close_timeout_s,
                open_timeout=self.config.connect_timeout_s,
                max_size=self.config.max_frame_bytes,
            )
            # The SDK returns when the server closes the connection cleanly.
            error = FeedDisconnected(f"polygon: {endpoint} closed the connection")
        except AuthError as exc:
            error = FeedError(f"polygon: authentication failed at {endpoint}: {exc}")
        except InvalidURI as exc:
            error = FeedError(f"polygon: bad WebSocket URL {endpoint}: {exc}")
        except (WebSocketException, OSError, TimeoutError) as exc:
            error = FeedDisconnected(f"polygon: connection to {endpoint} lost: {exc!r}")
        except asyncio.CancelledError:
            error = FeedDisconnected("polygon: connection task cancelled")
            raise
        except Exception as exc:  # the SDK is third-party: whatever it raises ends this link
            log.exception("polygon SDK failed", extra={"endpoint": endpoint})
            error = FeedDisconnected(f"polygon: SDK error on {endpoint}: {exc!r}")
        finally:
            self._finish(session, None if session.closing else error)

    @staticmethod
    def _finish(session: _Session, error: Exception | None) -> None:
        if session.end is not None:
            return
        session.end = _End(error)
        # Wake a waiting events(); when the queue is full, events() sees `end` once it drains.
        with contextlib.suppress(asyncio.QueueFull):
            session.queue.put_nowait(None)

    async def events(self) -> AsyncIterator[FeedEvent]:
        session = self._session
        if session is None:
            raise FeedDisconnected("polygon: events() called before connect()")
        while True:
            if session.closing:
                return
            if session.end is not None and session.queue.empty():
                if session.end.error is not None:
                    raise session.end.error
                return
            item = await session.queue.get()
            if item is None:
                continue
            frame, received_ns = item
            for parsed in parse_ws_frame(frame, received_ns=received_ns):
                if isinstance(parsed, Status):
                    self._log_status(parsed)
                else:
                    yield parsed

    @staticmethod
    def _log_status(status: Status) -> None:
        extra = {"source": SOURCE, "status": status.status, "status_message": status.message}
        if status.status in _OK_STATUSES:
            log.debug("polygon status", extra=extra)
        else:
            log.warning("polygon server status", extra=extra)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        session.closing = True
        while not session.queue.empty():  # close() ends events(): nobody reads these
            session.queue.get_nowait()
        self._finish(session, None)
        task = session.task
        if session.client.websocket is not None:
            with contextlib.suppress(WebSocketException, OSError):
                await session.client.close()  # the SDK's loop then returns
            if task is not None and not task.done():
                await asyncio.wait({task}, timeout=self.config.close_timeout_s)
        if task is not None and not task.done():  # still opening the socket, or stuck
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        log.info("polygon feed closed", extra={"endpoint": self.config.ws_endpoint})

    # ---- subscriptions -----------------------------------------------------------------
    async def subscribe(self, symbols: Sequence[str]) -> None:
        new = [sym for sym in _checked(symbols) if sym not in self._symbols]
        self._symbols.update(new)
        session = self._session
        if new and session is not None and session.end is None:
            session.client.subscribe(*self.channels(new))

    async def unsubscribe(self, symbols: Sequence[str]) -> None:
        gone = [sym for sym in _checked(symbols) if sym in self._symbols]
        self._symbols.difference_update(gone)
        session = self._session
        if gone and session is not None and session.end is None:
            session.client.unsubscribe(*self.channels(gone))


def _checked(symbols: Sequence[str]) -> list[str]:
    """Our symbols, refused when they would break Polygon's comma-separated params."""
    if isinstance(symbols, str):
        raise FeedError("polygon: pass a list of symbols, not one string")
    for sym in symbols:
        if not sym or any(ch in sym for ch in ", \t\r\n"):
            raise FeedError(f"polygon: {sym!r} is not a ticker we can subscribe to")
    return list(dict.fromkeys(symbols))
