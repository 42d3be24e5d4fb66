"""AlpacaBroker: orders through alpaca-py's TradingClient, events from ``trade_updates``.

Calls (Trading API v2, through the SDK's ``TradingClient`` with ``raw_data=True``, so
answers stay JSON and are read by our exact parser, :mod:`brokers.alpaca.parsing`):

* submit — ``POST /v2/orders``: the SDK's ``MarketOrderRequest`` / ``LimitOrderRequest``
  validate and name the fields; ``qty`` and ``limit_price`` go out as decimal text (the
  SDK models hold floats). A duplicate client order id (HTTP 422 "client_order_id must be
  unique") means an earlier attempt got through: the order is looked up and returned.
* get_order — ``GET /v2/orders:by_client_order_id`` (404 → None), following
  ``replaced_by`` to the live order of a replacement chain.
* open_orders — ``GET /v2/orders?status=open`` (at most 500, Alpaca's page limit).
* cancel — ``DELETE /v2/orders/{id}``; modify — ``PATCH /v2/orders/{id}`` (a replacement:
  see :mod:`brokers.alpaca.parsing` for how its client order id is named).

Errors: HTTP 5xx, 429, timeouts and connection failures → :class:`BrokerUnavailable`;
other 4xx (403 insufficient buying power, 422 invalid ...) → :class:`BrokerRejected`
carrying Alpaca's message. The SDK itself retries 429 and 504 (3 × 3 s) before we see
them. Requests time out after ``broker_timeout_ms`` (the SDK sets no timeout: an adapter
mounted on its session does), and JSON numbers with a fraction are read as Decimal.

Events: ``trade_updates`` through the SDK's ``TradingStream`` handshake, driven by
:class:`producers.alpaca.client.TradingSession` on a thread of its own, mapped to
:class:`BrokerEvent` (fill ids are Alpaca's execution ids). :meth:`AlpacaBroker.connect`
returns once the server says it is listening. A dropped stream reconnects with the
configured backoff; Alpaca does not replay what was sent meanwhile, so the consumer's
reconciliation (:meth:`get_order`) covers the gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, Final
from urllib.parse import urlsplit, urlunsplit

import requests
from pydantic import ValidationError
from requests.adapters import HTTPAdapter

# alpaca-py's trading package imports websockets.legacy, which warns on import
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from alpaca.common.exceptions import APIError
    from alpaca.trading.client import TradingClient
    from alpaca.trading.enums import OrderSide, QueryOrderStatus
    from alpaca.trading.enums import TimeInForce as SdkTimeInForce
    from alpaca.trading.requests import GetOrdersRequest, LimitOrderRequest, MarketOrderRequest

from brokers.alpaca.parsing import (
    REPLACED,
    broker_event,
    broker_order,
    decimal_text,
    replacement_client_order_id,
    replacement_number,
)
from brokers.base import (
    Broker,
    BrokerError,
    BrokerOrder,
    BrokerRejected,
    BrokerUnavailable,
    EventCallback,
    OrderSubmission,
)
from core.config import ExecutionSettings, Settings
from core.errors import ConfigError, FeedParseError
from producers.alpaca.client import TradingSession
from producers.alpaca.config import AlpacaConfig
from producers.alpaca.parsing import (
    decode_trading_frame,
    listening_streams,
    parse_trading_message,
)
from producers.base import FeedDisconnected, FeedError
from schemas.fixedpoint import from_fixed
from schemas.models import OrderType, Side, TimeInForce

__all__ = ["VENUE", "AlpacaBroker", "trade_updates_url"]

log = logging.getLogger(__name__)

VENUE: Final = "ALPACA"
TRADE_UPDATES: Final = "trade_updates"
_DUPLICATE_ID: Final = re.compile(r"client[_ ]order[_ ]id must be unique", re.IGNORECASE)
_OPEN_PAGE: Final = 500  # Alpaca's largest page of GET /v2/orders
_MAX_BACKOFF_S: Final = 30.0
_MAX_REPLACEMENTS: Final = 100  # a replaced_by chain longer than this is not followed
_SIDES: Final = {Side.BUY: OrderSide.BUY, Side.SELL: OrderSide.SELL}
_TIME_IN_FORCE: Final = {
    TimeInForce.DAY: SdkTimeInForce.DAY,
    TimeInForce.GTC: SdkTimeInForce.GTC,
    TimeInForce.IOC: SdkTimeInForce.IOC,
    TimeInForce.FOK: SdkTimeInForce.FOK,
}


def trade_updates_url(execution: ExecutionSettings) -> str | None:
    """``alpaca_stream_url``, else ``<trading URL>/stream`` on ws(s), else None (the SDK's)."""
    if execution.alpaca_stream_url:
        return execution.alpaca_stream_url
    if not execution.alpaca_trading_url:
        return None
    parts = urlsplit(execution.alpaca_trading_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/stream", "", ""))


# ---- the SDK's HTTP session, made to time out and to read money exactly ------------------
class _TimeoutAdapter(HTTPAdapter):
    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self._timeout_s = timeout_s

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout_s
        return super().send(request, **kwargs)


def _exact_json(response: requests.Response, *_args: Any, **_kwargs: Any) -> None:
    """Response hook: the SDK's ``response.json()`` reads fractions as Decimal."""
    # the SDK calls response.json() with no arguments; this instance attribute supplies one
    response.json = functools.partial(requests.Response.json, response, parse_float=Decimal)  # type: ignore[method-assign]


def _prepare_session(client: TradingClient, timeout_s: float) -> requests.Session:
    session = getattr(client, "_session", None)
    if not isinstance(session, requests.Session):  # pragma: no cover - another alpaca-py
        raise ImportError("alpaca-py TradingClient has no requests session; see brokers.alpaca")
    adapter = _TimeoutAdapter(timeout_s)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.hooks["response"].append(_exact_json)
    return session


# ---- errors ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _VenueAnswer:
    """What an error answer said: HTTP status (None: no answer) and Alpaca's message."""

    status: int | None
    message: str


def _answer(exc: APIError) -> _VenueAnswer:
    try:
        message = str(exc.message)
    except (ValueError, KeyError, TypeError):  # not Alpaca's {"code", "message"} envelope
        message = str(exc)[:200]
    return _VenueAnswer(exc.status_code, message)


def _error(what: str, answer: _VenueAnswer) -> BrokerError:
    text = f"alpaca {what}: HTTP {answer.status}: {answer.message}"
    if answer.status is None or answer.status >= 500 or answer.status == 429:
        return BrokerUnavailable(text)
    return BrokerRejected(text)


def _unreachable(what: str, exc: requests.RequestException) -> BrokerUnavailable:
    return BrokerUnavailable(f"alpaca {what}: {type(exc).__name__}: {exc}")


def _mapping(what: str, answer: Any) -> Mapping[str, Any]:
    if not isinstance(answer, Mapping):
        raise BrokerUnavailable(f"alpaca {what}: unexpected answer {type(answer).__name__}")
    return answer


def _to_broker_order(what: str, order: Mapping[str, Any]) -> BrokerOrder:
    try:
        return broker_order(order)
    except FeedParseError as exc:
        raise BrokerUnavailable(f"alpaca {what}: unreadable order: {exc}") from None


# ---- the trade_updates stream ------------------------------------------------------------
class _TradeUpdates:
    """``trade_updates`` on a daemon thread with its own event loop; reconnects on drops."""

    def __init__(
        self,
        config: AlpacaConfig,
        on_update: Callable[[Any], None],
        *,
        timeout_s: float,
        backoff_s: float,
    ) -> None:
        self._config = config
        self._on_update = on_update
        self._timeout_s = timeout_s
        self._backoff_s = backoff_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="alpaca-trade-updates", daemon=True)
        self._listening = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        #: set when the stream stopped for good (bad credentials, stream not offered)
        self.fatal: Exception | None = None

    def start(self) -> None:
        self._thread.start()
        if not self._listening.wait(self._timeout_s):
            self.stop()
            raise BrokerUnavailable(
                f"alpaca trade updates: not listening after {self._timeout_s:g} s"
            )
        if self.fatal is not None:
            self._thread.join(self._timeout_s)  # it is ending by itself
            raise self.fatal

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: the stream has ended
            self._loop.call_soon_threadsafe(self._cancel)
        self._thread.join(self._timeout_s)

    def _cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self._serve())
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        while True:
            session = TradingSession(self._config)
            try:
                await session.open()
                await self._read(session)
            except FeedError as exc:  # bad keys, stream not offered: retrying will not help
                self.fatal = ConfigError(
                    f"{exc} (check APCA_API_KEY_ID / APCA_API_SECRET_KEY and "
                    "OMNIQUANT_EXECUTION__ALPACA_STREAM_URL)"
                )
                log.error("alpaca trade updates stopped: %s", exc)
                self._listening.set()
                return
            except FeedDisconnected as exc:
                self._failures += 1
                log.warning("alpaca trade updates disconnected: %s", exc)
            except Exception as exc:  # a thread of its own: say why it ended
                log.exception("alpaca trade updates failed")
                self.fatal = BrokerUnavailable(f"alpaca trade updates failed: {exc!r}")
                self._listening.set()
                return
            finally:
                await session.close()
            await asyncio.sleep(min(self._backoff_s * 2 ** (self._failures - 1), _MAX_BACKOFF_S))

    async def _read(self, session: TradingSession) -> None:
        while True:
            frame = await session.recv()
            try:
                stream, data = parse_trading_message(decode_trading_frame(frame))
            except FeedParseError as exc:
                log.warning("alpaca trade updates: unreadable frame: %s", exc)
                continue
            if stream == TRADE_UPDATES:
                self._on_update(data)
            elif stream == "listening":
                if TRADE_UPDATES not in listening_streams(data):
                    raise FeedError(f"alpaca: {TRADE_UPDATES} not offered: {data}")
                self._failures = 0
                self._listening.set()
            elif stream == "authorization" and (
                not isinstance(data, Mapping) or data.get("status") != "authorized"
            ):
                raise FeedError(f"alpaca trade updates: not authorized: {data}")


# ---- the broker --------------------------------------------------------------------------
class AlpacaBroker(Broker):
    """Alpaca Trading API (paper or live account, by ``settings.feeds.alpaca_paper``)."""

    venue: ClassVar[str] = VENUE
    live: ClassVar[bool] = True

    def __init__(self, settings: Settings) -> None:
        """Raises :class:`~core.errors.MissingCredentialError` naming the unset variables."""
        execution = settings.execution
        self._config = AlpacaConfig.from_settings(
            settings,
            trading_stream_url=trade_updates_url(execution),
            open_timeout_s=execution.broker_timeout_ms / 1000,
        )
        self._timeout_s = execution.broker_timeout_ms / 1000
        self._backoff_s = execution.retry_backoff_ms / 1000
        self._client = TradingClient(
            api_key=self._config.api_key_id.get_secret_value(),
            secret_key=self._config.api_secret_key.get_secret_value(),
            paper=self._config.paper,
            raw_data=True,
            url_override=execution.alpaca_trading_url,
        )
        self._session = _prepare_session(self._client, self._timeout_s)
        self._on_event: EventCallback | None = None
        self._stream: _TradeUpdates | None = None

    # ---- events ------------------------------------------------------------------------
    def connect(self, on_event: EventCallback) -> None:
        """Open the ``trade_updates`` stream; returns once Alpaca listens. Raises
        :class:`BrokerUnavailable` (not listening in time) or ConfigError (refused keys)."""
        self.close()
        self._on_event = on_event
        stream = _TradeUpdates(
            self._config, self._on_update, timeout_s=self._timeout_s, backoff_s=self._backoff_s
        )
        stream.start()
        self._stream = stream

    def _on_update(self, data: Any) -> None:
        try:
            event = broker_event(data)
        except FeedParseError as exc:
            log.warning("alpaca trade update not mapped: %s", exc)
            return
        callback = self._on_event
        if callback is None:
            return
        try:
            callback(event)
        except Exception:  # the consumer's bug must not end the stream thread
            log.exception("alpaca event callback failed for %s", event.client_order_id)

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.stop()

    # ---- orders ------------------------------------------------------------------------
    def submit(self, order: OrderSubmission) -> BrokerOrder:
        self._require_stream()
        fields = self._order_fields(order)
        try:
            answer = self._client.post("/orders", fields)
        except APIError as exc:
            refused = _answer(exc)
            if refused.status == 422 and _DUPLICATE_ID.search(refused.message):
                known = self.get_order(order.client_order_id)
                if known is not None:  # an earlier attempt got through: that is the order
                    return known
            raise _error("submit", refused) from None
        except requests.RequestException as exc:
            raise _unreachable("submit", exc) from None
        return _to_broker_order("submit", _mapping("submit", answer))

    @staticmethod
    def _order_fields(order: OrderSubmission) -> dict[str, Any]:
        if order.quantity <= 0:
            raise BrokerRejected(f"quantity must be positive, got {order.quantity}")
        common: dict[str, Any] = {
            "symbol": order.symbol,
            "qty": from_fixed(order.quantity),
            "side": _SIDES[order.side],
            "time_in_force": _TIME_IN_FORCE[order.time_in_force],
            "client_order_id": order.client_order_id,
        }
        try:
            if order.order_type is OrderType.LIMIT:
                if order.limit_price is None or order.limit_price <= 0:
                    raise BrokerRejected("a LIMIT order needs a positive limit price")
                request: MarketOrderRequest | LimitOrderRequest = LimitOrderRequest(
                    **common, limit_price=from_fixed(order.limit_price)
                )
            else:
                request = MarketOrderRequest(**common)
        except ValidationError as exc:
            raise BrokerRejected(f"alpaca refuses this order: {exc.errors()[0]['msg']}") from None
        fields = request.to_request_fields()
        fields["qty"] = decimal_text(order.quantity)  # exact text, not the model's float
        if order.limit_price is not None and order.order_type is OrderType.LIMIT:
            fields["limit_price"] = decimal_text(order.limit_price)
        return fields

    def get_order(self, client_order_id: str) -> BrokerOrder | None:
        order = self._lookup(client_order_id)
        return None if order is None else _to_broker_order("get_order", order)

    def _lookup(self, client_order_id: str) -> Mapping[str, Any] | None:
        """The live order behind a client order id (the end of its replacement chain)."""
        try:
            answer = self._client.get_order_by_client_id(client_order_id)
        except APIError as exc:
            missing = _answer(exc)
            if missing.status == 404:
                return None
            raise _error("get_order", missing) from None
        except requests.RequestException as exc:
            raise _unreachable("get_order", exc) from None
        order = _mapping("get_order", answer)
        for _ in range(_MAX_REPLACEMENTS):
            if order.get("status") != REPLACED or not order.get("replaced_by"):
                break
            order = self._by_id(str(order["replaced_by"]))
        return order

    def _by_id(self, order_id: str) -> Mapping[str, Any]:
        try:
            return _mapping("get_order", self._client.get_order_by_id(order_id))
        except APIError as exc:
            raise _error("get_order", _answer(exc)) from None
        except requests.RequestException as exc:
            raise _unreachable("get_order", exc) from None

    def open_orders(self) -> list[BrokerOrder]:
        query = GetOrdersRequest(status=QueryOrderStatus.OPEN, limit=_OPEN_PAGE)
        try:
            answer = self._client.get_orders(query)
        except APIError as exc:
            raise _error("open_orders", _answer(exc)) from None
        except requests.RequestException as exc:
            raise _unreachable("open_orders", exc) from None
        if not isinstance(answer, list):
            raise BrokerUnavailable(
                f"alpaca open_orders: unexpected answer {type(answer).__name__}"
            )
        return [_to_broker_order("open_orders", _mapping("open_orders", o)) for o in answer]

    def cancel(self, client_order_id: str, venue_order_id: str | None) -> None:
        order_id = venue_order_id or self._require_order(client_order_id)["id"]
        try:
            self._cancel(str(order_id))
        except BrokerRejected:
            # the id we were given may be of an order a replacement superseded
            current = self._lookup(client_order_id)
            if current is None or current.get("id") == order_id:
                raise
            self._cancel(str(current["id"]))

    def _cancel(self, order_id: str) -> None:
        try:
            self._client.cancel_order_by_id(order_id)
        except APIError as exc:
            raise _error("cancel", _answer(exc)) from None
        except requests.RequestException as exc:
            raise _unreachable("cancel", exc) from None
        except ValueError as exc:  # the SDK refuses an id that is not a UUID
            raise BrokerRejected(f"alpaca cancel: {exc}") from None

    def modify(
        self,
        client_order_id: str,
        venue_order_id: str | None,
        *,
        quantity: int | None = None,
        limit_price: int | None = None,
    ) -> BrokerOrder:
        """Replace the order (``PATCH``): Alpaca answers with the replacement, a new order
        whose client order id is ``<client order id>~r<n>``; it is reported under ours."""
        if quantity is None and limit_price is None:
            raise BrokerRejected("modify needs a quantity or a limit price")
        current = self._require_order(client_order_id)
        number = replacement_number(str(current.get("client_order_id", ""))) + 1
        fields: dict[str, Any] = {
            "client_order_id": replacement_client_order_id(client_order_id, number)
        }
        if quantity is not None:
            fields["qty"] = decimal_text(quantity)
        if limit_price is not None:
            fields["limit_price"] = decimal_text(limit_price)
        try:
            answer = self._client.patch(f"/orders/{current['id']}", fields)
        except APIError as exc:
            raise _error("modify", _answer(exc)) from None
        except requests.RequestException as exc:
            raise _unreachable("modify", exc) from None
        return _to_broker_order("modify", _mapping("modify", answer))

    # ---- plumbing ----------------------------------------------------------------------
    def _require_order(self, client_order_id: str) -> Mapping[str, Any]:
        order = self._lookup(client_order_id)
        if order is None:
            raise BrokerRejected(f"alpaca: no order {client_order_id}")
        return order

    def _require_stream(self) -> None:
        if self._stream is None:
            raise BrokerUnavailable("alpaca: connect() first (trade updates are not listened to)")
        if self._stream.fatal is not None:
            raise BrokerUnavailable(f"alpaca trade updates stopped: {self._stream.fatal}")
