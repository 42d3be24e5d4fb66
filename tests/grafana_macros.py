"""What Grafana and the ClickHouse plugin do to a panel's SQL before ClickHouse sees it.

No Grafana server runs here, so the dashboard tests rebuild the two rewriting steps in
Python, as the plugin and Grafana implement them:

1. **Template variables** (in the browser): the plugin's ``applyTemplateVariables`` first
   resolves ``$__conditionalAll(cond, $var)``, then asks Grafana's template service to
   replace ``$var`` / ``${var}`` / ``${var:sqlstring}`` with the datasource's own format
   function (an array becomes ``'a','b'``; a single value is inserted as it is). Ported from
   grafana/clickhouse-datasource ``src/data/CHDatasource.ts`` (``applyTemplateVariables``,
   ``applyConditionalAll``, ``getMacroArgs``, ``format``) at commit
   1d04063a31fb30f9582cd0b3aeaacb7d350b0dcf (plugin 4.20.0). Grafana's own variable regex
   and ``sqlstring`` format follow Grafana's template service; only the forms the
   dashboards use are accepted, anything else raises.
2. **Macros** (in the plugin's Go backend): ``macros.Interpolate`` from
   grafana/clickhouse-datasource ``pkg/macros/macros.go`` at the same commit
   1d04063a31fb30f9582cd0b3aeaacb7d350b0dcf, which layers the ClickHouse handlers over
   grafana/macropro's ``DefaultMacros`` and runs macropro's ``Interpolate`` (comment
   stripping, argument splitting, innermost-first nesting). macropro is pinned at v1.0.1 in
   the plugin's go.mod; the macropro sources available here (``parser.go``, ``macropro.go``
   at 092bbe569ff0397465f5df6ae39f6fd6115319fc, ``defaults.go`` at
   155837e7114a7e770fca5526710818adfea56ca4) predate it, so the v1.0.1 behaviours the
   plugin's own tests pin (nested macros, backslash escapes, backtick and dollar quotes)
   are implemented to those tests (``tests/test_grafana_dashboards.py`` runs them).
   The statement macros (``$__columns``, ``$__rateColumns``, ``$__lttb`` ...) are not
   ported: a query using one raises, so a dashboard cannot silently depend on them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = [
    "GRAFANA_GLOBALS",
    "STATEMENT_MACROS",
    "MacroError",
    "QueryContext",
    "VariableValue",
    "apply_template_variables",
    "interpolate",
]


class MacroError(ValueError):
    """A macro or variable the query uses cannot be expanded (Grafana would fail too)."""


@dataclass(frozen=True, slots=True)
class QueryContext:
    """The backend's view of one query: dashboard time range and the panel's interval."""

    time_from: datetime
    time_to: datetime
    interval: timedelta
    table: str = ""
    column: str = ""

    @property
    def interval_ms(self) -> int:
        # Go: q.Interval.Milliseconds() — integer division of nanoseconds
        return _go_duration_ns(self.interval) // 1_000_000


def _go_duration_ns(d: timedelta) -> int:
    return (d.days * 86_400 + d.seconds) * 1_000_000_000 + d.microseconds * 1_000


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _unix_micro(t: datetime) -> int:
    d = t - _EPOCH  # exact integer arithmetic, no float
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def _unix(t: datetime) -> int:
    # Go: t.Unix() — floor to the second
    return _unix_micro(t) // 1_000_000


def _unix_milli(t: datetime) -> int:
    # Go: t.UnixMilli()
    return _unix_micro(t) // 1_000


# ---- macros.go: the ClickHouse handlers ------------------------------------------------
def _to_date(t: datetime) -> str:
    return f"toDate('{t.astimezone(UTC).strftime('%Y-%m-%d')}')"


def _to_datetime(t: datetime) -> str:
    return f"toDateTime({_unix(t)})"


def _to_datetime64(t: datetime) -> str:
    return f"fromUnixTimestamp64Milli({_unix_milli(t)})"


def _want(macro: str, want: int, args: Sequence[str]) -> None:
    if len(args) != want:
        raise MacroError(f"{macro} expected {want} argument(s), received {len(args)}")


def _interval_seconds(ctx: QueryContext) -> int:
    # Go: int(math.Max(ctx.Interval.Seconds(), 1)) — truncation toward zero
    return int(max(_go_duration_ns(ctx.interval) / 1e9, 1.0))


def _from_time(ctx: QueryContext, args: Sequence[str]) -> str:
    return _to_datetime(ctx.time_from)


def _to_time(ctx: QueryContext, args: Sequence[str]) -> str:
    return _to_datetime(ctx.time_to)


def _from_time_ms(ctx: QueryContext, args: Sequence[str]) -> str:
    return _to_datetime64(ctx.time_from)


def _to_time_ms(ctx: QueryContext, args: Sequence[str]) -> str:
    return _to_datetime64(ctx.time_to)


def _time_filter(ctx: QueryContext, args: Sequence[str]) -> str:
    _want("$__timeFilter", 1, args)
    col = args[0]
    return f"{col} >= {_to_datetime(ctx.time_from)} AND {col} <= {_to_datetime(ctx.time_to)}"


def _time_filter_ms(ctx: QueryContext, args: Sequence[str]) -> str:
    _want("$__timeFilter_ms", 1, args)
    col = args[0]
    return f"{col} >= {_to_datetime64(ctx.time_from)} AND {col} <= {_to_datetime64(ctx.time_to)}"


def _date_filter(ctx: QueryContext, args: Sequence[str]) -> str:
    _want("$__dateFilter", 1, args)
    col = args[0]
    return f"{col} >= {_to_date(ctx.time_from)} AND {col} <= {_to_date(ctx.time_to)}"


def _date_time_filter(ctx: QueryContext, args: Sequence[str]) -> str:
    _want("$__dateTimeFilter", 2, args)
    d, t = args
    date_part = f"({d} >= {_to_date(ctx.time_from)} AND {d} <= {_to_date(ctx.time_to)})"
    time_part = f"({t} >= {_to_datetime(ctx.time_from)} AND {t} <= {_to_datetime(ctx.time_to)})"
    return f"{date_part} AND {time_part}"


def _time_interval(ctx: QueryContext, args: Sequence[str]) -> str:
    _want("$__timeInterval", 1, args)
    return f"toStartOfInterval(toDateTime({args[0]}), INTERVAL {_interval_seconds(ctx)} second)"


def _time_interval_ms(ctx: QueryContext, args: Sequence[str]) -> str:
    _want("$__timeInterval_ms", 1, args)
    ms = int(max(float(ctx.interval_ms), 1.0))
    return f"toStartOfInterval(toDateTime64({args[0]}, 3), INTERVAL {ms} millisecond)"


def _interval_s(ctx: QueryContext, args: Sequence[str]) -> str:
    return str(_interval_seconds(ctx))


def _time_from(ctx: QueryContext, args: Sequence[str]) -> str:
    _want("$__timeFrom", 1, args)
    return f"{args[0]} >= {_to_datetime(ctx.time_from)}"


def _time_to(ctx: QueryContext, args: Sequence[str]) -> str:
    _want("$__timeTo", 1, args)
    return f"{args[0]} <= {_to_datetime(ctx.time_to)}"


_GO_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5
    "μs": 1_000,  # U+03BC
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_GO_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def _go_parse_duration(text: str) -> float:
    """Go's time.ParseDuration, in nanoseconds ("5m", "1h30m", "1.5s", "-2s", "0")."""
    s, sign = text, 1
    if s[:1] in "+-" and s:
        sign, s = (-1 if s[0] == "-" else 1), s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise MacroError(f"time: invalid duration {text!r}")
    total, pos = 0.0, 0
    for match in _GO_DURATION_PART.finditer(s):
        if match.start() != pos:
            raise MacroError(f"time: invalid duration {text!r}")
        total += float(match.group(1)) * _GO_UNITS_NS[match.group(2)]
        pos = match.end()
    if pos != len(s):
        raise MacroError(f"time: invalid duration {text!r}")
    return sign * total


def _go_round(x: float) -> int:
    # Go math.Round: half away from zero
    return math.floor(abs(x) + 0.5) * (1 if x >= 0 else -1)


def _time_group(ctx: QueryContext, args: Sequence[str]) -> str:
    _want("$__timeGroup", 2, args)
    col = args[0].strip()
    period = args[1].strip().strip("'\"")
    secs = _go_round(_go_parse_duration(period) / 1e9)
    if secs <= 0:
        raise MacroError(f"$__timeGroup: interval must be positive, got {period!r}")
    return f"toStartOfInterval(toDateTime({col}), INTERVAL {secs} second)"


# ---- macropro defaults.go: the dialect-neutral ones the plugin keeps -------------------
def _format_duration(ns: int) -> str:
    if ns == 0:
        return "0s"
    ns = abs(ns)
    for unit, size in (("h", 3_600 * 10**9), ("m", 60 * 10**9), ("s", 10**9)):
        if ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns // 1_000_000}ms"


def _interval(ctx: QueryContext, args: Sequence[str]) -> str:
    return _format_duration(_go_duration_ns(ctx.interval))


def _interval_ms_macro(ctx: QueryContext, args: Sequence[str]) -> str:
    return str(ctx.interval_ms)


def _table(ctx: QueryContext, args: Sequence[str]) -> str:
    if not ctx.table:
        raise MacroError("$__table: no table name in query context")
    return ctx.table


def _column(ctx: QueryContext, args: Sequence[str]) -> str:
    if not ctx.column:
        raise MacroError("$__column: no column name in query context")
    return ctx.column


MacroFunc = Callable[[QueryContext, Sequence[str]], str]

# macros.ClickHouseMacros = MergeMacros(DefaultMacros(), ClickHouse overrides)
CLICKHOUSE_MACROS: dict[str, MacroFunc] = {
    "interval": _interval,
    "interval_ms": _interval_ms_macro,
    "table": _table,
    "column": _column,
    "timeFilter": _time_filter,
    "timeFrom": _time_from,
    "timeTo": _time_to,
    "timeGroup": _time_group,
    "fromTime": _from_time,
    "toTime": _to_time,
    "fromTime_ms": _from_time_ms,
    "toTime_ms": _to_time_ms,
    "timeFilter_ms": _time_filter_ms,
    "dateFilter": _date_filter,
    "dateTimeFilter": _date_time_filter,
    "dt": _date_time_filter,
    "timeInterval": _time_interval,
    "timeInterval_ms": _time_interval_ms,
    "interval_s": _interval_s,
}
# statement.go: expanded before the others, rewriting the whole statement (not ported)
STATEMENT_MACROS = frozenset(
    {"columns", "rateColumns", "perSecondColumns", "increaseColumns", "lttb"}
)


# ---- macropro: comment stripping and the expansion pass --------------------------------
def _is_name_char(c: str) -> bool:
    return c == "_" or (c.isascii() and c.isalnum())


def _scan_string(s: str, pos: int) -> int:
    """Index after the quoted region starting at ``s[pos]`` (', " or `): doubled-quote
    escapes, and backslash escapes (ClickHouse: BackslashEscape), unterminated → len(s)."""
    quote, j = s[pos], pos + 1
    while j < len(s):
        if s[j] == "\\" and quote != "`":
            j += 2
            continue
        if s[j] == quote:
            if j + 1 < len(s) and s[j + 1] == quote:
                j += 2
                continue
            return j + 1
        j += 1
    return len(s)


def _dollar_quote_end(s: str, pos: int) -> int:
    """End of a $tag$…$tag$ literal at ``pos``, or -1 (parseDollarQuote)."""
    j = pos + 1
    while j < len(s) and s[j] != "$":
        if not _is_name_char(s[j]):
            return -1
        j += 1
    if j >= len(s):
        return -1
    tag = s[pos : j + 1]
    idx = s.find(tag, j + 1)
    return -1 if idx < 0 else idx + len(tag)


def strip_comments(query: str) -> str:
    """macropro.StripComments with the plugin's styles (line, block, backslash escapes,
    backtick quotes, dollar quotes): comments become spaces of the same length."""
    out: list[str] = []
    i = 0
    while i < len(query):
        c = query[i]
        if c in "'\"`":
            j = _scan_string(query, i)
            out.append(query[i:j])
            i = j
            continue
        if c == "$":
            end = _dollar_quote_end(query, i)
            if end >= 0:
                out.append(query[i:end])
                i = end
                continue
        if query.startswith("--", i):
            j = i
            while j < len(query) and query[j] not in "\r\n":
                j += 1
            out.append(" " * (j - i))
            i = j
            continue
        if query.startswith("/*", i):
            end = query.find("*/", i + 2)
            j = len(query) if end < 0 else end + 2
            out.append(" " * (j - i))
            i = j
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _closing_paren(s: str, open_at: int) -> int:
    depth, i = 0, open_at
    while i < len(s):
        c = s[i]
        if c in "'\"":
            i = _scan_string(s, i)
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _parse_args(raw: str) -> list[str]:
    raw = raw.strip()
    if not raw:
        return []
    args: list[str] = []
    depth = start = i = 0
    while i < len(raw):
        c = raw[i]
        if c in "'\"":
            i = _scan_string(raw, i)
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            if depth == 0:
                raise MacroError(f"unexpected ')' at position {i}")
            depth -= 1
        elif c == "," and depth == 0:
            args.append(raw[start:i].strip())
            start = i + 1
        i += 1
    if depth != 0:
        raise MacroError("unbalanced parentheses in arguments")
    args.append(raw[start:].strip())
    return args


def _expand(s: str, ctx: QueryContext, prefix: str = "$__") -> str:
    out: list[str] = []
    i = 0
    while True:
        idx = s.find(prefix, i)
        if idx < 0:
            out.append(s[i:])
            return "".join(out)
        end = idx + len(prefix)
        while end < len(s) and _is_name_char(s[end]):
            end += 1
        name = s[idx + len(prefix) : end]
        func = CLICKHOUSE_MACROS.get(name)
        if func is None:  # unknown macros are left unchanged
            out.append(s[i:end])
            i = end
            continue
        out.append(s[i:idx])
        raw = ""
        if end < len(s) and s[end] == "(":
            close = _closing_paren(s, end)
            if close >= 0:  # unbalanced: treated as a zero-argument call
                raw, end = s[end + 1 : close], close + 1
        args = _parse_args(_expand(raw, ctx, prefix))  # innermost first
        out.append(func(ctx, args))
        i = end


def interpolate(raw_sql: str, ctx: QueryContext) -> str:
    """macros.Interpolate: the SQL the plugin sends to ClickHouse."""
    for name in STATEMENT_MACROS:
        if re.search(rf"\$__{name}\b", raw_sql):
            raise MacroError(f"statement macro $__{name} is not ported to this expander")
    return _expand(strip_comments(raw_sql), ctx)


# ---- the browser side: template variables --------------------------------------------
@dataclass(frozen=True, slots=True)
class VariableValue:
    """A variable's current value as Grafana holds it: ``value`` is a string or, for a
    multi-value variable, a list; ``is_all`` marks the All option (current value $__all)."""

    value: str | list[str]
    is_all: bool = False


# Grafana's variable syntax: $var, [[var:fmt]], ${var.field:fmt}
_VARIABLE = re.compile(
    r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}"
)
# Grafana's own variables: replaced by Grafana, not modelled here (a query using one fails)
GRAFANA_GLOBALS = frozenset(
    {
        "__interval",
        "__interval_ms",
        "__rate_interval",
        "__rate_interval_ms",
        "__range",
        "__range_s",
        "__range_ms",
        "__from",
        "__to",
        "__timezone",
        "__dashboard",
        "__user",
        "__org",
        "__name",
        "__all",
    }
)


def _macro_args(query: str, args_index: int) -> list[str]:
    """CHDatasource.getMacroArgs: split ``(a, b)`` at ``args_index`` on top-level commas."""
    args: list[str] = []
    depth, last = 0, 1
    sub = query[args_index:]
    for match in re.finditer(r"\(|\)|,", sub):
        node = match.group(0)
        if node == "(":
            depth += 1
        elif node == ")":
            depth -= 1
        if node == "," and depth == 1:
            args.append(sub[last : match.end() - 1])
            last = match.end()
        if depth == 0:
            args.append(sub[last : match.end() - 1])
            return args
    return []


def _conditional_all(raw: str, variables: Mapping[str, VariableValue]) -> str:
    """CHDatasource.applyConditionalAll: ``$__conditionalAll(cond, $var)`` → ``1=1`` when
    the variable is All (or empty), else ``cond``."""
    macro = "$__conditionalAll("
    at = raw.rfind(macro)
    while at != -1:
        params = _macro_args(raw, at + len(macro) - 1)
        if len(params) != 2:
            return raw
        found = re.search(r"(?<=\$\{)[\w\d]+(?=\})|(?<=\$)[\w\d]+", params[1].strip())
        phrase = params[0]
        if found:
            var = variables.get(found.group(0))
            current = "" if var is None else ("$__all" if var.is_all else var.value)
            text = ",".join(current) if isinstance(current, list) else current
            if text in ("", "$__all"):
                phrase = "1=1"
        raw = raw.replace(f"{macro}{params[0]},{params[1]})", phrase, 1)
        at = raw.rfind(macro)
    return raw


def _datasource_format(value: str | list[str]) -> str:
    """CHDatasource.format: arrays → 'a','b'; a single value as it is."""
    if isinstance(value, list):
        return "'" + "','".join(value) + "'"
    return value


def _sqlstring(value: str | list[str]) -> str:
    """Grafana's ``sqlstring`` format: each value quoted, ' doubled, comma-joined."""
    values = value if isinstance(value, list) else [value]
    return ",".join("'" + v.replace("'", "''") + "'" for v in values)


def apply_template_variables(raw_sql: str, variables: Mapping[str, VariableValue]) -> str:
    """CHDatasource.applyTemplateVariables (without ad-hoc filters): the SQL the browser
    sends to the plugin's backend."""
    sql = _conditional_all(raw_sql, variables)

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(4)
        fmt = match.group(3) or match.group(6)
        if name in GRAFANA_GLOBALS:
            raise MacroError(f"Grafana variable ${name} is not modelled by this test")
        var = variables.get(name)
        if var is None:  # not a variable: Grafana leaves it (e.g. the $__ macros)
            return match.group(0)
        if match.group(5):
            raise MacroError(f"variable field syntax not supported: {match.group(0)}")
        if fmt is None:
            return _datasource_format(var.value)
        if fmt == "sqlstring":
            return _sqlstring(var.value)
        raise MacroError(f"variable format {fmt!r} not supported: {match.group(0)}")

    return _VARIABLE.sub(replace, sql)
