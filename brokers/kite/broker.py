"""KiteBroker: Zerodha Kite Connect orders through kiteconnect, events from postbacks and polls.

Calls (``KiteConnect(api_key, root=kite_root_url)`` + ``set_access_token``, variety
``regular``): ``place_order`` (exchange and tradingsymbol from ``"NSE:INFY"``, whole-share
quantity, product ``kite_product``, validity DAY or IOC, ``price`` for LIMIT, ``tag`` =
:func:`~brokers.kite.parsing.kite_tag` of our client order id), ``modify_order``,
``cancel_order``, ``orders()`` (lookups by client order id search it by tag). Prices go
out as decimal text; answers are read with JSON fractions as Decimal (a hook on the SDK's
``requests`` session) and the SDK's ``datetime`` fields are turned back into Kite's text.

Errors: NetworkException, DataException, other 5xx answers, timeouts and connection
failures → :class:`BrokerUnavailable`; InputException, OrderException, TokenException,
PermissionException and other 4xx → :class:`BrokerRejected` with Kite's message.

Events come two ways, both through one :class:`producers.kite.orders.OrderTracker`:

* postbacks — :class:`producers.kite.postback.KitePostbackServer` on
  ``kite_postback_host:kite_postback_port`` (when the port is > 0) verifies each body's
  checksum with ``KITE_API_SECRET`` (a bad one is refused with 401 and counted);
* a poll of ``orders()`` every ``kite_poll_interval_ms``, because postbacks can be missed.

The tracker turns each rise of ``filled_quantity`` into exactly one fill (id
``<order id>-<filled quantity>``), whoever saw it first; other updates become an event
only when the order's state in our terms changes (status, filled, quantity, limit), so
the same state seen by a poll and a postback is reported once, and an update older than
what was reported (a lower filled quantity, anything after a final state) is dropped. The
whole of it runs under one lock, so events leave in the order the states were applied.

Events are reported for orders this process placed, looked up (:meth:`get_order`) or was
handed in :meth:`KiteBroker.restore`: a tag is a digest, so only a client order id we have
seen maps back. (An order placed before :meth:`connect` loses nothing: the first poll
reports its state.) A submit of a client order id this process already sent looks the
order up first and returns it: Kite does not refuse a second order with the same tag.
:meth:`open_orders` lists every tagged working order; one whose client order id is not
known here is listed under its tag (compare with ``kite_tag(id)``).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, ClassVar, Final, TypeVar

import requests
from kiteconnect import KiteConnect
from kiteconnect import exceptions as kite_errors

from brokers.base import (
    Broker,
    BrokerError,
    BrokerEvent,
    BrokerOrder,
    BrokerRejected,
    BrokerUnavailable,
    EventCallback,
    OrderSubmission,
)
from brokers.kite.parsing import (
    StateKey,
    broker_event,
    broker_order,
    kite_tag,
    plain_order,
    price_text,
    shares,
    split_symbol,
    state_key,
)
from core.config import Settings
from core.errors import FeedParseError
from producers.kite.config import DEFAULT_REST_URL, KiteConfig
from producers.kite.orders import OrderTracker
from producers.kite.postback import KitePostbackServer
from schemas.models import ExecutionReport, Fill, OrderStatus, OrderType, TimeInForce

__all__ = ["VARIETY", "VENUE", "KiteBroker"]

log = logging.getLogger(__name__)

VENUE: Final = "KITE"
VARIETY: Final = "regular"
_VALIDITY: Final = {TimeInForce.DAY: "DAY", TimeInForce.IOC: "IOC"}
_FINAL: Final = frozenset(
    {OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.REJECTED, OrderStatus.EXPIRED}
)
_WORKING: Final = frozenset(
    {OrderStatus.PENDING_NEW, OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED}
)
_UNAVAILABLE: Final = (kite_errors.NetworkException, kite_errors.DataException)
_REFUSED: Final = (
    kite_errors.InputException,
    kite_errors.OrderException,
    kite_errors.TokenException,
    kite_errors.PermissionException,
)
T = TypeVar("T")
Clock = Callable[[], int]


def _exact_json(response: requests.Response, *_args: Any, **_kwargs: Any) -> None:
    """Response hook: the SDK's ``response.json()`` reads fractions as Decimal."""
    # the SDK calls response.json() with no arguments; this instance attribute supplies one
    response.json = functools.partial(requests.Response.json, response, parse_float=Decimal)  # type: ignore[method-assign]


def _error(what: str, exc: Exception) -> BrokerError:
    if isinstance(exc, requests.RequestException):
        return BrokerUnavailable(f"kite {what}: {type(exc).__name__}: {exc}")
    code = getattr(exc, "code", None)
    text = f"kite {what}: {type(exc).__name__} (HTTP {code}): {exc}"
    if isinstance(exc, _UNAVAILABLE):
        return BrokerUnavailable(text)
    if isinstance(exc, _REFUSED):
        return BrokerRejected(text)
    if isinstance(code, int) and code < 500:
        return BrokerRejected(text)
    return BrokerUnavailable(text)


class _EventTracker(OrderTracker):
    """The OrderTracker that postbacks and polls share; each :meth:`apply` also decides,
    under one lock, whether the update is an event to report (see the module docs)."""

    def __init__(self, emit: Callable[[BrokerEvent], None]) -> None:
        super().__init__()
        self._emit = emit
        self._serial = threading.Lock()
        self._reported: dict[str, StateKey] = {}  # Kite order id → last state reported
        #: our client order ids by tag (see the module docs: only these are reported)
        self.client_order_ids: dict[str, str] = {}

    def apply(self, order: Mapping[str, Any], ts_init: int) -> tuple[ExecutionReport, Fill | None]:
        with self._serial:
            report, fill = super().apply(order, ts_init)
            tag = order.get("tag")
            client_order_id = self.client_order_ids.get(tag) if isinstance(tag, str) else None
            if client_order_id is not None and self._is_news(report, fill, order):
                self._emit(broker_event(report, fill, client_order_id))
            return report, fill

    def _is_news(
        self, report: ExecutionReport, fill: Fill | None, order: Mapping[str, Any]
    ) -> bool:
        """A fill always is (never drop one); any other update only with a state not
        reported yet, not behind the last one reported and not after a final one."""
        order_id = report.venue_order_id or ""
        key = state_key(report, order)
        before = self._reported.get(order_id)
        stale = before is not None and (before == key or before[0] in _FINAL or key[1] < before[1])
        if fill is None and stale:
            return False
        self._reported[order_id] = key
        return True


class KiteBroker(Broker):
    """Kite Connect (Zerodha), NSE/BSE equities in whole shares."""

    venue: ClassVar[str] = VENUE
    live: ClassVar[bool] = True

    def __init__(self, settings: Settings, *, clock: Clock = time.time_ns) -> None:
        """Raises :class:`~core.errors.MissingCredentialError` naming the unset variables
        (``KITE_API_SECRET`` only when the postback listener is configured)."""
        execution = settings.execution
        self._settings = execution
        self._config = KiteConfig.from_settings(
            settings,
            require_api_secret=execution.kite_postback_port > 0,
            rest_url=execution.kite_root_url or DEFAULT_REST_URL,
        )
        self._clock = clock
        self._kite = KiteConnect(
            api_key=self._config.api_key.get_secret_value(),
            root=self._config.rest_url,
            timeout=execution.broker_timeout_ms / 1000,
        )
        self._kite.set_access_token(self._config.access_token.get_secret_value())
        self._kite.reqsession.hooks["response"].append(_exact_json)
        self._http_lock = threading.Lock()
        self._on_event: EventCallback | None = None
        self._tracker = _EventTracker(self._deliver)
        self._postbacks: KitePostbackServer | None = None
        self._stop_polling = threading.Event()
        self._poller: threading.Thread | None = None
        self._placed: set[str] = set()  # tags placed (or maybe placed) by this process

    # ---- events ------------------------------------------------------------------------
    def connect(self, on_event: EventCallback) -> None:
        """Start the postback listener (if configured) and the order-book poll."""
        self.close()
        self._on_event = on_event
        execution = self._settings
        if execution.kite_postback_port > 0:
            assert self._config.api_secret is not None  # required by __init__ then
            self._postbacks = KitePostbackServer(
                self._config.api_secret,
                lambda _record: None,  # the tracker reports; the records are not needed
                host=execution.kite_postback_host,
                port=execution.kite_postback_port,
                tracker=self._tracker,
                clock=self._clock,
            )
            try:
                self._postbacks.start()
            except OSError as exc:
                self._postbacks = None
                raise BrokerUnavailable(
                    f"kite postback listener on {execution.kite_postback_host}:"
                    f"{execution.kite_postback_port}: {exc}"
                ) from None
        self._stop_polling.clear()
        self._poller = threading.Thread(target=self._poll_loop, name="kite-order-poll", daemon=True)
        self._poller.start()

    @property
    def postback_url(self) -> str | None:
        """Where the postback listener receives (None: no listener)."""
        return self._postbacks.url if self._postbacks is not None else None

    def poll(self) -> None:
        """One pass over the order book (the backstop for missed postbacks)."""
        for order in self._call("orders", self._kite.orders):
            if isinstance(order, Mapping) and order.get("tag") in self._tracker.client_order_ids:
                try:
                    self._tracker.apply(plain_order(order), self._clock())
                except FeedParseError as exc:
                    log.warning("kite order not mapped: %s", exc)

    def _poll_loop(self) -> None:
        interval_s = self._settings.kite_poll_interval_ms / 1000
        while not self._stop_polling.wait(interval_s):
            try:
                self.poll()
            except BrokerError as exc:
                log.warning("kite order poll failed: %s", exc)

    def _deliver(self, event: BrokerEvent) -> None:
        callback = self._on_event
        if callback is None:
            return
        try:
            callback(event)
        except Exception:  # the consumer's bug must not stop the poll or the listener
            log.exception("kite event callback failed for %s", event.client_order_id)

    def close(self) -> None:
        self._stop_polling.set()
        if self._poller is not None:
            self._poller.join(self._settings.broker_timeout_ms / 1000)
            self._poller = None
        if self._postbacks is not None:
            self._postbacks.stop()
            self._postbacks = None

    def restore(self, orders: Sequence[BrokerOrder]) -> None:
        """Kite keeps the orders; this only tells the broker which client order ids are
        ours, so that their events are reported before anything looks them up."""
        for order in orders:
            self._remember(order.client_order_id)

    # ---- orders ------------------------------------------------------------------------
    def submit(self, order: OrderSubmission) -> BrokerOrder:
        tag = self._remember(order.client_order_id)
        if tag in self._placed:  # an earlier attempt may have got through: never twice
            known = self.get_order(order.client_order_id)
            if known is not None:
                return known
        exchange, tradingsymbol = split_symbol(order.symbol, self._settings.kite_exchange)
        validity = _VALIDITY.get(order.time_in_force)
        if validity is None:
            raise BrokerRejected(f"kite has no {order.time_in_force} validity (DAY or IOC)")
        fields: dict[str, Any] = {
            "variety": VARIETY,
            "exchange": exchange,
            "tradingsymbol": tradingsymbol,
            "transaction_type": order.side.value,
            "quantity": shares(order.quantity),
            "product": self._settings.kite_product,
            "order_type": order.order_type.value,
            "validity": validity,
            "tag": tag,
        }
        if order.order_type is OrderType.LIMIT:
            if order.limit_price is None or order.limit_price <= 0:
                raise BrokerRejected("a LIMIT order needs a positive limit price")
            fields["price"] = price_text(order.limit_price)
        self._placed.add(tag)
        order_id = str(self._call("place_order", lambda: self._kite.place_order(**fields)))
        return self._view(self._latest(order_id), order.client_order_id)

    def get_order(self, client_order_id: str) -> BrokerOrder | None:
        tag = self._remember(client_order_id)
        mine = [
            plain_order(o)
            for o in self._call("orders", self._kite.orders)
            if isinstance(o, Mapping) and o.get("tag") == tag
        ]
        if not mine:
            return None
        # one order per tag is what we place; should Kite hold more, the newest speaks
        latest = max(mine, key=lambda o: (str(o.get("order_timestamp") or ""), str(o["order_id"])))
        return self._view(latest, client_order_id)

    def open_orders(self) -> list[BrokerOrder]:
        known = dict(self._tracker.client_order_ids)
        views = []
        for raw in self._call("orders", self._kite.orders):
            tag = raw.get("tag") if isinstance(raw, Mapping) else None
            if not isinstance(tag, str) or not tag:
                continue  # not placed through us
            view = self._view(plain_order(raw), known.get(tag, tag))
            if view.status in _WORKING:
                views.append(view)
        return views

    def cancel(self, client_order_id: str, venue_order_id: str | None) -> None:
        order_id = venue_order_id or self._require(client_order_id).venue_order_id
        self._call("cancel_order", lambda: self._kite.cancel_order(VARIETY, order_id))

    def modify(
        self,
        client_order_id: str,
        venue_order_id: str | None,
        *,
        quantity: int | None = None,
        limit_price: int | None = None,
    ) -> BrokerOrder:
        if quantity is None and limit_price is None:
            raise BrokerRejected("modify needs a quantity or a limit price")
        self._remember(client_order_id)
        order_id = venue_order_id or self._require(client_order_id).venue_order_id
        fields: dict[str, Any] = {}
        if quantity is not None:
            fields["quantity"] = shares(quantity)
        if limit_price is not None:
            fields["price"] = price_text(limit_price)
        self._call("modify_order", lambda: self._kite.modify_order(VARIETY, order_id, **fields))
        return self._view(self._latest(order_id), client_order_id)

    # ---- plumbing ----------------------------------------------------------------------
    def _remember(self, client_order_id: str) -> str:
        tag = kite_tag(client_order_id)
        self._tracker.client_order_ids[tag] = client_order_id
        return tag

    def _require(self, client_order_id: str) -> BrokerOrder:
        found = self.get_order(client_order_id)
        if found is None:
            raise BrokerRejected(f"kite: no order {client_order_id}")
        return found

    def _latest(self, order_id: str) -> dict[str, Any]:
        history = self._call("order_history", lambda: self._kite.order_history(order_id))
        if not isinstance(history, list) or not history or not isinstance(history[-1], Mapping):
            raise BrokerUnavailable(f"kite order_history {order_id}: no state to read")
        return plain_order(history[-1])

    def _view(self, order: Mapping[str, Any], client_order_id: str) -> BrokerOrder:
        try:
            return broker_order(order, client_order_id, ts_init=self._clock())
        except FeedParseError as exc:
            raise BrokerUnavailable(f"kite: unreadable order: {exc}") from None

    def _call(self, what: str, call: Callable[[], T]) -> T:
        try:
            with self._http_lock:  # the poll thread shares the SDK's requests session
                return call()
        except (kite_errors.KiteException, requests.RequestException) as exc:
            raise _error(what, exc) from None
        except KeyError as exc:  # the SDK reads headers and fields without asking
            raise BrokerUnavailable(f"kite {what}: answer without {exc}") from None
