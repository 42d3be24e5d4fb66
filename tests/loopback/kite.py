"""A loopback Kite Connect: the order routes of the REST API, and postbacks to a listener.

An HTTP server on 127.0.0.1 (free port, a thread of the test process) answering what
kiteconnect's ``place_order`` / ``modify_order`` / ``cancel_order`` / ``orders`` /
``order_history`` / ``trades`` ask, in Kite's ``{"status": "success", "data": ...}``
envelope. Every answer is built from the vendor's mocks in ``kiteconnect-mocks/``: a
booked order has exactly the fields of an ``orders.json`` order (the first ``regular``
one is the template), a history entry those of ``order_info.json``, a trade those of
``trades.json``, a postback those of ``postback.json`` with a correct checksum
(SHA-256 of order_id + order_timestamp + api_secret) for this loopback's ``api_secret``;
place / modify / cancel answer like ``order_response.json`` / ``order_modify.json`` /
``order_cancel.json``.

Use::

    with KiteLoopback(shared_data, postback_url=url) as kite:
        settings = kite.settings(kite_postback_port=port)   # or kite.env() for a subprocess
        kite.placements(tag)                 # POST /orders/regular seen for a tag
        kite.fill(order_id, 40, "1573.70")   # book it, POST the postback (postback=False: miss it)
        kite.postback(order_id, checksum="0" * 64)  # deliver (or forge) the current state
        kite.refuse_next("POST", "/orders", 503, "NetworkException", "Gateway timed out")

Like Kite it refuses a request without ``Authorization: token <api_key>:<access_token>``
with 403 TokenException, bad input with 400 InputException, and a change to a finished
order with 400. Postbacks are sent for the statuses Kite posts (UPDATE on a partial fill
or a modification, COMPLETE, CANCELLED, REJECTED), not for OPEN. Simplifications: no
market (nothing fills unless :meth:`KiteLoopback.fill` says so); an order is OPEN as soon
as it is placed (its history shows the steps of ``order_info.json``).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import itertools
import json
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from core.config import Settings, load_settings

__all__ = ["MOCKS", "KiteLoopback"]

MOCKS: Final = "kiteconnect-mocks"
IST: Final = timezone(timedelta(hours=5, minutes=30))
_PLACEMENT_STEPS: Final = ("PUT ORDER REQ RECEIVED", "VALIDATION PENDING", "OPEN PENDING", "OPEN")
_MODIFY_STEPS: Final = ("MODIFY VALIDATION PENDING", "MODIFY PENDING", "MODIFIED", "OPEN")


def ist_now() -> str:
    """Kite's order time: IST wall clock, seconds, no zone."""
    return datetime.now(IST).strftime("%Y-%m-%d %H:%M:%S")


def checksum(order_id: str, order_timestamp: str, api_secret: str) -> str:
    """Kite's postback checksum (postback docs), computed here on its own."""
    return hashlib.sha256((order_id + order_timestamp + api_secret).encode()).hexdigest()


def dumps(value: Any) -> str:
    """JSON with Decimals written as the numbers they are (Kite's prices are numbers)."""
    marks: dict[str, str] = {}

    def mark(item: Any) -> Any:
        if isinstance(item, Decimal):
            key = f"\x00{len(marks)}\x00"
            marks[key] = format(item.normalize(), "f")
            return key
        if isinstance(item, dict):
            return {k: mark(v) for k, v in item.items()}
        if isinstance(item, list):
            return [mark(v) for v in item]
        return item

    text = json.dumps(mark(value))
    for key, number in marks.items():
        text = text.replace(json.dumps(key), number)
    return text


def _decimal(text: str | None) -> Decimal | None:
    try:
        value = Decimal(text) if text is not None else None
    except InvalidOperation:
        return None
    return value if value is not None and value.is_finite() else None


@dataclass
class _Refusal:
    method: str
    path: str
    status: int
    error_type: str
    message: str
    times: int
    after_booking: bool


class KiteLoopback:
    """Kite Connect v3 order routes on 127.0.0.1, posting postbacks to ``postback_url``."""

    def __init__(
        self,
        shared_data: Path,
        *,
        postback_url: str | None = None,
        api_key: str = "loopback-api-key",
        access_token: str = "loopback-access-token",
        api_secret: str = "loopback-api-secret",
    ) -> None:
        mocks = shared_data / MOCKS

        def mock(name: str) -> Any:
            return json.loads((mocks / name).read_text(), parse_float=Decimal)

        self.order_template: dict[str, Any] = next(
            o for o in mock("orders.json")["data"] if o["variety"] == "regular"
        )
        self.history_fields: tuple[str, ...] = tuple(mock("order_info.json")["data"][0])
        self.trade_template: dict[str, Any] = mock("trades.json")["data"][0]
        self.postback_template: dict[str, Any] = mock("postback.json")
        self.answers = {
            "place": mock("order_response.json"),
            "modify": mock("order_modify.json"),
            "cancel": mock("order_cancel.json"),
        }
        with (mocks / "instruments_nse.csv").open(newline="") as dump:
            self.tokens = {
                (row["exchange"], row["tradingsymbol"]): int(row["instrument_token"])
                for row in csv.DictReader(dump)
            }
        self.postback_url = postback_url
        self.api_key, self.access_token, self.api_secret = api_key, access_token, api_secret

        self._lock = threading.RLock()
        self._ids = itertools.count(250_101_000_000_001)
        self._book: dict[str, dict[str, Any]] = {}  # order id → order (orders.json shape)
        self._history: dict[str, list[dict[str, Any]]] = {}
        self._trades: list[dict[str, Any]] = []
        self._notional: dict[str, Decimal] = {}
        self._placements: Counter[str] = Counter()
        self._refusals: list[_Refusal] = []
        #: every request: (method, path with query, form/query fields)
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        #: every postback sent: (body, HTTP status the listener answered; None: unreachable)
        self.postbacks: list[tuple[dict[str, Any], int | None]] = []
        self._http: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> KiteLoopback:
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._http.daemon_threads = True
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> KiteLoopback:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Root for ``OMNIQUANT_EXECUTION__KITE_ROOT_URL``."""
        assert self._http is not None, "start() first"
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def env(self, postback_port: int = 0) -> dict[str, str]:
        """Environment that points the platform's Kite broker at this loopback."""
        return {
            "OMNIQUANT_EXECUTION__BROKER": "kite",
            "OMNIQUANT_EXECUTION__KITE_ROOT_URL": self.url,
            "OMNIQUANT_EXECUTION__KITE_POSTBACK_PORT": str(postback_port),
            "OMNIQUANT_FEEDS__KITE_API_KEY": self.api_key,
            "OMNIQUANT_FEEDS__KITE_ACCESS_TOKEN": self.access_token,
            "OMNIQUANT_FEEDS__KITE_API_SECRET": self.api_secret,
        }

    def settings(self, **execution: Any) -> Settings:
        """Settings for an in-process KiteBroker (``execution`` overrides fields)."""
        return load_settings(
            execution={"broker": "kite", "kite_root_url": self.url, **execution},
            feeds={
                "kite_api_key": self.api_key,
                "kite_access_token": self.access_token,
                "kite_api_secret": self.api_secret,
            },
        )

    # ---- what the test asks ------------------------------------------------------------
    def placements(self, tag: str | None = None) -> int:
        """``POST /orders/{variety}`` seen with this tag (all of them: None)."""
        with self._lock:
            return sum(self._placements.values()) if tag is None else self._placements[tag]

    def order(self, order_id: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._book[order_id])

    def order_ids(self, tag: str) -> list[str]:
        with self._lock:
            return [i for i, o in self._book.items() if o["tag"] == tag]

    # ---- what the test makes happen ----------------------------------------------------
    def refuse_next(
        self,
        method: str,
        path: str,
        status: int,
        error_type: str,
        message: str,
        *,
        times: int = 1,
        after_booking: bool = False,
    ) -> None:
        """Answer the next ``times`` requests ``method path…`` with Kite's error envelope
        (``error_type``: InputException, OrderException, NetworkException ...).
        ``after_booking``: a placement is booked before the error is answered."""
        with self._lock:
            self._refusals.append(
                _Refusal(method.upper(), path, status, error_type, message, times, after_booking)
            )

    def fill(
        self, order_id: str, quantity: int, price: str | Decimal, *, postback: bool = True
    ) -> dict[str, Any]:
        """Fill ``quantity`` shares at ``price``; posts the postback (UPDATE or COMPLETE)
        unless ``postback`` is False (a missed one). Returns the postback body."""
        price = Decimal(price)
        with self._lock:
            order = self._book[order_id]
            if order["status"] != "OPEN":
                raise ValueError(f"order {order_id} is {order['status']}")
            filled = order["filled_quantity"] + quantity
            if quantity <= 0 or filled > order["quantity"]:
                raise ValueError(f"cannot fill {quantity} of {order['quantity']}")
            self._notional[order_id] = self._notional.get(order_id, Decimal(0)) + price * quantity
            done = filled == order["quantity"]
            stamp = ist_now()
            order.update(
                filled_quantity=filled,
                pending_quantity=order["quantity"] - filled,
                average_price=self._notional[order_id] / filled,
                status="COMPLETE" if done else "OPEN",
                exchange_update_timestamp=stamp,
            )
            self._step(order, order["status"])
            trade = {k: order.get(k, v) for k, v in self.trade_template.items()}
            trade.update(
                trade_id=str(10_000_000 + len(self._trades)),
                average_price=price,
                quantity=quantity,
                fill_timestamp=stamp,
                exchange_timestamp=stamp,
                order_timestamp=stamp[11:],  # trades.json writes the time of day only
            )
            self._trades.append(trade)
            body = self._postback_body(order, "COMPLETE" if done else "UPDATE")
        if postback:
            self._send(body)
        return body

    def postback(
        self, order_id: str, *, status: str | None = None, checksum: str | None = None
    ) -> int | None:
        """POST the order's current state as a postback now (a late one, or with a forged
        ``checksum``); returns the listener's HTTP status."""
        with self._lock:
            order = self._book[order_id]
            body = self._postback_body(order, status or order["status"])
        if checksum is not None:
            body["checksum"] = checksum
        return self._send(body)

    # ---- the order book ----------------------------------------------------------------
    def _step(self, order: Mapping[str, Any], status: str) -> None:
        entry = {k: copy.deepcopy(order.get(k)) for k in self.history_fields}
        entry["status"] = status
        self._history[order["order_id"]].append(entry)

    def _postback_body(self, order: Mapping[str, Any], status: str) -> dict[str, Any]:
        body = copy.deepcopy(self.postback_template)
        body.update({k: copy.deepcopy(order[k]) for k in body if k in order})
        body.update(
            status=status,
            user_id=order["placed_by"],
            unfilled_quantity=order["pending_quantity"],
            checksum=checksum(order["order_id"], order["order_timestamp"], self.api_secret),
        )
        return body

    def _send(self, body: dict[str, Any]) -> int | None:
        if self.postback_url is None:
            raise RuntimeError("no postback_url to post to")
        request = urllib.request.Request(
            self.postback_url,
            data=dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        status: int | None
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                status = int(answer.status)
        except urllib.error.HTTPError as refused:
            status = refused.code
        except OSError:
            status = None
        with self._lock:
            self.postbacks.append((body, status))
        return status

    def _refusal(self, method: str, path: str) -> _Refusal | None:
        for rule in self._refusals:
            if rule.method == method and path.startswith(rule.path) and rule.times > 0:
                rule.times -= 1
                return rule
        return None

    def _place(self, variety: str, fields: Mapping[str, str]) -> tuple[int, Any, list[Any]]:
        tag = fields.get("tag", "")
        self._placements[tag] += 1
        refusal = self._refusal("POST", "/orders")
        if refusal is not None and not refusal.after_booking:
            return _error(refusal.status, refusal.error_type, refusal.message)
        problem = self._invalid(fields)
        if problem:
            return _error(400, "InputException", problem)
        stamp = ist_now()
        order_id = str(next(self._ids))
        order = copy.deepcopy(self.order_template)
        quantity = int(fields["quantity"])
        order.update(
            order_id=order_id,
            exchange_order_id=str(int(order_id) + 1_000_000_000_000_000),
            status="OPEN",
            status_message=None,
            status_message_raw=None,
            order_timestamp=stamp,
            exchange_update_timestamp=stamp,
            exchange_timestamp=stamp,
            variety=variety,
            modified=False,
            exchange=fields["exchange"],
            tradingsymbol=fields["tradingsymbol"],
            instrument_token=self.tokens.get((fields["exchange"], fields["tradingsymbol"]), 0),
            order_type=fields["order_type"],
            transaction_type=fields["transaction_type"],
            validity=fields.get("validity", "DAY"),
            product=fields["product"],
            quantity=quantity,
            price=_decimal(fields.get("price")) or 0,
            trigger_price=0,
            average_price=0,
            filled_quantity=0,
            pending_quantity=quantity,
            cancelled_quantity=0,
            tag=tag or None,
        )
        self._book[order_id] = order
        self._history[order_id] = []
        for step in _PLACEMENT_STEPS:
            self._step(order, step)
        answer = copy.deepcopy(self.answers["place"])
        answer["data"]["order_id"] = order_id
        if refusal is not None:  # booked, but the client hears an error
            return _error(refusal.status, refusal.error_type, refusal.message)
        return 200, answer, []

    @staticmethod
    def _invalid(fields: Mapping[str, str]) -> str | None:
        quantity = fields.get("quantity", "")
        if not quantity.isdigit() or int(quantity) <= 0:
            return f"Invalid `quantity`: {quantity!r}"
        for name in ("exchange", "tradingsymbol", "transaction_type", "product", "order_type"):
            if not fields.get(name):
                return f"Missing `{name}`"
        if fields["transaction_type"] not in ("BUY", "SELL"):
            return "Invalid `transaction_type`"
        if fields["order_type"] == "LIMIT" and not _decimal(fields.get("price")):
            return "Invalid `price`"
        if len(fields.get("tag", "")) > 20:
            return "Tag length should be less than 20 characters"
        return None

    def _change(
        self, method: str, order_id: str, fields: Mapping[str, str]
    ) -> tuple[int, Any, list[Any]]:
        order = self._book.get(order_id)
        if order is None:
            return _error(400, "InputException", "Invalid `order_id`")
        if order["status"] != "OPEN":
            verb = "cancelled" if method == "DELETE" else "modified"
            return _error(
                400, "InputException", f"Order cannot be {verb} as it is {order['status']}"
            )
        if method == "DELETE":
            order.update(
                status="CANCELLED",
                cancelled_quantity=order["pending_quantity"],
                pending_quantity=0,
                exchange_update_timestamp=ist_now(),
            )
            self._step(order, "CANCELLED")
            answer = copy.deepcopy(self.answers["cancel"])
            answer["data"]["order_id"] = order_id
            return 200, answer, [self._postback_body(order, "CANCELLED")]
        if "quantity" in fields:
            quantity = int(fields["quantity"])
            if quantity < order["filled_quantity"] or quantity <= 0:
                return _error(400, "InputException", "Invalid `quantity`")
            order.update(quantity=quantity, pending_quantity=quantity - order["filled_quantity"])
        if "price" in fields:
            order["price"] = _decimal(fields["price"]) or order["price"]
        order.update(modified=True, exchange_update_timestamp=ist_now())
        for step in _MODIFY_STEPS:
            self._step(order, step)
        answer = copy.deepcopy(self.answers["modify"])
        answer["data"]["order_id"] = order_id
        return 200, answer, [self._postback_body(order, "UPDATE")]

    # ---- HTTP --------------------------------------------------------------------------
    def _answer(
        self, method: str, target: str, headers: Message, raw: bytes
    ) -> tuple[int, Any, list[Any]]:
        """(status, JSON answer, postbacks to send once answered)."""
        parts = urlsplit(target)
        fields = {k: v[0] for k, v in parse_qs(raw.decode() or parts.query).items()}
        with self._lock:
            self.requests.append((method, target, fields))
            if headers.get("Authorization") != f"token {self.api_key}:{self.access_token}":
                return _error(403, "TokenException", "Incorrect `api_key` or `access_token`.")
            if headers.get("X-Kite-Version") != "3":
                return _error(400, "InputException", "Invalid or missing X-Kite-Version")
            segments = [s for s in parts.path.split("/") if s]
            if method != "POST":
                refusal = self._refusal(method, parts.path)
                if refusal is not None:
                    return _error(refusal.status, refusal.error_type, refusal.message)
            if method == "POST" and len(segments) == 2 and segments[0] == "orders":
                return self._place(segments[1], fields)
            if method in ("PUT", "DELETE") and len(segments) == 3 and segments[0] == "orders":
                return self._change(method, segments[2], fields)
            if method == "GET" and segments == ["orders"]:
                return 200, _success(list(self._book.values())), []
            if method == "GET" and len(segments) == 2 and segments[0] == "orders":
                history = self._history.get(segments[1])
                if history is None:
                    return _error(400, "InputException", "Invalid `order_id`")
                return 200, _success(history), []
            if method == "GET" and segments == ["trades"]:
                return 200, _success(self._trades), []
            return _error(404, "GeneralException", "Route not found")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        venue = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, answer, postbacks = venue._answer(
                    self.command, self.path, self.headers, raw
                )
                payload = dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                self.wfile.flush()
                for body in postbacks:  # after the answer, as Kite's come
                    if venue.postback_url is not None:
                        venue._send(body)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def _success(data: Any) -> dict[str, Any]:
    return {"status": "success", "data": copy.deepcopy(data)}


def _error(status: int, error_type: str, message: str) -> tuple[int, Any, list[Any]]:
    return (
        status,
        {"status": "error", "message": message, "data": None, "error_type": error_type},
        [],
    )
