"""The replay producer: merged file rows → trades/quotes topics, skips → feeds dead letters."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from core.config import Settings
from core.kafka import producer_config
from core.metrics import DEAD_LETTERS, MESSAGES_OUT
from core.topics import TopicNames
from schemas.serde import AvroSerde

from ._avro import RecordEncoder, TimestampEncoder
from ._files import merge_items, open_files
from ._model import OUT_OF_RANGE, QUOTE, SKIP, TRADE, ReplayError, Skip, SourceFile

log = logging.getLogger(__name__)

APP_NAME: Final = "replay"
DEAD_LETTER_APP: Final = "feeds"
_POLL_EVERY: Final = 1024  # rows between poll(0) calls that serve delivery reports
_PROGRESS_EVERY: Final = 16384
_INT64_MIN: Final = -(2**63)
_INT64_END: Final = 2**63

Speed = str | float


def parse_speed(speed: Speed) -> float | None:
    """``"max"`` → None (no pacing); ``"1x"``, ``"10x"``, ``"2.5"``, 2.5 → the factor."""
    if isinstance(speed, int | float) and not isinstance(speed, bool):
        factor = float(speed)
    elif isinstance(speed, str):
        text = speed.strip().lower()
        if text == "max":
            return None
        try:
            factor = float(text.removesuffix("x"))
        except ValueError:
            raise ReplayError(f"speed {speed!r}: use max, 1x, 10x or a positive factor") from None
    else:
        raise ReplayError(f"speed {speed!r}: use max, 1x, 10x or a positive factor")
    if not (math.isfinite(factor) and factor > 0):
        raise ReplayError(f"speed {speed!r} must be a positive factor")
    return factor


@dataclass
class ReplayStats:
    """What a replay did with every row it read. ``read == produced + skipped + failed``."""

    files: int = 0
    read: int = 0
    produced: dict[str, int] = field(default_factory=dict)  # topic → acknowledged records
    skipped: dict[str, int] = field(default_factory=dict)  # reason → rows (incl. out_of_range)
    failed: int = 0  # rows not delivered: refused, unacknowledged at flush, or unsent (Ctrl-C)
    dead_lettered: int = 0  # skipped rows acknowledged on the dead-letter topic
    dead_letter_failed: int = 0  # skipped rows whose dead letter was not acknowledged
    out_of_order: int = 0  # rows earlier than a row before them in their file (produced)
    elapsed_s: float = 0.0
    interrupted: bool = False
    errors: list[str] = field(default_factory=list)  # first few delivery errors
    # The producer's own view agrees: every row sent was acknowledged, reported failed, or is
    # still in librdkafka's queue after the flush (its count), and each dead letter was sent.
    producer_consistent: bool = True

    @property
    def produced_total(self) -> int:
        return sum(self.produced.values())

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    @property
    def reconciles(self) -> bool:
        dead_letters = self.skipped_total - self.skipped.get(OUT_OF_RANGE, 0)
        return (
            self.read == self.produced_total + self.skipped_total + self.failed
            and dead_letters == self.dead_lettered + self.dead_letter_failed
            and self.producer_consistent
        )

    @property
    def ok(self) -> bool:
        """Reconciled, nothing failed, not interrupted."""
        return (
            self.reconciles
            and not self.failed
            and not self.dead_letter_failed
            and not self.interrupted
        )

    @property
    def rate(self) -> float:
        """Rows read per second."""
        return self.read / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def report(self) -> list[tuple[str, int | str]]:
        """The reconciliation as (label, value) rows, in the order to print them."""
        rows: list[tuple[str, int | str]] = [("rows read", self.read)]
        for topic, count in sorted(self.produced.items()):
            rows.append((f"produced → {topic}", count))
        for reason, count in sorted(self.skipped.items()):
            rows.append((f"skipped: {reason}", count))
        rows.append(("failed (not acknowledged)", self.failed))
        rows.append(
            (
                "read = produced + skipped + failed",
                f"{self.read} = {self.produced_total} + {self.skipped_total} + {self.failed}"
                f" {'✓' if self.reconciles else '✗ MISMATCH'}",
            )
        )
        rows.append(("dead letters acknowledged", self.dead_lettered))
        if self.dead_letter_failed:
            rows.append(("dead letters failed", self.dead_letter_failed))
        rows.append(("out of order (produced)", self.out_of_order))
        return rows


class _Progress:
    """A rich progress bar over the input bytes, on a terminal only."""

    def __init__(self, readers: Sequence[SourceFile]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._readers = readers
        self._progress = Progress(
            TextColumn("replay"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rows]:>12,} rows  {task.fields[rate]:>9,.0f} rows/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        total = sum(r.size for r in readers) or 1
        self._task = self._progress.add_task("replay", total=total, rows=0, rate=0.0)
        self._started = time.monotonic()
        self._progress.start()

    def update(self, rows: int) -> None:
        elapsed = time.monotonic() - self._started
        self._progress.update(
            self._task,
            completed=sum(r.done for r in self._readers),
            rows=rows,
            rate=rows / elapsed if elapsed > 0 else 0.0,
        )

    def close(self, rows: int) -> None:
        self.update(rows)
        self._progress.stop()


def _require_topics(producer: Producer, topics: Iterable[str], timeout: float) -> None:
    try:
        existing = producer.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise ReplayError(f"Kafka does not answer: {exc}") from None
    missing = [t for t in topics if t not in existing or existing[t].error is not None]
    if missing:
        raise ReplayError(
            f"topic(s) {', '.join(missing)} do not exist; create them first"
            " (`omniquant topics create`, same topic prefix)"
        )


def replay(
    paths: Iterable[str | Path],
    settings: Settings,
    *,
    speed: Speed = "max",
    from_ns: int | None = None,
    to_ns: int | None = None,
    progress: bool = False,
    serde: AvroSerde | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] | None = None,
    flush_timeout: float = 60.0,
) -> ReplayStats:
    """Produce every row of ``paths`` in event-time order; return what happened to each row.

    Trades go to ``<prefix>market.trades``, quotes to ``<prefix>market.quotes``, keyed by
    symbol, Kafka timestamp = event time (ms). Skipped rows go to ``<prefix>dlq.feeds`` with
    their raw text and ``dlq.*`` headers (reason, file, line); rows outside
    ``[from_ns, to_ns)`` are counted as ``out_of_range`` and not dead-lettered.

    ``speed``: ``"max"`` (no pacing) or a factor (``"1x"``, ``"10x"``, 2.5): the wall time
    between two rows is their event-time difference divided by the factor. ``clock``/``sleep``
    drive the pacing (tests pass fakes; by default waiting serves delivery reports).
    ``progress`` shows a bar on stderr when it is a terminal.

    Raises :class:`ReplayError` before producing anything if a path, the speed or a topic is
    wrong; Ctrl-C stops reading, flushes, and returns stats with ``interrupted`` set.
    """
    factor = parse_speed(speed)
    lo = _INT64_MIN if from_ns is None else from_ns
    hi = _INT64_END if to_ns is None else to_ns
    if lo >= hi:
        raise ReplayError(f"--from ({from_ns}) must be before --to ({to_ns})")
    readers = open_files(paths)
    names = TopicNames(settings.topic_prefix)
    trade_topic, quote_topic = names.trades, names.quotes
    dlq_topic = names.dead_letter(DEAD_LETTER_APP)
    encoder = RecordEncoder(
        serde or AvroSerde.from_settings(settings), {TRADE: trade_topic, QUOTE: quote_topic}
    )
    producer = Producer(producer_config(settings, **{"client.id": APP_NAME}))
    _require_topics(producer, (trade_topic, quote_topic, dlq_topic), timeout=15.0)

    stats = ReplayStats(files=len(readers))
    # Messages handed to librdkafka (records: a local counter in the loop), and per slot
    # (trade, quote, dead letter) the broker's acknowledgements and refusals. They are counted
    # apart from the rows read and checked against librdkafka's own queue count at the end.
    sent_dead_letters = [0]
    acked = [0, 0, 0]
    refused = [0, 0, 0]
    errors: list[str] = stats.errors

    def delivery_report(slot: int) -> Callable[[KafkaError | None, Message], None]:
        def report(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                acked[slot] += 1
                return
            refused[slot] += 1
            if len(errors) < 5:
                errors.append(f"{msg.topic()}: {err.str()}")

        return report

    reports = [delivery_report(TRADE), delivery_report(QUOTE), delivery_report(SKIP)]
    topic_of = (trade_topic, quote_topic)
    produce = producer.produce
    poll = producer.poll
    wait = sleep or (lambda seconds: poll(seconds))
    skipped = stats.skipped
    bar = _Progress(readers) if progress and sys.stderr.isatty() else None

    def dead_letter(skip: Skip) -> None:
        skipped[skip.reason] = skipped.get(skip.reason, 0) + 1
        headers = [
            ("dlq.error.class", b"Skip"),
            ("dlq.error.message", skip.detail.encode("utf-8", "replace")[:4096]),
            ("dlq.reason", skip.reason.encode()),
            ("dlq.app", DEAD_LETTER_APP.encode()),
            ("dlq.source", APP_NAME.encode()),
            ("dlq.file", str(skip.path).encode("utf-8", "replace")),
            ("dlq.line", str(skip.line).encode()),
        ]
        key = skip.symbol.encode() if skip.symbol else None
        sent_dead_letters[0] += 1
        while True:
            try:
                produce(dlq_topic, skip.raw, key, on_delivery=reports[SKIP], headers=headers)
                return
            except BufferError:
                poll(0.1)
            except KafkaException as exc:  # refused locally (too large ...): not delivered
                refused_locally(SKIP, dlq_topic, exc)
                return

    def refused_locally(slot: int, topic: str, exc: KafkaException) -> None:
        refused[slot] += 1
        err = exc.args[0] if exc.args else None
        if len(errors) < 5:
            errors.append(f"{topic}: {err.str() if isinstance(err, KafkaError) else exc}")
        if isinstance(err, KafkaError) and err.fatal():
            raise ReplayError(f"the producer failed fatally: {err.str()}") from exc

    # (kind, symbol) → (topic, framing header + encoded symbol, key bytes, delivery report)
    routes: dict[tuple[int, str], tuple[str, bytes, bytes, Any]] = {}
    route_kind, route_symbol = -1, ""
    topic, prefix, key, report = "", b"", b"", None
    out_of_range = sent_records = 0
    last_ts: int | None = None
    ts_bytes = b""  # Avro long of the current time, twice (ts_event, then ts_init = ts_event)
    avro_timestamp = TimestampEncoder()
    ts_ms = 0
    anchor_wall = anchor_ts = 0.0
    paced = factor is not None
    poll_every, progress_every = _POLL_EVERY, _PROGRESS_EVERY
    fatal: ReplayError | None = None
    started = time.monotonic()
    try:
        for ts, _, _, kind, symbol, payload in merge_items(readers, on_skip=dead_letter):
            if ts != last_ts:  # rows of one instant share the range check, pacing and bytes
                if ts < lo or ts >= hi:
                    out_of_range += 1
                    continue
                if paced:
                    if last_ts is None:
                        anchor_wall, anchor_ts = clock(), ts
                    else:
                        assert factor is not None
                        due = anchor_wall + (ts - anchor_ts) / 1e9 / factor
                        delay = due - clock()
                        while delay > 0:
                            wait(min(delay, 0.5))
                            delay = due - clock()
                last_ts = ts
                ts_bytes = avro_timestamp(ts)
                ts_bytes += ts_bytes
                ts_ms = ts // 1_000_000
            if symbol is not route_symbol or kind != route_kind:
                route = routes.get((kind, symbol))
                if route is None:
                    route = routes[(kind, symbol)] = (
                        topic_of[kind],
                        encoder.prefix(kind, symbol),
                        symbol.encode(),
                        reports[kind],
                    )
                topic, prefix, key, report = route
                route_kind, route_symbol = kind, symbol
            value = prefix + payload.middle + ts_bytes
            sent_records += 1
            while True:
                try:
                    produce(topic, value, key, on_delivery=report, timestamp=ts_ms)
                    break
                except BufferError:
                    poll(0.1)
                except KafkaException as exc:  # refused locally (too large ...): not delivered
                    refused_locally(kind, topic, exc)
                    break
            if not sent_records % poll_every:
                poll(0)
                if bar is not None and not sent_records % progress_every:
                    bar.update(sum(r.rows for r in readers))
    except KeyboardInterrupt:
        stats.interrupted = True
        log.warning("replay interrupted after %d messages; flushing them", sent_records)
    except ReplayError as exc:  # a fatal producer error: stop reading, account for what was sent
        fatal = exc
    finally:
        remaining = producer.flush(flush_timeout)
        if bar is not None:
            bar.close(sum(r.rows for r in readers))
    stats.elapsed_s = time.monotonic() - started
    if out_of_range:
        skipped[OUT_OF_RANGE] = out_of_range
    # Rows as the readers counted them (lines/rows of each file), against what the loop did
    # with them: every one was skipped or sent, unless a Ctrl-C left some read but unsent.
    read = sum(r.rows for r in readers)
    unsent = read - stats.skipped_total - sent_records
    unacked_records = sent_records - acked[TRADE] - acked[QUOTE] - refused[TRADE] - refused[QUOTE]
    unacked_dead_letters = sent_dead_letters[0] - acked[SKIP] - refused[SKIP]
    stats.read = read
    stats.produced = {trade_topic: acked[TRADE], quote_topic: acked[QUOTE]}
    stats.failed = refused[TRADE] + refused[QUOTE] + unacked_records + unsent
    stats.dead_lettered = acked[SKIP]
    stats.dead_letter_failed = refused[SKIP] + unacked_dead_letters
    stopped_early = stats.interrupted or fatal is not None
    stats.producer_consistent = (
        unacked_records >= 0
        and unacked_dead_letters >= 0
        and unsent >= 0
        and (
            stopped_early  # a Ctrl-C may fall between counting a row and handing it over
            or (
                unsent == 0
                and unacked_records + unacked_dead_letters == remaining
                and sent_dead_letters[0] == stats.skipped_total - out_of_range
                and sum(r.skipped for r in readers) == sent_dead_letters[0]
            )
        )
    )
    stats.out_of_order = sum(r.out_of_order for r in readers)
    if remaining:
        errors.append(f"{remaining} message(s) unacknowledged after {flush_timeout:.0f} s")
    for topic, count in stats.produced.items():
        MESSAGES_OUT.labels(APP_NAME, topic).inc(count)
    for reason, count in skipped.items():
        if reason != OUT_OF_RANGE:
            DEAD_LETTERS.labels(DEAD_LETTER_APP, dlq_topic, reason).inc(count)
    if fatal is not None:
        raise ReplayError(f"{fatal}; rows so far: {stats.report()}") from fatal
    if not stats.reconciles and not stats.interrupted:  # a bug here, never bad input
        raise ReplayError(f"replay counts do not reconcile: {stats.report()}")
    log.info(
        "replay finished",
        extra={
            "read": read,
            "produced": stats.produced_total,
            "skipped": stats.skipped_total,
            "failed": stats.failed,
            "elapsed_s": round(stats.elapsed_s, 3),
        },
    )
    return stats
