"""Risk metrics of one account from its equity series: VaR, ES, volatility, drawdown, daily PnL.

Pure: no I/O, no clock. Each observation is ``(ts_event, equity)``: the account's equity
(raw fixed-point int, scale 1e-9) at a cadence point — a bar close, say — with its event
time (int UTC ns). The money path (equity, PnL, drawdown) is exact integer arithmetic; the
statistics are floats (VaR is an estimate).

Returns
    Simple returns of equity, ``r_t = (E_t - E_{t-1}) / E_{t-1}``, the correctly rounded
    float of that rational (Python's ``int / int``). Why returns and not PnL changes: a
    return is scale-free, so a window of a year of returns applies to *today's* equity (a
    year-old PnL of an account half the size would halve today's VaR). Why simple and not
    log returns: the loss of the next period is exactly ``-E_t × r_{t+1}``, and simple
    returns of a portfolio are the weighted sum of its positions' returns. A return needs
    ``E_{t-1} > 0``; after a non-positive equity no return is recorded (the statistics
    wait). Deposits and withdrawals are not told apart from PnL: feed equity net of flows.

Window statistics (once the window holds ``min_returns`` returns; up to ``window``, the
latest ones)
    - mean ``μ`` and sample standard deviation ``σ`` (``n - 1`` in the denominator): the
      per-period *window volatility*, not annualised;
    - *EWMA volatility* (RiskMetrics): ``s_t = λ s_{t-1} + (1 - λ) r_t²``, zero mean,
      seeded with ``s_1 = r_1²`` (the first return stands for the unobserved past; its
      weight ``λ^(t-1)`` decays, and the recursion needs no warm-up window of its own —
      it is pandas' ``ewm(alpha=1-λ, adjust=False)`` of ``r²``). ``sqrt(s_t)`` after
      ``r_t`` is the forecast for ``r_{t+1}``, like the window figures, which include
      ``r_t``.

VaR and ES at level α (a :class:`TailEstimate` per method and level; loss positive)
    Fractions of equity, then money: ``round(E_t × fraction)`` in raw units, for the
    current equity ``E_t`` (omitted while ``E_t <= 0``). A negative value means even the
    α-tail of the estimate is a gain.

    ``HISTORICAL``: with the ``n`` returns of the window and ``k = ceil(n (1 - α))``, VaR
    is the k-th largest loss (the k-th smallest return, negated) — numpy's
    ``-quantile(returns, 1 - α, method="inverted_cdf")``, an observed loss, no
    interpolation — and ES is the mean of the ``k`` largest losses (the VaR loss
    included), so ES >= VaR. Levels are read as the decimals they are written as
    (``0.95`` is 19/20 exactly), so ``k`` is exact: 13 of 250 at 95 %, 7 at 97.5 %, 3 at
    99 %.

    ``NORMAL``: ``VaR = z_α σ - μ``, ``ES = σ φ(z_α) / (1 - α) - μ`` with the window's μ
    and σ (the mean *is* included) and ``z_α`` the standard normal quantile.

    ``EWMA``: as ``NORMAL`` with ``μ = 0`` and the EWMA σ.

Drawdown and daily PnL
    See :mod:`streams.logic.drawdown` (peak, money and fraction drawdowns, alert once per
    crossing of ``drawdown_alert``) and :mod:`streams.logic.daily_loss` (session days of
    ``timezone`` cut at ``day_cut``, day PnL from the last equity of the previous day, a
    WARNING and a BREACH of the daily loss limit once per day each).

Order
    Observations must come in event-time order; equal times are accepted. An observation
    older than the last one is *late*: ignored, counted, and answered with the current
    metrics marked ``late`` (no alerts).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import date
from enum import StrEnum
from fractions import Fraction
from functools import lru_cache
from statistics import NormalDist
from typing import Any, Final

from schemas.fixedpoint import FACTOR, INT64_MAX, from_fixed
from schemas.models import AlertSeverity
from streams.logic.daily_loss import DailyLossTracker, DailyLossUpdate, SessionCalendar
from streams.logic.drawdown import DrawdownTracker, DrawdownUpdate

__all__ = [
    "AlertKind",
    "RiskAlert",
    "RiskConfig",
    "RiskMetricsEngine",
    "RiskSnapshot",
    "TailEstimate",
    "VarMethod",
    "historical_es",
    "historical_var",
    "normal_es",
    "normal_var",
    "tail_count",
]

SNAPSHOT_VERSION: Final = 1
_STANDARD_NORMAL: Final = NormalDist()


def _exact(value: float) -> Fraction:
    """A level as the decimal it is written as: 0.95 → 19/20 (not the binary float)."""
    return Fraction(repr(value))


def _money(equity: int, fraction: float) -> int:
    """``round(equity × fraction)`` in raw units, kept inside the int64 range."""
    amount = equity * fraction
    if not -INT64_MAX <= amount <= INT64_MAX:
        return INT64_MAX if amount > 0 else -INT64_MAX
    return round(amount)


# -- estimators (fractions of equity, loss positive) ------------------------------------


@lru_cache(maxsize=64)
def _level_constants(level: float) -> tuple[Fraction, float, float]:
    """``(1 - α`` exactly, ``z_α``, ``φ(z_α) / (1 - α))`` of a level."""
    tail = 1 - _exact(level)
    z = _STANDARD_NORMAL.inv_cdf(level)
    return tail, z, _STANDARD_NORMAL.pdf(z) / float(tail)


def tail_count(n: int, level: float) -> int:
    """``k = ceil(n (1 - level))``, exactly: how many of ``n`` returns form the α-tail."""
    if n < 1:
        raise ValueError(f"need at least one return, got {n}")
    tail = _level_constants(level)[0]
    return max(1, -(-n * tail.numerator // tail.denominator))


def _historical(ascending: Sequence[float], level: float) -> tuple[float, float]:
    k = tail_count(len(ascending), level)
    return -ascending[k - 1], -math.fsum(ascending[:k]) / k


def historical_var(returns: Sequence[float], level: float) -> float:
    """The k-th largest loss of ``returns`` (``k`` = :func:`tail_count`)."""
    return _historical(sorted(returns), level)[0]


def historical_es(returns: Sequence[float], level: float) -> float:
    """The mean of the ``k`` largest losses of ``returns`` (``k`` = :func:`tail_count`)."""
    return _historical(sorted(returns), level)[1]


def normal_var(mean: float, sigma: float, level: float) -> float:
    """``z_α σ - μ``: the α-quantile of the loss of a normal return."""
    return _level_constants(level)[1] * sigma - mean


def normal_es(mean: float, sigma: float, level: float) -> float:
    """``σ φ(z_α) / (1 - α) - μ``: the mean loss beyond the normal VaR."""
    return sigma * _level_constants(level)[2] - mean


# -- records ----------------------------------------------------------------------------


class VarMethod(StrEnum):
    HISTORICAL = "HISTORICAL"
    NORMAL = "NORMAL"
    EWMA = "EWMA"


class AlertKind(StrEnum):
    DAILY_LOSS_WARNING = "DAILY_LOSS_WARNING"
    DAILY_LOSS_BREACH = "DAILY_LOSS_BREACH"
    DRAWDOWN = "DRAWDOWN"


_SEVERITY: Final = {
    AlertKind.DAILY_LOSS_WARNING: AlertSeverity.WARNING,
    AlertKind.DAILY_LOSS_BREACH: AlertSeverity.CRITICAL,
    AlertKind.DRAWDOWN: AlertSeverity.WARNING,
}


@dataclass(frozen=True, slots=True)
class RiskConfig:
    """Parameters of a :class:`RiskMetricsEngine`. Fractions (levels, λ, alert levels) are
    floats read as the decimals they are written as; money is raw fixed-point."""

    window: int = 250  # returns in the historical / normal window
    min_returns: int = 30  # statistics are reported from this many returns on
    levels: tuple[float, ...] = (0.95, 0.975, 0.99)  # VaR and ES levels α, every method
    ewma_lambda: float = 0.94
    daily_loss_limit: int = 10_000 * FACTOR  # $10,000
    daily_loss_warning: float = 0.8  # WARNING at this fraction of the limit
    drawdown_alert: float = 0.15  # alert when the drawdown fraction reaches this
    timezone: str = "America/New_York"  # session days of this zone ...
    day_cut: str = "00:00"  # ... starting at this local wall time

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ValueError(f"window must be >= 2 returns, got {self.window}")
        if not 2 <= self.min_returns <= self.window:
            raise ValueError(f"need 2 <= min_returns <= window, got {self.min_returns}")
        if not self.levels or any(not 0 < level < 1 for level in self.levels):
            raise ValueError(f"levels must be in (0, 1), got {self.levels}")
        if len(set(self.levels)) != len(self.levels):
            raise ValueError(f"levels repeat: {self.levels}")
        if not 0 < self.ewma_lambda < 1:
            raise ValueError(f"ewma_lambda must be in (0, 1), got {self.ewma_lambda}")
        if not 0 < self.daily_loss_limit <= INT64_MAX:
            raise ValueError(
                f"daily_loss_limit must be a positive raw int64, got {self.daily_loss_limit}"
            )
        for name in ("daily_loss_warning", "drawdown_alert"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        SessionCalendar(self.timezone, self.day_cut)  # raises ValueError on a bad zone or cut

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["levels"] = list(self.levels)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RiskConfig:
        return cls(
            window=int(data["window"]),
            min_returns=int(data["min_returns"]),
            levels=tuple(float(level) for level in data["levels"]),
            ewma_lambda=float(data["ewma_lambda"]),
            daily_loss_limit=int(data["daily_loss_limit"]),
            daily_loss_warning=float(data["daily_loss_warning"]),
            drawdown_alert=float(data["drawdown_alert"]),
            timezone=str(data["timezone"]),
            day_cut=str(data["day_cut"]),
        )


@dataclass(frozen=True, slots=True)
class TailEstimate:
    """VaR and ES of one method at one level, for the next period, loss positive."""

    method: VarMethod
    level: float
    var_fraction: float  # of the current equity
    es_fraction: float
    var: int  # raw money: round(equity × var_fraction)
    es: int


@dataclass(frozen=True, slots=True)
class RiskAlert:
    """An alert decision; the app turns it into an :class:`~schemas.models.Alert`.

    ``key`` is deterministic — account, kind and session day (daily loss) or crossing
    number (drawdown) — so a replay of the same equity stream yields the same keys."""

    kind: AlertKind
    severity: AlertSeverity
    account: str
    value: int  # raw money: the day's loss, or the drawdown
    fraction: float  # loss / limit, or the drawdown fraction
    level: float  # the configured level reached (warning fraction, 1.0, drawdown_alert)
    session_day: date
    ts_event: int
    key: str
    message: str


@dataclass(frozen=True, slots=True)
class RiskSnapshot:
    """All metrics of one account at one observation (money raw fixed-point)."""

    account: str
    ts_event: int
    equity: int
    session_day: date
    period_pnl: int | None  # equity - previous observation's equity
    period_return: float | None  # None on the first observation or after equity <= 0
    returns: int  # returns in the window
    mean_return: float | None  # window statistics: None before min_returns returns
    volatility: float | None  # window sample σ per period
    ewma_volatility: float | None
    tail: tuple[TailEstimate, ...]  # every method × level; () without statistics
    day_start_equity: int
    daily_pnl: int
    daily_loss: int  # max(0, -daily_pnl)
    daily_loss_limit: int
    peak: int
    drawdown: int
    drawdown_fraction: float
    max_drawdown: int
    max_drawdown_fraction: float
    alerts: tuple[RiskAlert, ...] = ()
    late: bool = False  # the observation was older than the last one and was ignored

    def tail_risk(self, method: VarMethod, level: float) -> TailEstimate | None:
        """The estimate of ``method`` at ``level``, None if not (yet) reported."""
        for estimate in self.tail:
            if estimate.method == method and estimate.level == level:
                return estimate
        return None


# -- the engine -------------------------------------------------------------------------


class RiskMetricsEngine:
    """Risk metrics of one account; :meth:`snapshot` / :meth:`restore` between records.
    Holds at most ``window`` returns."""

    def __init__(self, account: str, config: RiskConfig | None = None) -> None:
        if not account:
            raise ValueError("account must not be empty")
        self.account = account
        self.config = config if config is not None else RiskConfig()
        self._calendar = SessionCalendar(self.config.timezone, self.config.day_cut)
        self._returns: deque[float] = deque(maxlen=self.config.window)
        self._ewma_var: float | None = None
        self._drawdown = DrawdownTracker(_exact(self.config.drawdown_alert))
        self._daily = DailyLossTracker(
            self.config.daily_loss_limit, _exact(self.config.daily_loss_warning)
        )
        self._ts: int | None = None  # last accepted observation
        self._equity = 0
        self._previous: int | None = None  # equity of the observation before it
        self._late = 0

    @property
    def late_observations(self) -> int:
        """Observations ignored because they were older than the last one."""
        return self._late

    @property
    def returns(self) -> tuple[float, ...]:
        """The window's returns, oldest first."""
        return tuple(self._returns)

    # -- the transition -----------------------------------------------------------------

    def on_equity(self, ts_event: int, equity: int) -> RiskSnapshot:
        """Observe the account's ``equity`` (raw) at ``ts_event`` (UTC ns)."""
        if self._ts is not None and ts_event < self._ts:
            self._late += 1
            return replace(self.current(), late=True)
        day = self._calendar.day_of(ts_event)
        if self._ts is not None and self._equity > 0:
            r = (equity - self._equity) / self._equity
            lam = self.config.ewma_lambda
            self._ewma_var = (
                r * r if self._ewma_var is None else lam * self._ewma_var + (1 - lam) * (r * r)
            )
            self._returns.append(r)
        self._previous = self._equity if self._ts is not None else None
        self._ts, self._equity = ts_event, equity
        drawdown = self._drawdown.update(equity)
        daily = self._daily.update(day, equity)
        return self._metrics(drawdown, daily, self._alerts(drawdown, daily))

    def current(self) -> RiskSnapshot:
        """The metrics at the last observation, without alerts; raises before any."""
        return self._metrics(self._drawdown.current(), self._daily.current(), ())

    def _alerts(self, drawdown: DrawdownUpdate, daily: DailyLossUpdate) -> tuple[RiskAlert, ...]:
        assert self._ts is not None
        account, limit, day = self.account, self.config.daily_loss_limit, daily.day
        # (kind, value, fraction, level, key tag, message) of each level reached
        reached: list[tuple[AlertKind, int, float, float, str, str]] = []
        for crossed, kind, level in (
            (daily.warning, AlertKind.DAILY_LOSS_WARNING, self.config.daily_loss_warning),
            (daily.breach, AlertKind.DAILY_LOSS_BREACH, 1.0),
        ):
            if crossed:
                message = (
                    f"{account}: daily loss {from_fixed(daily.loss):f} on {day.isoformat()} "
                    f"is {daily.loss / limit:.1%} of the limit {from_fixed(limit):f}"
                )
                reached.append(
                    (kind, daily.loss, daily.loss / limit, level, day.isoformat(), message)
                )
        if drawdown.crossed:
            message = (
                f"{account}: drawdown {drawdown.fraction:.1%} ({from_fixed(drawdown.drawdown):f} "
                f"below the peak {from_fixed(drawdown.peak):f}) reached "
                f"{self.config.drawdown_alert:.1%}"
            )
            reached.append(
                (
                    AlertKind.DRAWDOWN,
                    drawdown.drawdown,
                    drawdown.fraction,
                    self.config.drawdown_alert,
                    str(self._drawdown.crossings),
                    message,
                )
            )
        return tuple(
            RiskAlert(
                kind=kind,
                severity=_SEVERITY[kind],
                account=account,
                value=value,
                fraction=fraction,
                level=level,
                session_day=day,
                ts_event=self._ts,
                key=f"{account}|{kind}|{tag}",
                message=message,
            )
            for kind, value, fraction, level, tag, message in reached
        )

    def _metrics(
        self, drawdown: DrawdownUpdate, daily: DailyLossUpdate, alerts: tuple[RiskAlert, ...]
    ) -> RiskSnapshot:
        assert self._ts is not None
        equity, previous = self._equity, self._previous
        returns = list(self._returns)
        n = len(returns)
        mean = sigma = ewma_sigma = None
        tail: tuple[TailEstimate, ...] = ()
        if n >= self.config.min_returns and self._ewma_var is not None:
            mean = math.fsum(returns) / n
            sigma = math.sqrt(math.fsum((r - mean) ** 2 for r in returns) / (n - 1))
            ewma_sigma = math.sqrt(self._ewma_var)
            if equity > 0:
                tail = self._tail(sorted(returns), mean, sigma, ewma_sigma)
        return RiskSnapshot(
            account=self.account,
            ts_event=self._ts,
            equity=equity,
            session_day=daily.day,
            period_pnl=None if previous is None else equity - previous,
            period_return=(equity - previous) / previous if previous and previous > 0 else None,
            returns=n,
            mean_return=mean,
            volatility=sigma,
            ewma_volatility=ewma_sigma,
            tail=tail,
            day_start_equity=daily.day_start_equity,
            daily_pnl=daily.pnl,
            daily_loss=daily.loss,
            daily_loss_limit=self.config.daily_loss_limit,
            peak=drawdown.peak,
            drawdown=drawdown.drawdown,
            drawdown_fraction=drawdown.fraction,
            max_drawdown=drawdown.max_drawdown,
            max_drawdown_fraction=drawdown.max_fraction,
            alerts=alerts,
        )

    def _tail(
        self, ascending: list[float], mean: float, sigma: float, ewma_sigma: float
    ) -> tuple[TailEstimate, ...]:
        equity = self._equity
        estimates = []
        for level in self.config.levels:
            fractions = (
                (VarMethod.HISTORICAL, *_historical(ascending, level)),
                (VarMethod.NORMAL, normal_var(mean, sigma, level), normal_es(mean, sigma, level)),
                (
                    VarMethod.EWMA,
                    normal_var(0.0, ewma_sigma, level),
                    normal_es(0.0, ewma_sigma, level),
                ),
            )
            for method, var, es in fractions:
                estimates.append(
                    TailEstimate(
                        method=method,
                        level=level,
                        var_fraction=var,
                        es_fraction=es,
                        var=_money(equity, var),
                        es=_money(equity, es),
                    )
                )
        return tuple(estimates)

    # -- state --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The whole state as a JSON-able dict (floats are finite; ints within int64 or
        decimal strings)."""
        return {
            "version": SNAPSHOT_VERSION,
            "account": self.account,
            "config": self.config.to_dict(),
            "ts_event": self._ts,
            "equity": self._equity,
            "previous": self._previous,
            "returns": list(self._returns),
            "ewma_var": self._ewma_var,
            "drawdown": self._drawdown.snapshot(),
            "daily": self._daily.snapshot(),
            "late": self._late,
        }

    @classmethod
    def restore(
        cls, data: Mapping[str, Any], config: RiskConfig | None = None
    ) -> RiskMetricsEngine:
        """Rebuild from :meth:`snapshot` output; raises ValueError on a foreign snapshot.

        ``config`` replaces the snapshot's own (limits and levels apply from the next
        observation; a smaller window keeps the latest returns)."""
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(
                f"unsupported RiskMetricsEngine snapshot version {data.get('version')!r}"
            )
        config = config if config is not None else RiskConfig.from_dict(data["config"])
        engine = cls(str(data["account"]), config)
        ts = data["ts_event"]
        engine._ts = None if ts is None else int(ts)
        engine._equity = int(data["equity"])
        previous = data["previous"]
        engine._previous = None if previous is None else int(previous)
        engine._returns.extend(float(r) for r in data["returns"])
        ewma_var = data["ewma_var"]
        engine._ewma_var = None if ewma_var is None else float(ewma_var)
        if (ewma_var is None) != (not data["returns"]):
            raise ValueError("RiskMetricsEngine snapshot has returns without an EWMA or back")
        engine._drawdown = DrawdownTracker.restore(data["drawdown"], _exact(config.drawdown_alert))
        engine._daily = DailyLossTracker.restore(
            data["daily"], config.daily_loss_limit, _exact(config.daily_loss_warning)
        )
        engine._late = int(data["late"])
        return engine
