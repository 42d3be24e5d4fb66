"""Kite order postbacks (webhooks): verify, parse, and a tiny HTTP receiver.

Kite POSTs the order object as a raw JSON body to the app's postback URL when an order
placed through the app's api_key changes status (COMPLETE, CANCEL, REJECTED, UPDATE). The
body carries ``checksum`` = SHA-256 hex of ``order_id + order_timestamp + api_secret``
(:func:`postback_checksum`; :func:`verify_postback_checksum` compares in constant time). A
body whose checksum does not verify is rejected (HTTP 401) and counted in
``kite_postback_rejected_total{reason="bad_checksum"}``; a body that is not a JSON order
object we can map is rejected (HTTP 400) and counted with the parse error's reason
(``bad_json``, ``bad_frame``, ``missing_field``, ``bad_decimal`` ...; see
:class:`~core.errors.FeedParseError`).

:class:`KitePostbackServer` is stdlib ``http.server`` on a daemon thread (one small JSON
POST at a time needs nothing more). Its callback runs on the server's thread: from asyncio,
hand records over with ``loop.call_soon_threadsafe(queue.put_nowait, record)``. Put it
behind a TLS-terminating proxy: Kite posts to an https URL.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from prometheus_client import Counter
from pydantic import SecretStr

from core.errors import FeedParseError
from producers._fields import loads_object
from producers.kite.orders import OrderTracker, order_to_records
from schemas.models import ExecutionReport, Fill

__all__ = [
    "POSTBACK_REJECTED",
    "KitePostbackServer",
    "PostbackRejected",
    "decode_postback_body",
    "parse_postback",
    "postback_checksum",
    "verify_postback_checksum",
]

log = logging.getLogger(__name__)

POSTBACK_REJECTED: Final = Counter(
    "kite_postback_rejected_total",
    "Kite order postbacks rejected (bad checksum or a body we cannot map), by reason",
    ["reason"],
)
MAX_BODY_BYTES: Final = 64 * 1024
Clock = Callable[[], int]


class PostbackRejected(FeedParseError):
    """A postback that must not be trusted: ``reason`` "bad_checksum" (answered 401) or the
    reason of the parse error that refused its body (answered 400)."""

    @property
    def http_status(self) -> HTTPStatus:
        if self.reason == "bad_checksum":
            return HTTPStatus.UNAUTHORIZED
        return HTTPStatus.BAD_REQUEST


def _reject(reason: str, message: str) -> PostbackRejected:
    POSTBACK_REJECTED.labels(reason).inc()
    return PostbackRejected(reason, message)


def _secret(api_secret: str | SecretStr) -> str:
    return api_secret.get_secret_value() if isinstance(api_secret, SecretStr) else api_secret


def postback_checksum(order_id: str, order_timestamp: str, api_secret: str | SecretStr) -> str:
    """SHA-256 hex of ``order_id + order_timestamp + api_secret`` (Kite postback docs)."""
    material = order_id + order_timestamp + _secret(api_secret)
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def verify_postback_checksum(payload: Mapping[str, Any], api_secret: str | SecretStr) -> bool:
    """True only if ``payload["checksum"]`` is the checksum of its order_id/order_timestamp
    under ``api_secret`` (constant-time compare). Missing fields → False."""
    order_id, order_ts = payload.get("order_id"), payload.get("order_timestamp")
    checksum = payload.get("checksum")
    if not (isinstance(order_id, str) and isinstance(order_ts, str) and isinstance(checksum, str)):
        return False
    expected = postback_checksum(order_id, order_ts, api_secret)
    return hmac.compare_digest(expected.encode("ascii"), checksum.encode("utf-8"))


def decode_postback_body(body: bytes) -> dict[str, Any]:
    """The JSON object of a postback body (exact: fractional numbers as Decimal)."""
    try:
        return loads_object(body)
    except FeedParseError as exc:
        raise _reject(exc.reason, f"postback body: {exc}") from None


def parse_postback(
    payload: Mapping[str, Any],
    api_secret: str | SecretStr,
    *,
    ts_init: int,
    tracker: OrderTracker | None = None,
) -> tuple[ExecutionReport, Fill | None]:
    """Verify the checksum, then map the order like a websocket order update.

    Raises :class:`PostbackRejected` (and counts it) on a bad checksum or an order object
    we cannot map. With ``tracker`` the fill rule sees earlier updates of the order;
    without, a filled quantity > 0 is one Fill at the average price.
    """
    if not verify_postback_checksum(payload, api_secret):
        raise _reject(
            "bad_checksum", f"postback checksum mismatch for order {payload.get('order_id')!r}"
        )
    try:
        if tracker is not None:
            return tracker.apply(payload, ts_init)
        return order_to_records(payload, previous=None, ts_init=ts_init)
    except FeedParseError as exc:
        raise _reject(exc.reason, f"postback order cannot be mapped: {exc}") from None


class KitePostbackServer:
    """Receives postbacks on ``http://host:port{path}``; hands each record to ``on_record``.

    200 + ``{"status": "ok"}`` when accepted; 401 bad checksum; 400 malformed body;
    404 other paths; 413 body over 64 KiB; 500 if ``on_record`` raises. ``port=0`` picks a
    free port (read :attr:`port` after :meth:`start`).
    """

    def __init__(
        self,
        api_secret: str | SecretStr,
        on_record: Callable[[ExecutionReport | Fill], None],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/kite/postback",
        tracker: OrderTracker | None = None,
        clock: Clock = time.time_ns,
    ) -> None:
        self._secret = api_secret if isinstance(api_secret, SecretStr) else SecretStr(api_secret)
        self._on_record = on_record
        self._address = (host, port)
        self.path = path
        self.tracker = tracker if tracker is not None else OrderTracker()
        self._clock = clock
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("postback server not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._address[0]}:{self.port}{self.path}"

    def start(self) -> None:
        if self._httpd is not None:
            return
        self._httpd = ThreadingHTTPServer(self._address, self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="kite-postback",
            daemon=True,
        )
        self._thread.start()
        log.info("kite postback receiver listening", extra={"port": self.port, "path": self.path})

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> KitePostbackServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def handle_body(self, body: bytes) -> tuple[int, str]:
        """(HTTP status, reason) for one POST body; the records go to ``on_record``."""
        try:
            payload = decode_postback_body(body)
            report, fill = parse_postback(
                payload, self._secret, ts_init=self._clock(), tracker=self.tracker
            )
        except PostbackRejected as exc:
            log.warning("kite postback rejected", extra={"reason": exc.reason, "error": str(exc)})
            return int(exc.http_status), exc.reason
        try:
            self._on_record(report)
            if fill is not None:
                self._on_record(fill)
        except Exception:
            log.exception("kite postback callback failed")
            return int(HTTPStatus.INTERNAL_SERVER_ERROR), "callback_failed"
        return int(HTTPStatus.OK), "ok"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "omniquant-kite-postback"

            def do_POST(self) -> None:
                if self.path.split("?", 1)[0] != server.path:
                    self._reply(HTTPStatus.NOT_FOUND, "not_found", drain=True)
                    return
                try:
                    length = int(self.headers.get("Content-Length", ""))
                except ValueError:
                    self._reply(HTTPStatus.LENGTH_REQUIRED, "length_required", close=True)
                    return
                if length < 0 or length > MAX_BODY_BYTES:
                    self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too_large", close=True)
                    return
                body = self.rfile.read(length)
                status, reason = server.handle_body(body)
                self._reply(status, reason)

            def _reply(
                self, status: int, reason: str, *, drain: bool = False, close: bool = False
            ) -> None:
                if drain:
                    length = self.headers.get("Content-Length", "")
                    if length.isdigit() and int(length) <= MAX_BODY_BYTES:
                        self.rfile.read(int(length))
                    else:
                        close = True
                ok = status == HTTPStatus.OK
                payload = json.dumps(
                    {"status": "ok"} if ok else {"status": "error", "reason": reason}
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                if close:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("kite postback http: " + format, *args)

        return Handler
