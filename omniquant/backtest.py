"""`omniquant backtest`: recorded ticks through the live pipeline, in a namespace of their own.

A backtest is the live pipeline run on recorded market data: the same registered stages
(:data:`omniquant.stages.STAGES`), started and drained by the same
:class:`~omniquant.supervisor.Supervisor`, reading and writing the topics of a namespace
``bt-<run id>.`` that nothing else uses. Only the clock (event time of the recorded ticks,
which every stage already runs on) and the venue (paper: ``execution`` refuses a live venue
in a ``bt-`` namespace) differ.

Inputs
    Files (Lean tick zips, CSV, NDJSON, Parquet) through the replay producer, or a time range
    of the live namespace's trades and quotes (``--from-topics``), found with
    ``offsets_for_times`` and copied byte for byte (key, value, event-time timestamp).

Running in step: phases
    Live, the stages keep pace with the market because ticks arrive in wall time. Replayed at
    full speed, the market topics are complete before the first order exists, and a stage
    that reads both market data and orders would read the market far ahead of the orders it
    is about to get (the risk gate would call an order stale, depending on how far ahead it
    happened to be). So the stages run in *phases* computed from the registry's topic graph
    (:func:`phases`): a stage starts only once every stage it reads from has drained, so each
    stage's inputs are complete when it starts and Quix aligns them by timestamp. Stages in a
    cycle run together (the risk gate and execution: approved orders one way, execution
    reports the other). A stage reading a single topic runs beside the stage writing it
    (risk-metrics beside the portfolio), drained after it. The one edge that is not waited
    for is ``control`` (risk-metrics' HALTED / REDUCING): following it would put every
    stage in one cycle; a backtest's
    risk-metrics run after the trading and its halts act on nothing (:data:`FEEDBACK_TOPICS`).
    The ClickHouse sink runs in the last phase and is drained last, once every other
    stage has stopped: it stores each topic on its own, in topic order.

Results
    Read back from the namespace's topics (orders, decisions, fills, portfolio snapshots),
    and counted in ClickHouse: every row the sink writes carries its topic in ``_topic``, so
    a run's rows are those whose ``_topic`` starts with ``bt-<run id>.`` — that prefix is the
    run's tag (``omniquant sql "SELECT * FROM omniquant.fills WHERE startsWith(_topic,
    'bt-<id>.')"``).

Determinism
    ``digest`` is the SHA-256 of a canonical JSON serialisation (:func:`canonical`) of the
    orders (client order id, side, quantity, type, reference price, event time, decision),
    the fills (client order id, side, quantity, price, event time) and the PnL (cash,
    realized, unrealized, equity of the account's last snapshot) — raw fixed-point integers,
    no wall-clock fields (``ts_init``, decision ids). Two runs over the same inputs give the
    same digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final, TextIO

import typer
from rich.console import Console

from core.config import Settings, load_settings
from core.errors import ConfigError, OmniquantError
from core.topics import TopicNames, backtest_namespace
from omniquant.stages import STAGES, StageSpec, topic_catalog
from schemas.fixedpoint import from_fixed, to_fixed

__all__ = [
    "FEEDBACK_TOPICS",
    "BacktestResult",
    "app",
    "backtest",
    "canonical",
    "phases",
    "run_backtest",
    "write_report",
    "write_synthetic_day",
]

#: topics a stage reads but a backtest does not wait for (see the module docs)
FEEDBACK_TOPICS: Final = frozenset({"control"})
_BARS_MS: Final = {"1s": 1_000, "1m": 60_000, "5m": 300_000}


class BarInterval(StrEnum):
    s1 = "1s"
    m1 = "1m"
    m5 = "5m"


# ---- phases ------------------------------------------------------------------------------
def phases(stages: Sequence[StageSpec] = STAGES) -> list[list[StageSpec]]:
    """The registry's consuming stages in the order a backtest runs them: groups of stages
    (registry order within a group) such that every stage a group reads from is in an
    earlier group or in the same one (a cycle, or stages that do not read each other).
    Sources are left out (the backtest feeds the market topics itself); a stage reading one
    topic joins the group of the stage writing it; stages that read every record topic (the
    sink) end the last group."""
    consumers = [s for s in stages if not s.is_source and not s.reads_all_records]
    readers_of_all = [s for s in stages if s.reads_all_records]

    def feeds(a: StageSpec, b: StageSpec) -> bool:
        return bool((set(a.outputs) & set(b.inputs)) - FEEDBACK_TOPICS)

    reach: dict[str, set[str]] = {}
    for start in consumers:
        seen: set[str] = set()
        todo = [start]
        while todo:
            node = todo.pop()
            for other in consumers:
                if other.name not in seen and feeds(node, other):
                    seen.add(other.name)
                    todo.append(other)
        reach[start.name] = seen
    groups: list[list[StageSpec]] = []
    placed: set[str] = set()
    for spec in consumers:
        if spec.name in placed:
            continue
        group = [
            s
            for s in consumers
            if s is spec or (s.name in reach[spec.name] and spec.name in reach[s.name])
        ]
        groups.append(group)
        placed.update(s.name for s in group)
    # each group one level after the deepest group it reads from; a level's groups run
    # together (they do not read each other), in registry order
    level: dict[int, int] = {}
    while len(level) < len(groups):
        for i, group in enumerate(groups):
            if i in level:
                continue
            ups = [
                j
                for j, other in enumerate(groups)
                if j != i and any(feeds(o, s) for o in other for s in group)
            ]
            if all(j in level for j in ups):
                level[i] = 1 + max((level[j] for j in ups), default=0)
    # A stage that reads one topic cannot be misaligned: it may run beside the stage that
    # writes that topic, drained after it (a phase drains in registry order).
    producer_of = {t: spec.name for spec in consumers for t in spec.outputs}
    group_of = {s.name: i for i, g in enumerate(groups) for s in g}
    for i, group in enumerate(groups):
        inputs = {t for s in group for t in s.inputs} - FEEDBACK_TOPICS
        writer = producer_of.get(next(iter(inputs))) if len(group) == 1 == len(inputs) else None
        if writer is not None and writer not in {s.name for s in group}:
            level[i] = level[group_of[writer]]
    ordered: list[list[StageSpec]] = []
    for depth in sorted(set(level.values())):
        members = {s.name for i, g in enumerate(groups) if level[i] == depth for s in g}
        ordered.append([s for s in consumers if s.name in members])
    # the sink stores each topic on its own (no cross-topic order to keep): it runs in the
    # last phase, drained last, once everything else there has stopped
    if readers_of_all and ordered:
        ordered[-1].extend(readers_of_all)
    elif readers_of_all:
        ordered.append(readers_of_all)
    return ordered


# ---- settings of a run -------------------------------------------------------------------
def strategy_env(
    strategy: str,
    params: Mapping[str, str],
    bar_ms: int,
    quantity: Decimal | None,
    long_only: bool,
    account: str = "paper",
) -> dict[str, str]:
    """Environment the stages read the strategy from: the plugin form (``NAME``, ``PARAMS``)
    and the older SMA fields (``FAST_WINDOW`` ...) where the parameters name them."""
    merged = dict(params)
    if quantity is not None:
        merged["quantity"] = str(quantity)
    if long_only:
        merged["long_only"] = "true"
    env = {
        "OMNIQUANT_STRATEGY__NAME": strategy,
        "OMNIQUANT_STRATEGY__PARAMS": json.dumps(merged, sort_keys=True),
        "OMNIQUANT_STRATEGY__BAR_INTERVAL_MS": str(bar_ms),
        "OMNIQUANT_EXECUTION__BROKER": "paper",
        "OMNIQUANT_STRATEGY__ACCOUNT": account,
        # the gate and execution run together over complete topics (see RiskSettings)
        "OMNIQUANT_RISK__BACKTEST_FILLS_AT_APPROVAL": "true",
    }
    if "fast" in merged:
        env["OMNIQUANT_STRATEGY__FAST_WINDOW"] = merged["fast"]
    if "slow" in merged:
        env["OMNIQUANT_STRATEGY__SLOW_WINDOW"] = merged["slow"]
    if "quantity" in merged:
        env["OMNIQUANT_STRATEGY__ORDER_QUANTITY"] = merged["quantity"]
    return env


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` in os.environ (the stage processes inherit it), restored afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dt%H%M%S") + "-" + secrets.token_hex(3)


# ---- feeding the namespace ---------------------------------------------------------------
def _existing_topics(settings: Settings, prefix: str) -> list[str]:
    from core.kafka import admin_client

    topics = admin_client(settings).list_topics(timeout=15).topics
    return sorted(t for t in topics if t.startswith(prefix))


def copy_range(live: Settings, target: Settings, start_ns: int, end_ns: int) -> int:
    """Copy the live namespace's trades and quotes with event time in ``[start, end)`` into
    ``target``'s (key, value and timestamp unchanged). Returns the records copied."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    from core.kafka import consumer_config, producer_config

    src, dst = TopicNames(live.topic_prefix), TopicNames(target.topic_prefix)
    consumer = Consumer(
        consumer_config(live, f"{target.topic_prefix}copy", **{"enable.partition.eof": "true"})
    )
    producer = Producer(producer_config(target, **{"client.id": "backtest-copy"}))
    copied = 0
    try:
        for source, sink in ((src.trades, dst.trades), (src.quotes, dst.quotes)):
            meta = consumer.list_topics(source, timeout=15).topics.get(source)
            if meta is None or meta.error is not None:
                continue
            parts = [TopicPartition(source, p, start_ns // 1_000_000) for p in meta.partitions]
            ends = [TopicPartition(source, p, end_ns // 1_000_000) for p in meta.partitions]
            first = consumer.offsets_for_times(parts, timeout=15)
            last = consumer.offsets_for_times(ends, timeout=15)
            stop: dict[int, int] = {}
            assign = []
            for a, b in zip(first, last, strict=True):
                high = consumer.get_watermark_offsets(TopicPartition(source, a.partition))[1]
                lo = a.offset if a.offset >= 0 else high
                hi = b.offset if b.offset >= 0 else high
                if lo < hi:
                    stop[a.partition] = hi
                    assign.append(TopicPartition(source, a.partition, lo))
            if not assign:
                continue
            consumer.assign(assign)
            while stop:
                msg = consumer.poll(1.0)
                if msg is None:
                    continue
                part = msg.partition()
                if msg.error() is not None:
                    stop.pop(part, None)
                    continue
                if part not in stop or msg.offset() >= stop[part]:
                    stop.pop(part, None)
                    continue
                _, ts_ms = msg.timestamp()
                producer.produce(sink, msg.value(), msg.key(), timestamp=ts_ms)
                copied += 1
                producer.poll(0)
                if msg.offset() + 1 >= stop[part]:
                    stop.pop(part, None)
            consumer.unassign()
        if producer.flush(60):
            raise OmniquantError("copy: records not acknowledged after 60 s")
    finally:
        consumer.close()
    return copied


# ---- reading results ---------------------------------------------------------------------
def read_topic(settings: Settings, topic: str, model: Any) -> list[dict[str, Any]]:
    """Every record of ``topic`` (read_committed), decoded, in (partition, offset) order."""
    from confluent_kafka import Consumer, TopicPartition

    from core.kafka import consumer_config
    from schemas.serde import AvroSerde

    serde = AvroSerde.from_settings(settings)
    consumer = Consumer(
        consumer_config(
            settings,
            f"{settings.topic_prefix}backtest-read",
            **{"isolation.level": "read_committed", "enable.auto.commit": "false"},
        )
    )
    out: list[tuple[int, int, dict[str, Any]]] = []
    try:
        meta = consumer.list_topics(topic, timeout=15).topics.get(topic)
        if meta is None:
            return []
        ends: dict[int, int] = {}
        assign = []
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)
            if high > low:
                ends[p] = high
                assign.append(TopicPartition(topic, p, low))
        consumer.assign(assign)
        deadline = time.monotonic() + 120
        while ends and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                # only transaction markers left before the end of every pending partition
                positions = consumer.position([TopicPartition(topic, p) for p in ends])
                for tp in positions:
                    if tp.offset >= ends.get(tp.partition, 0) - 1:
                        ends.pop(tp.partition, None)
                continue
            if msg.error() is not None:
                continue
            part = msg.partition()
            value = msg.value()
            if value is not None:
                out.append((part, msg.offset(), serde.decode_dict(value, model, topic=topic)))
            if msg.offset() + 1 >= ends.get(part, 0):
                ends.pop(part, None)
    finally:
        consumer.close()
    out.sort(key=lambda item: (item[0], item[1]))
    return [record for _, _, record in out]


def canonical(orders: Sequence[list[Any]], fills: Sequence[list[Any]], pnl: Any) -> bytes:
    """The bytes the digest is taken over: sorted, compact JSON of raw integers and text."""

    def order(rows: Sequence[list[Any]]) -> list[list[Any]]:
        return sorted(rows, key=lambda row: json.dumps(row))

    doc = {"fills": order(fills), "orders": order(orders), "pnl": pnl}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _drawdown_and_sharpe(equity: Sequence[tuple[int, int]]) -> tuple[float, float | None]:
    """Max drawdown (fraction of the running peak) and annualised Sharpe ratio of the
    snapshots' equity (raw fixed-point) — the report's definitions
    (:func:`omniquant.report.data.performance`: per-minute returns, ×√(252·390))."""
    from omniquant.report.data import Series, drawdown_series, performance

    series = Series(tuple(t for t, _ in equity), tuple(from_fixed(v) for _, v in equity))
    fractions, _ = drawdown_series(series)
    sharpe = performance(series).sharpe
    return float(max(fractions, default=Decimal(0))), None if sharpe is None else float(sharpe)


@dataclass
class BacktestResult:
    run_id: str
    namespace: str
    summary: dict[str, Any]
    orders: list[dict[str, Any]] = field(default_factory=list)
    fills: list[dict[str, Any]] = field(default_factory=list)


def collect(settings: Settings, run_id: str, account: str, ticks: int) -> BacktestResult:
    from schemas.models import Fill, OrderRequest, PortfolioSnapshot, RiskDecision

    names = TopicNames(settings.topic_prefix)
    orders = read_topic(settings, names.order_requests, OrderRequest)
    decisions = read_topic(settings, names.risk_decisions, RiskDecision)
    fills = read_topic(settings, names.fills, Fill)
    snapshots = [
        s
        for s in read_topic(settings, names.name("portfolio"), PortfolioSnapshot)
        if s["account"] == account
    ]
    decided = {d["client_order_id"]: str(d["decision"]) for d in decisions}
    order_rows = [
        [
            o["client_order_id"],
            str(o["side"]),
            o["quantity"],
            str(o["order_type"]),
            o.get("reference_price"),
            o["ts_event"],
            decided.get(o["client_order_id"], "UNDECIDED"),
        ]
        for o in orders
        if o["account"] == account
    ]
    fill_rows = [
        [f["client_order_id"], str(f["side"]), f["quantity"], f["price"], f["ts_event"]]
        for f in fills
        if f["account"] == account
    ]
    last = max(snapshots, key=lambda s: s["ts_event"]) if snapshots else None
    pnl_raw: dict[str, int] | None = None
    if last is not None:
        pnl_raw = {
            k: int(last[k]) for k in ("cash", "realized_pnl", "unrealized_pnl", "equity")
        } | {"pnl": int(last["equity"]) - int(last["starting_cash"])}
    digest = hashlib.sha256(canonical(order_rows, fill_rows, pnl_raw)).hexdigest()
    equity = [(int(s["ts_event"]), int(s["equity"])) for s in snapshots]
    equity.sort(key=lambda item: item[0])
    max_dd, sharpe = _drawdown_and_sharpe(equity)

    def money(raw: int | None) -> str | None:
        return None if raw is None else format(from_fixed(raw), "f")

    summary: dict[str, Any] = {
        "run_id": run_id,
        "namespace": settings.topic_prefix,
        "account": account,
        "ticks": ticks,
        "orders": len(order_rows),
        "approved": sum(1 for r in order_rows if r[-1] == "APPROVED"),
        "rejected": sum(1 for r in order_rows if r[-1] == "REJECTED"),
        "fills": len(fill_rows),
        "pnl": money(pnl_raw["pnl"]) if pnl_raw else "0",
        "realized_pnl": money(pnl_raw["realized_pnl"]) if pnl_raw else "0",
        "unrealized_pnl": money(pnl_raw["unrealized_pnl"]) if pnl_raw else "0",
        "max_drawdown": round(max_dd, 9),
        "sharpe": None if sharpe is None else round(sharpe, 6),
        "digest": digest,
    }
    return BacktestResult(run_id, settings.topic_prefix, summary, orders, fills)


def clickhouse_counts(settings: Settings) -> dict[str, int] | str:
    """Rows of this run per table: those whose ``_topic`` starts with the namespace."""
    from core.clickhouse import connect_clickhouse
    from sinks.clickhouse import TABLE_BY_TOPIC

    db = settings.clickhouse.database
    prefix = settings.topic_prefix.replace("'", "")
    try:
        client = connect_clickhouse(settings)
    except OmniquantError as exc:
        return f"could not read ClickHouse: {exc}"
    try:
        out: dict[str, int] = {}
        for table in ("trades", "order_requests", "risk_decisions", "fills", "portfolio"):
            if table not in TABLE_BY_TOPIC.values():
                continue
            query = f"SELECT count() FROM `{db}`.`{table}` WHERE startsWith(_topic, '{prefix}')"
            out[table] = int(client.query(query).rows[0][0])
        return out
    except Exception as exc:  # informative only
        return f"could not read ClickHouse: {exc}"
    finally:
        client.close()


# ---- orchestration -----------------------------------------------------------------------
class _Progress:
    """A rich progress display on stderr: one line per phase with its stages' lag."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Any = None
        if enabled:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )
            self._progress.start()

    def task(self, description: str) -> Any:
        return self._progress.add_task(description) if self.enabled else None

    def update(self, task: Any, description: str) -> None:
        if self.enabled:
            self._progress.update(task, description=description)

    def done(self, task: Any, description: str) -> None:
        if self.enabled:
            self._progress.update(task, description=description, completed=1, total=1)

    def close(self) -> None:
        if self.enabled:
            self._progress.stop()


def run_backtest(
    settings: Settings,
    *,
    run_id: str,
    paths: Sequence[Path] = (),
    live: Settings | None = None,
    window: tuple[int, int] | None = None,
    strategy_environment: Mapping[str, str],
    bounds: tuple[int | None, int | None] = (None, None),
    account: str = "paper",
    progress: bool = True,
    drain_timeout: float = 1800.0,
    log: TextIO | None = None,
) -> BacktestResult:
    """Feed the namespace, run the phases, read the results (see the module docs)."""
    from core.kafka import ensure_topics, wait_for_broker
    from omniquant.stack.manager import LocalStack
    from omniquant.supervisor import EXIT_OK, Supervisor, pipeline_stages

    log = log if log is not None else sys.stderr
    started = time.monotonic()
    LocalStack(settings).up()
    wait_for_broker(settings, timeout=settings.stack.start_timeout_s)
    used = _existing_topics(settings, settings.topic_prefix)
    if used:
        raise ConfigError(
            f"run id {run_id!r} is taken: namespace {settings.topic_prefix} already has "
            f"{len(used)} topic(s); choose another --run-id"
        )
    ensure_topics(settings, topic_catalog())
    bar = _Progress(progress)
    log_dir = settings.state_dir / "logs" / f"backtest-{run_id}"
    timings: dict[str, float] = {}  # wall seconds per step: where a run's time goes
    try:
        with _environment(strategy_environment):
            feed = bar.task("feed: replaying recorded ticks")
            if window is not None:
                assert live is not None
                ticks = copy_range(live, settings, *window)
            else:
                from producers.replay import replay

                stats = replay(paths, settings, speed="max", from_ns=bounds[0], to_ns=bounds[1])
                if not stats.ok:
                    raise OmniquantError(f"replay did not deliver every row: {stats.report()}")
                ticks = stats.produced.get(TopicNames(settings.topic_prefix).trades, 0)
            bar.done(feed, f"feed: {ticks:,} trades into {settings.topic_prefix}")
            timings["feed"] = time.monotonic() - started
            for number, group in enumerate(phases(), start=1):
                phase_started = time.monotonic()
                label = ", ".join(s.name for s in group)
                task = bar.task(f"phase {number}: {label}")
                stages = pipeline_stages(settings, stages=group)

                def tick(
                    sup: Supervisor, task: Any = task, label: str = label, number: int = number
                ) -> None:
                    lags = "  ".join(
                        f"{s.name} lag {'-' if s.lag is None else f'{s.lag:,}'}" for s in sup.stages
                    )
                    bar.update(task, f"phase {number}: {label} — {lags}")

                supervisor = Supervisor(
                    settings,
                    stages,
                    duration=0.0,  # nothing to wait for: drain every stage, then stop it
                    log_dir=log_dir / f"phase-{number}",
                    drain_timeout=drain_timeout,
                    on_tick=tick,
                    out=log,
                )
                code = supervisor.run()
                if code != EXIT_OK:
                    raise OmniquantError(
                        f"phase {number} ({label}) failed: {supervisor.outcome}; "
                        f"logs in {log_dir / f'phase-{number}'}"
                    )
                bar.done(task, f"phase {number}: {label} — drained")
                timings[f"phase {number}: {label}"] = time.monotonic() - phase_started
    finally:
        bar.close()
    collect_started = time.monotonic()
    result = collect(settings, run_id, account, ticks)
    result.summary["clickhouse_rows"] = clickhouse_counts(settings)
    timings["results"] = time.monotonic() - collect_started
    result.summary["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    result.summary["elapsed_s"] = round(time.monotonic() - started, 1)
    result.summary["logs"] = str(log_dir)
    return result


def write_report(settings: Settings, directory: Path, result: BacktestResult) -> Path:
    """The run's HTML report (:mod:`omniquant.report`: equity, drawdown, fills on the price,
    VaR against PnL, the stats table) from the rows the sink wrote, beside ``summary.json``,
    ``orders.json`` and ``fills.json``. Returns the page."""
    from dataclasses import replace

    from core.clickhouse import connect_clickhouse
    from omniquant.report import from_clickhouse, render_report

    directory.mkdir(parents=True, exist_ok=True)
    client = connect_clickhouse(settings, writer=False)
    try:
        data = from_clickhouse(
            client,
            settings.clickhouse.database,
            account=result.summary["account"],
            prefix=settings.topic_prefix,
        )
    finally:
        client.close()
    data = replace(data, title=f"Backtest {result.run_id}")
    page = render_report(data, directory)
    (directory / "summary.json").write_text(json.dumps(result.summary, indent=2) + "\n")
    (directory / "fills.json").write_text(json.dumps(result.fills, indent=1, default=str))
    (directory / "orders.json").write_text(json.dumps(result.orders, indent=1, default=str))
    return page


def write_synthetic_day(
    path: Path, *, symbol: str = "SPY", seed: int = 7, trades: int = 23_400
) -> Path:
    """A CSV of one synthetic regular session (09:30-16:00 New York, 2013-10-07) of GBM
    trades (:class:`producers.synthetic.GbmTradeGenerator`): the input of ``make
    backtest`` when the shared data is absent. Same seed, same file."""
    import csv

    from producers.synthetic import GbmTradeGenerator

    open_ns = int(datetime(2013, 10, 7, 13, 30, tzinfo=UTC).timestamp()) * 1_000_000_000
    session_ms = 6.5 * 3600 * 1000
    generator = GbmTradeGenerator(
        [symbol], seed=seed, start_ns=open_ns, mean_interval_ms=session_ms / trades
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["symbol", "ts_event", "price", "size", "venue"])
        for _ in range(trades):
            trade = generator.next_trade()
            writer.writerow(
                [
                    trade.symbol,
                    trade.ts_event,
                    format(from_fixed(trade.price), "f"),
                    format(from_fixed(trade.size), "f"),
                    trade.venue,
                ]
            )
    return path


# ---- the command ---------------------------------------------------------------------------
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _parse_params(values: Sequence[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{item!r}: use key=value", param_hint="--param")
        params[key.strip()] = value.strip()
    return params


@app.command("backtest")
def backtest(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="recorded ticks: Lean tick zips, CSV, NDJSON, Parquet, directories"),
    ] = None,
    from_topics: Annotated[
        bool, typer.Option(help="replay a time range of the live namespace's market topics")
    ] = False,
    start: Annotated[
        str | None, typer.Option(help="first event time (ISO-8601 with a zone, or epoch ns)")
    ] = None,
    end: Annotated[str | None, typer.Option(help="end event time (exclusive), same forms")] = None,
    strategy: Annotated[str, typer.Option(help="strategy name (a registered plugin)")] = (
        "sma-crossover"
    ),
    param: Annotated[
        list[str] | None, typer.Option(help="strategy parameter key=value (repeatable)")
    ] = None,
    bar: Annotated[BarInterval, typer.Option(help="bar interval")] = BarInterval.m1,
    quantity: Annotated[str | None, typer.Option(help="order quantity")] = None,
    long_only: Annotated[bool, typer.Option(help="flat instead of short")] = False,
    account: Annotated[
        str, typer.Option(help="account the strategy trades (paper venue) and is reported")
    ] = "paper",
    run_id: Annotated[
        str | None, typer.Option(help="namespace bt-<ID>. (default: time + random)")
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(help="write the HTML report (index.html, PNG charts) and JSON here"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON summary only")] = False,
    drain_timeout: Annotated[float, typer.Option(help="longest wait per stage (s)")] = 1800.0,
) -> None:
    """Replay recorded ticks through the live pipeline in a namespace of its own; summary."""
    from producers.replay import open_files, parse_bound

    err = Console(stderr=True)
    rid = run_id or new_run_id()
    params = _parse_params(param or [])
    qty: Decimal | None = None
    if quantity is not None:
        try:
            qty = Decimal(quantity)
            to_fixed(qty)
        except Exception:
            raise typer.BadParameter(
                f"{quantity!r} is not a quantity", param_hint="--quantity"
            ) from None
    window: tuple[int, int] | None = None
    bounds: list[int | None] = []
    for value in (start, end):
        try:
            bounds.append(None if value is None else parse_bound(value))
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    if from_topics:
        if paths:
            raise typer.BadParameter("give files or --from-topics, not both")
        if start is None or end is None:
            raise typer.BadParameter("--from-topics needs --start and --end")
        assert bounds[0] is not None and bounds[1] is not None
        window = (bounds[0], bounds[1])
        if window[0] >= window[1]:
            raise typer.BadParameter("--start must be before --end")
    elif not paths:
        raise typer.BadParameter("give files to replay, or --from-topics --start --end")
    try:
        from omniquant.access import component_settings
        from omniquant.stack.shape import with_saved_shape

        # as the operator on a secure local stack: a backtest's stages run in a namespace
        # of their own, which the registry's ACLs do not name
        live = component_settings(with_saved_shape(load_settings()), "admin")
        settings = live.model_copy(update={"topic_prefix": backtest_namespace(rid)})
        if paths:
            open_files(paths)  # a missing or unsupported file fails before any broker call
        env = strategy_env(strategy, params, _BARS_MS[bar.value], qty, long_only, account)
        load_settings(**{"strategy": {"account": account}})  # a bad name fails here
        result = run_backtest(
            settings,
            run_id=rid,
            paths=paths or (),
            live=live,
            window=window,
            strategy_environment=env,
            bounds=(bounds[0], bounds[1]),
            account=account,
            progress=not as_json and sys.stderr.isatty(),
            drain_timeout=drain_timeout,
            log=sys.stderr,
        )
    except OmniquantError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2 if isinstance(exc, ConfigError) else 1) from None
    if report is not None:
        try:
            result.summary["report"] = str(write_report(settings, report, result))
        except OmniquantError as exc:
            err.print(f"[red]error:[/red] report: {exc}")
            raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps(result.summary, sort_keys=True) + "\n")
        return
    out = Console()
    out.print_json(json.dumps(result.summary))
    out.print(
        f"rows of this run in ClickHouse: _topic starts with '{settings.topic_prefix}', e.g.\n"
        f'  omniquant sql "SELECT side, quantity, price FROM {settings.clickhouse.database}'
        f".fills WHERE startsWith(_topic, '{settings.topic_prefix}') ORDER BY ts_event\""
    )


def main() -> None:
    from omniquant.cli import quiet_third_party_warnings

    quiet_third_party_warnings()
    app()


if __name__ == "__main__":
    main()
