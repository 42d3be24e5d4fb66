"""The stage registry: every pipeline stage, declared once.

Each :class:`StageSpec` says what a stage is (its entry point, the topics it reads and
writes, its consumer group and dead-letter topic, the figures the live view shows). From
this list alone come the ``omniquant stage ...`` commands, what ``omniquant run``
supervises, the dead-letter topics of the catalog, and the README's stage table (a test
compares it). Adding a stage is one entry here plus its module.

Entry points are dotted strings (``"streams.signals:run"``), imported only when the stage
starts: the CLI stays quick to load and the registry imports no domain package.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.metrics import MetricWrapperBase

from core import metrics
from core.config import Settings
from core.topics import FEEDS_DEAD_LETTERS, TopicCatalog, TopicNames

__all__ = [
    "CONSUMED",
    "PRODUCED",
    "STAGES",
    "LiveFigure",
    "MetricSamples",
    "StageOption",
    "StageSpec",
    "dead_letter_apps",
    "stage",
    "topic_catalog",
]

# (metric name, sorted label items) → value, as scraped from a stage's /metrics.
MetricSamples = Mapping[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass(frozen=True, slots=True)
class LiveFigure:
    """One number the live view shows for a stage: a metric the stage exports (the metric
    object itself, not its name in a string), summed over the samples with ``labels``."""

    label: str
    metric: MetricWrapperBase
    labels: tuple[tuple[str, str], ...] = ()  # only samples carrying these labels
    money: bool = False  # shown with two decimals
    percent: bool = False  # a fraction, shown as a percentage
    count: bool = False  # how many label sets have a sample (e.g. accounts), not their sum

    @property
    def sample_name(self) -> str:
        family = next(iter(self.metric.describe()))
        return f"{family.name}_total" if family.type == "counter" else family.name

    def read(self, samples: MetricSamples) -> float:
        wanted, name = set(self.labels), self.sample_name
        matching = [
            value
            for (sample, labels), value in samples.items()
            if sample == name and wanted <= set(labels)
        ]
        return float(len(matching)) if self.count else sum(matching)

    def read_by(self, samples: MetricSamples, label: str) -> dict[str, float]:
        """Per value of ``label`` (e.g. per account): the figure over its samples."""
        wanted, name = set(self.labels), self.sample_name
        out: dict[str, float] = {}
        for (sample, labels), value in samples.items():
            if sample != name or not wanted <= set(labels):
                continue
            key = dict(labels).get(label)
            if key is not None:
                out[key] = out.get(key, 0.0) + value
        return out

    def format_value(self, value: float) -> str:
        """How the live view shows one value of this figure."""
        if self.money:
            return f"{value:,.2f}"
        if self.percent:
            return f"{value:.2%}"
        return f"{value:,.0f}"


@dataclass(frozen=True, slots=True)
class StageOption:
    """A command-line option of a stage (``omniquant stage feed --rate 50``)."""

    name: str  # python parameter name; the flag is --name with '_' → '-'
    type: type
    default: Any
    help: str
    min: float | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True, slots=True)
class StageSpec:
    """One pipeline stage: a process with one job, wired to the rest only by topics."""

    name: str
    entry_point: str  # "module:function", called as function(settings, name=name, **options)
    summary: str
    inputs: tuple[str, ...]  # logical topics it consumes (its consumer group's lag)
    outputs: tuple[str, ...]  # logical topics it produces
    dead_letter: str | None  # dead-letter app name: records it cannot handle → dlq.<name>
    figures: tuple[LiveFigure, ...] = ()
    # per-account figures this stage exports (the live view's accounts table)
    account_figures: tuple[LiveFigure, ...] = ()
    options: tuple[StageOption, ...] = ()
    # every record topic of the catalog (the sink): inputs are computed, not listed
    reads_all_records: bool = False
    # topics read by assignment, outside the consumer group (no lag of its own): views
    # of state other stages publish; the secure mode's ACLs grant them too
    also_reads: tuple[str, ...] = ()
    # those readers' throwaway group names: ``<prefix><name>-<random>``
    reader_groups: tuple[str, ...] = ()
    # holds nothing of record (a monitor): when it dies the supervisor starts it again
    # instead of stopping the run (see Supervisor.RESTARTS_PER_WINDOW)
    restart_on_failure: bool = False

    @property
    def is_source(self) -> bool:
        """Produces without consuming: stopped first, its end means the run's end."""
        return not self.inputs and not self.reads_all_records

    def consumer_group(self, prefix: str) -> str | None:
        return None if self.is_source else f"{prefix}{self.name}"

    def input_topics(self, names: TopicNames) -> list[str]:
        if self.reads_all_records:
            return [names.prefix + s.logical_name for s in topic_catalog().record_topics()]
        return [names.name(t) for t in self.inputs]

    def load(self) -> Callable[..., Any]:
        module, _, attr = self.entry_point.partition(":")
        target: Callable[..., Any] = getattr(importlib.import_module(module), attr)
        return target

    def start(self, settings: Settings, **options: Any) -> Any:
        return self.load()(settings, name=self.name, **options)


# What every stage reports: records in and out (the supervisor's rates and summary).
CONSUMED = LiveFigure("consumed", metrics.MESSAGES_IN)
PRODUCED = LiveFigure("produced", metrics.MESSAGES_OUT)

STAGES: tuple[StageSpec, ...] = (
    StageSpec(
        name="feed",
        entry_point="producers.synthetic_feed:run",
        summary="Synthetic GBM market feed → trades topic.",
        inputs=(),
        outputs=("market.trades",),
        dead_letter=FEEDS_DEAD_LETTERS,
        figures=(LiveFigure("trades", metrics.MESSAGES_OUT),),
        options=(
            StageOption("symbols", str, "AAPL,MSFT,NVDA,SPY", "comma-separated symbols"),
            StageOption("rate", float, 50.0, "trades per second, all symbols", min=0.1),
            StageOption("ticks", int, None, "stop after N trades", min=1),
            StageOption("seed", int, 7, "random seed (same seed, same prices)"),
        ),
    ),
    StageSpec(
        name="bars",
        entry_point="streams.bars:run",
        summary="Quix app: trades → event-time OHLCV bars (VWAP, count); late trades kept.",
        inputs=("market.trades",),
        outputs=("market.bars", "market.trades.late"),
        dead_letter="bars",
        figures=(
            LiveFigure("bars", metrics.BARS),
            LiveFigure("late trades", metrics.BAR_LATE_TRADES),
        ),
    ),
    StageSpec(
        name="signals",
        entry_point="streams.signals:run",
        summary="Quix app: trades → event-time bars → SMA crossover → signals, order requests.",
        inputs=("market.trades",),
        outputs=("signals", "orders.requests"),
        dead_letter="signals",
        figures=(LiveFigure("late trades", metrics.LATE_TRADES),),
    ),
    StageSpec(
        name="risk-gate",
        entry_point="streams.risk_gate:run",
        summary="Quix app, exactly-once: order requests → risk decisions with every check "
        "(own market prices; account exposure, leverage, margin, order rate, loss, drawdown).",
        inputs=("orders.requests", "market.trades", "execution.reports"),
        outputs=("risk.decisions", "orders.approved"),
        dead_letter="risk-gate",
        # its account view (portfolio, risk metrics) and trading-state watcher (control)
        also_reads=("portfolio", "risk.metrics", "control"),
        reader_groups=("account-view", "trading-state"),
        figures=(
            LiveFigure("approved", metrics.RISK_DECISIONS, (("decision", "APPROVED"),)),
            LiveFigure("rejected", metrics.RISK_DECISIONS, (("decision", "REJECTED"),)),
        ),
    ),
    StageSpec(
        name="execution",
        entry_point="streams.execution:run",
        summary="Kafka loop, exactly-once: approved orders → the venue (paper, Alpaca, Kite) → "
        "execution reports, fills; a halted account's orders cancelled.",
        # market data feeds a simulated venue; control wakes the halt check
        inputs=("orders.approved", "market.trades", "market.quotes", "control"),
        outputs=("execution.reports", "fills", "execution.orders"),
        dead_letter="execution",
        reader_groups=("trading-state",),
        figures=(
            LiveFigure("submitted", metrics.ORDERS_SUBMITTED),
            LiveFigure("fills", metrics.FILLS),
            LiveFigure("rejected", metrics.ORDERS_REJECTED),
        ),
    ),
    StageSpec(
        name="portfolio",
        entry_point="streams.portfolio:run",
        summary="Quix app: fills + trades → positions marked to market, account portfolios.",
        inputs=("fills", "market.trades"),
        outputs=("positions", "portfolio"),
        dead_letter="portfolio",
        figures=(LiveFigure("equity", metrics.PORTFOLIO_EQUITY, money=True),),
        account_figures=(LiveFigure("equity", metrics.PORTFOLIO_EQUITY, money=True),),
    ),
    StageSpec(
        name="risk-metrics",
        entry_point="streams.risk_metrics:run",
        summary="Quix app: portfolio → VaR, ES, drawdown, daily PnL, VaR backtest; HALTED / "
        "REDUCING on the control topic when an account hits its loss or drawdown limit.",
        inputs=("portfolio",),
        outputs=("risk.metrics", "alerts", "control"),
        dead_letter="risk-metrics",
        figures=(LiveFigure("accounts", metrics.DAILY_PNL, count=True),),
        account_figures=(
            LiveFigure("daily PnL", metrics.DAILY_PNL, money=True),
            LiveFigure(
                "VaR 99",
                metrics.VALUE_AT_RISK,
                (("method", "HISTORICAL"), ("level", "99")),
                money=True,
            ),
            LiveFigure("ES 97.5", metrics.EXPECTED_SHORTFALL, (("level", "975"),), money=True),
            LiveFigure("drawdown", metrics.DRAWDOWN, percent=True),
            LiveFigure("max drawdown", metrics.MAX_DRAWDOWN, percent=True),
        ),
    ),
    StageSpec(
        name="sink-clickhouse",
        entry_point="streams.sink_clickhouse:run",
        summary="Quix app: every record topic → its ClickHouse table.",
        inputs=(),
        outputs=(),
        dead_letter="sink-clickhouse",
        figures=(LiveFigure("rows", metrics.SINK_ROWS),),
        reads_all_records=True,
    ),
    StageSpec(
        name="lag-monitor",
        entry_point="streams.lag_monitor:run",
        summary="Every consumer group on the cluster: lag in records and seconds, Burrow-style "
        "status (OK, WARN, STALL, STOP, ERROR) → gauges and a record per partition each poll.",
        # reads offsets through the admin API, not records: no consumer group, no dead letters
        inputs=(),
        outputs=("monitoring.consumer_lag",),
        dead_letter=None,
        # librdkafka can abort in the admin API's offset requests when a group coordinator
        # dies mid-request (confluentinc/librdkafka#4605): a monitor must not stop trading
        restart_on_failure=True,
        figures=(
            LiveFigure("partitions", metrics.CONSUMERGROUP_LAG, count=True),
            LiveFigure("lag", metrics.CONSUMERGROUP_LAG),
        ),
    ),
)


def stage(name: str) -> StageSpec:
    for item in STAGES:
        if item.name == name:
            return item
    raise KeyError(f"no stage {name!r}; stages: {', '.join(s.name for s in STAGES)}")


def dead_letter_apps(stages: Iterable[StageSpec] = STAGES) -> tuple[str, ...]:
    """Every dead-letter app name, in registry order, each once."""
    apps: list[str] = [FEEDS_DEAD_LETTERS]
    for item in stages:
        if item.dead_letter and item.dead_letter not in apps:
            apps.append(item.dead_letter)
    return tuple(apps)


def topic_catalog() -> TopicCatalog:
    """The full catalog: every record topic plus each registered stage's dead letters."""
    return TopicCatalog.with_dead_letters(dead_letter_apps())


def stage_table_markdown(stages: Iterable[StageSpec] = STAGES) -> str:
    """The README's stage table (``make docs`` writes it; a test checks it is current)."""

    def topics(names: Iterable[str]) -> str:
        return ", ".join(f"`{n}`" for n in names) or "—"

    rows = [
        "| stage | command | reads | writes | dead letters |",
        "|---|---|---|---|---|",
    ]
    for item in stages:
        reads = "every record topic" if item.reads_all_records else topics(item.inputs)
        writes = topics(item.outputs) if item.outputs else "tables in ClickHouse"
        dead = f"`dlq.{item.dead_letter}`" if item.dead_letter else "—"
        rows.append(
            f"| {item.name} | `omniquant stage {item.name}` | {reads} | {writes} | {dead} |"
        )
    return "\n".join(rows)


README_BEGIN = "<!-- stage table: generated from omniquant/stages.py by `make docs` -->"
README_END = "<!-- end of stage table -->"


def render_readme(text: str) -> str:
    """``text`` with its stage table replaced by the registry's."""
    head, sep, rest = text.partition(README_BEGIN)
    _, sep2, tail = rest.partition(README_END)
    if not sep or not sep2:
        raise ValueError("README has no generated stage table markers")
    return f"{head}{README_BEGIN}\n{stage_table_markdown()}\n{README_END}{tail}"
