"""VaR backtesting: exceptions, Kupiec's and Christoffersen's tests, the Basel traffic light.

Pure: no I/O, no clock. Inputs are pairs ``(VaR forecast, realised loss)`` of the same
period: the VaR forecast made at the end of the previous period (loss positive, raw
fixed-point money, e.g. :attr:`streams.logic.var.TailEstimate.var` of the previous
observation) and the loss then realised (``-period PnL``, e.g. the negated
:attr:`streams.logic.var.RiskSnapshot.period_pnl`). Pairing them is the caller's job.

Exceptions
    A period is an exception when the realised loss *exceeds* the forecast (``loss > VaR``,
    strictly; exact on ints). With VaR at level α the expected rate is ``p = 1 - α``.

Kupiec's proportion of failures (``T`` periods, ``x`` exceptions; χ² with 1 dof)
    ``LR_pof = -2 ln[(1-p)^(T-x) p^x] + 2 ln[(1-x/T)^(T-x) (x/T)^x]``.

Christoffersen's independence (first-order Markov; χ² with 1 dof)
    From the transition counts ``n_ij`` (period ``t-1`` in state i, period ``t`` in state
    j; ``T - 1`` transitions), ``π0 = n01/(n00+n01)``, ``π1 = n11/(n10+n11)``,
    ``π = (n01+n11)/(T-1)``:
    ``LR_ind = -2 ln[(1-π)^(n00+n10) π^(n01+n11)]
    + 2 ln[(1-π0)^n00 π0^n01 (1-π1)^n10 π1^n11]``. Zero counts use ``0 · ln 0 = 0`` (a
    state never left has no likelihood term). Conditional coverage: ``LR_cc = LR_pof +
    LR_ind``, χ² with 2 dof. Rounding can make an LR a hair below 0: it is clamped to 0.

p-values
    Closed forms of the χ² survival function: ``erfc(sqrt(x/2))`` with 1 dof,
    ``exp(-x/2)`` with 2.

Traffic light
    With ``X ~ Binomial(T, p)``: GREEN while ``P(X <= x) < 95 %``, YELLOW while
    ``P(X <= x) < 99.99 %``, RED from there — the Basel Committee's cumulative-probability
    rule (1996), which for 99 % VaR over 250 days gives green 0–4, yellow 5–9, red >= 10
    exceptions; the same rule sets the zones of any other window and level. One
    exception to the rule: no exceptions is always GREEN (in a short window — the
    rolling window filling up — ``P(X <= 0)`` alone can pass 95 %: ``0.99^5 > 0.95``).
    The probabilities are exact (rationals; ``p`` is read as the decimal it is written
    as).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from functools import lru_cache
from typing import Any, Final

__all__ = [
    "BacktestReport",
    "LikelihoodRatio",
    "TrafficLight",
    "TransitionCounts",
    "VarBacktester",
    "backtest",
    "chi2_sf",
    "christoffersen_independence",
    "conditional_coverage",
    "exception_indicators",
    "kupiec_pof",
    "traffic_light",
    "zone_bounds",
]

SNAPSHOT_VERSION: Final = 1
_YELLOW_FROM: Final = Fraction(95, 100)
_RED_FROM: Final = Fraction(9999, 10000)


class TrafficLight(StrEnum):
    GREEN = "GREEN"
    YELLOW = "YELLOW"
    RED = "RED"


@dataclass(frozen=True, slots=True)
class LikelihoodRatio:
    """A likelihood-ratio statistic with its χ² degrees of freedom and p-value."""

    statistic: float
    dof: int
    p_value: float


@dataclass(frozen=True, slots=True)
class TransitionCounts:
    """``n_ij``: periods in state j after a period in state i (1 = exception)."""

    n00: int = 0
    n01: int = 0
    n10: int = 0
    n11: int = 0

    @classmethod
    def of(cls, indicators: Iterable[bool]) -> TransitionCounts:
        counts = [0, 0, 0, 0]
        previous: bool | None = None
        for hit in indicators:
            if previous is not None:
                counts[2 * previous + hit] += 1
            previous = hit
        return cls(*counts)


@dataclass(frozen=True, slots=True)
class BacktestReport:
    """The tests over one window of periods."""

    observations: int  # T
    exceptions: int  # x
    expected_rate: float  # p = 1 - level
    exception_rate: float  # x / T
    last_exception: bool  # whether the window's latest period was an exception
    transitions: TransitionCounts
    pof: LikelihoodRatio
    independence: LikelihoodRatio
    conditional_coverage: LikelihoodRatio
    zone: TrafficLight


def exception_indicators(forecasts: Sequence[int], losses: Sequence[int]) -> list[bool]:
    """``loss > forecast`` for each period (the two sequences pair up index by index)."""
    if len(forecasts) != len(losses):
        raise ValueError(f"{len(forecasts)} forecasts but {len(losses)} losses")
    return [loss > forecast for forecast, loss in zip(forecasts, losses, strict=True)]


def chi2_sf(x: float, dof: int) -> float:
    """``P(χ²_dof > x)`` for 1 or 2 degrees of freedom (closed forms)."""
    if x <= 0:
        return 1.0
    if dof == 1:
        return math.erfc(math.sqrt(x / 2))
    if dof == 2:
        return math.exp(-x / 2)
    raise ValueError(f"only 1 or 2 degrees of freedom, got {dof}")


def _xlog(count: int, total: int) -> float:
    """``count · ln(count / total)``, 0 when ``count`` is 0."""
    return count * (math.log(count) - math.log(total)) if count else 0.0


def _ratio(log_unrestricted: float, log_restricted: float, dof: int) -> LikelihoodRatio:
    statistic = max(0.0, 2 * (log_unrestricted - log_restricted))
    return LikelihoodRatio(statistic, dof, chi2_sf(statistic, dof))


def kupiec_pof(observations: int, exceptions: int, p: float) -> LikelihoodRatio:
    """Kupiec's proportion-of-failures test of ``exceptions`` in ``observations`` periods
    against the expected exception rate ``p``."""
    if observations < 1 or not 0 <= exceptions <= observations:
        raise ValueError(
            f"need 0 <= exceptions <= observations >= 1, got {exceptions}/{observations}"
        )
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    hits, misses = exceptions, observations - exceptions
    restricted = misses * math.log1p(-p) + (hits * math.log(p) if hits else 0.0)
    unrestricted = _xlog(misses, observations) + _xlog(hits, observations)
    return _ratio(unrestricted, restricted, dof=1)


def christoffersen_independence(counts: TransitionCounts) -> LikelihoodRatio:
    """Christoffersen's test that an exception does not make the next one likelier."""
    n00, n01, n10, n11 = counts.n00, counts.n01, counts.n10, counts.n11
    if min(n00, n01, n10, n11) < 0:
        raise ValueError(f"transition counts must not be negative: {counts}")
    total = n00 + n01 + n10 + n11
    restricted = _xlog(n00 + n10, total) + _xlog(n01 + n11, total)
    unrestricted = (
        _xlog(n00, n00 + n01)
        + _xlog(n01, n00 + n01)
        + _xlog(n10, n10 + n11)
        + _xlog(n11, n10 + n11)
    )
    return _ratio(unrestricted, restricted, dof=1)


def conditional_coverage(pof: LikelihoodRatio, independence: LikelihoodRatio) -> LikelihoodRatio:
    """``LR_cc = LR_pof + LR_ind`` with 2 degrees of freedom."""
    statistic = pof.statistic + independence.statistic
    return LikelihoodRatio(statistic, 2, chi2_sf(statistic, 2))


@lru_cache(maxsize=1024)
def _zone_bounds(observations: int, numerator: int, denominator: int) -> tuple[int, int]:
    # P(X <= x) · b^T as an exact integer sum of C(T, k) a^k (b - a)^(T - k), p = a / b
    a, b, n = numerator, denominator, observations
    total = b**n
    yellow = red = n + 1
    cumulative = 0
    for k in range(n + 1):
        cumulative += math.comb(n, k) * a**k * (b - a) ** (n - k)
        if yellow > n and cumulative * _YELLOW_FROM.denominator >= _YELLOW_FROM.numerator * total:
            yellow = k
        if cumulative * _RED_FROM.denominator >= _RED_FROM.numerator * total:
            red = k
            break
    return max(1, yellow), max(1, red)  # no exceptions is never evidence against the model


def zone_bounds(observations: int, p: float) -> tuple[int, int]:
    """``(first yellow, first red)`` exception counts of ``observations`` periods at the
    exception rate ``p``: ``(5, 10)`` for 250 periods at 0.01; both at least 1."""
    if observations < 1:
        raise ValueError(f"need at least one observation, got {observations}")
    rate = Fraction(repr(p))
    if not 0 < rate < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    return _zone_bounds(observations, rate.numerator, rate.denominator)


def traffic_light(exceptions: int, observations: int, p: float = 0.01) -> TrafficLight:
    """The Basel zone of ``exceptions`` in ``observations`` periods at exception rate ``p``."""
    yellow, red = zone_bounds(observations, p)
    if exceptions >= red:
        return TrafficLight.RED
    return TrafficLight.YELLOW if exceptions >= yellow else TrafficLight.GREEN


def backtest(indicators: Sequence[bool], level: float = 0.99) -> BacktestReport:
    """All tests over the exception ``indicators`` of VaR at ``level`` (oldest first)."""
    if not indicators:
        raise ValueError("need at least one period to backtest")
    p = float(1 - Fraction(repr(level)))
    observations, exceptions = len(indicators), sum(indicators)
    transitions = TransitionCounts.of(indicators)
    pof = kupiec_pof(observations, exceptions, p)
    independence = christoffersen_independence(transitions)
    return BacktestReport(
        observations=observations,
        exceptions=exceptions,
        expected_rate=p,
        exception_rate=exceptions / observations,
        last_exception=indicators[-1],
        transitions=transitions,
        pof=pof,
        independence=independence,
        conditional_coverage=conditional_coverage(pof, independence),
        zone=traffic_light(exceptions, observations, p),
    )


class VarBacktester:
    """Backtest of one VaR series over a rolling window of the latest ``window`` periods;
    :meth:`snapshot` / :meth:`restore` between records."""

    def __init__(self, level: float = 0.99, window: int = 250) -> None:
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.level = level
        self.window = window
        self._pairs: deque[tuple[int, int]] = deque(maxlen=window)

    @property
    def pairs(self) -> tuple[tuple[int, int], ...]:
        """The window's (forecast, loss) pairs, oldest first."""
        return tuple(self._pairs)

    def observe(self, var_forecast: int, realised_loss: int) -> BacktestReport:
        """Add one period (raw money, loss positive); return the window's report."""
        self._pairs.append((var_forecast, realised_loss))
        return self.report()

    def report(self) -> BacktestReport:
        """The report of the current window; raises while it is empty."""
        return backtest([loss > forecast for forecast, loss in self._pairs], self.level)

    def snapshot(self) -> dict[str, Any]:
        """The whole state as a JSON-able dict."""
        return {
            "version": SNAPSHOT_VERSION,
            "level": self.level,
            "window": self.window,
            "pairs": [[forecast, loss] for forecast, loss in self._pairs],
        }

    @classmethod
    def restore(cls, data: Mapping[str, Any]) -> VarBacktester:
        """Rebuild from :meth:`snapshot` output; raises ValueError on a foreign snapshot."""
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported VarBacktester snapshot version {data.get('version')!r}")
        backtester = cls(level=float(data["level"]), window=int(data["window"]))
        pairs = [(int(forecast), int(loss)) for forecast, loss in data["pairs"]]
        if len(pairs) > backtester.window:
            raise ValueError(f"VarBacktester snapshot holds {len(pairs)} pairs > window")
        backtester._pairs.extend(pairs)
        return backtester
