"""Each package's public names are pinned: the surface changes only on purpose.

Like httpx's ``tests/test_exported_members.py``: ``__all__`` is exactly the pinned list, every
name in it resolves, and nothing public is defined in a package namespace without being
exported (submodules aside). To change a package's surface, change the pin here too.
"""

from __future__ import annotations

import importlib
import types

import pytest

PUBLIC_API: dict[str, tuple[str, ...]] = {
    "core": (
        "RECORD_TOPICS",
        "OmniquantError",
        "Settings",
        "TopicCatalog",
        "TopicNames",
        "TopicSpec",
        "load_settings",
    ),
    "schemas": (
        "MODEL_BY_AVRO_NAME",
        "VALUE_MODELS",
        "AggressorSide",
        "Alert",
        "AlertSeverity",
        "AvroSerde",
        "Bar",
        "ConsumerLag",
        "Control",
        "ControlType",
        "Decision",
        "ExecType",
        "ExecutionReport",
        "Fill",
        "FixedPointError",
        "LagStatus",
        "LiquiditySide",
        "OrderRequest",
        "OrderStatus",
        "OrderType",
        "PortfolioSnapshot",
        "Position",
        "Quote",
        "Record",
        "RiskCheck",
        "RiskDecision",
        "RiskMetric",
        "Side",
        "Signal",
        "SignalDirection",
        "TimeInForce",
        "Trade",
        "TradingState",
        "from_fixed",
        "to_fixed",
    ),
    "producers": ("RecordProducer",),
    "producers.polygon": ("PolygonConfig", "PolygonFeed", "backfill_aggs"),
    "producers.alpaca": ("AlpacaConfig", "AlpacaStockFeed", "AlpacaTradeUpdates"),
    "producers.kite": (
        "InstrumentMap",
        "KiteConfig",
        "KiteFeed",
        "KitePostbackServer",
        "OrderTracker",
        "PostbackRejected",
        "UnknownInstrumentError",
        "fetch_instruments",
        "parse_postback",
        "verify_postback_checksum",
    ),
    "producers.replay": (
        "OUT_OF_RANGE",
        "ReplayError",
        "ReplayStats",
        "Skip",
        "SourceFile",
        "open_file",
        "open_files",
        "parse_bound",
        "parse_speed",
        "parse_timestamp",
        "read_files",
        "replay",
    ),
    "sinks": (
        "TABLE_BY_TOPIC",
        "ClickHouseSink",
        "QueryServer",
        "TableSpec",
        "create_tables",
        "table_specs",
    ),
    "streams": ("DeadLetters", "StreamApp", "correlation_headers"),
    "streams.logic": (
        "AccountBook",
        "AccountRisk",
        "BacktestReport",
        "BarBuilder",
        "BarRule",
        "ClosedBar",
        "Crossover",
        "FoBanList",
        "MarkSchedule",
        "MarketPrice",
        "OpenOrder",
        "PositionLedger",
        "PreTradeRisk",
        "RiskConfig",
        "RiskLimitsRaw",
        "RiskMetricsEngine",
        "RiskObservation",
        "RiskSnapshot",
        "ScopeState",
        "SmaCrossover",
        "SymbolBook",
        "SymbolRiskState",
        "TradeResult",
        "TradingStates",
        "VarBacktester",
        "apply_report",
        "client_order_id_for",
        "parse_fo_ban_list",
        "signal_to_order",
        "target_position",
    ),
    "omniquant": ("STAGES", "StageSpec", "stage", "topic_catalog"),
}

# Names a package namespace may hold without exporting them.
_ALLOWED_EXTRA = {"annotations", "__version__"}


@pytest.mark.parametrize("package", sorted(PUBLIC_API))
def test_package_exports_exactly_its_pinned_names(package: str) -> None:
    module = importlib.import_module(package)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{package} has no __all__"
    assert sorted(exported) == sorted(PUBLIC_API[package])
    assert len(set(exported)) == len(exported), "duplicate names in __all__"


@pytest.mark.parametrize("package", sorted(PUBLIC_API))
def test_every_exported_name_resolves_and_nothing_public_is_unexported(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        assert hasattr(module, name), f"{package}.__all__ names {name}, which does not exist"
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name not in _ALLOWED_EXTRA
    }
    assert public <= set(module.__all__), f"public but not exported: {public - set(module.__all__)}"
