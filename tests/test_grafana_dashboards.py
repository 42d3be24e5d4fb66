"""Every Grafana panel and variable runs against ClickHouse filled by a real pipeline run.

No Grafana server is available here, so each query is rewritten the way Grafana and the
ClickHouse plugin rewrite it (``grafana_macros``: template variables, then the plugin's
macros, ported from its sources), run in chDB against the store of ``pipeline_store``, and
its result checked against what the panel type needs. The dashboards are enumerated from
the JSON files, so a new panel is tested without touching this file.

Unit tests first: the expander against the plugin's own macro tests
(grafana/clickhouse-datasource ``pkg/macros/macros_test.go`` at
1d04063a31fb30f9582cd0b3aeaacb7d350b0dcf), the variable formats, and each dashboard's
structure (unique panel ids, gridPos, the provisioned datasource uid).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_macros import (
    MacroError,
    QueryContext,
    VariableValue,
    apply_template_variables,
    interpolate,
)
from pipeline_store import PipelineStore, pipeline_store  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
GRAFANA = REPO / "docker" / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
PROVISIONING = GRAFANA / "provisioning"
PLUGIN = "grafana-clickhouse-datasource"
SCHEMA_VERSION = 41  # Grafana 12.1 (the compose image is grafana/grafana:12.1.1)
INTERVAL = timedelta(seconds=1)  # the panel interval the backend receives


def _datasource_uid() -> str:
    doc = yaml.safe_load((PROVISIONING / "datasources" / "datasources.yml").read_text())
    (uid,) = [ds["uid"] for ds in doc["datasources"] if ds["type"] == PLUGIN]
    return str(uid)


def _dashboards() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


# ---- tables other colleagues are adding (their panels xfail until the table exists) ------
def _sink_source() -> str:
    return (REPO / "sinks" / "clickhouse.py").read_text()


PENDING_TABLES = {
    table: reason
    for table, reason in {
        "dead_letters": "the sink has no dead_letters table yet (sinks/clickhouse.py)",
        "consumer_lag": "no consumer_lag table yet (the lag monitor stage has not landed)",
    }.items()
    if f'"{table}"' not in _sink_source()
}


def _pending(sql: str) -> str | None:
    for table, reason in PENDING_TABLES.items():
        if re.search(rf"\bomniquant\.{table}\b", sql):
            return reason
    return None


# ======================================================================================
# The expander against the plugin's own tests (pkg/macros/macros_test.go)
# ======================================================================================
def _go_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


FROM_371, TO_371 = _go_time("2014-11-12T11:45:26.371Z"), _go_time("2015-11-12T11:45:26.371Z")
FROM_123, TO_456 = _go_time("2014-11-12T11:45:26.123Z"), _go_time("2015-11-12T11:45:26.456Z")
ZERO = datetime(1, 1, 1, tzinfo=UTC)

PLUGIN_CASES = [
    # (name, from, to, interval, input, output)
    ("fromTime", FROM_371, TO_371, timedelta(0), "$__fromTime", "toDateTime(1415792726)"),
    ("toTime", FROM_371, TO_371, timedelta(0), "$__toTime", "toDateTime(1447328726)"),
    ("fromTime_ms", FROM_371, TO_371, timedelta(0), "$__fromTime_ms",
     "fromUnixTimestamp64Milli(1415792726371)"),
    ("toTime_ms", FROM_371, TO_371, timedelta(0), "$__toTime_ms",
     "fromUnixTimestamp64Milli(1447328726371)"),
    ("dateFilter", FROM_371, TO_371, timedelta(0), "$__dateFilter(dateCol)",
     "dateCol >= toDate('2014-11-12') AND dateCol <= toDate('2015-11-12')"),
    ("dateTimeFilter", FROM_371, TO_371, timedelta(0), "$__dateTimeFilter(dateCol, timeCol)",
     "(dateCol >= toDate('2014-11-12') AND dateCol <= toDate('2015-11-12')) AND "
     "(timeCol >= toDateTime(1415792726) AND timeCol <= toDateTime(1447328726))"),
    ("timeInterval", ZERO, ZERO, timedelta(seconds=20), "$__timeInterval(col)",
     "toStartOfInterval(toDateTime(col), INTERVAL 20 second)"),
    ("timeInterval_ms", ZERO, ZERO, timedelta(seconds=20), "$__timeInterval_ms(col)",
     "toStartOfInterval(toDateTime64(col, 3), INTERVAL 20000 millisecond)"),
    ("interval_s", ZERO, ZERO, timedelta(seconds=20), "$__interval_s", "20"),
    ("timeFrom", FROM_371, TO_371, timedelta(0), "$__timeFrom(ts)", "ts >= toDateTime(1415792726)"),
    ("timeTo", FROM_371, TO_371, timedelta(0), "$__timeTo(ts)", "ts <= toDateTime(1447328726)"),
    ("timeGroup 5m", ZERO, ZERO, timedelta(0), "$__timeGroup(ts, 5m)",
     "toStartOfInterval(toDateTime(ts), INTERVAL 300 second)"),
    ("timeGroup 1h", ZERO, ZERO, timedelta(0), "$__timeGroup(ts, 1h)",
     "toStartOfInterval(toDateTime(ts), INTERVAL 3600 second)"),
    # TestInterpolate
    ("clickhouse timeFilter", FROM_123, TO_456, timedelta(0),
     "select * from foo where $__timeFilter(cast(sth as timestamp))",
     "select * from foo where cast(sth as timestamp) >= toDateTime(1415792726) AND "
     "cast(sth as timestamp) <= toDateTime(1447328726)"),
    ("clickhouse timeFilter with empty spaces", FROM_123, TO_456, timedelta(0),
     "select * from foo where $__timeFilter(cast(sth as timestamp) )",
     "select * from foo where cast(sth as timestamp) >= toDateTime(1415792726) AND "
     "cast(sth as timestamp) <= toDateTime(1447328726)"),
    ("clickhouse timeFilter_ms", FROM_123, TO_456, timedelta(0),
     "select * from foo where $__timeFilter_ms(cast(sth as timestamp))",
     "select * from foo where cast(sth as timestamp) >= fromUnixTimestamp64Milli(1415792726123) "
     "AND cast(sth as timestamp) <= fromUnixTimestamp64Milli(1447328726456)"),
    ("clickhouse fromTime and toTime", FROM_123, TO_456, timedelta(0),
     "select * from foo where ( date >= $__fromTime and date <= $__toTime ) limit 100",
     "select * from foo where ( date >= toDateTime(1415792726) and "
     "date <= toDateTime(1447328726) ) limit 100"),
    ("clickhouse fromTime_ms and toTime_ms inside a complex clauses", FROM_123, TO_456,
     timedelta(0),
     "select * from foo where ( date >= $__fromTime_ms ) and ( date <= $__toTime_ms ) limit 100",
     "select * from foo where ( date >= fromUnixTimestamp64Milli(1415792726123) ) and "
     "( date <= fromUnixTimestamp64Milli(1447328726456) ) limit 100"),
    # TestInterpolateNestedMacros
    ("macro as sole argument of another macro", FROM_123, TO_456, timedelta(minutes=1),
     "SELECT $__timeInterval($__fromTime) AS from_time",
     "SELECT toStartOfInterval(toDateTime(toDateTime(1415792726)), INTERVAL 60 second) "
     "AS from_time"),
    ("millisecond variants nest the same way", FROM_123, TO_456, timedelta(minutes=1),
     "SELECT $__timeInterval_ms($__fromTime_ms)",
     "SELECT toStartOfInterval(toDateTime64(fromUnixTimestamp64Milli(1415792726123), 3), "
     "INTERVAL 60000 millisecond)"),
    ("macro nested inside a larger argument expression", FROM_123, TO_456, timedelta(minutes=1),
     "select * from foo where $__timeFilter(coalesce(closed_at, $__toTime))",
     "select * from foo where coalesce(closed_at, toDateTime(1447328726)) >= "
     "toDateTime(1415792726) AND coalesce(closed_at, toDateTime(1447328726)) <= "
     "toDateTime(1447328726)"),
    # TestInterpolateBackslashEscapedStringLiterals
    ("backslash-escaped quote with -- inside the literal", FROM_123, TO_456, timedelta(0),
     r"select * from foo where msg = 'it\'s -- fine' and $__fromTime",
     r"select * from foo where msg = 'it\'s -- fine' and toDateTime(1415792726)"),
    ("backslash-escaped quote with /* inside the literal", FROM_123, TO_456, timedelta(0),
     r"select * from foo where msg = 'a\'/*x' and $__toTime",
     r"select * from foo where msg = 'a\'/*x' and toDateTime(1447328726)"),
    ("doubled-quote escape", FROM_123, TO_456, timedelta(0),
     "select * from foo where msg = 'it''s' and $__fromTime",
     "select * from foo where msg = 'it''s' and toDateTime(1415792726)"),
    # TestInterpolateBacktickAndDollarQuotedRegions
    ("backtick identifier with apostrophe", FROM_123, TO_456, timedelta(0),
     "SELECT `it's` AS x, msg FROM t WHERE msg = 'a--b' AND $__timeFilter(ts)",
     "SELECT `it's` AS x, msg FROM t WHERE msg = 'a--b' AND ts >= toDateTime(1415792726) "
     "AND ts <= toDateTime(1447328726)"),
    ("backtick identifier containing -- and /*", FROM_123, TO_456, timedelta(0),
     "SELECT `a--b`, `c/*d` FROM t WHERE $__fromTime",
     "SELECT `a--b`, `c/*d` FROM t WHERE toDateTime(1415792726)"),
    ("dollar-quoted string containing --", FROM_123, TO_456, timedelta(0),
     "SELECT $doc$a--b$doc$ AS x FROM t WHERE $__toTime",
     "SELECT $doc$a--b$doc$ AS x FROM t WHERE toDateTime(1447328726)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("time_from", "time_to", "interval", "raw", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in PLUGIN_CASES],
)
def test_expander_matches_the_plugins_macro_tests(
    time_from: datetime, time_to: datetime, interval: timedelta, raw: str, expected: str
) -> None:
    assert interpolate(raw, QueryContext(time_from, time_to, interval)) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "$__timeFilter()",
        "$__timeFilter_ms()",
        "$__dateFilter()",
        "$__dateTimeFilter(d)",
        "$__timeInterval()",
        "$__timeInterval_ms()",
        "$__timeFrom()",
        "$__timeTo()",
        "$__timeGroup(ts)",
        "$__timeGroup(ts, nope)",
    ],
)
def test_expander_refuses_bad_arguments_like_the_plugin(raw: str) -> None:
    with pytest.raises(MacroError):
        interpolate(raw, QueryContext(ZERO, ZERO, timedelta(0)))


def test_expander_leaves_unknown_macros_and_skips_comments() -> None:
    ctx = QueryContext(FROM_371, TO_371, timedelta(seconds=5))
    sql = "SELECT $__unknown(x), $__interval_s -- $__toTime\n/* $__fromTime */ FROM t"
    blank = " " * len("-- $__toTime") + "\n" + " " * len("/* $__fromTime */")
    assert interpolate(sql, ctx) == f"SELECT $__unknown(x), 5 {blank} FROM t"


def test_expander_refuses_statement_macros_it_does_not_port() -> None:
    with pytest.raises(MacroError, match="columns"):
        interpolate("SELECT $__columns(t, k, v) FROM x", QueryContext(ZERO, ZERO, INTERVAL))


def test_template_variables_use_the_plugins_format_and_conditional_all() -> None:
    all_accounts = VariableValue(["a", "b"], is_all=True)
    one = VariableValue(["a"])
    sql = "WHERE $__conditionalAll(account IN (${account}), $account) AND s IN ($symbol)"
    assert (
        apply_template_variables(sql, {"account": all_accounts, "symbol": one})
        == "WHERE 1=1 AND s IN ('a')"
    )
    assert (
        apply_template_variables(sql, {"account": one, "symbol": VariableValue(["x", "y"])})
        == "WHERE account IN ('a') AND s IN ('x','y')"
    )
    # a single-value (or repeated-panel) variable is inserted as it is, unless :sqlstring
    scalar = {"symbol": VariableValue("O'X")}
    assert apply_template_variables("${symbol} ${symbol:sqlstring}", scalar) == "O'X 'O''X'"
    # macros are not variables: left for the backend
    assert apply_template_variables("$__timeFilter(t) $__interval_s", scalar) == (
        "$__timeFilter(t) $__interval_s"
    )
    with pytest.raises(MacroError):
        apply_template_variables("$__interval", scalar)  # Grafana's own: not modelled
    with pytest.raises(MacroError):
        apply_template_variables("${symbol:csv}", scalar)


# ======================================================================================
# Provisioning and dashboard structure
# ======================================================================================
def test_dashboard_provider_points_at_the_mounted_dashboards() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = dict(
        m.split(":")[:2] for m in compose["services"]["grafana"]["volumes"] if m.startswith(".")
    )
    providers = [
        p
        for f in sorted((PROVISIONING / "dashboards").glob("*.y*ml"))
        for p in yaml.safe_load(f.read_text())["providers"]
    ]
    assert providers, "no dashboard provider file"
    for provider in providers:
        assert provider["type"] == "file"
        path = provider["options"]["path"]
        (host,) = [h for h, container in mounts.items() if container == path]
        assert (REPO / host).resolve() == DASHBOARDS.resolve()
    assert len(_dashboards()) == 5


def test_clickhouse_datasource_is_provisioned_in_the_plugins_v4_format() -> None:
    doc = yaml.safe_load((PROVISIONING / "datasources" / "datasources.yml").read_text())
    (ds,) = [d for d in doc["datasources"] if d["type"] == PLUGIN]
    assert ds["uid"] == "omniquant-clickhouse"
    data = ds["jsonData"]
    assert {"host", "port", "protocol", "username"} <= set(data)
    assert data["protocol"] in ("http", "native")
    assert ds["secureJsonData"]["password"].startswith("$")  # from the environment
    assert "url" not in ds and "user" not in ds  # v3 fields


@pytest.mark.parametrize("name", sorted(_dashboards()))
def test_dashboard_structure(name: str) -> None:
    board = _dashboards()[name]
    uid = _datasource_uid()
    assert board["schemaVersion"] == SCHEMA_VERSION
    assert board["uid"].startswith("omniquant-")
    panels = list(_panels(board))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}: {ids}"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    for panel in panels:
        where = f"{name} panel {panel['id']} ({panel.get('title')})"
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid), where
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, where
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": PLUGIN, "uid": uid}, where
        assert panel["targets"], where
        for target in panel["targets"]:
            assert target["datasource"] == {"type": PLUGIN, "uid": uid}, where
            assert target["editorType"] == "sql" and target["rawSql"].strip(), where
            assert target["format"] in (0, 1), where  # time series / table
            used = set(re.findall(r"\$\{?([A-Za-z]\w*)", target["rawSql"]))
            assert used <= set(variables), f"{where} uses undefined variables {used}"
        if "repeat" in panel:
            assert panel["repeat"] in variables, where
    for var in variables.values():
        assert var["type"] == "query" and var["datasource"]["uid"] == uid, var["name"]


def test_dashboards_use_account_and_symbol_variables_in_panel_sql() -> None:
    used: set[str] = set()
    for board in _dashboards().values():
        names = {v["name"] for v in board["templating"]["list"]}
        sql = " ".join(t["rawSql"] for p in _panels(board) for t in p.get("targets", []))
        used |= {n for n in names if re.search(rf"\$\{{?{n}\b", sql)}
    assert {"account", "symbol"} <= used


# ======================================================================================
# Running every variable query and every panel against the pipeline's store
# ======================================================================================
@dataclass
class Store:
    session: Any
    time_from: datetime
    time_to: datetime

    def query(self, sql: str) -> tuple[list[dict[str, str]], list[list[Any]]]:
        """(meta [{name, type}], rows) of one query."""
        result = json.loads(self.session.query(sql, "JSONCompact").bytes() or b"{}")
        return result.get("meta", []), result.get("data", [])

    def context(self) -> QueryContext:
        return QueryContext(self.time_from, self.time_to, INTERVAL)


@pytest.fixture(scope="module")
def store(pipeline_store: PipelineStore) -> Iterator[Store]:  # noqa: F811
    from chdb import session as chdb_session

    # chDB's own session (the Session API is untyped)
    sess: Any = chdb_session.Session(str(pipeline_store.chdb_path))  # type: ignore[no-untyped-call]
    try:
        probe = Store(sess, datetime.now(UTC), datetime.now(UTC))
        _, rows = probe.query(
            "SELECT toUnixTimestamp(min(event_time)), toUnixTimestamp(max(_ingested_at)) "
            "FROM omniquant.trades"
        )
        first, last = (datetime.fromtimestamp(int(v), UTC) for v in rows[0])
        # a dashboard range around the run, as a user would pick it after the run
        yield Store(sess, first - timedelta(minutes=5), last + timedelta(minutes=5))
    finally:
        sess.close()


def _render(sql: str, variables: dict[str, VariableValue], store: Store) -> str:
    rendered = interpolate(apply_template_variables(sql, variables), store.context())
    left = re.findall(r"\$\{?\w+|\[\[\w+", rendered)
    assert not left, f"unexpanded variables or macros {left} in:\n{rendered}"
    return rendered


def _variable_options(
    board: dict[str, Any], store: Store
) -> tuple[dict[str, list[str]], dict[str, VariableValue]]:
    """Each variable's options (its query run like Grafana runs it), and its default value."""
    options: dict[str, list[str]] = {}
    defaults: dict[str, VariableValue] = {}
    for var in board["templating"]["list"]:
        meta, rows = store.query(_render(var["query"], defaults, store))
        assert len(meta) == 1, f"variable {var['name']}: one column (text = value) expected"
        values = [str(r[0]) for r in rows]
        assert values, f"variable {var['name']} has no options"
        options[var["name"]] = values
        if var.get("includeAll"):
            defaults[var["name"]] = VariableValue(values, is_all=True)
        elif var.get("multi"):
            defaults[var["name"]] = VariableValue(values[:1])
        else:
            defaults[var["name"]] = VariableValue(values[0])
    return options, defaults


def _selections(
    board: dict[str, Any], panel: dict[str, Any], options: dict[str, list[str]],
    defaults: dict[str, VariableValue],
) -> Iterator[tuple[str, dict[str, VariableValue], bool]]:  # fmt: skip
    """(label, variables, must be non-empty): the default (All), each multi variable at one
    value and at two values; a repeated panel once per value of its variable, as Grafana
    repeats it (the variable scoped to that one value)."""
    repeat = panel.get("repeat")
    if repeat:
        for value in options[repeat]:
            yield f"{repeat}={value} (repeat)", {**defaults, repeat: VariableValue(value)}, True
        return
    yield "defaults", dict(defaults), True
    for var in board["templating"]["list"]:
        name = var["name"]
        if not var.get("multi"):
            continue
        for picked in (options[name][:1], options[name][:2]):
            yield f"{name}={','.join(picked)}", {**defaults, name: VariableValue(picked)}, False


_NUMERIC = re.compile(r"^(Nullable\()?(U?Int\d+|Float\d+|Decimal.*)\)?$")
_TIME = re.compile(r"^(Nullable\()?DateTime(64)?(\(.*\))?\)?$")
_TEXT = re.compile(r"^(LowCardinality\()?(Nullable\()?String\)?\)?$")


def _check_shape(
    panel: dict[str, Any], target: dict[str, Any], meta: list[dict[str, str]], rows: list[Any]
) -> None:
    names = [m["name"] for m in meta]
    types = {m["name"]: m["type"] for m in meta}
    numeric = [n for n in names if _NUMERIC.match(types[n])]
    times = [n for n in names if _TIME.match(types[n])]
    kind = panel["type"]
    assert len(names) == len(set(names)), f"duplicate column names {names}"
    if kind == "timeseries":
        assert len(times) == 1, f"one DateTime column expected: {types}"
        assert numeric, f"numeric columns expected: {types}"
        labels = [n for n in names if n not in times and n not in numeric]
        assert all(_TEXT.match(types[n]) for n in labels), f"label columns must be text: {types}"
        if labels:  # long format: the plugin's time-series format turns it wide
            assert target["format"] == 0, "a long result needs the time series format (0)"
        if target["format"] == 0 and rows:  # sqlds' LongToWide needs ascending time
            at = names.index(times[0])
            stamps = [r[at] for r in rows]
            assert stamps == sorted(stamps), "rows must be ordered by time"
    elif kind == "candlestick":
        for field in ("open", "high", "low", "close"):
            assert field in numeric, f"candlestick needs a numeric {field}: {types}"
        assert times and names[0] == times[0] == "time", f"time column first: {types}"
    elif kind == "stat":
        assert len(rows) <= 1 and len(numeric) == 1 and len(names) == 1, types
    elif kind == "table":
        unnamed = [n for n in names if "(" in n]
        assert not unnamed, f"table columns must be named in the SQL: {unnamed}"
    else:
        raise AssertionError(f"no shape rule for panel type {kind}")


def _panel_cases() -> Iterator[Any]:
    for name, board in _dashboards().items():
        for panel in _panels(board):
            if panel["type"] == "row":
                continue
            sql = " ".join(t["rawSql"] for t in panel["targets"])
            reason = _pending(sql)
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            yield pytest.param(name, panel["id"], id=f"{name}:{panel['id']}:{panel['title']}",
                               marks=marks)  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(_dashboards()))
def test_every_variable_query_returns_options(name: str, store: Store) -> None:
    board = _dashboards()[name]
    options, _ = _variable_options(board, store)
    assert set(options) == {v["name"] for v in board["templating"]["list"]}


@pytest.mark.integration
@pytest.mark.parametrize(("name", "panel_id"), list(_panel_cases()))
def test_every_panel_query_runs_with_the_shape_its_panel_needs(
    name: str, panel_id: int, store: Store
) -> None:
    board = _dashboards()[name]
    (panel,) = [p for p in _panels(board) if p["id"] == panel_id]
    options, defaults = _variable_options(board, store)
    ran = 0
    for label, variables, must_have_rows in _selections(board, panel, options, defaults):
        for target in panel["targets"]:
            sql = _render(target["rawSql"], variables, store)
            try:
                meta, rows = store.query(sql)
            except Exception as exc:
                raise AssertionError(f"[{label}] query failed: {exc}\n{sql}") from None
            if must_have_rows:
                assert rows, f"[{label}] no rows:\n{sql}"
                numeric_cols = [i for i, m in enumerate(meta) if _NUMERIC.match(m["type"])]
                assert not numeric_cols or any(
                    r[i] is not None for r in rows for i in numeric_cols
                ), f"[{label}] every value is NULL:\n{sql}"
            try:
                _check_shape(panel, target, meta, rows)
            except AssertionError as exc:
                raise AssertionError(f"[{label}] {exc}\n{sql}") from None
            ran += 1
    assert ran >= 1


def test_every_panel_is_enumerated() -> None:
    cases = list(_panel_cases())
    total = sum(1 for board in _dashboards().values() for p in _panels(board) if p["type"] != "row")
    assert len(cases) == total > 0
