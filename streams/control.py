"""The kill switch on the wire: trading-state commands on the ``control`` topic, mirrored in
Redis, and a watcher that keeps a process's view of them current.

The ``control`` topic is the record of truth: compacted, one partition, keyed
``TRADING_STATE|<scope>`` so the latest command per scope is kept for ever. Every command is
also written to the Redis hash ``<topic prefix>trading_state`` (field = scope, value = the
command as JSON), which any process can read in a millisecond.

:class:`TradingStateWatcher` runs one daemon thread per process: it reads the control
topic from its start (the history survives a Redis restart), keeps consuming it, and reads
the Redis hash every ``poll_s`` (0.2 s), applying whatever is newest by event time. A halt
is therefore seen well within a second whichever path delivers it first.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import redis
from confluent_kafka import Consumer, TopicPartition

from core.config import Settings
from core.kafka import consumer_config
from core.metrics import ACCOUNT_STATE
from core.topics import TopicNames
from producers.kafka_producer import RecordProducer
from schemas.models import Control, ControlType, TradingState
from schemas.serde import AvroSerde
from streams.logic.trading_state import ALL_ACCOUNTS, ScopeState, TradingStates

log = logging.getLogger(__name__)


def control_key(scope: str) -> str:
    return f"{ControlType.TRADING_STATE.value}|{scope}"


def redis_hash(settings: Settings) -> str:
    return f"{settings.topic_prefix}trading_state"


class ControlPlane:
    """Writes trading-state commands (what `omniquant halt` / `resume` do)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = TopicNames(settings.topic_prefix).control

    def set_state(
        self, state: TradingState, *, account: str | None, reason: str, issued_by: str
    ) -> Control:
        """Publish the command (acknowledged by the broker) and mirror it in Redis."""
        now = time.time_ns()
        scope = account or ALL_ACCOUNTS
        control = Control(
            command_id=f"cmd-{uuid.uuid4().hex[:12]}",
            control_type=ControlType.TRADING_STATE,
            trading_state=state,
            scope=scope,
            issued_by=issued_by,
            reason=reason,
            ts_event=now,
            ts_init=now,
        )
        producer = RecordProducer(self.settings, "control")
        try:
            producer.send(self.topic, control, key=control_key(scope))
            producer.flush()
        finally:
            producer.close()
        client = redis.Redis.from_url(self.settings.redis_url())
        try:
            client.hset(redis_hash(self.settings), scope, control.model_dump_json())
        finally:
            client.close()
        return control


# trading_account_state's values (the alert rules test == 2 for HALTED)
_STATE_CODE = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}


class TradingStateWatcher:
    """A process's current view of the trading states (see the module docstring)."""

    def __init__(self, settings: Settings, poll_s: float = 0.2) -> None:
        self.settings = settings
        self.poll_s = poll_s
        self._states = TradingStates()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trading-state", daemon=True)

    def start(self, timeout: float = 30.0) -> TradingStateWatcher:
        """Start watching; returns once the control topic's history has been read."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the control topic's history was not read in time")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def of(self, account: str) -> ScopeState:
        with self._lock:
            return self._states.of(account)

    def _apply(self, control: Control) -> None:
        with self._lock:
            changed = self._states.apply(control)
        if changed:
            if control.trading_state is not None:
                ACCOUNT_STATE.labels(control.scope).set(_STATE_CODE[control.trading_state])
            log.warning(
                "trading state changed",
                extra={
                    "scope": control.scope,
                    "trading_state": str(control.trading_state),
                    "reason": control.reason,
                    "command_id": control.command_id,
                },
            )

    def _run(self) -> None:
        topic = TopicNames(self.settings.topic_prefix).control
        serde = AvroSerde.from_settings(self.settings)
        group = f"{self.settings.topic_prefix}trading-state-{uuid.uuid4().hex[:8]}"
        consumer = Consumer(consumer_config(self.settings, group))
        client = redis.Redis.from_url(self.settings.redis_url(), socket_timeout=1.0)
        try:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
            consumer.assign([TopicPartition(topic, 0, 0)])
            position = 0
            next_poll = 0.0
            while not self._stop.is_set():
                msg = consumer.poll(0.1)
                if msg is not None and msg.error() is None:
                    position = msg.offset() + 1
                    self._apply_bytes(serde, msg.value(), topic)
                if not self._ready.is_set() and position >= high:
                    self._ready.set()
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + self.poll_s
                    self._poll_redis(client)
        finally:
            consumer.close()
            client.close()

    def _apply_bytes(self, serde: AvroSerde, value: bytes | None, topic: str) -> None:
        if value is None:
            return
        try:
            self._apply(serde.decode_as(value, Control, topic=topic))
        except Exception as exc:  # a bad control record must not blind the watcher
            log.error("unreadable control record", extra={"error": repr(exc)})

    def _poll_redis(self, client: Any) -> None:
        try:
            entries = client.hgetall(redis_hash(self.settings))
        except redis.RedisError as exc:  # the topic path still delivers
            log.debug("redis unavailable for trading states", extra={"error": repr(exc)})
            return
        for raw in entries.values():
            try:
                self._apply(Control.model_validate_json(raw))
            except ValueError as exc:
                log.error("unreadable trading state in redis", extra={"error": repr(exc)})
