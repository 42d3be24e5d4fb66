"""GbmTradeGenerator: deterministic, tick-aligned, positive GBM trades on a caller's clock."""

from __future__ import annotations

import math
import statistics
from decimal import Decimal
from itertools import islice, pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from producers.synthetic import DEFAULT_INITIAL_PRICES, GbmTradeGenerator, tick_size
from schemas.fixedpoint import FACTOR, to_fixed
from schemas.models import AggressorSide, Trade

START = 1_700_000_000_000_000_000
SEC = 1_000_000_000


def generator(**kwargs: object) -> GbmTradeGenerator:
    args: dict[str, object] = {
        "symbols": ["AAPL", "MSFT"],
        "seed": 7,
        "start_ns": START,
        "mean_interval_ms": 100.0,
    }
    args.update(kwargs)
    return GbmTradeGenerator(**args)  # type: ignore[arg-type]


def take(gen: GbmTradeGenerator, n: int) -> list[Trade]:
    return list(islice(gen, n))


def is_tick_aligned(price: int) -> bool:
    return price % tick_size(price) == 0


def test_same_seed_gives_identical_trades() -> None:
    assert take(generator(seed=11), 500) == take(generator(seed=11), 500)


def test_different_seeds_give_different_trades() -> None:
    assert take(generator(seed=1), 50) != take(generator(seed=2), 50)


def test_tick_size_follows_reg_nms_612() -> None:
    assert tick_size(to_fixed("1.00")) == to_fixed("0.01")
    assert tick_size(to_fixed("250")) == to_fixed("0.01")
    assert tick_size(to_fixed("0.9999")) == to_fixed("0.0001")


def test_trades_carry_source_venue_and_unique_ids() -> None:
    trades = take(generator(), 200)
    assert {t.source for t in trades} == {"synthetic"}
    assert {t.venue for t in trades} == {"SIM"}
    assert len({t.trade_id for t in trades}) == 200
    assert {t.symbol for t in trades} == {"AAPL", "MSFT"}


def test_default_initial_prices_for_known_tickers_and_100_otherwise() -> None:
    gen = generator(symbols=["NVDA", "ZZZZ"])
    assert gen.last_price("NVDA") == to_fixed(DEFAULT_INITIAL_PRICES["NVDA"])
    assert gen.last_price("ZZZZ") == to_fixed("100")
    custom = generator(symbols=["AAPL"], initial_prices={"AAPL": Decimal("3.456")})
    assert custom.last_price("AAPL") == to_fixed("3.46")


def test_explicit_event_times_are_used_and_ts_init_defaults_to_them() -> None:
    gen = generator()
    trade = gen.next_trade(START + 5 * SEC)
    assert trade.ts_event == trade.ts_init == START + 5 * SEC
    trade = gen.next_trade(START + 6 * SEC, ts_init_ns=START + 6 * SEC + 3)
    assert (trade.ts_event, trade.ts_init) == (START + 6 * SEC, START + 6 * SEC + 3)
    assert gen.clock_ns == START + 6 * SEC


def test_event_clock_advances_by_exponential_gaps_of_the_mean_interval() -> None:
    trades = take(generator(mean_interval_ms=250.0), 4000)
    stamps = [t.ts_event for t in trades]
    gaps = [b - a for a, b in pairwise([START, *stamps])]
    assert min(gaps) >= 1
    assert statistics.fmean(gaps) == pytest.approx(250 * 1_000_000, rel=0.05)


def test_time_that_does_not_advance_does_not_move_the_price() -> None:
    gen = generator(symbols=["SPY"], sigma_annual=2.0)
    first = gen.next_trade(START)  # dt = 0 since start
    assert first.price == to_fixed(DEFAULT_INITIAL_PRICES["SPY"])
    assert all(gen.next_trade(START).price == first.price for _ in range(50))


def test_volatility_scales_with_the_time_step() -> None:
    sigma = 0.3
    step_s = 60
    gen = generator(symbols=["BIG"], sigma_annual=sigma, initial_prices={"BIG": Decimal("10000")})
    prices = [gen.next_trade(START + i * step_s * SEC).price for i in range(1, 3001)]
    returns = [math.log(b / a) for a, b in pairwise(prices)]
    expected = sigma * math.sqrt(step_s / (252 * 6.5 * 3600))
    assert statistics.stdev(returns) == pytest.approx(expected, rel=0.1)


def test_sub_dollar_prices_use_hundredth_of_a_cent_ticks() -> None:
    gen = generator(symbols=["PENNY"], initial_prices={"PENNY": Decimal("0.5")}, sigma_annual=1.0)
    prices = [gen.next_trade(START + i * SEC).price for i in range(1, 500)]
    assert all(p < FACTOR for p in prices)
    assert any(p % to_fixed("0.01") != 0 for p in prices)  # sub-penny increments do occur
    assert all(p % to_fixed("0.0001") == 0 for p in prices)


def test_sizes_are_mostly_round_lots_with_some_odd_lots() -> None:
    sizes = [t.size // FACTOR for t in take(generator(), 5000)]
    assert all(s > 0 for s in sizes)
    round_lots = sum(1 for s in sizes if s % 100 == 0)
    odd_lots = sum(1 for s in sizes if s < 100)
    assert round_lots + odd_lots == len(sizes)
    assert 0.7 < round_lots / len(sizes) < 0.9
    assert sum(1 for s in sizes if s == 100) > sum(1 for s in sizes if s == 200)


def test_aggressor_side_follows_the_tick_test() -> None:
    gen = generator(symbols=["AAPL"])
    previous = gen.last_price("AAPL")
    sides = set()
    for trade in take(gen, 1000):
        if trade.price > previous:
            assert trade.aggressor_side == AggressorSide.BUYER
        elif trade.price < previous:
            assert trade.aggressor_side == AggressorSide.SELLER
        else:
            assert trade.aggressor_side in (AggressorSide.BUYER, AggressorSide.SELLER)
        sides.add(trade.aggressor_side)
        previous = trade.price
    assert sides == {AggressorSide.BUYER, AggressorSide.SELLER}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"symbols": []},
        {"symbols": [""]},
        {"mean_interval_ms": 0.0},
        {"mean_interval_ms": math.nan},
        {"sigma_annual": -0.1},
        {"initial_prices": {"AAPL": Decimal("0")}},
    ],
)
def test_invalid_arguments_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        generator(**kwargs)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**32),
    initial=st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("5000"), places=4),
    sigma=st.floats(min_value=0.0, max_value=5.0),
    mu=st.floats(min_value=-2.0, max_value=2.0),
    mean_interval_ms=st.floats(min_value=1.0, max_value=3_600_000.0),
)
def test_generated_prices_are_always_positive_and_tick_aligned(
    seed: int, initial: Decimal, sigma: float, mu: float, mean_interval_ms: float
) -> None:
    gen = GbmTradeGenerator(
        symbols=["X", "Y"],
        seed=seed,
        start_ns=START,
        mean_interval_ms=mean_interval_ms,
        sigma_annual=sigma,
        mu_annual=mu,
        initial_prices={"X": initial, "Y": initial * 3},
    )
    for trade in islice(gen, 300):
        assert trade.price > 0
        assert is_tick_aligned(trade.price)
        assert trade.size > 0 and trade.size % FACTOR == 0
