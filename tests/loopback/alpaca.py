"""A loopback Alpaca: the Trading API order routes and the ``trade_updates`` websocket.

Both servers listen on 127.0.0.1 (free ports) on threads of the test process, so the
process under test can be this one or a subprocess. Answers are built from the vendor's
recorded payloads in the shared data folder: the order object of alpaca-py's
``test_order_routes`` (``test_market_order``) is the template of every order (id, client
order id, symbol, qty, side, type, status, times filled in), and the ``trade_updates``
example and control messages of Alpaca's streaming docs are the templates of the stream.

Use::

    with AlpacaLoopback(shared_data) as alpaca:
        settings = alpaca.settings()              # or alpaca.env() for a subprocess
        broker = AlpacaBroker(settings); broker.connect(events.append)
        broker.submit(order)
        alpaca.submissions("coid")                # POSTs seen for it, duplicates included
        alpaca.fill("coid", "40", "187.25")       # partial_fill (then fill) on the stream
        alpaca.refuse_next("POST", "/v2/orders", 403, "insufficient buying power")

Like Alpaca it answers a repeated client order id with 422 "client_order_id must be
unique", a cancel of a finished order with 422, an unknown order with 404, and a request
without the right ``APCA-API-KEY-ID`` / ``APCA-API-SECRET-KEY`` with 401. An accepted order
is acknowledged ``accepted`` and then reported ``new`` on the stream. Simplifications: no
market, so nothing fills unless :meth:`AlpacaLoopback.fill` says so; a replacement (PATCH)
keeps the filled quantity of the order it replaces.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from core.config import Settings, load_settings

__all__ = ["ORDER_PAYLOADS", "STREAM_EXAMPLES", "AlpacaLoopback"]

ORDER_PAYLOADS: Final = "alpaca-py/tests/trading/trading_client/test_order_routes.payloads.json"
STREAM_EXAMPLES: Final = "alpaca-docs/content/api-references/trading-api/streaming.examples.json"
OPEN_STATUSES: Final = frozenset(
    {"new", "accepted", "pending_new", "partially_filled", "accepted_for_bidding", "held"}
)
_FILL_KEYS: Final = ("execution_id", "position_qty", "price", "qty")
_ENDED: Final = {"canceled": "canceled", "expired": "expired", "rejected": "rejected"}


def now_rfc3339() -> str:
    """The wall clock as Alpaca writes it: RFC-3339, nanoseconds, Z."""
    ns = time.time_ns()
    seconds = datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{seconds}.{ns % 1_000_000_000:09d}Z"


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        return None
    return result if result.is_finite() else None


def _text(value: Decimal) -> str:
    return format(value.normalize(), "f")


@dataclass
class _Refusal:
    method: str
    path: str
    status: int
    message: str
    code: int
    times: int
    after_booking: bool  # book the order, then answer the error (the answer is "lost")


@dataclass(frozen=True)
class _Reply:
    status: int
    body: Any = None
    after: Callable[[], object] | None = None  # runs once the answer is written


class AlpacaLoopback:
    """Alpaca Trading API v2 (``/v2/orders``) + ``trade_updates`` on 127.0.0.1."""

    def __init__(
        self,
        shared_data: Path,
        *,
        key_id: str = "loopback-key-id",
        secret_key: str = "loopback-secret-key",
    ) -> None:
        orders = json.loads((shared_data / ORDER_PAYLOADS).read_text())["payloads"]
        self.order_template: dict[str, Any] = next(
            p["body"] for p in orders if p["test"] == "test_market_order"
        )
        messages = [
            e["message"]
            for e in json.loads((shared_data / STREAM_EXAMPLES).read_text())["examples"]
        ]
        self.update_template: dict[str, Any] = next(
            m for m in messages if m.get("stream") == "trade_updates"
        )
        self._authorized = next(
            m
            for m in messages
            if m.get("stream") == "authorization" and m["data"]["status"] == "authorized"
        )
        self._unauthorized = next(
            m
            for m in messages
            if m.get("stream") == "authorization" and m["data"]["status"] == "unauthorized"
        )
        self._listening = next(m for m in messages if m.get("stream") == "listening")
        self.key_id, self.secret_key = key_id, secret_key

        self._lock = threading.RLock()
        self._orders: dict[str, dict[str, Any]] = {}  # by Alpaca order id
        self._by_client_id: dict[str, str] = {}  # client order id → order id
        self._notional: dict[str, Decimal] = {}  # order id → Σ price × qty of its fills
        self._positions: dict[str, Decimal] = {}
        self._submissions: Counter[str] = Counter()
        self._refusals: list[_Refusal] = []
        #: every request: (method, path with query, JSON body or None)
        self.requests: list[tuple[str, str, Any]] = []
        #: every trade_updates message pushed, in order
        self.pushed: list[dict[str, Any]] = []

        self._http: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ws_thread: threading.Thread | None = None
        self._ws_server: Server | None = None
        self._listeners: set[ServerConnection] = set()
        self._listening_changed = threading.Condition()

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> AlpacaLoopback:
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._http.daemon_threads = True
        self._http_thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._http_thread.start()
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._ws_thread = threading.Thread(target=self._run_ws, args=(ready,), daemon=True)
        self._ws_thread.start()
        if not ready.wait(10):
            raise RuntimeError("loopback alpaca websocket server did not start")
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._loop is not None and self._ws_thread is not None:
            asyncio.run_coroutine_threadsafe(self._stop_ws(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._ws_thread.join(10)
            self._loop = None

    def __enter__(self) -> AlpacaLoopback:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def trading_url(self) -> str:
        """Base URL for ``OMNIQUANT_EXECUTION__ALPACA_TRADING_URL`` (the SDK adds /v2)."""
        assert self._http is not None, "start() first"
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    @property
    def stream_url(self) -> str:
        """URL for ``OMNIQUANT_EXECUTION__ALPACA_STREAM_URL``."""
        assert self._ws_server is not None, "start() first"
        port = next(iter(self._ws_server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}/stream"

    def env(self) -> dict[str, str]:
        """Environment that points the platform's Alpaca broker at this loopback."""
        return {
            "OMNIQUANT_EXECUTION__BROKER": "alpaca",
            "OMNIQUANT_EXECUTION__ALPACA_TRADING_URL": self.trading_url,
            "OMNIQUANT_EXECUTION__ALPACA_STREAM_URL": self.stream_url,
            "OMNIQUANT_FEEDS__ALPACA_API_KEY_ID": self.key_id,
            "OMNIQUANT_FEEDS__ALPACA_API_SECRET_KEY": self.secret_key,
            "OMNIQUANT_FEEDS__ALPACA_PAPER": "true",
        }

    def settings(self, **execution: Any) -> Settings:
        """Settings for an in-process AlpacaBroker (``execution`` overrides fields)."""
        return load_settings(
            execution={
                "broker": "alpaca",
                "alpaca_trading_url": self.trading_url,
                "alpaca_stream_url": self.stream_url,
                **execution,
            },
            feeds={"alpaca_api_key_id": self.key_id, "alpaca_api_secret_key": self.secret_key},
        )

    # ---- what the test asks ------------------------------------------------------------
    def submissions(self, client_order_id: str | None = None) -> int:
        """``POST /v2/orders`` seen for ``client_order_id`` (all of them: None)."""
        with self._lock:
            if client_order_id is None:
                return sum(self._submissions.values())
            return self._submissions[client_order_id]

    def submission_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._submissions)

    def order(self, client_order_id: str) -> dict[str, Any]:
        """The live order for a client order id (a copy; follows replacements)."""
        with self._lock:
            return copy.deepcopy(self._live(client_order_id))

    def orders(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(list(self._orders.values()))

    @property
    def listeners(self) -> int:
        """Stream connections listening to trade_updates now."""
        return len(self._listeners)

    def wait_listening(self, count: int = 1, timeout: float = 10.0) -> None:
        with self._listening_changed:
            if not self._listening_changed.wait_for(lambda: self.listeners >= count, timeout):
                raise TimeoutError(f"{self.listeners} trade_updates listeners, wanted {count}")

    # ---- what the test makes happen ----------------------------------------------------
    def refuse_next(
        self,
        method: str,
        path: str,
        status: int,
        message: str,
        *,
        code: int | None = None,
        times: int = 1,
        after_booking: bool = False,
    ) -> None:
        """Answer the next ``times`` requests ``method path…`` with ``status`` and Alpaca's
        error envelope ``{"code", "message"}``. ``after_booking``: a POST is booked (and its
        ``new`` pushed) before the error is answered, as when an answer is lost."""
        with self._lock:
            self._refusals.append(
                _Refusal(
                    method.upper(),
                    path,
                    status,
                    message,
                    code if code is not None else int(f"{status}10000"),
                    times,
                    after_booking,
                )
            )

    def fill(
        self, client_order_id: str, qty: str | Decimal, price: str | Decimal
    ) -> dict[str, Any]:
        """Fill ``qty`` of the order at ``price``: pushes ``partial_fill`` or ``fill``
        (modelled on the docs' example) and returns the message pushed."""
        qty, price = Decimal(qty), Decimal(price)
        with self._lock:
            order = self._live(client_order_id)
            if order["status"] not in OPEN_STATUSES:
                raise ValueError(f"order {client_order_id} is {order['status']}")
            filled = Decimal(order["filled_qty"]) + qty
            if qty <= 0 or filled > Decimal(order["qty"]):
                raise ValueError(
                    f"cannot fill {qty} of {order['qty']} ({order['filled_qty']} filled)"
                )
            self._notional[order["id"]] = self._notional.get(order["id"], Decimal(0)) + qty * price
            stamp = now_rfc3339()
            done = filled == Decimal(order["qty"])
            order.update(
                filled_qty=_text(filled),
                filled_avg_price=_text(self._notional[order["id"]] / filled),
                status="filled" if done else "partially_filled",
                updated_at=stamp,
                filled_at=stamp if done else order.get("filled_at"),
            )
            signed = qty if order["side"] == "buy" else -qty
            position = self._positions.get(order["symbol"], Decimal(0)) + signed
            self._positions[order["symbol"]] = position
            data = copy.deepcopy(self.update_template["data"])
            data.update(
                event="fill" if done else "partial_fill",
                execution_id=str(uuid.uuid4()),
                order=copy.deepcopy(order),
                position_qty=_text(position),
                price=_text(price),
                qty=_text(qty),
                timestamp=stamp,
            )
        return self._push(data)

    def end(self, client_order_id: str, event: str) -> dict[str, Any]:
        """End an open order as Alpaca would: ``canceled``, ``expired`` or ``rejected``."""
        with self._lock:
            order = self._live(client_order_id)
            order.update(status=_ENDED[event], updated_at=now_rfc3339())
            if event == "canceled":
                order["canceled_at"] = order["updated_at"]
            data = self._event(event, order)
        return self._push(data)

    def drop_streams(self) -> None:
        """Close every stream connection (the client should reconnect)."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._close_listeners(), self._loop).result(10)

    # ---- the order book ----------------------------------------------------------------
    def _live(self, client_order_id: str) -> dict[str, Any]:
        order = self._orders[self._by_client_id[client_order_id]]
        while order["status"] == "replaced" and order.get("replaced_by"):
            order = self._orders[order["replaced_by"]]
        return order

    def _event(self, event: str, order: Mapping[str, Any]) -> dict[str, Any]:
        data = {
            k: v
            for k, v in copy.deepcopy(self.update_template["data"]).items()
            if k not in _FILL_KEYS
        }
        data.update(event=event, order=copy.deepcopy(dict(order)), timestamp=now_rfc3339())
        return data

    def _refusal(self, method: str, path: str) -> _Refusal | None:
        for rule in self._refusals:
            if rule.method == method and path.startswith(rule.path) and rule.times > 0:
                rule.times -= 1
                return rule
        return None

    def _submit(self, body: Any) -> _Reply:
        if not isinstance(body, dict):
            return _error(422, 40010001, "request body format is invalid")
        client_order_id = str(body.get("client_order_id") or uuid.uuid4())
        self._submissions[client_order_id] += 1
        refusal = self._refusal("POST", "/v2/orders")
        if refusal is not None and not refusal.after_booking:
            return _error(refusal.status, refusal.code, refusal.message)
        problem = _invalid(body)
        if problem:
            return _error(422, 40010001, problem)
        if client_order_id in self._by_client_id:
            return _error(422, 40010001, "client_order_id must be unique")
        stamp = now_rfc3339()
        order = copy.deepcopy(self.order_template)
        order.update(
            id=str(uuid.uuid4()),
            client_order_id=client_order_id,
            created_at=stamp,
            updated_at=stamp,
            submitted_at=stamp,
            symbol=body["symbol"],
            qty=_text(_decimal(body["qty"]) or Decimal(0)),
            filled_qty="0",
            filled_avg_price=None,
            side=body["side"],
            type=body["type"],
            order_type=body["type"],
            time_in_force=body["time_in_force"],
            limit_price=_text(d) if (d := _decimal(body.get("limit_price"))) else None,
            status="accepted",
        )
        self._orders[order["id"]] = order
        self._by_client_id[client_order_id] = order["id"]
        answer = copy.deepcopy(order)

        def routed() -> None:
            with self._lock:
                order.update(status="new", updated_at=now_rfc3339())
                data = self._event("new", order)
            self._push(data)

        if refusal is not None:  # booked, but the client hears an error
            return _Reply(
                refusal.status, {"code": refusal.code, "message": refusal.message}, routed
            )
        return _Reply(200, answer, routed)

    def _list(self, query: Mapping[str, list[str]]) -> _Reply:
        wanted = (query.get("status") or ["open"])[0]
        limit = int((query.get("limit") or ["50"])[0])
        orders = [
            o
            for o in reversed(list(self._orders.values()))
            if wanted == "all" or (o["status"] in OPEN_STATUSES) == (wanted == "open")
        ]
        return _Reply(200, copy.deepcopy(orders[:limit]))

    def _one(self, method: str, order_id: str, body: Any) -> _Reply:
        order = self._orders.get(order_id)
        if order is None:
            return _error(404, 40410000, "order not found")
        if method == "GET":
            return _Reply(200, copy.deepcopy(order))
        if order["status"] not in OPEN_STATUSES:
            verb = "cancelable" if method == "DELETE" else "replaceable"
            return _error(422, 42210000, f"order is not {verb}")
        if method == "DELETE":
            stamp = now_rfc3339()
            order.update(status="canceled", canceled_at=stamp, updated_at=stamp)
            data = self._event("canceled", order)
            return _Reply(204, None, lambda: self._push(data))
        return self._replace(order, body if isinstance(body, dict) else {})

    def _replace(self, order: dict[str, Any], body: Mapping[str, Any]) -> _Reply:
        client_order_id = str(body.get("client_order_id") or uuid.uuid4())
        if client_order_id in self._by_client_id:
            return _error(422, 40010001, "client_order_id must be unique")
        qty = _decimal(body.get("qty")) if body.get("qty") is not None else Decimal(order["qty"])
        if qty is None or qty <= 0 or qty < Decimal(order["filled_qty"]):
            return _error(422, 40010001, "qty must be > 0 and not below the filled qty")
        stamp = now_rfc3339()
        new = copy.deepcopy(order)
        new.update(
            id=str(uuid.uuid4()),
            client_order_id=client_order_id,
            qty=_text(qty),
            replaces=order["id"],
            replaced_by=None,
            status="new",
            created_at=stamp,
            updated_at=stamp,
            submitted_at=stamp,
        )
        if body.get("limit_price") is not None:
            new["limit_price"] = _text(_decimal(body["limit_price"]) or Decimal(0))
        order.update(status="replaced", replaced_by=new["id"], replaced_at=stamp, updated_at=stamp)
        self._orders[new["id"]] = new
        self._by_client_id[client_order_id] = new["id"]
        self._notional[new["id"]] = self._notional.get(order["id"], Decimal(0))
        data = self._event("replaced", order)
        return _Reply(200, copy.deepcopy(new), lambda: self._push(data))

    # ---- HTTP --------------------------------------------------------------------------
    def _answer(self, method: str, target: str, headers: Message, raw: bytes) -> _Reply:
        parts = urlsplit(target)
        body = json.loads(raw) if raw else None
        with self._lock:
            self.requests.append((method, target, body))
            if (
                headers.get("APCA-API-KEY-ID") != self.key_id
                or headers.get("APCA-API-SECRET-KEY") != self.secret_key
            ):
                return _error(401, 40110000, "request is not authorized")
            if method != "POST":
                refusal = self._refusal(method, parts.path)
                if refusal is not None:
                    return _error(refusal.status, refusal.code, refusal.message)
            if parts.path == "/v2/orders" and method == "POST":
                return self._submit(body)
            if parts.path == "/v2/orders" and method == "GET":
                return self._list(parse_qs(parts.query))
            if parts.path == "/v2/orders:by_client_order_id" and method == "GET":
                client_order_id = (parse_qs(parts.query).get("client_order_id") or [""])[0]
                order_id = self._by_client_id.get(client_order_id)
                if order_id is None:
                    return _error(404, 40410000, f"order not found for {client_order_id}")
                return _Reply(200, copy.deepcopy(self._orders[order_id]))
            if parts.path.startswith("/v2/orders/") and method in ("GET", "DELETE", "PATCH"):
                return self._one(method, parts.path.removeprefix("/v2/orders/"), body)
            return _error(404, 40410000, "endpoint not found")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        venue = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                reply = venue._answer(self.command, self.path, self.headers, raw)
                payload = b"" if reply.body is None else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                if payload:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                self.wfile.flush()
                if reply.after is not None:
                    reply.after()

            do_GET = do_POST = do_PATCH = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    # ---- websocket ---------------------------------------------------------------------
    def _run_ws(self, ready: threading.Event) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)

        async def open_server() -> None:
            self._ws_server = await serve(self._stream, "127.0.0.1", 0)
            ready.set()

        self._loop.run_until_complete(open_server())
        self._loop.run_forever()
        self._loop.close()

    async def _stop_ws(self) -> None:
        await self._close_listeners()
        if self._ws_server is not None:
            self._ws_server.close()
            await self._ws_server.wait_closed()

    async def _close_listeners(self) -> None:
        for ws in list(self._listeners):
            await ws.close(1001, "loopback going away")
        self._set_listeners(set())

    def _set_listeners(self, listeners: set[ServerConnection]) -> None:
        with self._listening_changed:
            self._listeners = listeners
            self._listening_changed.notify_all()

    async def _stream(self, ws: ServerConnection) -> None:
        try:
            hello = json.loads(await ws.recv())
            data = hello.get("data") or {}
            if (
                hello.get("action") != "authenticate"
                or data.get("key_id") != self.key_id
                or data.get("secret_key") != self.secret_key
            ):
                await ws.send(json.dumps(self._unauthorized))
                await ws.close()
                return
            await ws.send(json.dumps(self._authorized))
            async for raw in ws:
                message = json.loads(raw)
                if message.get("action") != "listen":
                    continue
                streams = [s for s in message["data"]["streams"] if s == "trade_updates"]
                if streams:  # listening before it is told, so no push can slip between
                    self._set_listeners(self._listeners | {ws})
                reply = copy.deepcopy(self._listening)
                reply["data"]["streams"] = streams
                await ws.send(json.dumps(reply))
        except ConnectionClosed:
            pass
        finally:
            self._set_listeners(self._listeners - {ws})

    async def _broadcast(self, text: str) -> None:
        for ws in list(self._listeners):
            try:
                await ws.send(text)
            except ConnectionClosed:
                self._set_listeners(self._listeners - {ws})

    def _push(self, data: dict[str, Any]) -> dict[str, Any]:
        message = {"stream": "trade_updates", "data": data}
        with self._lock:
            self.pushed.append(message)
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._broadcast(json.dumps(message)), self._loop).result(
            10
        )
        return message


def _error(status: int, code: int, message: str) -> _Reply:
    return _Reply(status, {"code": code, "message": message})


def _invalid(body: Mapping[str, Any]) -> str | None:
    """Why Alpaca would refuse this order body with 422, or None."""
    qty = _decimal(body.get("qty"))
    if not isinstance(body.get("symbol"), str) or not body["symbol"]:
        return "symbol is required"
    if qty is None or qty <= 0:
        return "qty must be > 0"
    if body.get("side") not in ("buy", "sell"):
        return "invalid side"
    if body.get("type") not in ("market", "limit"):
        return "invalid order type"
    if body.get("time_in_force") not in ("day", "gtc", "ioc", "fok", "opg", "cls"):
        return "invalid time_in_force"
    if body.get("type") == "limit" and not _decimal(body.get("limit_price")):
        return "limit_price is required for limit orders"
    return None
