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
    ``<prefix>gate:exposure:<account>``, field = symbol, value = ``[worst-case position,
    price, margin rate]`` (raw; the worst case of working buys and sells, see
    :class:`~streams.logic.risk.SymbolRiskState`), and beside it in
    ``<prefix>gate:history:<account>`` the symbol's versions since the last commit, each
    ``[topic, partition, offset, worst, price, rate]``, tagged with the input record that
    wrote it. Each gate writes the exact state of the symbols it owns (never increments),
    value and history in one MULTI. At each assignment the gate drops the versions written
    for records at or beyond its committed offsets (:meth:`ExposureBook.roll_back`): a
    killed instance's writes past its last commit would otherwise be seen by the decisions
    its successor makes again, ahead of their time; the replay writes them again. After
    each commit it trims its histories to their last version (:meth:`ExposureBook.committed`):
    a roll-back never goes further back. The gate goes through its partitions in one
    event-time order (:class:`~streams.ordering.EventTimeOrder`), so with one process
    owning them a decision sees the same book after any number of restarts. The
    order rate is a sorted set of approved client order ids (each tagged with its request's
    position, rolled back the same way) scored by event time; a client order id is
    claimed with ``SET NX`` whose value is the request's topic position, so a replayed
    request is recognised as itself, not as a duplicate. Any Redis error is
    reported in the context and the gate refuses the order (fail closed).

    Redis may come back empty (restarted without persistence, failed over to a replica
    that had not caught up). Each gate process keeps a mirror of what it wrote (its
    exposures, the last minute of approvals, recent claims) and a key of its own,
    ``<prefix>gate:alive:<process>``; when the key is gone, it writes the mirror back
    before the next decision, without overwriting what another process wrote since
    (``HSETNX``, ``ZADD NX``, ``SET NX``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import redis
from confluent_kafka import Consumer, TopicPartition

from core.config import Settings
from core.errors import TopicError
from core.kafka import consumer_config
from core.metrics import BOOK_WRITE_BACKS
from core.redis_client import redis_client
from core.topics import TopicNames
from schemas.fixedpoint import mul, to_fixed
from schemas.models import PortfolioSnapshot, Record, RiskMetric
from schemas.serde import AvroSerde
from streams.logic.account_checks import AccountContext

log = logging.getLogger(__name__)

_NS_PER_S = 1_000_000_000
_COID_TTL_S = 7 * 24 * 3600  # a client order id stays taken for a week
_RATE_KEPT_NS = 60 * _NS_PER_S  # approvals kept: a minute of event time (the check: 1 s)
_MIRRORED_CLAIMS = 100_000  # the process's most recent claims it can write back
_ALIVE_TTL_S = 7 * 24 * 3600  # a gate process's alive key outlives it this long


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

    def __init__(self, settings: Settings, topics: Sequence[str] = ()) -> None:
        self.prefix = f"{settings.topic_prefix}gate:"
        self.client = redis_client(settings, "risk-gate", socket_timeout=2.0)
        # a version's input topic, as its index (the gate's input topics)
        self._topic_ids = {topic: i for i, topic in enumerate(topics)}
        # What this process wrote or last read back at an assignment (its versions as
        # stored): the base of its next write of a symbol it owns, and what it writes back
        # into a Redis that lost it (module docstring).
        self._alive_key = f"{self.prefix}alive:{uuid.uuid4().hex}"
        self._announced = False  # the alive key written once: from then on, gone = lost
        self._exposures: dict[str, dict[str, list[list[int]]]] = {}  # account → symbol → versions
        self._written: set[tuple[str, str]] = set()  # written since the last commit
        self._approvals: dict[str, dict[str, int]] = {}  # account → client order id → ts
        self._claims: OrderedDict[str, str] = OrderedDict()  # client order id → position
        self._trim = self.client.register_script(_TRIM_IF_UNCHANGED)

    def _exposure_key(self, account: str) -> str:
        return f"{self.prefix}exposure:{account}"

    def _history_key(self, account: str) -> str:
        return f"{self.prefix}history:{account}"

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
            alive, _, exposure, recent = self._read(account, ts_event)
            if not alive:  # first decision of this process, or Redis lost what it held
                self._write_back()
                _, _, exposure, recent = self._read(account, ts_event)
        except redis.RedisError as exc:
            return AccountContext(equity=equity, equity_source=source, error=repr(exc))
        gross = margin = 0
        for field, raw in exposure.items():
            if field.decode() == symbol:
                continue  # the gate's own state has this symbol exactly
            try:
                current = _current(raw)
            except MalformedBookEntry as exc:
                # fail closed: an account figure that cannot be read refuses the order
                key = self._exposure_key(account)
                error = f"{key} field {field.decode()!r}: {exc}"
                return AccountContext(equity=equity, equity_source=source, error=error)
            if current is None:
                continue
            worst, price, rate = current
            value = abs(mul(worst, price))
            gross += value
            margin += mul(value, rate)
        own = client_order_id.encode()
        # members are "<client order id>|<topic>:<partition>:<offset>" (older ones: the id)
        return AccountContext(
            equity=equity,
            equity_source=source,
            others_gross=gross,
            others_margin=margin,
            recent_orders=sum(1 for m in recent if (m.rpartition(b"|")[0] or m) != own),
            daily_loss=figures.daily_loss,
            drawdown=figures.drawdown,
        )

    def _read(self, account: str, ts_event: int) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        pipe.exists(self._alive_key)
        pipe.expire(self._alive_key, _ALIVE_TTL_S)  # kept while the process decides
        pipe.hgetall(self._exposure_key(account))
        pipe.zrangebyscore(self._rate_key(account), ts_event - _NS_PER_S + 1, ts_event)
        return list(pipe.execute())

    def claim(self, client_order_id: str, identity: str) -> bool:
        """Take a client order id for the request at ``identity`` (topic position); False
        when another request took it first. Raises redis.RedisError."""
        key = f"{self.prefix}coid:{client_order_id}"
        if not self.client.set(key, identity, nx=True, ex=_COID_TTL_S):
            holder = self.client.get(key)
            if isinstance(holder, bytes):
                holder = holder.decode()
            if holder != identity:
                return False
        self._claims[client_order_id] = identity
        self._claims.move_to_end(client_order_id)
        while len(self._claims) > _MIRRORED_CLAIMS:
            self._claims.popitem(last=False)
        return True

    def record(
        self,
        account: str,
        symbol: str,
        worst: int,
        price: int | None,
        margin_rate: int,
        at: tuple[str, int, int] = ("", 0, 0),
    ) -> None:
        """The symbol's worst-case exposure in the account now, as of the input record
        ``at`` (topic, partition, offset). Without a price (no trade seen yet) the entry
        keeps the price it had."""
        versions = self._stored(account, symbol)
        if price is None:
            if not versions:
                return  # nothing to value it at; the next trade's mark writes it
            price = int(versions[-1][-2])
        self._write({(account, symbol): _add(versions, self._tag(at), worst, price, margin_rate)})

    def approved(
        self,
        account: str,
        client_order_id: str,
        ts_event: int,
        at: tuple[str, int, int] = ("", 0, 0),
    ) -> None:
        """Count an approved order in the account's order rate (its request at ``at``)."""
        key = self._rate_key(account)
        member = f"{client_order_id}|{':'.join(map(str, self._tag(at)))}"
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(key, {member: ts_event})
        pipe.zremrangebyscore(key, "-inf", ts_event - _RATE_KEPT_NS)
        pipe.execute()
        mirrored = self._approvals.setdefault(account, {})
        mirrored[member] = ts_event
        for old in [m for m, ts in mirrored.items() if ts < ts_event - _RATE_KEPT_NS]:
            del mirrored[old]

    def mark(
        self,
        entries: Iterable[tuple[str, str, int, int, int]],
        at: tuple[str, int, int] = ("", 0, 0),
    ) -> None:
        """Re-value held symbols at a newer price: (account, symbol, worst, price, rate)."""
        tag = self._tag(at)
        self._write(
            {
                (account, symbol): _add(self._stored(account, symbol), tag, worst, price, rate)
                for account, symbol, worst, price, rate in entries
            }
        )

    def committed(self) -> None:
        """The gate's input offsets were just committed: every version written so far is
        at or below them, so a later roll-back goes back no further than each symbol's last
        one. Trims the histories this process wrote since the previous commit to that one,
        unless another process wrote the symbol since (it owns it now). Best effort: a
        history left longer only costs its size."""
        if not self._written:
            return
        written, self._written = self._written, set()
        trimmed: list[tuple[str, str, list[list[int]]]] = []
        for account, symbol in written:
            versions = self._exposures.get(account, {}).get(symbol)
            if versions is not None and len(versions) > 1:
                trimmed.append((account, symbol, versions))
        if not trimmed:
            return
        pipe = self.client.pipeline(transaction=False)
        for account, symbol, versions in trimmed:
            self._trim(
                keys=[self._history_key(account)],
                args=[symbol, json.dumps(versions), json.dumps(versions[-1:])],
                client=pipe,
            )
        try:
            outcomes = pipe.execute()
        except redis.RedisError as exc:
            self._written |= {(a, s) for a, s, _ in trimmed}  # tried again at the next
            log.warning("exposure histories not trimmed", extra={"error": repr(exc)})
            return
        for (account, symbol, versions), outcome in zip(trimmed, outcomes, strict=True):
            if outcome:  # trimmed, or gone from Redis: the mirror writes it back trimmed
                self._exposures[account][symbol] = versions[-1:]
            else:  # another process wrote it since: its copy is the one that counts
                self._exposures[account].pop(symbol, None)

    def roll_back(self, committed: dict[tuple[str, int], int]) -> None:
        """Drop the versions written for input records at or beyond ``committed`` (their
        partitions' committed offsets at an assignment): processing resumes there and
        writes them again, so a decision before then sees the book as it was at that
        point, as the first run did, not as a killed instance left it."""
        # A partition without a commit is processed again from its start (the stages'
        # auto.offset.reset is earliest): everything written for it goes.
        marks = {
            (self._topic_ids[topic], partition): max(offset, 0)
            for (topic, partition), offset in committed.items()
            if topic in self._topic_ids
        }
        self._exposures.clear()  # read back below: another process may have written since
        self._written.clear()
        dropped = 0
        for key in self.client.scan_iter(match=f"{self.prefix}exposure:*", count=1000):
            name = key.decode() if isinstance(key, bytes) else str(key)
            account = name.removeprefix(f"{self.prefix}exposure:")
            histories = self.client.hgetall(self._history_key(account))
            pipe = self.client.pipeline(transaction=True)
            for field, raw in self.client.hgetall(key).items():
                try:
                    # an entry older than the histories is its own history
                    versions = _versions(histories.get(field, raw))
                except MalformedBookEntry:
                    continue  # left for the decisions to refuse on and the owner to rewrite
                kept = [v for v in versions if not _beyond(v, marks)]
                if len(kept) < len(versions):
                    dropped += len(versions) - len(kept)
                    if kept:
                        pipe.hset(key, field, json.dumps(kept[-1][3:]))
                        pipe.hset(self._history_key(account), field, json.dumps(kept))
                    else:
                        pipe.hdel(key, field)
                        pipe.hdel(self._history_key(account), field)
                if kept:
                    symbol = field.decode() if isinstance(field, bytes) else str(field)
                    self._exposures.setdefault(account, {})[symbol] = kept
            pipe.execute()
        # approvals of requests at or beyond the commit: decided again, counted again
        for key in self.client.scan_iter(match=f"{self.prefix}rate:*", count=1000):
            beyond = [
                member
                for member, _ in self.client.zscan_iter(key, count=1000)
                if _beyond(_member_tag(member), marks)
            ]
            if beyond:
                self.client.zrem(key, *beyond)
                dropped += len(beyond)
        for approvals in self._approvals.values():
            for member in [m for m in approvals if _beyond(_member_tag(m), marks)]:
                del approvals[member]
        if dropped:
            log.info(
                "exposure book rolled back to the committed offsets",
                extra={"entries_dropped": dropped},
            )

    def _tag(self, at: tuple[str, int, int]) -> list[int]:
        topic, partition, offset = at
        return [self._topic_ids.get(topic, -1), partition, offset]

    def _stored(self, account: str, symbol: str) -> list[list[int]]:
        """The symbol's versions: this process's own copy (it is the symbol's only writer
        while it owns the partition; read back at each assignment), else Redis's."""
        mirrored = self._exposures.get(account, {}).get(symbol)
        if mirrored is not None:
            return mirrored
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self._history_key(account), symbol)
        pipe.hget(self._exposure_key(account), symbol)
        history, current = pipe.execute()
        try:
            return _versions(history if history is not None else current)
        except MalformedBookEntry as exc:
            # This process owns the symbol and knows its exact state: the write that follows
            # replaces what cannot be read (a history lost, not a figure).
            log.warning(
                "unreadable exposure entry replaced",
                extra={"key": self._exposure_key(account), "symbol": symbol, "error": str(exc)},
            )
            return []

    def _write(self, fields: dict[tuple[str, str], list[list[int]]]) -> None:
        # the current value and its history together (MULTI): a reader sees both or neither
        pipe = self.client.pipeline(transaction=True)
        for (account, symbol), versions in fields.items():
            pipe.hset(self._exposure_key(account), symbol, json.dumps(versions[-1][3:]))
            pipe.hset(self._history_key(account), symbol, json.dumps(versions))
        pipe.execute()
        for (account, symbol), versions in fields.items():
            self._exposures.setdefault(account, {})[symbol] = versions
            self._written.add((account, symbol))

    def _write_back(self) -> None:
        """Write what this process wrote into a Redis that does not have it (module
        docstring); a value another process wrote since stays."""
        pipe = self.client.pipeline(transaction=False)
        for account, fields in self._exposures.items():
            for symbol, versions in fields.items():
                pipe.hsetnx(self._exposure_key(account), symbol, json.dumps(versions[-1][3:]))
                pipe.hsetnx(self._history_key(account), symbol, json.dumps(versions))
        for account, approvals in self._approvals.items():
            if approvals:
                pipe.zadd(self._rate_key(account), approvals, nx=True)
        for coid, identity in self._claims.items():
            pipe.set(f"{self.prefix}coid:{coid}", identity, nx=True, ex=_COID_TTL_S)
        pipe.set(self._alive_key, b"1", ex=_ALIVE_TTL_S)
        pipe.execute()
        first, self._announced = not self._announced, True
        # The first time announces the process (what it wrote before is written back all
        # the same, silently); after that, a missing key means Redis lost what it held.
        if not first:
            BOOK_WRITE_BACKS.inc()
            log.warning(
                "Redis had lost the gate's book; wrote back what this process had written",
                extra={
                    "exposures": sum(map(len, self._exposures.values())),
                    "approvals": sum(map(len, self._approvals.values())),
                    "claims": len(self._claims),
                },
            )

    def close(self) -> None:
        self.client.close()


# A symbol's entry in the book is its current value, [worst, price, margin rate] (raw), in
# ``exposure:<account>`` (what decisions read), and its history, oldest first, in
# ``history:<account>``: versions [topic, partition, offset, worst, price, margin rate], the
# input record that wrote each (topic as the gate's index) and the values. The history goes
# back to the symbol's last version before the latest commit (ExposureBook.committed trims
# it there), so a restarted gate can roll the book back to its committed offsets
# (ExposureBook.roll_back). A bound, should commits stall: reaching it is logged, as a
# roll-back past it can no longer restore the symbol's state.
_VERSIONS_KEPT = 10_000

# Replace a history with its trimmed copy only if it is still what this process wrote:
# 1 done, 0 another process wrote it since, -1 not there (Redis lost it: written back later).
_TRIM_IF_UNCHANGED = """
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if stored == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
if stored == false then
  return -1
end
return 0
"""


class MalformedBookEntry(ValueError):
    """An exposure entry in Redis that is not a version list (written by something else)."""


def _versions(raw: bytes | str | None) -> list[list[int]]:
    """A history, or a current value as a history of one untagged version."""
    if raw is None:
        return []
    try:
        return _versions_of(json.loads(raw))
    except ValueError as exc:
        raise MalformedBookEntry(f"not a list of exposure versions ({exc})") from None


def _versions_of(data: Any) -> list[list[int]]:
    """:func:`_versions` of the parsed JSON."""
    try:
        if not isinstance(data, list):
            raise TypeError(f"a JSON {type(data).__name__}")
        if data and not isinstance(data[0], list):  # a current value: [worst, price, rate]
            data = [[-1, 0, 0, *data]]
        versions = [[int(v) for v in version] for version in data]
    except (ValueError, TypeError) as exc:
        raise MalformedBookEntry(f"not a list of exposure versions ({exc})") from None
    if any(len(version) != 6 for version in versions):
        raise MalformedBookEntry("not a list of exposure versions (a version is 6 integers)")
    return versions


def _current(raw: bytes | str) -> tuple[int, int, int] | None:
    """A current value [worst, price, rate] (or, written before the histories had their
    own hash, a history: its last version)."""
    try:
        data = json.loads(raw)
        if isinstance(data, list) and len(data) == 3 and not isinstance(data[0], list):
            worst, price, rate = (int(v) for v in data)
            return worst, price, rate
    except (ValueError, TypeError) as exc:
        raise MalformedBookEntry(f"not an exposure value ({exc})") from None
    versions = _versions_of(data)  # parsed once
    if not versions:
        return None
    worst, price, rate = versions[-1][3:]
    return worst, price, rate


def _add(
    versions: list[list[int]], tag: list[int], worst: int, price: int, rate: int
) -> list[list[int]]:
    """``versions`` with this one last (replacing one of the same input record)."""
    kept = [v for v in versions if v[:3] != tag or tag[0] < 0]
    kept.append([*tag, worst, price, rate])
    if len(kept) > _VERSIONS_KEPT:
        _BOUND_WARNING.note(len(kept) - _VERSIONS_KEPT)
        del kept[: len(kept) - _VERSIONS_KEPT]
    return kept


class _ThrottledWarning:
    """The history bound's warning: at its first trim, then at most once a minute with the
    count since (a stalled commit would otherwise log it on every write)."""

    def __init__(self, every_s: float = 60.0) -> None:
        self._every_s = every_s
        self._next_at = 0.0
        self._dropped = 0

    def note(self, dropped: int) -> None:
        self._dropped += dropped
        now = time.monotonic()
        if now < self._next_at:
            return
        log.warning(
            "exposure history at its bound: a roll-back past its oldest version is lost",
            extra={"versions_kept": _VERSIONS_KEPT, "versions_dropped": self._dropped},
        )
        self._dropped = 0
        self._next_at = now + self._every_s


_BOUND_WARNING = _ThrottledWarning()


def _member_tag(member: bytes | str) -> list[int]:
    """The request tag of an order-rate member (none: [-1, 0, 0], never rolled back)."""
    text = member.decode() if isinstance(member, bytes) else member
    _, _, tag = text.rpartition("|")
    parts = tag.split(":") if "|" in text else []
    try:
        return [int(p) for p in parts] if len(parts) == 3 else [-1, 0, 0]
    except ValueError:
        return [-1, 0, 0]  # not one of ours: never rolled back


def _beyond(version: list[int], marks: dict[tuple[int, int], int]) -> bool:
    mark = marks.get((version[0], version[1]))
    return mark is not None and version[2] >= mark
