"""The `omniquant` command line."""

from __future__ import annotations

import contextlib
import csv
import inspect
import io
import json
import signal
import sys
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from core.config import Settings, load_settings, mask_url
from core.errors import ConfigError, OmniquantError
from omniquant.stages import STAGES, StageSpec, topic_catalog
from producers.venues import VENUES

app = typer.Typer(
    help="OmniQuant Streams: Kafka stream processing for trading.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
topics_app = typer.Typer(help="Create and list the catalog's topics.", no_args_is_help=True)
stage_app = typer.Typer(
    help="Run one pipeline stage in this process (what `run`, compose and k8s start).",
    no_args_is_help=True,
)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(stage_app, name="stage")
app.add_typer(config_app, name="config")
secure_app = typer.Typer(
    help="A secured deployment's certificates, passwords and ACLs (compose, k8s).",
    no_args_is_help=True,
)
app.add_typer(secure_app, name="secure")

# Off a terminal (CI, logs) rich would wrap at 80 columns; tables need more.
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True)

DEFAULT_SYMBOLS = "AAPL,MSFT,NVDA,SPY"


def _settings(component: str | None = "admin") -> Settings:
    """The effective settings, with the local stack's saved shape, as ``component`` (a
    stage, ``replay``, ``admin``) sees Kafka: on a secure local stack, its own SCRAM user.
    ``None``: no identity resolved (the supervisor hands each stage its own)."""
    from omniquant.access import component_settings
    from omniquant.stack.shape import with_saved_shape

    try:
        settings = with_saved_shape(load_settings())
        return settings if component is None else component_settings(settings, component)
    except ConfigError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _fail(exc: Exception, code: int = 1) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(code)


def _symbols(value: str) -> list[str]:
    symbols = [s.strip().upper() for s in value.split(",") if s.strip()]
    if not symbols:
        raise typer.BadParameter("give at least one symbol")
    return symbols


# ---- local stack ---------------------------------------------------------------------
def _status_table(statuses: list[Any]) -> Table:
    table = Table(title="OmniQuant local stack")
    for col in ("service", "address", "managed", "answering", "detail"):
        table.add_column(col)
    for s in statuses:
        table.add_row(
            s.name,
            s.address,
            "yes" if s.managed else "external",
            "[green]yes[/green]" if s.answering else "[red]no[/red]",
            s.detail,
        )
    return table


@app.command()
def up(
    brokers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=5,
            help="KRaft nodes (a voter each); remembered in <state_dir>/stack.json for the "
            "other commands",
        ),
    ] = None,
    secure: Annotated[
        bool | None,
        typer.Option(
            "--secure/--no-secure",
            help="SASL_SSL with SCRAM-SHA-512 per component, mutual TLS between controllers, "
            "ACLs from the stage registry (CA and passwords under <state_dir>/kafka/secure)",
        ),
    ] = None,
) -> None:
    """Start the local stack (Kafka KRaft, Redis; chDB is embedded) and wait until it answers."""
    from omniquant.access import ensure_access
    from omniquant.stack.manager import LocalStack
    from omniquant.stack.shape import save_shape

    settings = _settings(None)
    shape: dict[str, Any] = {}
    if brokers is not None:
        shape["kafka_brokers"] = brokers
    if secure is not None:
        shape["kafka_secure"] = secure
    if shape:
        settings = settings.model_copy(update={"stack": settings.stack.model_copy(update=shape)})
    started = time.monotonic()
    try:
        statuses = LocalStack(settings).up()
        if settings.uses_local_kafka:
            save_shape(settings)
        users, acls = ensure_access(settings)
    except OmniquantError as exc:
        raise _fail(exc) from None
    console.print(_status_table(statuses))
    if settings.uses_local_kafka and settings.stack.kafka_secure:
        console.print(
            f"secure: {users} SCRAM user(s) created, {acls} ACL bindings for namespace "
            f"{settings.topic_prefix!r}; CA {settings.state_dir / 'kafka' / 'secure' / 'ca.pem'}"
        )
    console.print(f"stack ready in {time.monotonic() - started:.1f} s")


@app.command()
def down() -> None:
    """Stop the services the local stack started (data stays in the state dir)."""
    from omniquant.stack.manager import LocalStack

    try:
        LocalStack(_settings()).down()
    except OmniquantError as exc:
        raise _fail(exc) from None
    console.print("stack stopped")


@app.command()
def status() -> None:
    """Show each service, its address, and whether it answers."""
    from omniquant.stack.manager import LocalStack

    statuses = LocalStack(_settings()).status()
    console.print(_status_table(statuses))
    if not all(s.answering for s in statuses):
        raise typer.Exit(1)


@app.command()
def healthcheck() -> None:
    """Exit 0 when Kafka answers a metadata request (container health checks)."""
    from core.kafka import broker_answers

    settings = _settings()
    if not broker_answers(settings, timeout=5.0):
        err_console.print(f"Kafka at {settings.kafka_bootstrap()} does not answer")
        raise typer.Exit(1)


# ---- topics -------------------------------------------------------------------------
@topics_app.command("create")
def topics_create() -> None:
    """Create every topic of the catalog that does not exist yet (explicit configs)."""
    from core.kafka import ensure_topics, wait_for_broker

    settings = _settings()
    try:
        wait_for_broker(settings, timeout=30)
        created = ensure_topics(settings, topic_catalog())
    except OmniquantError as exc:
        raise _fail(exc) from None
    console.print(
        f"created {len(created)} topic(s)" + (": " + ", ".join(created) if created else "")
    )


@topics_app.command("list")
def topics_list() -> None:
    """List the catalog with each topic's physical name, schema and whether it exists."""
    from core.kafka import describe_topics

    settings = _settings()
    catalog = topic_catalog()
    try:
        states = {t.name: t for t in describe_topics(settings, catalog)}
    except Exception as exc:
        raise _fail(exc) from None
    table = Table(title=f"topics (prefix {settings.topic_prefix!r})")
    for col in ("topic", "key", "value schema", "partitions", "policy", "exists"):
        table.add_column(col)
    for name, item in catalog.physical(settings.topic_prefix):
        state = states[name]
        if item.compacted:
            policy = "compact"
        elif item.retention_ms is None:
            policy = f"delete by size ({settings.kafka.retention_bytes:,} B/partition)"
        else:
            policy = f"delete after {item.retention_ms // 86_400_000} d"
        table.add_row(
            name,
            item.key,
            item.value_schema or "raw bytes",
            str(state.partitions or item.partitions or settings.kafka.partitions),
            policy,
            "[green]yes[/green]" if state.exists else "[red]no[/red]",
        )
    console.print(table)


# ---- kill switch --------------------------------------------------------------------
def _set_trading_state(state: Any, account: str | None, reason: str) -> None:
    import getpass

    from schemas.models import TradingState
    from streams.control import ControlPlane

    settings = _settings()
    try:
        control = ControlPlane(settings).set_state(
            TradingState(state), account=account, reason=reason, issued_by=getpass.getuser()
        )
    except (OmniquantError, OSError) as exc:
        raise _fail(exc) from None
    except Exception as exc:  # redis errors: the command is on the topic, say so
        message = f"published to the control topic, but the Redis mirror failed: {exc}"
        raise _fail(RuntimeError(message)) from None
    who = f"account {account}" if account else "every account"
    console.print(f"{control.trading_state}: {who} ({control.command_id}) — {reason}")


@app.command()
def halt(
    reason: Annotated[str, typer.Option(help="why (kept with the command and in decisions)")],
    account: Annotated[
        str | None, typer.Option(help="only this account (default: every account)")
    ] = None,
) -> None:
    """Kill switch: the risk gate rejects every new order of the account(s) (within 1 s)."""
    _set_trading_state("HALTED", account, reason)


@app.command()
def reduce_only(
    reason: Annotated[str, typer.Option(help="why")],
    account: Annotated[str | None, typer.Option(help="only this account")] = None,
) -> None:
    """Only exposure-reducing orders pass the risk gate for the account(s)."""
    _set_trading_state("REDUCING", account, reason)


@app.command()
def resume(
    account: Annotated[
        str | None, typer.Option(help="only this account (default: lift the global halt)")
    ] = None,
    reason: Annotated[str, typer.Option(help="why")] = "resumed",
) -> None:
    """Lift a halt: the account(s) trade again (ACTIVE)."""
    _set_trading_state("ACTIVE", account, reason)


# ---- stages -------------------------------------------------------------------------
def _start_stage(name: str) -> Settings:
    from core.kafka import wait_for_broker
    from core.logs import configure_logging
    from core.metrics import APP_UP, serve_metrics

    settings = _settings(name)
    configure_logging(name, settings.log_level)
    try:
        # wrong credentials or an untrusted certificate: stop here, saying which setting
        wait_for_broker(settings, timeout=settings.stack.start_timeout_s)
    except OmniquantError as exc:
        raise _fail(exc, 2) from None
    # Asked to stop before the stage runs (its app installs its own handler when it
    # starts): nothing was consumed, so nothing is left to flush — a clean exit.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    serve_metrics(settings.metrics_port)
    APP_UP.labels(name).set(1)
    return settings


def _stage_command(spec: StageSpec) -> Callable[..., None]:
    """A typer command for one registered stage: its options become --flags."""

    def command(**options: Any) -> None:
        settings = _start_stage(spec.name)
        if "symbols" in options:
            options["symbols"] = _symbols(options["symbols"])
        spec.start(settings, **options)

    parameters = [
        inspect.Parameter(
            option.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=option.default,
            annotation=Annotated[
                option.type if option.default is not None else option.type | None,
                typer.Option(option.flag, help=option.help, min=option.min),
            ],
        )
        for option in spec.options
    ]
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__name__ = f"stage_{spec.name.replace('-', '_')}"
    command.__doc__ = spec.summary
    return command


for _spec in STAGES:
    stage_app.command(_spec.name)(_stage_command(_spec))


# ---- run ----------------------------------------------------------------------------
def _accounts_table(sup: Any) -> Table | None:
    """Per account: the figures the stages export by account (equity, VaR, drawdown ...)."""
    from omniquant.supervisor import account_figures

    figures = account_figures(sup.stages)
    if not figures:
        return None
    columns = [f for s in sup.stages for f in s.spec.account_figures]
    table = Table(title="accounts")
    table.add_column("account")
    for item in columns:
        table.add_column(item.label, justify="right")
    for account in sorted(figures):
        row = figures[account]
        cells = []
        for item in columns:
            value = row.get(item.label)
            cells.append("-" if value is None else item.format_value(value))
        table.add_row(account, *cells)
    return table


def _live_view(sup: Any) -> Group:
    tables = [_live_table(sup)]
    accounts = _accounts_table(sup)
    if accounts is not None:
        tables.append(accounts)
    return Group(*tables)


def _live_table(sup: Any) -> Table:
    elapsed = time.monotonic() - sup.started_at if sup.started_at else 0.0
    table = Table(title=f"omniquant run — {elapsed:5.1f} s — {sup.outcome}")
    for col in ("stage", "state", "in msg/s", "out msg/s", "lag", "detail"):
        table.add_column(col, justify="right" if "msg" in col or col == "lag" else "left")
    for stage in sup.stages:
        code = stage.exit_code
        state = "running" if code is None else f"exited {code}"
        table.add_row(
            stage.name,
            state,
            f"{stage.rate_in:,.0f}",
            f"{stage.rate_out:,.0f}",
            "-" if stage.lag is None else f"{stage.lag:,}",
            stage.detail(),
        )
    return table


@app.command()
def run(
    duration: Annotated[
        float | None, typer.Option(min=1, help="stop after S seconds (default: until Ctrl-C)")
    ] = None,
    symbols: Annotated[str, typer.Option(help="comma-separated symbols")] = DEFAULT_SYMBOLS,
    rate: Annotated[float, typer.Option(min=0.1, help="feed trades per second")] = 50.0,
    ticks: Annotated[int | None, typer.Option(min=1, help="feed stops after N trades")] = None,
    seed: Annotated[int, typer.Option(help="feed random seed")] = 7,
    metrics_port: Annotated[
        int, typer.Option(help="first Prometheus port (stage i gets PORT+i); 0 = pick free")
    ] = 0,
    live: Annotated[bool, typer.Option(help="live terminal view")] = True,
    drain_timeout: Annotated[
        float, typer.Option(help="max seconds to let consumers catch up")
    ] = 120.0,
) -> None:
    """Run the whole pipeline on the local stack, supervised; summary and queries at the end."""
    from core.kafka import ensure_topics, wait_for_broker
    from omniquant.access import component_settings, ensure_access
    from omniquant.stack.manager import LocalStack
    from omniquant.supervisor import Supervisor, pipeline_stages

    base = _settings(None)
    settings = _settings()
    symbol_list = _symbols(symbols)
    try:
        started = time.monotonic()
        LocalStack(settings).up()
        wait_for_broker(settings, timeout=settings.stack.start_timeout_s)
        ensure_topics(settings, topic_catalog())
        ensure_access(settings)
        console.print(f"stack and topics ready in {time.monotonic() - started:.1f} s")
    except OmniquantError as exc:
        raise _fail(exc) from None

    feed = {"symbols": symbol_list, "rate": rate, "ticks": ticks, "seed": seed}
    stages = pipeline_stages(settings, options={"feed": feed}, metrics_base_port=metrics_port)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    log_dir = settings.state_dir / "logs" / f"run-{stamp}"
    console.print("stages (Prometheus metrics):")
    for stage in stages:
        console.print(f"  {stage.name:<16} http://127.0.0.1:{stage.metrics_port}/metrics")
    console.print(f"logs: {log_dir}")

    use_live = live and console.is_terminal
    last_print = [0.0]

    def print_progress(sup: Supervisor) -> None:
        if time.monotonic() - last_print[0] >= 5.0:
            last_print[0] = time.monotonic()
            console.print(_live_view(sup))

    if use_live:
        with Live(console=console, refresh_per_second=2) as view:
            supervisor = Supervisor(
                settings,
                stages,
                duration=duration,
                log_dir=log_dir,
                drain_timeout=drain_timeout,
                on_tick=lambda s: view.update(_live_view(s)),
                stage_kafka=lambda name: component_settings(base, name).kafka,
            )
            code = supervisor.run()
            view.update(_live_view(supervisor))
    else:
        supervisor = Supervisor(
            settings,
            stages,
            duration=duration,
            log_dir=log_dir,
            drain_timeout=drain_timeout,
            on_tick=print_progress,
            stage_kafka=lambda name: component_settings(base, name).kafka,
        )
        code = supervisor.run()
        console.print(_live_view(supervisor))
    elapsed = time.monotonic() - supervisor.started_at
    if code != 0:
        err_console.print(f"[red]run failed after {elapsed:.1f} s: {supervisor.outcome}[/red]")
        raise typer.Exit(code)
    _print_summary(settings, supervisor, elapsed)


def _print_summary(settings: Settings, supervisor: Any, elapsed: float) -> None:
    from core.clickhouse import connect_clickhouse
    from sinks.clickhouse import TABLE_BY_TOPIC

    console.print(
        f"\n[bold]run finished cleanly[/bold] after {elapsed:.1f} s ({supervisor.outcome})"
    )
    stages = Table(title="stages (figures from each stage's metrics at stop)")
    for col in ("stage", "consumed", "produced", "peak in/s", "peak out/s", "detail"):
        stages.add_column(col, justify="left" if col in ("stage", "detail") else "right")
    for stage in supervisor.stages:
        stages.add_row(
            stage.name,
            f"{stage.consumed:,.0f}",
            f"{stage.produced:,.0f}",
            f"{stage.peak_in:,.0f}",
            f"{stage.peak_out:,.0f}",
            stage.detail(),
        )
    console.print(stages)
    accounts = _accounts_table(supervisor)
    if accounts is not None:
        accounts.title = "accounts (last figures of the stages that export them)"
        console.print(accounts)
    db = settings.clickhouse.database
    try:
        client = connect_clickhouse(settings)
        try:
            table = Table(title=f"ClickHouse database `{db}` (all runs on this state dir)")
            table.add_column("table")
            table.add_column("rows", justify="right")
            for name in TABLE_BY_TOPIC.values():
                rows = client.query(f"SELECT count() FROM `{db}`.`{name}`").rows[0][0]
                table.add_row(name, f"{rows:,}")
            console.print(table)
        finally:
            client.close()
    except OmniquantError as exc:
        console.print(f"(could not read ClickHouse: {exc})")
    where = (
        mask_url(settings.clickhouse.url.get_secret_value())
        if settings.clickhouse.url
        else f"chDB at {settings.chdb_path}"
    )
    console.print(f"data: {where}")
    console.print("query it, e.g.:")
    console.print(
        f'  omniquant sql "SELECT symbol, count(), sum(quantity) FROM {db}.fills GROUP BY symbol"'
    )
    console.print(
        f'  omniquant sql "SELECT decision, reason, count() FROM {db}.risk_decisions '
        'GROUP BY ALL" --format csv'
    )


# ---- produce ------------------------------------------------------------------------
# The venues are those producers.venues registers (the one list); typer needs an enum.
Venue = StrEnum("Venue", {name.replace("-", "_"): name for name in VENUES})  # type: ignore[misc]


@app.command()
def produce(
    venue: Annotated[Venue, typer.Argument(help="which vendor feed")],
    symbols: Annotated[str, typer.Option(help="comma-separated symbols (Kite: NSE:INFY,...)")],
    staleness: Annotated[
        float, typer.Option(min=1, help="seconds without data before a staleness alert")
    ] = 30.0,
    instruments: Annotated[
        Path | None, typer.Option(help="Kite instrument dump CSV (default: download it)")
    ] = None,
) -> None:
    """Run a vendor feed into Kafka (credentials from the environment)."""
    import asyncio
    import signal as signals

    from core.logs import configure_logging
    from core.metrics import serve_metrics
    from producers.runner import FeedRunner, RunnerConfig
    from producers.venues import create_feed

    settings = _settings("feed")  # the feed's principal: market topics only
    symbol_list = [s.strip() for s in symbols.split(",") if s.strip()]
    if not symbol_list:
        raise typer.BadParameter("give at least one symbol")

    async def main() -> None:
        feed = await create_feed(venue.value, settings, instruments_csv=instruments)
        configure_logging(f"feed-{venue.value}", settings.log_level)
        serve_metrics(settings.metrics_port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signals.SIGINT, signals.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        runner = FeedRunner(feed, settings, symbol_list, config=RunnerConfig(staleness_s=staleness))
        stats = await runner.run(stop)
        console.print(f"{venue.value}: produced {stats.produced}, malformed {stats.malformed}")

    try:
        asyncio.run(main())
    except OmniquantError as exc:
        raise _fail(exc, 2 if isinstance(exc, ConfigError) else 1) from None


# ---- replay -------------------------------------------------------------------------
@app.command("replay")
def replay_command(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Lean tick zips, CSV, NDJSON or Parquet files, or directories"),
    ],
    speed: Annotated[str, typer.Option(help="max, 1x, 10x or any factor of event time")] = "max",
    start: Annotated[
        str | None,
        typer.Option("--from", help="first event time: ISO-8601 with a zone, or epoch ns"),
    ] = None,
    end: Annotated[
        str | None, typer.Option("--to", help="end event time (exclusive), same forms")
    ] = None,
    topic_prefix: Annotated[
        str | None, typer.Option(help="topic namespace (default: OMNIQUANT_TOPIC_PREFIX)")
    ] = None,
) -> None:
    """Replay recorded ticks into the trades/quotes topics in event-time order.

    Prints how every row ended (read = produced + skipped + failed); exits 1 if any record or
    dead letter was not delivered, 130 if interrupted.
    """
    from core.kafka import ensure_topics, wait_for_broker
    from omniquant.access import component_settings, ensure_access
    from producers.replay import open_files, parse_bound, parse_speed
    from producers.replay import replay as replay_files

    admin = _settings()
    if topic_prefix is not None:
        admin = admin.model_copy(update={"topic_prefix": topic_prefix})
    try:
        settings = component_settings(_settings(None), "replay")  # writes market data only
    except ConfigError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    settings = settings.model_copy(update={"topic_prefix": admin.topic_prefix})
    bounds: list[int | None] = []
    for option, value in (("--from", start), ("--to", end)):
        try:
            bounds.append(None if value is None else parse_bound(value))
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint=option) from None
    try:
        parse_speed(speed)
    except OmniquantError as exc:
        raise typer.BadParameter(str(exc), param_hint="--speed") from None
    try:
        open_files(paths)  # a missing or unsupported file fails here, before any broker call
        wait_for_broker(admin, timeout=30)
        ensure_topics(admin, topic_catalog())
        ensure_access(admin)  # a secure stack: the namespace's ACLs (--topic-prefix: its own)
        stats = replay_files(
            paths, settings, speed=speed, from_ns=bounds[0], to_ns=bounds[1], progress=True
        )
    except OmniquantError as exc:
        raise _fail(exc) from None
    table = Table(title=f"replay of {stats.files} file(s) — {stats.elapsed_s:.1f} s")
    table.add_column("rows")
    table.add_column("count", justify="right")
    for label, count in stats.report():
        table.add_row(label, f"{count:,}" if isinstance(count, int) else count)
    console.print(table)
    console.print(f"{stats.rate:,.0f} rows/s")
    for error in stats.errors:
        err_console.print(f"[red]delivery:[/red] {error}")
    if stats.interrupted:
        err_console.print("[yellow]interrupted[/yellow]")
        raise typer.Exit(130)
    if not stats.ok:
        raise typer.Exit(1)


# ---- lag ----------------------------------------------------------------------------
def _register_lag() -> None:
    from omniquant.lag_cli import lag

    app.command("lag")(lag)


_register_lag()


# ---- backtest, report ---------------------------------------------------------------
def _register_backtest_and_report() -> None:
    from omniquant.backtest import backtest
    from omniquant.report.cli import report

    app.command("backtest")(backtest)
    app.command("report")(report)


_register_backtest_and_report()


# ---- schemas ------------------------------------------------------------------------
def _register_schemas() -> None:
    from omniquant.schemas_export import app as schemas_app

    app.add_typer(schemas_app, name="schemas")


_register_schemas()


# ---- trace --------------------------------------------------------------------------
@app.command()
def trace(
    client_order_id: Annotated[
        str, typer.Argument(help="the order's client order id, or a unique prefix of it")
    ],
    prefix: Annotated[
        str | None,
        typer.Option(help="topic namespace, e.g. ps1. (default: the last one holding the id)"),
    ] = None,
    run: Annotated[
        str | None, typer.Option(help="a backtest's run id: the namespace bt-<RUN>.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document")] = False,
) -> None:
    """One order's path across topics from ClickHouse: each hop's times and latency."""
    from core.clickhouse import connect_clickhouse
    from omniquant.report.cli import namespace_of
    from omniquant.trace import Trace, read_trace, render, to_json

    prefix = namespace_of(prefix, run)
    settings = _settings()
    try:
        client = connect_clickhouse(settings)
        try:
            found = read_trace(client, settings.clickhouse.database, client_order_id, prefix=prefix)
        finally:
            client.close()
    except OmniquantError as exc:
        raise _fail(exc) from None
    if not isinstance(found, Trace):
        where = f" in namespace {prefix!r}" if prefix is not None else ""
        if found.candidates:
            shown = ", ".join(found.candidates[:5]) + (", ..." if len(found.candidates) > 5 else "")
            message = f"{client_order_id!r} is the prefix of {len(found.candidates)} ids: {shown}"
        else:
            message = f"no order with client order id {client_order_id!r}{where}"
        err_console.print(message, soft_wrap=True)
        raise typer.Exit(1)
    if as_json:
        sys.stdout.write(json.dumps(to_json(found), indent=2) + "\n")
    else:
        render(found, console)


# ---- sql ----------------------------------------------------------------------------
class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat()
    return value


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="SQL for ClickHouse (chDB or server)")],
    output: Annotated[OutputFormat, typer.Option("--format", "-f")] = OutputFormat.table,
) -> None:
    """Query the platform's ClickHouse (embedded chDB by default, CLICKHOUSE_URL if set)."""
    from core.clickhouse import connect_clickhouse

    settings = _settings()
    try:
        client = connect_clickhouse(settings)
        try:
            result = client.query(query)
        finally:
            client.close()
    except OmniquantError as exc:
        raise _fail(exc) from None
    if output == OutputFormat.json:
        rows = [dict(zip(result.columns, map(_plain, row), strict=True)) for row in result.rows]
        sys.stdout.write(json.dumps(rows, default=str, indent=2) + "\n")
    elif output == OutputFormat.csv:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(result.columns)
        writer.writerows([[_plain(v) for v in row] for row in result.rows])
        sys.stdout.write(buf.getvalue())
    else:
        table = Table()
        for col in result.columns:
            table.add_column(col)
        for row in result.rows:
            table.add_row(*("NULL" if v is None else str(_plain(v)) for v in row))
        console.print(table)
        console.print(f"{len(result.rows)} row(s)")


# ---- config -------------------------------------------------------------------------
@config_app.command("show")
def config_show() -> None:
    """Print the effective settings as JSON (secrets masked)."""
    settings = _settings()
    doc = json.loads(settings.model_dump_json())
    doc["effective"] = {
        "kafka_bootstrap": settings.kafka_bootstrap(),
        "redis": mask_url(settings.redis_url()),
        "chdb_path": str(settings.chdb_path),
    }
    console.print_json(json.dumps(doc, default=str))


# ---- secure deployments ---------------------------------------------------------------
@secure_app.command("init")
def secure_init(
    directory: Annotated[Path, typer.Argument(help="where the files go (made 0700)")],
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="a name clients reach the broker by (default: kafka)"),
    ] = None,
) -> None:
    """A CA, the broker's certificate and a SCRAM password per component, as files to mount
    (see README, Secure mode in containers). Kept when they exist; no secret is printed."""
    from omniquant.access import COMPONENTS
    from omniquant.stack.secure import StackSecrets, export_for_containers

    hosts = tuple(host or ["kafka"])
    secrets_ = StackSecrets.in_directory(directory)
    files = export_for_containers(secrets_, list(COMPONENTS), hosts)
    console.print(f"{secrets_.directory}: CA, broker key store for {', '.join(hosts)}, ")
    console.print(f"{len(files) - 2} passwords: " + ", ".join(f.name for f in files[2:]))


@secure_app.command("apply")
def secure_apply(
    secrets_dir: Annotated[
        Path,
        typer.Option(
            "--secrets", help="where the container has kafka-ca and kafka-password-<component>"
        ),
    ] = Path("/run/secrets"),
    timeout: Annotated[float, typer.Option(help="seconds to wait for the broker, the ACLs")] = 60.0,
) -> None:
    """As the operator (OMNIQUANT_KAFKA__SASL_USERNAME=admin and its password): every
    component's SCRAM user, with its password as mounted, and the ACLs of
    OMNIQUANT_TOPIC_PREFIX's namespace (the compose and k8s `access` job)."""
    from core.kafka import wait_for_broker
    from omniquant.access import apply_access
    from omniquant.stack.secure import MountedSecrets

    settings = _settings(None)
    mounted = MountedSecrets(secrets_dir)
    try:
        wait_for_broker(settings, timeout=timeout)
        users, acls = apply_access(settings, mounted, timeout)
    except ConfigError as exc:
        raise _fail(exc, 2) from None
    except OmniquantError as exc:
        raise _fail(exc) from None
    prefix = settings.topic_prefix
    console.print(f"{users} SCRAM user(s) created; {acls} ACL binding(s) of {prefix!r}")


def quiet_third_party_warnings() -> None:
    """confluent-kafka's schema-registry client imports authlib, which warns on import (and
    forces its warnings to "always" when its deprecate module loads, so load it first)."""
    with contextlib.suppress(ImportError):
        import authlib.deprecate  # noqa: F401
    warnings.filterwarnings("ignore", message="The httpx module is deprecated")


def main() -> None:
    quiet_third_party_warnings()
    app()


if __name__ == "__main__":
    main()
