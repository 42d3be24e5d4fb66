"""`omniquant lag`: every consumer group's lag in records and seconds, and its status.

The same collector and rules as the lag-monitor stage (streams.lag_monitor), run here: a
one-shot call polls ``--samples`` times ``--interval`` seconds apart and judges over that
short window (STOP needs ``lag.stop_after_s`` of stillness, so a one-shot rarely says STOP;
the stage's records in ``monitoring.consumer_lag`` carry the long-window verdicts).
``--watch`` keeps polling and redraws a table (or prints one JSON document per poll), the
window filling as it goes.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from core.config import Settings, load_settings
from core.errors import ConfigError
from schemas.models import LagStatus
from streams.lag_monitor import LagCollector, lag_rules
from streams.logic.lag import GroupLag, LagBook

__all__ = ["lag", "lag_document", "lag_table"]

_STYLE = {
    LagStatus.OK: "green",
    LagStatus.WARN: "yellow",
    LagStatus.STALL: "red",
    LagStatus.STOP: "red",
    LagStatus.ERROR: "bold red",
}


def lag_document(groups: list[GroupLag], ts_ns: int) -> dict[str, Any]:
    """The --json document: per group its status and total lag, per topic and partition
    committed, end, lag, lag_seconds, status (and how the time lag was found)."""
    out: dict[str, Any] = {}
    for g in groups:
        topics: dict[str, dict[str, Any]] = {}
        for p in g.partitions:
            topics.setdefault(p.topic, {})[str(p.partition)] = {
                "committed": p.committed,
                "end": p.end,
                "lag": p.lag,
                "lag_seconds": round(p.time_lag.seconds, 3),
                "time_lag_method": p.time_lag.method,
                "status": p.status.value,
                "reason": p.reason,
            }
        out[g.group] = {"status": g.status.value, "lag": g.lag, "topics": topics}
    return {"ts_event": ts_ns, "groups": out}


def lag_table(groups: list[GroupLag]) -> Table:
    table = Table(title="consumer group lag")
    for col, justify in (
        ("group", "left"),
        ("status", "left"),
        ("topic", "left"),
        ("partition", "right"),
        ("committed", "right"),
        ("end", "right"),
        ("lag", "right"),
        ("lag (s)", "right"),
        ("partition status", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for g in groups:
        for i, p in enumerate(g.partitions):
            table.add_row(
                g.group if i == 0 else "",
                f"[{_STYLE[g.status]}]{g.status.value}[/]" if i == 0 else "",
                p.topic,
                str(p.partition),
                f"{p.committed:,}",
                "gone" if p.end is None else f"{p.end:,}",
                f"{p.lag:,}",
                f"{p.time_lag.seconds:,.1f}",
                f"[{_STYLE[p.status]}]{p.status.value}[/]",
            )
    return table


def _poll(
    collector: LagCollector,
    book: LagBook,
    settings: Settings,
    groups: list[str] | None,
    topics: list[str] | None,
) -> tuple[list[GroupLag], int]:
    now = time.time_ns()
    observed = collector.collect(
        now,
        groups=groups,
        topics=topics,
        max_peeks=settings.lag.max_peeks,
        peek_timeout=settings.lag.peek_timeout_s,
    )
    for (g, t, p), obs in observed.items():
        book.observe(g, t, p, obs)
    book.retain(observed)
    return book.evaluate(now), now


def lag(
    group: Annotated[
        list[str] | None, typer.Option("--group", "-g", help="only this group (repeatable)")
    ] = None,
    topic: Annotated[
        list[str] | None,
        typer.Option("--topic", "-t", help="only this (physical) topic (repeatable)"),
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", help="keep polling; Ctrl-C stops")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON document (per poll with --watch)")
    ] = False,
    samples: Annotated[
        int, typer.Option(min=1, max=1000, help="polls of a one-shot run (its window)")
    ] = 3,
    interval: Annotated[
        float | None,
        typer.Option(
            min=0.05, help="seconds between polls [default: 1, --watch: lag.poll_interval_s]"
        ),
    ] = None,
    count: Annotated[
        int | None, typer.Option(min=1, help="with --watch: stop after this many polls")
    ] = None,
) -> None:
    """Consumer-group lag (records and seconds) and Burrow-style status, every group."""
    try:
        from omniquant.access import component_settings
        from omniquant.stack.shape import with_saved_shape

        settings = component_settings(with_saved_shape(load_settings()), "lag-monitor")
    except ConfigError as exc:
        Console(stderr=True).print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    rules = lag_rules(settings)
    if not watch:  # a short window of its own, judged only once full (1 sample: never)
        rules = replace(rules, window=max(2, samples), minimum_complete=1.0)
    book = LagBook(rules)
    collector = LagCollector(settings)
    console = Console()
    pause = interval if interval is not None else (settings.lag.poll_interval_s if watch else 1.0)
    try:
        if not watch:
            for i in range(samples):
                if i:
                    time.sleep(pause)
                groups, now = _poll(collector, book, settings, group, topic)
            if as_json:
                typer.echo(json.dumps(lag_document(groups, now)))
            else:
                console.print(lag_table(groups))
            return
        polls = 0
        if as_json:
            while count is None or polls < count:
                if polls:
                    time.sleep(pause)
                groups, now = _poll(collector, book, settings, group, topic)
                typer.echo(json.dumps(lag_document(groups, now)))
                polls += 1
            return
        with Live(Table(), console=console, auto_refresh=False) as live:
            while count is None or polls < count:
                if polls:
                    time.sleep(pause)
                groups, _ = _poll(collector, book, settings, group, topic)
                live.update(lag_table(groups), refresh=True)
                polls += 1
    except KeyboardInterrupt:
        pass
    finally:
        collector.close()
