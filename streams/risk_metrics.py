"""Risk-metrics app: portfolio snapshots → VaR, ES, volatility, drawdown, daily PnL, a VaR
backtest and risk alerts, per account.

Input is the ``portfolio`` topic, already keyed by account, so one state scope per account
holds its :class:`~streams.logic.account_risk.AccountRisk` (bar-close sampling, the risk
engine, the backtester). Each bar close yields one :class:`~schemas.models.RiskMetric` per
figure on ``risk.metrics`` (key: the account) and any alert on ``alerts``. Metric names:

- ``EQUITY``, ``PEAK_EQUITY``, ``DAILY_PNL``, ``DAILY_LOSS``, ``DAILY_LOSS_LIMIT`` (money)
- ``DRAWDOWN``, ``MAX_DRAWDOWN`` (fractions of the peak), ``DRAWDOWN_AMOUNT``,
  ``MAX_DRAWDOWN_AMOUNT`` (money)
- ``VOLATILITY``, ``VOLATILITY_EWMA`` (σ of one period's return)
- ``VAR_<level>_<METHOD>``, ``ES_<level>_<METHOD>``: positive money loss over one period,
  level 95 / 975 / 99, method HISTORICAL / NORMAL / EWMA
- ``VAR_BACKTEST_EXCEPTIONS``, ``KUPIEC_LR``, ``KUPIEC_P``, ``CHRISTOFFERSEN_LR``,
  ``CHRISTOFFERSEN_P``, ``CONDITIONAL_COVERAGE_LR``, ``BASEL_ZONE`` (0 green, 1 yellow,
  2 red) for the 99 % historical VaR over the backtest window

Values are fixed-point (scale 1e-9): money exactly, statistics rounded to 1e-9.
"""

from __future__ import annotations

from typing import Any

from quixstreams import State

from core.config import RiskLimits, RiskMetricsSettings, Settings
from core.metrics import (
    DAILY_LOSS_LIMIT,
    DAILY_PNL,
    DRAWDOWN,
    EXPECTED_SHORTFALL,
    MAX_DRAWDOWN,
    PNL_CHANGES,
    VALUE_AT_RISK,
)
from schemas.fixedpoint import FACTOR, from_fixed, to_fixed
from schemas.models import Alert, Control, ControlType, RiskMetric, TradingState
from streams.control import control_key
from streams.logic.account_risk import AccountRisk, RiskObservation
from streams.logic.var import AlertKind, RiskAlert, RiskConfig
from streams.logic.var_backtest import BacktestReport, TrafficLight
from streams.runtime import StreamApp, correlation_headers, now_ns

_STATE = "risk"
_ZONE_CODE = {TrafficLight.GREEN: 0, TrafficLight.YELLOW: 1, TrafficLight.RED: 2}


def risk_config(settings: RiskMetricsSettings, limits: RiskLimits) -> RiskConfig:
    """The engine's settings for an account whose resolved limits are ``limits``."""
    return RiskConfig(
        window=settings.window,
        min_returns=settings.min_returns,
        ewma_lambda=float(settings.ewma_lambda),
        daily_loss_limit=to_fixed(limits.daily_loss_limit),
        daily_loss_warning=float(settings.daily_loss_warning),
        drawdown_alert=float(limits.max_drawdown),
        timezone=settings.timezone,
        day_cut=settings.day_cut,
    )


def level_name(level: float) -> str:
    """0.95 → "95", 0.975 → "975", 0.99 → "99"."""
    return f"{level * 100:g}".replace(".", "")


def _ratio(value: float) -> int:
    return round(value * FACTOR)


class RiskMetricsProcessor:
    """Wires :class:`AccountRisk` to Quix state and turns observations into records."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings.risk_metrics
        self.limits = settings.risk
        self._configs: dict[str, RiskConfig] = {}
        self.cadence_ns = settings.risk_metrics.cadence_ms * 1_000_000

    def config(self, account: str) -> RiskConfig:
        """Per account: the loss and drawdown limits may be overridden per account."""
        found = self._configs.get(account)
        if found is None:
            limits = self.limits.resolved(account, "*", "*")
            found = self._configs[account] = risk_config(self.settings, limits)
        return found

    def on_portfolio(self, value: dict[str, Any], state: State[str, Any]) -> dict[str, Any]:
        account = str(value["account"])
        config = self.config(account)
        stored = state.get(_STATE)
        risk = (
            AccountRisk.restore(stored, config)
            if stored is not None
            else AccountRisk(
                account,
                config,
                self.cadence_ns,
                backtest_window=self.settings.backtest_window,
            )
        )
        observation = risk.on_portfolio(int(value["ts_event"]), int(value["equity"]))
        state.set(_STATE, risk.snapshot())
        if observation is None:
            return {"metrics": [], "alerts": [], "controls": []}
        ts_init = now_ns()
        self._export(observation)
        alerts = observation.metrics.alerts
        return {
            "metrics": [m.model_dump() for m in metric_records(observation, ts_init)],
            "alerts": [alert_record(a, ts_init).model_dump() for a in alerts],
            "controls": [
                c.model_dump()
                for c in (control_record(a, ts_init) for a in alerts)
                if c is not None
            ],
        }

    @staticmethod
    def _export(observation: RiskObservation) -> None:
        snap = observation.metrics
        account = snap.account
        DAILY_PNL.labels(account).set(float(from_fixed(snap.daily_pnl)))
        DAILY_LOSS_LIMIT.labels(account).set(float(from_fixed(snap.daily_loss_limit)))
        DRAWDOWN.labels(account).set(snap.drawdown_fraction)
        MAX_DRAWDOWN.labels(account).set(snap.max_drawdown_fraction)
        if snap.period_pnl is not None:
            PNL_CHANGES.labels(account).observe(float(from_fixed(snap.period_pnl)))
        for estimate in snap.tail:
            level = level_name(estimate.level)
            VALUE_AT_RISK.labels(account, estimate.method.value, level).set(
                float(from_fixed(estimate.var))
            )
            if estimate.method.value == "HISTORICAL":
                EXPECTED_SHORTFALL.labels(account, level).set(float(from_fixed(estimate.es)))


def metric_records(observation: RiskObservation, ts_init: int) -> list[RiskMetric]:
    """Every figure of one observation as a RiskMetric (see the module docstring)."""
    snap = observation.metrics
    window = f"{snap.returns} returns"
    day = f"session {snap.session_day.isoformat()}"
    figures: list[tuple[str, int, str | None]] = [
        ("EQUITY", snap.equity, None),
        ("PEAK_EQUITY", snap.peak, None),
        ("DAILY_PNL", snap.daily_pnl, day),
        ("DAILY_LOSS", snap.daily_loss, day),
        ("DAILY_LOSS_LIMIT", snap.daily_loss_limit, day),
        ("DRAWDOWN", _ratio(snap.drawdown_fraction), None),
        ("DRAWDOWN_AMOUNT", snap.drawdown, None),
        ("MAX_DRAWDOWN", _ratio(snap.max_drawdown_fraction), None),
        ("MAX_DRAWDOWN_AMOUNT", snap.max_drawdown, None),
    ]
    if snap.volatility is not None:
        figures.append(("VOLATILITY", _ratio(snap.volatility), window))
    if snap.ewma_volatility is not None:
        figures.append(("VOLATILITY_EWMA", _ratio(snap.ewma_volatility), "ewma"))
    for estimate in snap.tail:
        suffix = f"{level_name(estimate.level)}_{estimate.method.value}"
        figures.append((f"VAR_{suffix}", estimate.var, window))
        figures.append((f"ES_{suffix}", estimate.es, window))
    if observation.backtest is not None:
        figures.extend(_backtest_figures(observation.backtest))
    return [
        RiskMetric(
            metric=name,
            scope=snap.account,
            value=value,
            window=label,
            ts_event=snap.ts_event,
            ts_init=ts_init,
        )
        for name, value, label in figures
    ]


def _backtest_figures(report: BacktestReport) -> list[tuple[str, int, str | None]]:
    window = f"{report.observations} periods"
    return [
        ("VAR_BACKTEST_EXCEPTIONS", report.exceptions * FACTOR, window),
        ("KUPIEC_LR", _ratio(report.pof.statistic), window),
        ("KUPIEC_P", _ratio(report.pof.p_value), window),
        ("CHRISTOFFERSEN_LR", _ratio(report.independence.statistic), window),
        ("CHRISTOFFERSEN_P", _ratio(report.independence.p_value), window),
        ("CONDITIONAL_COVERAGE_LR", _ratio(report.conditional_coverage.statistic), window),
        ("BASEL_ZONE", _ZONE_CODE[report.zone] * FACTOR, window),
    ]


def alert_record(alert: RiskAlert, ts_init: int) -> Alert:
    return Alert(
        alert_id=alert.key,
        severity=alert.severity,
        source="risk-metrics",
        kind=alert.kind.value,
        message=alert.message,
        attributes={
            "account": alert.account,
            "value": str(from_fixed(alert.value)),
            "fraction": f"{alert.fraction:.6f}",
            "level": f"{alert.level:g}",
            "session_day": alert.session_day.isoformat(),
        },
        ts_event=alert.ts_event,
        ts_init=ts_init,
    )


#: Alerts that change the account's trading state: the day's loss limit halts it, the
#: drawdown limit lets it only reduce exposure.
_STATE_ON_ALERT = {
    AlertKind.DAILY_LOSS_BREACH: TradingState.HALTED,
    AlertKind.DRAWDOWN: TradingState.REDUCING,
}


def control_record(alert: RiskAlert, ts_init: int) -> Control | None:
    """The trading-state command an alert issues, if any. Its id derives from the alert's
    deterministic key, so a replay issues the same command; alerts fire once per crossing
    (and per day for the loss limit), so `omniquant resume` is not overridden until the
    next one."""
    state = _STATE_ON_ALERT.get(alert.kind)
    if state is None:
        return None
    return Control(
        command_id=f"auto-{alert.key}",
        control_type=ControlType.TRADING_STATE,
        trading_state=state,
        scope=alert.account,
        issued_by="risk-metrics",
        reason=alert.message,
        ts_event=alert.ts_event,
        ts_init=ts_init,
    )


def build(settings: Settings, name: str) -> StreamApp:
    """The app under the stage name the registry gives it (its group and dead letters)."""
    stream = StreamApp(settings, name)
    processor = RiskMetricsProcessor(settings)
    outputs = stream.dataframe("portfolio").apply(processor.on_portfolio, stateful=True)

    metrics = outputs.apply(lambda out: out["metrics"], expand=True)
    metrics.to_topic(stream.topic("risk.metrics"), key=lambda m: m["scope"])

    alerts = outputs.apply(lambda out: out["alerts"], expand=True)
    alerts = alerts.set_headers(correlation_headers("alert_id"))
    alerts.to_topic(stream.topic("alerts"), key=lambda a: a["source"])

    controls = outputs.apply(lambda out: out["controls"], expand=True)
    controls = controls.set_headers(correlation_headers("command_id"))
    controls.to_topic(stream.topic("control"), key=lambda c: control_key(c["scope"]))
    return stream


def run(settings: Settings, *, name: str) -> None:
    build(settings, name).run()
