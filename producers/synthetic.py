"""Synthetic market data: geometric-Brownian-motion trades for a set of symbols (pure).

The generator never reads the clock: the caller passes each trade's event time
(:meth:`GbmTradeGenerator.next_trade`) or lets the generator advance its own event clock by
exponential inter-arrival times of mean ``mean_interval_ms`` (``next_trade()`` without a
time, or iterating). Same seed, same event times → same trades.

Model
    Each trade goes to a symbol drawn uniformly. That symbol's latent price follows GBM over
    the event time since its previous trade: ``S *= exp((mu - sigma²/2)·dt + sigma·√dt·Z)``,
    ``dt`` in years of trading time (252 days × 6.5 h, the usual convention for annualized
    equity volatility). A time that does not advance gives ``dt = 0``: no move.
Prices
    The latent price (a float — this is market data, not a ledger) is kept within
    [0.0001, 1,000,000] and rounded to the US equity tick of Reg NMS Rule 612: $0.01 at or
    above $1.00, $0.0001 below. Every emitted price is an exact, positive, tick-aligned
    fixed-point int.
Sizes and sides
    80 % round lots (100 shares × a geometric number of lots, mostly 1), 20 % odd lots
    (1-99 shares). The aggressor follows the tick test: uptick → BUYER, downtick → SELLER,
    unchanged → either, at random.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Final

from schemas.fixedpoint import FACTOR, to_fixed
from schemas.models import AggressorSide, Trade

__all__ = ["DEFAULT_INITIAL_PRICES", "GbmTradeGenerator", "tick_size"]

SOURCE: Final = "synthetic"
VENUE: Final = "SIM"

TRADING_SECONDS_PER_YEAR: Final = 252 * 6.5 * 3600
ONE_DOLLAR: Final[int] = FACTOR
TICK_AT_OR_ABOVE_DOLLAR: Final = to_fixed("0.01")
TICK_BELOW_DOLLAR: Final = to_fixed("0.0001")
MIN_PRICE: Final = 0.0001
MAX_PRICE: Final = 1_000_000.0
FALLBACK_INITIAL_PRICE: Final = Decimal("100")

ROUND_LOT: Final = 100
ODD_LOT_PROBABILITY: Final = 0.2
EXTRA_LOT_PROBABILITY: Final = 0.35  # chance of each further lot in a round-lot trade
MAX_LOTS: Final = 100

DEFAULT_INITIAL_PRICES: Final[Mapping[str, Decimal]] = {
    "AAPL": Decimal("230.00"),
    "MSFT": Decimal("420.00"),
    "SPY": Decimal("560.00"),
    "NVDA": Decimal("120.00"),
    "AMZN": Decimal("185.00"),
    "GOOGL": Decimal("165.00"),
    "TSLA": Decimal("250.00"),
    "META": Decimal("560.00"),
    "JPM": Decimal("220.00"),
    "QQQ": Decimal("480.00"),
}


def tick_size(price_raw: int) -> int:
    """Reg NMS 612 minimum increment for a quote at ``price_raw``: $0.01 at or above $1.00,
    else $0.0001 (raw)."""
    return TICK_AT_OR_ABOVE_DOLLAR if price_raw >= ONE_DOLLAR else TICK_BELOW_DOLLAR


def _to_tick(latent: float) -> int:
    """Latent float price → nearest tick-aligned positive raw price."""
    tick = TICK_AT_OR_ABOVE_DOLLAR if latent >= 1.0 else TICK_BELOW_DOLLAR
    ticks_per_unit: int = FACTOR // tick
    return max(1, round(latent * ticks_per_unit)) * tick


class GbmTradeGenerator:
    """Deterministic GBM trade generator; see the module docstring for the model."""

    def __init__(
        self,
        symbols: Sequence[str],
        seed: int,
        start_ns: int,
        mean_interval_ms: float,
        sigma_annual: float = 0.3,
        mu_annual: float = 0.0,
        initial_prices: Mapping[str, Decimal] | None = None,
    ) -> None:
        unique = list(dict.fromkeys(symbols))
        if not unique:
            raise ValueError("at least one symbol is needed")
        for symbol in unique:
            if not 1 <= len(symbol) <= 64:
                raise ValueError(f"symbol must have 1-64 characters: {symbol!r}")
        if not (math.isfinite(mean_interval_ms) and mean_interval_ms > 0):
            raise ValueError(f"mean_interval_ms must be positive, got {mean_interval_ms}")
        if not (math.isfinite(sigma_annual) and sigma_annual >= 0):
            raise ValueError(f"sigma_annual must be >= 0, got {sigma_annual}")
        if not math.isfinite(mu_annual):
            raise ValueError(f"mu_annual must be finite, got {mu_annual}")
        prices = {**DEFAULT_INITIAL_PRICES, **(initial_prices or {})}
        self._symbols = tuple(unique)
        self._seed = seed
        self._start_ns = start_ns
        self._mean_interval_ms = mean_interval_ms
        self._sigma = sigma_annual
        self._mu = mu_annual
        self._rng = random.Random(seed)  # noqa: S311 - simulation, not cryptography
        self._clock_ns = start_ns
        self._latent: dict[str, float] = {}
        self._last_price: dict[str, int] = {}
        self._last_ts: dict[str, int] = {}
        for symbol in self._symbols:
            initial = prices.get(symbol, FALLBACK_INITIAL_PRICE)
            if not initial > 0:
                raise ValueError(f"initial price of {symbol} must be positive, got {initial}")
            self._latent[symbol] = min(MAX_PRICE, max(MIN_PRICE, float(initial)))
            self._last_price[symbol] = _to_tick(self._latent[symbol])
            self._last_ts[symbol] = start_ns
        self._count = 0

    @property
    def symbols(self) -> tuple[str, ...]:
        return self._symbols

    @property
    def clock_ns(self) -> int:
        """Event time of the latest trade (``start_ns`` before the first)."""
        return self._clock_ns

    def last_price(self, symbol: str) -> int:
        """The symbol's last emitted price (its initial price before its first trade), raw."""
        return self._last_price[symbol]

    def next_trade(self, ts_event_ns: int | None = None, *, ts_init_ns: int | None = None) -> Trade:
        """The next trade, at ``ts_event_ns`` or — when None — at the generator's event clock
        advanced by an exponential inter-arrival time. ``ts_init_ns`` defaults to the event
        time (the generator has no other clock)."""
        rng = self._rng
        if ts_event_ns is None:
            gap_ns = rng.expovariate(1.0 / self._mean_interval_ms) * 1_000_000
            ts_event_ns = self._clock_ns + max(1, round(gap_ns))
        self._clock_ns = max(self._clock_ns, ts_event_ns)

        symbol = self._symbols[rng.randrange(len(self._symbols))]
        dt_years = max(0, ts_event_ns - self._last_ts[symbol]) / 1e9 / TRADING_SECONDS_PER_YEAR
        self._last_ts[symbol] = max(self._last_ts[symbol], ts_event_ns)
        shock = rng.gauss(0.0, 1.0)
        drift = (self._mu - 0.5 * self._sigma**2) * dt_years
        diffusion = self._sigma * math.sqrt(dt_years) * shock
        latent = self._latent[symbol] * math.exp(drift + diffusion)
        self._latent[symbol] = min(MAX_PRICE, max(MIN_PRICE, latent))

        price = _to_tick(self._latent[symbol])
        previous = self._last_price[symbol]
        self._last_price[symbol] = price
        if price > previous:
            aggressor = AggressorSide.BUYER
        elif price < previous:
            aggressor = AggressorSide.SELLER
        else:
            aggressor = AggressorSide.BUYER if rng.random() < 0.5 else AggressorSide.SELLER

        self._count += 1
        return Trade(
            symbol=symbol,
            venue=VENUE,
            price=price,
            size=self._size() * FACTOR,
            aggressor_side=aggressor,
            trade_id=f"{VENUE}-{self._start_ns}-{self._count}",
            source=SOURCE,
            ts_event=ts_event_ns,
            ts_init=ts_init_ns if ts_init_ns is not None else ts_event_ns,
        )

    def _size(self) -> int:
        """Shares in one trade: mostly round lots of 100, some odd lots."""
        rng = self._rng
        if rng.random() < ODD_LOT_PROBABILITY:
            return rng.randint(1, ROUND_LOT - 1)
        lots = 1
        while lots < MAX_LOTS and rng.random() < EXTRA_LOT_PROBABILITY:
            lots += 1
        return lots * ROUND_LOT

    def __iter__(self) -> Iterator[Trade]:
        """Endless trades on the generator's own event clock."""
        while True:
            yield self.next_trade()
