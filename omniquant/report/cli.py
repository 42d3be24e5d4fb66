"""The `omniquant report` command (registered in omniquant.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from core.config import load_settings
from core.errors import ConfigError, OmniquantError
from core.topics import backtest_namespace

__all__ = ["namespace_of", "report"]


def namespace_of(prefix: str | None, run: str | None) -> str | None:
    """The namespace ``--prefix`` or ``--run`` names (None: neither); both: exit 2."""
    if run is None:
        return prefix
    if prefix is not None:
        typer.echo("give --prefix or --run, not both", err=True)
        raise typer.Exit(2)
    return backtest_namespace(run)


def report(
    out: Annotated[Path, typer.Option(help="directory for index.html and the PNG charts")] = Path(
        "report"
    ),
    account: Annotated[
        str | None, typer.Option(help="account (default: the one with the most snapshots)")
    ] = None,
    symbol: Annotated[
        str | None,
        typer.Option(help="only this symbol's prices, orders, fills and rejections"),
    ] = None,
    prefix: Annotated[
        str | None,
        typer.Option(help="topic namespace, e.g. ps1. (default: the one written last)"),
    ] = None,
    run: Annotated[
        str | None, typer.Option(help="a backtest's run id: the namespace bt-<RUN>.")
    ] = None,
) -> None:
    """Write a static HTML report (equity, drawdown, VaR, fills) from ClickHouse."""
    from core.clickhouse import connect_clickhouse
    from omniquant.report import from_clickhouse, render_report

    prefix = namespace_of(prefix, run)
    try:
        settings = load_settings()
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    try:
        client = connect_clickhouse(settings)
        try:
            data = from_clickhouse(
                client,
                settings.clickhouse.database,
                account=account,
                symbol=symbol,
                prefix=prefix,
            )
        finally:
            client.close()
    except OmniquantError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    page = render_report(data, out)
    typer.echo(str(page.resolve()))
