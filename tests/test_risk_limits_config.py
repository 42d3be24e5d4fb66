"""Risk limits from configuration: overrides per account, strategy and symbol, the
environment form, the raw limits the gate runs on, and the commands risk alerts issue."""

from __future__ import annotations

import json
import os
import random
import re
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from core.config import LimitOverride, RiskLimits, load_settings
from core.errors import ConfigError
from schemas.models import (
    AlertSeverity,
    ControlType,
    Decision,
    OrderRequest,
    Side,
    TradingState,
)
from streams.logic.account_checks import AccountLimitsRaw
from streams.logic.risk import MarketPrice, PreTradeRisk, RiskLimitsRaw, SymbolRiskState
from streams.logic.trading_state import TradingStates
from streams.logic.var import AlertKind, RiskAlert
from streams.risk_metrics import RiskMetricsProcessor, control_record

D = Decimal
TS = 1_767_600_000_000_000_000  # 2026-01-05
ORDER = ("desk-1", "sma", "TSLA")  # account, strategy, symbol
LIMIT_FIELDS = (
    "max_order_notional",
    "max_position_per_symbol",
    "max_order_quantity",
    "max_position_value",
    "max_gross_leverage",
    "max_concentration",
    "margin_rate",
    "max_orders_per_second",
    "daily_loss_limit",
    "max_drawdown",
)


def raw(value: Decimal | int) -> int:
    """Decimal → raw fixed-point, worked out here: value × 10⁹, which must be whole."""
    scaled = D(value) * 10**9
    assert scaled == scaled.to_integral_value()
    return int(scaled)


# -- overrides: the most specific match wins, limit by limit ---------------------------------


def _rules() -> list[LimitOverride]:
    """One rule per combination of account (1), strategy (2) and symbol (4)."""
    return [
        LimitOverride(
            account="desk-1",
            max_position_value=D(100_000),
            max_order_quantity=D(10),
            max_orders_per_second=3,
        ),
        LimitOverride(strategy="sma", max_position_value=D(200_000), max_gross_leverage=D(3)),
        LimitOverride(
            account="desk-1",
            strategy="sma",
            max_position_value=D(300_000),
            max_concentration=D("0.1"),
            max_order_quantity=D(20),
        ),
        LimitOverride(symbol="TSLA", max_position_value=D(400_000), margin_rate=D(1)),
        LimitOverride(account="desk-1", symbol="TSLA", max_position_value=D(500_000)),
        LimitOverride(strategy="sma", symbol="TSLA", daily_loss_limit=D(2_000)),
        LimitOverride(account="desk-1", strategy="sma", symbol="TSLA", max_drawdown=D("0.05")),
    ]


def test_each_limit_comes_from_the_most_specific_rule_that_sets_it() -> None:
    limits = RiskLimits(overrides=_rules()).resolved(*ORDER)
    defaults = RiskLimits()
    assert limits.max_position_value == D(500_000)  # account+symbol (5) over symbol (4)
    assert limits.max_order_quantity == D(20)  # account+strategy (3) over account (1)
    assert limits.max_orders_per_second == 3  # only the account rule sets it
    assert limits.max_gross_leverage == D(3)  # only the strategy rule
    assert limits.max_concentration == D("0.1")
    assert limits.margin_rate == D(1)
    assert limits.daily_loss_limit == D(2_000)
    assert limits.max_drawdown == D("0.05")  # the rule naming all three
    # limits no rule sets fall through to the defaults
    assert limits.max_order_notional == defaults.max_order_notional
    assert limits.max_position_per_symbol == defaults.max_position_per_symbol
    assert limits.price_collar == defaults.price_collar


def test_a_symbol_rule_beats_an_account_and_strategy_rule() -> None:
    rules = [
        LimitOverride(symbol="TSLA", max_position_value=D(4)),
        LimitOverride(account="desk-1", strategy="sma", max_position_value=D(3)),
    ]
    assert RiskLimits(overrides=rules).resolved(*ORDER).max_position_value == D(4)
    assert RiskLimits(overrides=rules[::-1]).resolved(*ORDER).max_position_value == D(4)


def test_a_strategy_rule_beats_an_account_rule_whatever_their_order() -> None:
    rules = [
        LimitOverride(strategy="sma", max_gross_leverage=D("1.5")),
        LimitOverride(account="desk-1", max_gross_leverage=D("0.5")),
    ]
    assert RiskLimits(overrides=rules).resolved(*ORDER).max_gross_leverage == D("1.5")
    assert RiskLimits(overrides=rules[::-1]).resolved(*ORDER).max_gross_leverage == D("1.5")


def test_rules_for_another_account_strategy_or_symbol_are_ignored() -> None:
    others = [
        LimitOverride(account="desk-2", max_position_value=D(1)),
        LimitOverride(strategy="mean-rev", max_position_value=D(2)),
        LimitOverride(symbol="AAPL", max_position_value=D(3)),
        LimitOverride(account="desk-1", symbol="AAPL", max_position_value=D(4)),
    ]
    limits = RiskLimits(overrides=others)
    assert limits.resolved(*ORDER) == limits
    assert limits.resolved(*ORDER).max_position_value == RiskLimits().max_position_value
    assert limits.resolved("desk-2", "sma", "TSLA").max_position_value == D(1)
    assert limits.resolved("desk-1", "mean-rev", "TSLA").max_position_value == D(2)
    assert limits.resolved("desk-1", "sma", "AAPL").max_position_value == D(4)
    assert limits.resolved("desk-3", "sma", "AAPL").max_position_value == D(3)


def test_an_explicit_wildcard_matches_like_an_omitted_name() -> None:
    rule = LimitOverride(account="*", strategy="*", symbol="TSLA", max_order_quantity=D(7))
    limits = RiskLimits(overrides=[rule])
    assert limits.resolved("any", "thing", "TSLA").max_order_quantity == D(7)
    assert limits.resolved("any", "thing", "TSLAX").max_order_quantity == D(100_000)


def test_two_rules_of_the_same_scope_are_refused_not_applied_in_list_order() -> None:
    rules = [
        LimitOverride(account="desk-1", symbol="TSLA", max_position_value=D(1)),
        LimitOverride(account="desk-1", symbol="TSLA", max_position_value=D(2)),
    ]
    with pytest.raises(ValueError, match="two rules for account=desk-1 strategy=\\* symbol=TSLA"):
        RiskLimits(overrides=rules)


def test_a_strategy_rule_cannot_set_the_margin_rate() -> None:
    with pytest.raises(ValueError, match="margin_rate is set per account and symbol"):
        RiskLimits(overrides=[LimitOverride(strategy="sma", margin_rate=D("0.9"))])
    # per account and symbol it can
    limits = RiskLimits(overrides=[LimitOverride(account="desk-1", margin_rate=D("0.9"))])
    assert limits.resolved(*ORDER).margin_rate == D("0.9")


def _value(name: str) -> st.SearchStrategy[Any]:
    if name == "max_orders_per_second":
        return st.integers(min_value=1, max_value=100)
    if name in ("max_concentration", "margin_rate", "max_drawdown"):
        return st.integers(min_value=1, max_value=100).map(lambda n: D(n) / 100)
    return st.integers(min_value=1, max_value=10**6).map(D)


_rule_limits = st.fixed_dictionaries({}, optional={name: _value(name) for name in LIMIT_FIELDS})


@settings(max_examples=150, deadline=None)
@given(
    combos=st.lists(
        st.tuples(st.integers(min_value=0, max_value=7), st.booleans(), _rule_limits),
        max_size=8,
        unique_by=lambda combo: combo[0],
    ),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_resolution_is_the_most_specific_setting_of_each_limit_in_any_order(
    combos: list[tuple[int, bool, dict[str, Any]]], seed: int
) -> None:
    """Rules of distinct specificity, matching the order or (by a wrong name) not."""
    account, strategy, symbol = ORDER
    rules: list[LimitOverride] = []
    expected = RiskLimits().model_dump()
    best: dict[str, int] = {}
    for bits, matching, values in combos:
        names: dict[str, Any] = {
            "account": account if bits & 1 else "*",
            "strategy": strategy if bits & 2 else "*",
            "symbol": symbol if bits & 4 else "*",
        }
        if not matching:
            if bits == 0:
                continue  # a rule naming nothing matches every order
            field = "symbol" if bits & 4 else "strategy" if bits & 2 else "account"
            names[field] = "other"
        if bits & 2:  # margin is per account and symbol: a strategy rule may not set it
            values = {n: v for n, v in values.items() if n != "margin_rate"}
        rules.append(LimitOverride(**names, **values))
        if matching:
            specificity = (4 if bits & 4 else 0) + (2 if bits & 2 else 0) + (1 if bits & 1 else 0)
            for name, value in values.items():
                if specificity >= best.get(name, -1):
                    best[name] = specificity
                    expected[name] = value
    random.Random(seed).shuffle(rules)
    resolved = RiskLimits(overrides=rules).resolved(account, strategy, symbol)
    assert {n: getattr(resolved, n) for n in LIMIT_FIELDS} == {n: expected[n] for n in LIMIT_FIELDS}


# -- the environment form ---------------------------------------------------------------------


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> pytest.MonkeyPatch:
    """A clean environment: no OMNIQUANT_ variables, no .env file in the working directory."""
    for name in list(os.environ):
        if name.startswith("OMNIQUANT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_overrides_from_the_environment_are_parsed_into_rules(env: pytest.MonkeyPatch) -> None:
    env.setenv(
        "OMNIQUANT_RISK__OVERRIDES",
        json.dumps(
            [
                {"account": "desk-1", "max_position_value": "100000", "max_orders_per_second": 4},
                {"account": "desk-1", "symbol": "TSLA", "max_position_value": "25000.5"},
                {"strategy": "sma", "max_concentration": "0.1"},
            ]
        ),
    )
    risk = load_settings().risk
    assert risk.overrides == [
        LimitOverride(account="desk-1", max_position_value=D(100_000), max_orders_per_second=4),
        LimitOverride(account="desk-1", symbol="TSLA", max_position_value=D("25000.5")),
        LimitOverride(strategy="sma", max_concentration=D("0.1")),
    ]
    tsla = RiskLimitsRaw.from_config(risk.resolved("desk-1", "sma", "TSLA")).account
    assert tsla.max_position_value == raw(D("25000.5"))
    assert tsla.max_orders_per_second == 4
    assert tsla.max_concentration == raw(D("0.1"))
    aapl = RiskLimitsRaw.from_config(risk.resolved("desk-1", "other", "AAPL")).account
    assert aapl.max_position_value == raw(100_000)
    assert aapl.max_concentration == raw(D("0.25"))  # the default


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        ({"account": "desk-1", "max_concentration": "2"}, "MAX_CONCENTRATION"),
        ({"account": "desk-1", "margin_rate": "0"}, "MARGIN_RATE"),
        ({"symbol": "TSLA", "max_position_value": "-5"}, "MAX_POSITION_VALUE"),
        ({"account": "desk-1", "max_orders_per_second": 0}, "MAX_ORDERS_PER_SECOND"),
        ({"account": "desk-1", "max_positon_value": "1"}, "MAX_POSITON_VALUE"),  # a typo
        ({"account": "", "max_drawdown": "0.1"}, "ACCOUNT"),
    ],
)
def test_a_bad_override_fails_with_a_config_error_naming_the_setting(
    env: pytest.MonkeyPatch, rule: dict[str, Any], field: str
) -> None:
    env.setenv("OMNIQUANT_RISK__OVERRIDES", json.dumps([{"symbol": "AAPL"}, rule]))
    with pytest.raises(ConfigError) as raised:
        load_settings()
    # the variable, the rule's place in the list (the second) and the limit, on one line
    assert re.search(rf"OMNIQUANT_RISK__OVERRIDES\D*1\D*{field}", str(raised.value))


def test_malformed_override_json_fails_with_a_config_error_naming_the_variable(
    env: pytest.MonkeyPatch,
) -> None:
    env.setenv("OMNIQUANT_RISK__OVERRIDES", '[{"account": "desk-1",')
    with pytest.raises(ConfigError, match="OMNIQUANT_RISK__OVERRIDES"):
        load_settings()


# -- the raw limits the gate runs on ----------------------------------------------------------


def test_raw_limits_carry_the_account_limits_of_the_config() -> None:
    limits = RiskLimits(
        max_position_value=D("123456.5"),
        max_gross_leverage=D("3.5"),
        max_concentration=D("0.3"),
        margin_rate=D("0.25"),
        max_orders_per_second=7,
        daily_loss_limit=D("2500.75"),
        max_drawdown=D("0.2"),
    )
    assert RiskLimitsRaw.from_config(limits).account == AccountLimitsRaw(
        max_position_value=raw(D("123456.5")),
        max_gross_leverage=raw(D("3.5")),
        max_concentration=raw(D("0.3")),
        margin_rate=raw(D("0.25")),
        max_orders_per_second=7,
        daily_loss_limit=raw(D("2500.75")),
        max_drawdown=raw(D("0.2")),
    )


def test_default_account_limits_are_the_issues_seed_in_config_and_raw_alike() -> None:
    seed = AccountLimitsRaw(
        max_position_value=raw(500_000),
        max_gross_leverage=raw(D("2.0")),
        max_concentration=raw(D("0.25")),
        margin_rate=raw(D("0.5")),
        max_orders_per_second=10,
        daily_loss_limit=raw(10_000),
        max_drawdown=raw(D("0.15")),
    )
    assert RiskLimitsRaw.from_config(RiskLimits()).account == seed
    built = RiskLimitsRaw(max_order_notional=1, max_position_per_symbol=1, max_order_quantity=1)
    assert built.account == seed


# -- alerts issue trading-state commands ------------------------------------------------------


def _alert(kind: AlertKind, key: str, *, account: str = "desk-1", ts: int = TS) -> RiskAlert:
    return RiskAlert(
        kind=kind,
        severity=AlertSeverity.CRITICAL
        if kind == AlertKind.DAILY_LOSS_BREACH
        else AlertSeverity.WARNING,
        account=account,
        value=raw(10_000),
        fraction=1.0,
        level=1.0,
        session_day=date(2026, 1, 5),
        ts_event=ts,
        key=key,
        message=f"{account}: {kind} reached",
    )


@pytest.mark.parametrize(
    ("kind", "state"),
    [
        (AlertKind.DAILY_LOSS_BREACH, TradingState.HALTED),
        (AlertKind.DRAWDOWN, TradingState.REDUCING),
    ],
)
def test_a_limit_alert_issues_a_trading_state_command_for_its_account(
    kind: AlertKind, state: TradingState
) -> None:
    alert = _alert(kind, f"desk-1|{kind}|2026-01-05")
    control = control_record(alert, ts_init=TS + 5)
    assert control is not None
    assert control.control_type == ControlType.TRADING_STATE
    assert control.trading_state == state
    assert control.scope == "desk-1"
    assert (control.ts_event, control.ts_init) == (TS, TS + 5)
    assert control.reason == alert.message
    assert control.issued_by


def test_command_ids_follow_the_alert_key_so_a_replay_issues_the_same_command() -> None:
    key = "desk-1|DAILY_LOSS_BREACH|2026-01-05"
    first = control_record(_alert(AlertKind.DAILY_LOSS_BREACH, key), ts_init=TS + 1)
    replay = control_record(_alert(AlertKind.DAILY_LOSS_BREACH, key), ts_init=TS + 999)
    next_day = control_record(
        _alert(AlertKind.DAILY_LOSS_BREACH, "desk-1|DAILY_LOSS_BREACH|2026-01-06"), ts_init=TS
    )
    other = control_record(
        _alert(
            AlertKind.DAILY_LOSS_BREACH, "desk-2|DAILY_LOSS_BREACH|2026-01-05", account="desk-2"
        ),
        ts_init=TS,
    )
    assert first is not None and replay is not None and next_day is not None and other is not None
    assert first.command_id == replay.command_id
    assert key in first.command_id
    assert len({first.command_id, next_day.command_id, other.command_id}) == 3
    drawdowns = [
        control_record(_alert(AlertKind.DRAWDOWN, f"desk-1|DRAWDOWN|{n}"), ts_init=TS)
        for n in (1, 2)
    ]
    assert drawdowns[0] is not None and drawdowns[1] is not None
    assert drawdowns[0].command_id != drawdowns[1].command_id


def test_a_daily_loss_warning_issues_no_command() -> None:
    warning = _alert(AlertKind.DAILY_LOSS_WARNING, "desk-1|DAILY_LOSS_WARNING|2026-01-05")
    assert control_record(warning, ts_init=TS) is None


def test_the_commands_halt_or_reduce_only_their_account_at_the_gate() -> None:
    states = TradingStates()
    halt = control_record(_alert(AlertKind.DAILY_LOSS_BREACH, "desk-1|B|d"), ts_init=TS)
    reduce = control_record(_alert(AlertKind.DRAWDOWN, "desk-2|D|1", account="desk-2"), ts_init=TS)
    assert halt is not None and reduce is not None
    assert states.apply(halt) and states.apply(reduce)
    assert not states.apply(halt)  # the replayed command changes nothing
    risk = PreTradeRisk(
        RiskLimitsRaw(max_order_notional=raw(10**6), max_position_per_symbol=raw(10**6),
                      max_order_quantity=raw(10**6))
    )  # fmt: skip
    long = SymbolRiskState(position=raw(100))

    def decide(account: str, side: Side) -> Decision:
        request = OrderRequest(
            client_order_id=f"{account}-{side}",
            strategy_id="sma",
            account=account,
            symbol="TSLA",
            side=side,
            quantity=raw(10),
            ts_event=TS,
            ts_init=TS,
        )
        decision, _ = risk.check(
            request, long, TS, trading=states.of(account), market=MarketPrice(raw(100), TS)
        )
        return decision.decision

    assert decide("desk-1", Side.SELL) == Decision.REJECTED  # halted: not even a reduction
    assert decide("desk-2", Side.SELL) == Decision.APPROVED  # reducing: a reduction passes
    assert decide("desk-2", Side.BUY) == Decision.REJECTED
    assert decide("desk-3", Side.BUY) == Decision.APPROVED  # no alert, no command


class _StateDict(dict[str, Any]):
    """Enough of Quix's State for one account's risk-metrics state."""

    def set(self, key: str, value: Any) -> None:
        self[key] = value


def test_risk_metrics_exports_each_accounts_own_daily_loss_limit(env: pytest.MonkeyPatch) -> None:
    env.setenv(
        "OMNIQUANT_RISK__OVERRIDES", json.dumps([{"account": "desk-1", "daily_loss_limit": "2500"}])
    )
    settings = load_settings()
    processor = RiskMetricsProcessor(settings)
    for account in ("desk-1", "desk-2"):
        state = _StateDict()
        for bar in range(2):  # the second bar closes the first: one observation
            snapshot = {
                "account": account,
                "ts_event": TS + bar * processor.cadence_ns,
                "equity": raw(100_000),
            }
            processor.on_portfolio(snapshot, state)
    limit = REGISTRY.get_sample_value
    assert limit("trading_daily_loss_limit", {"account": "desk-1"}) == 2500
    assert limit("trading_daily_loss_limit", {"account": "desk-2"}) == float(
        settings.risk.daily_loss_limit
    )


def test_fills_at_approval_is_refused_outside_a_backtest_namespace() -> None:
    from streams.risk_gate import RiskGateProcessor

    settings = load_settings(risk={"backtest_fills_at_approval": True}, topic_prefix="live.")
    with pytest.raises(ConfigError, match="OMNIQUANT_RISK__BACKTEST_FILLS_AT_APPROVAL"):
        RiskGateProcessor(settings, None, None, None)  # type: ignore[arg-type]
    inside = load_settings(risk={"backtest_fills_at_approval": True}, topic_prefix="bt-r1.")
    assert RiskGateProcessor(inside, None, None, None).fills_at_approval  # type: ignore[arg-type]
