"""One account's risk on the stream: portfolio snapshots → an equity observation at each bar
close → risk metrics and a rolling VaR backtest.

Pure: no I/O, no clock; :meth:`AccountRisk.snapshot` / :meth:`AccountRisk.restore`.

Cadence
    Observations are taken at bar closes of ``cadence_ns`` (aligned to the epoch, event
    time): the equity observed for the bar ``[start, start + cadence)`` is that of the last
    portfolio snapshot inside it, stamped with the bar's end. A bar closes when the first
    snapshot of a later bar arrives (the same rule as the strategy's bars), so the metrics
    never look ahead. Bars with no snapshot produce no observation (the account's marks did
    not change in them). A snapshot older than the open bar is late: counted, ignored.

VaR backtest
    The 99 % historical VaR reported at one observation is the forecast for the next
    period; the next observation's loss (``-period_pnl``) is the realised outcome. The pair
    goes to a rolling :class:`~streams.logic.var_backtest.VarBacktester` (Kupiec POF,
    Christoffersen independence, Basel traffic light).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from streams.logic.var import RiskConfig, RiskMetricsEngine, RiskSnapshot, VarMethod
from streams.logic.var_backtest import BacktestReport, VarBacktester

__all__ = ["AccountRisk", "RiskObservation"]

SNAPSHOT_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class RiskObservation:
    """What one bar close produced: the metrics, and the backtest once it has pairs."""

    metrics: RiskSnapshot
    backtest: BacktestReport | None


class AccountRisk:
    """Bar-close sampling, the risk engine and the VaR backtester of one account."""

    def __init__(
        self,
        account: str,
        config: RiskConfig,
        cadence_ns: int,
        *,
        backtest_level: float = 0.99,
        backtest_window: int = 250,
    ) -> None:
        if cadence_ns < 1:
            raise ValueError(f"cadence_ns must be >= 1, got {cadence_ns}")
        if backtest_level not in config.levels:
            raise ValueError(f"backtest level {backtest_level} is not a VaR level of the config")
        self.account = account
        self.cadence_ns = cadence_ns
        self.engine = RiskMetricsEngine(account, config)
        self.backtester = VarBacktester(level=backtest_level, window=backtest_window)
        self._bar: int | None = None  # open bar's start
        self._equity = 0  # last equity seen in the open bar
        self._ts = 0  # its event time
        self._forecast: int | None = None  # last reported VaR at the backtest level
        self._late = 0

    @property
    def late_snapshots(self) -> int:
        return self._late

    def on_portfolio(self, ts_event: int, equity: int) -> RiskObservation | None:
        """Feed one portfolio snapshot; an observation when it closed the open bar."""
        bar = ts_event - ts_event % self.cadence_ns
        if self._bar is None or bar == self._bar:
            if self._bar is None or ts_event >= self._ts:
                self._bar, self._equity, self._ts = bar, equity, ts_event
            return None
        if bar < self._bar:
            self._late += 1
            return None
        observation = self._close(self._bar + self.cadence_ns, self._equity)
        self._bar, self._equity, self._ts = bar, equity, ts_event
        return observation

    def _close(self, close_ts: int, equity: int) -> RiskObservation:
        metrics = self.engine.on_equity(close_ts, equity)
        report = None
        if self._forecast is not None and metrics.period_pnl is not None:
            report = self.backtester.observe(self._forecast, -metrics.period_pnl)
        estimate = metrics.tail_risk(VarMethod.HISTORICAL, self.backtester.level)
        self._forecast = estimate.var if estimate is not None else None
        return RiskObservation(metrics, report)

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": SNAPSHOT_VERSION,
            "account": self.account,
            "cadence_ns": self.cadence_ns,
            "engine": self.engine.snapshot(),
            "backtester": self.backtester.snapshot(),
            "bar": self._bar,
            "equity": self._equity,
            "ts": self._ts,
            "forecast": self._forecast,
            "late": self._late,
        }

    @classmethod
    def restore(cls, data: Mapping[str, Any], config: RiskConfig | None = None) -> AccountRisk:
        """Rebuild from :meth:`snapshot`; ``config`` replaces the engine's stored one."""
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported AccountRisk snapshot version {data.get('version')!r}")
        engine = RiskMetricsEngine.restore(data["engine"], config)
        backtester = VarBacktester.restore(data["backtester"])
        risk = cls(
            str(data["account"]),
            engine.config,
            int(data["cadence_ns"]),
            backtest_level=backtester.level,
            backtest_window=backtester.window,
        )
        risk.engine, risk.backtester = engine, backtester
        bar = data["bar"]
        risk._bar = None if bar is None else int(bar)
        risk._equity, risk._ts = int(data["equity"]), int(data["ts"])
        forecast = data["forecast"]
        risk._forecast = None if forecast is None else int(forecast)
        risk._late = int(data["late"])
        return risk
