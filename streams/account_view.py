"""What the risk gate knows about an account beyond one symbol.

The gate is partitioned by symbol, but leverage, concentration, buying power, the order
rate and duplicate client order ids are properties of a whole account. Two sources:

:class:`AccountView`
    A daemon thread in the gate process that follows the ``portfolio`` and
    ``risk.metrics`` topics (every partition, read_committed) and keeps each account's
    latest equity, day's loss and drawdown. At start it reads the last ``tail`` records
    of each partition (snapshots are keyed by account, so the tail holds the latest of
    every active account) and reports ready once it has caught up to where the topics
    ended. Equity before an account's first snapshot is its configured starting cash —
    the number the portfolio stage starts from.

:class:`ExposureBook`
    The gate's own exposure per account and symbol, shared through Redis so every gate
    process (and every partition) sees the whole account: hash
    ``<prefix>gate:exposure:<account>``, field = symbol, value =
    ``[worst-case position, price, margin rate]`` (raw; the worst case of working buys
    and sells, see :class:`~streams.logic.risk.SymbolRiskState`). Each gate writes the exact state
    of the symbols it owns, by overwriting (never incrementing), so a replay after a
    crash writes the same values again. The order rate is a sorted set of approved
    client order ids scored by event time; a client order id is claimed with ``SET NX``
    whose value is the request's topic position, so a replayed request is recognised as
    itself, not as a duplicate. Any Redis error is reported in the context and the gate
    refuses the order (fail closed).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import redis
from confluent_kafka import Consumer, TopicPartition

from core.config import Settings
from core.errors import TopicError
from core.kafka import consumer_config
from core.redis_client import redis_client
from core.topics import TopicNames
from schemas.fixedpoint import mul, to_fixed
from schemas.models import PortfolioSnapshot, Record, RiskMetric
from schemas.serde import AvroSerde
from streams.logic.account_checks import AccountContext

log = logging.getLogger(__name__)

_NS_PER_S = 1_000_000_000
_COID_TTL_S = 7 * 24 * 3600  # a client order id stays taken for a week


@dataclass(frozen=True, slots=True)
class AccountFigures:
    """Latest figures of one account (raw fixed-point; None: not published yet)."""

    equity: int | None = None
    equity_ts: int = 0
    daily_loss: int | None = None
    drawdown: int | None = None
    metrics_ts: int = 0


class AccountView:
    """Each account's latest equity, daily loss and drawdown (see the module docstring)."""

    def __init__(self, settings: Settings, *, tail: int = 10_000) -> None:
        self.settings = settings
        self.tail = tail
        self._figures: dict[str, AccountFigures] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="account-view", daemon=True)

    def start(self, timeout: float = 60.0) -> AccountView:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the portfolio and risk-metrics topics were not read in time")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def of(self, account: str) -> AccountFigures:
        with self._lock:
            return self._figures.get(account, AccountFigures())

    def starting_cash(self, account: str) -> int:
        portfolio = self.settings.portfolio
        return to_fixed(portfolio.account_cash.get(account, portfolio.starting_cash))

    def apply_snapshot(self, value: dict[str, Any]) -> None:
        account, ts = str(value["account"]), int(value["ts_event"])
        with self._lock:
            current = self._figures.get(account, AccountFigures())
            if ts >= current.equity_ts:
                self._figures[account] = replace(current, equity=int(value["equity"]), equity_ts=ts)

    def apply_metric(self, value: dict[str, Any]) -> None:
        name = value["metric"]
        if name not in ("DAILY_LOSS", "DRAWDOWN"):
            return
        account, ts = str(value["scope"]), int(value["ts_event"])
        with self._lock:
            current = self._figures.get(account, AccountFigures())
            if ts < current.metrics_ts:
                return
            field = "daily_loss" if name == "DAILY_LOSS" else "drawdown"
            self._figures[account] = replace(current, metrics_ts=ts, **{field: int(value["value"])})

    def _run(self) -> None:
        names = TopicNames(self.settings.topic_prefix)
        handlers: dict[str, tuple[type[Record], Callable[[dict[str, Any]], None]]] = {
            names.name("portfolio"): (PortfolioSnapshot, self.apply_snapshot),
            names.name("risk.metrics"): (RiskMetric, self.apply_metric),
        }
        serde = AvroSerde.from_settings(self.settings)
        group = f"{self.settings.topic_prefix}account-view-{uuid.uuid4().hex[:8]}"
        config = consumer_config(self.settings, group)
        config["isolation.level"] = "read_committed"
        consumer = Consumer(config)
        try:
            targets = self._assign(consumer, handlers)
            idle_since = time.monotonic()
            while not self._stop.is_set():
                msg = consumer.poll(0.1)
                if msg is not None:
                    idle_since = time.monotonic()
                if msg is not None and msg.error() is None and msg.value() is not None:
                    model, handle = handlers[msg.topic()]
                    try:
                        handle(serde.decode_dict(msg.value(), model, topic=msg.topic()))
                    except Exception as exc:  # one bad record must not blind the gate
                        log.error("unreadable account record", extra={"error": repr(exc)})
                # Transaction markers sit below the high watermark and are never
                # delivered: a second with nothing to read also counts as caught up.
                if not self._ready.is_set() and (
                    self._caught_up(consumer, targets) or time.monotonic() - idle_since > 1.0
                ):
                    self._ready.set()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise
        finally:
            consumer.close()

    def _assign(self, consumer: Consumer, handlers: dict[str, Any]) -> dict[tuple[str, int], int]:
        metadata = consumer.list_topics(timeout=30)
        assignment: list[TopicPartition] = []
        targets: dict[tuple[str, int], int] = {}
        for topic in handlers:
            if topic not in metadata.topics:
                raise TopicError(f"topic {topic} missing; create it with `omniquant topics create`")
            for partition in metadata.topics[topic].partitions:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10
                )
                assignment.append(TopicPartition(topic, partition, max(low, high - self.tail)))
                targets[(topic, partition)] = high
        consumer.assign(assignment)
        return targets

    @staticmethod
    def _caught_up(consumer: Consumer, targets: dict[tuple[str, int], int]) -> bool:
        positions = consumer.position([TopicPartition(t, p) for t, p in targets])
        return all(
            (tp.offset < 0 and targets[(tp.topic, tp.partition)] == 0)
            or tp.offset >= targets[(tp.topic, tp.partition)]
            for tp in positions
        )


class ExposureBook:
    """The gate's exposure per account and symbol, the order rate and client order ids,
    in Redis (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.prefix = f"{settings.topic_prefix}gate:"
        self.client = redis_client(settings, "risk-gate", socket_timeout=2.0)

    def _exposure_key(self, account: str) -> str:
        return f"{self.prefix}exposure:{account}"

    def _rate_key(self, account: str) -> str:
        return f"{self.prefix}rate:{account}"

    def context(
        self,
        *,
        account: str,
        symbol: str,
        client_order_id: str,
        ts_event: int,
        figures: AccountFigures,
        starting_cash: int,
    ) -> AccountContext:
        """The account beyond ``symbol`` at the order's event time."""
        if figures.equity is not None:
            equity, source = figures.equity, "portfolio snapshot"
        else:
            equity, source = starting_cash, "starting cash, no portfolio snapshot yet"
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(self._exposure_key(account))
            pipe.zrangebyscore(self._rate_key(account), ts_event - _NS_PER_S + 1, ts_event)
            exposure, recent = pipe.execute()
        except redis.RedisError as exc:
            return AccountContext(equity=equity, equity_source=source, error=repr(exc))
        gross = margin = 0
        for field, raw in exposure.items():
            if field.decode() == symbol:
                continue  # the gate's own state has this symbol exactly
            worst, price, rate = json.loads(raw)
            value = abs(mul(worst, price))
            gross += value
            margin += mul(value, rate)
        own = client_order_id.encode()
        return AccountContext(
            equity=equity,
            equity_source=source,
            others_gross=gross,
            others_margin=margin,
            recent_orders=sum(1 for member in recent if member != own),
            daily_loss=figures.daily_loss,
            drawdown=figures.drawdown,
        )

    def claim(self, client_order_id: str, identity: str) -> bool:
        """Take a client order id for the request at ``identity`` (topic position); False
        when another request took it first. Raises redis.RedisError."""
        key = f"{self.prefix}coid:{client_order_id}"
        if self.client.set(key, identity, nx=True, ex=_COID_TTL_S):
            return True
        holder = self.client.get(key)
        if isinstance(holder, bytes):
            holder = holder.decode()
        return holder == identity

    def record(
        self, account: str, symbol: str, worst: int, price: int | None, margin_rate: int
    ) -> None:
        """The symbol's worst-case exposure in the account now (overwrites). Without a
        price (no trade seen yet) the entry keeps the price it had."""
        key = self._exposure_key(account)
        if worst == 0:
            self.client.hdel(key, symbol)
            return
        if price is None:
            held = self.client.hget(key, symbol)
            if held is None:
                return  # nothing to value it at; the next trade's mark writes it
            price = int(json.loads(held)[1])
        self.client.hset(key, symbol, json.dumps([worst, price, margin_rate]))

    def approved(self, account: str, client_order_id: str, ts_event: int) -> None:
        """Count an approved order in the account's order rate."""
        key = self._rate_key(account)
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(key, {client_order_id: ts_event})
        # Keep a minute of event time: the check looks back one second.
        pipe.zremrangebyscore(key, "-inf", ts_event - 60 * _NS_PER_S)
        pipe.execute()

    def mark(self, entries: Iterable[tuple[str, str, int, int, int]]) -> None:
        """Re-value held symbols at a newer price: (account, symbol, worst, price, rate)."""
        pipe = self.client.pipeline(transaction=False)
        for account, symbol, worst, price, rate in entries:
            pipe.hset(self._exposure_key(account), symbol, json.dumps([worst, price, rate]))
        pipe.execute()

    def close(self) -> None:
        self.client.close()
