"""`omniquant trace`: one order's path across topics, read back from the ClickHouse audit store.

An order's correlation id is its client order id (the Kafka header ``correlation_id`` of every
record of its flow). Its hops, in path order:

======== ================= ===================== =========================================
hop      topic             table                 how it is found
======== ================= ===================== =========================================
signal   signals           ``signals``           the strategy's signal that asked for it:
                                                 an order request carries no signal id, but
                                                 its id is a digest of the signal
                                                 (:func:`streams.logic.orders.client_order_id_for`),
                                                 so the signal of the same strategy, symbol and
                                                 event time whose digest gives this id
request  orders.requests   ``order_requests``    ``client_order_id``
decision risk.decisions    ``risk_decisions``    ``client_order_id`` (every check; the failing
                                                 ones with their value, limit and message)
order    orders.approved   ``approved_orders``   ``client_order_id`` (the request, forwarded)
report   execution.reports ``execution_reports`` ``client_order_id``
fill     fills             ``fills``             ``client_order_id``
======== ================= ===================== =========================================

Each hop has the record's event time (``ts_event``) and the time the stage that wrote it made
it (``processed_ns``: the record's ``ts_init``; for the approved order, which is the request
forwarded unchanged and so carries the signals stage's ``ts_init``, the gate's decision time),
the sink's ingest time, and the latency from the previous hop on both clocks: event time (what
a replay reproduces) and processing time (the pipeline's own delay).

:func:`build_trace` is pure (table rows in, :class:`Trace` out); :func:`read_trace` does the
queries; :func:`render` and :func:`to_json` present it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from rich.console import Console
from rich.table import Table

from core.clickhouse import ClickHouse
from omniquant.stages import STAGES
from schemas.fixedpoint import from_fixed, to_fixed
from schemas.models import Signal
from streams.logic.orders import client_order_id_for

__all__ = [
    "ORDER_TABLES",
    "FailedCheck",
    "Hop",
    "HopKind",
    "Trace",
    "TraceLookup",
    "build_trace",
    "find_order",
    "read_trace",
    "render",
    "to_json",
]


class HopKind(StrEnum):
    SIGNAL = "signal"
    REQUEST = "request"
    DECISION = "decision"
    ORDER = "order"
    REPORT = "report"
    FILL = "fill"


# kind → (logical topic, table). The order flow tables hold client_order_id.
_HOPS: dict[HopKind, tuple[str, str]] = {
    HopKind.SIGNAL: ("signals", "signals"),
    HopKind.REQUEST: ("orders.requests", "order_requests"),
    HopKind.DECISION: ("risk.decisions", "risk_decisions"),
    HopKind.ORDER: ("orders.approved", "approved_orders"),
    HopKind.REPORT: ("execution.reports", "execution_reports"),
    HopKind.FILL: ("fills", "fills"),
}
ORDER_TABLES: dict[str, str] = {
    table: logical for kind, (logical, table) in _HOPS.items() if kind != HopKind.SIGNAL
}
_RANK = {kind: i for i, kind in enumerate(HopKind)}
# the columns each hop shows in its details (--json)
_DETAILS: dict[HopKind, tuple[str, ...]] = {
    HopKind.SIGNAL: ("strategy_id", "symbol", "direction", "price", "fast_value", "slow_value"),
    HopKind.REQUEST: (
        *("account", "symbol", "side", "order_type", "quantity", "limit_price"),
        *("reference_price", "time_in_force", "strategy_id"),
    ),
    HopKind.DECISION: ("decision", "reason"),
    HopKind.ORDER: ("account", "symbol", "side", "order_type", "quantity", "limit_price"),
    HopKind.REPORT: (
        *("exec_type", "order_status", "venue_order_id", "last_quantity", "last_price"),
        *("cum_quantity", "leaves_quantity", "avg_price", "reason", "venue"),
    ),
    HopKind.FILL: (
        *("side", "quantity", "price", "commission", "liquidity_side", "venue"),
        "venue_order_id",
    ),
}


def _stage_of(logical: str) -> str:
    """The registered stage that writes ``logical`` (an order request may also come from
    another system: the stage is then only the usual writer)."""
    return next((s.name for s in STAGES if logical in s.outputs), "?")


@dataclass(frozen=True)
class FailedCheck:
    name: str
    value: Decimal | None
    limit: Decimal | None
    message: str


@dataclass(frozen=True)
class Hop:
    """One record of the order's path."""

    kind: HopKind
    stage: str  # the stage that writes the topic
    topic: str  # physical topic (the row's _topic)
    record_id: str  # signal_id, client_order_id, decision_id, report_id or fill_id
    ts_event: int  # UTC ns
    processed_ns: int | None  # when the writing stage made the record (UTC ns)
    ingested_ms: int | None  # when the sink stored it (UTC ms)
    latency_event_ns: int | None  # ts_event - the previous hop's ts_event
    latency_processing_ns: int | None  # processed_ns - the previous hop's
    summary: str
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Trace:
    client_order_id: str
    namespace: str
    hops: tuple[Hop, ...]
    decision: str | None  # APPROVED / REJECTED (the first decision), None if none was stored
    failed_checks: tuple[FailedCheck, ...] = ()
    # other namespaces holding the same id (deterministic ids: a re-run has the same ones)
    other_namespaces: tuple[str, ...] = ()

    def of(self, kind: HopKind) -> tuple[Hop, ...]:
        return tuple(h for h in self.hops if h.kind == kind)


# ---- pure: rows → trace --------------------------------------------------------------------
Rows = Mapping[str, Sequence[Mapping[str, Any]]]  # table → rows (column → value)


def _num(value: Any) -> str:
    """A Decimal64(9) value as plain text without trailing zeros."""
    if value is None:
        return "-"
    text = format(Decimal(value), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _raw(value: Any) -> Decimal | None:
    """A raw fixed-point int (as in the checks' JSON) as a Decimal."""
    return None if value is None else from_fixed(int(value))


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _signal_gives(row: Mapping[str, Any], account: str, client_order_id: str) -> bool:
    try:
        signal = Signal(
            signal_id=str(row["signal_id"]),
            strategy_id=str(row["strategy_id"]),
            symbol=str(row["symbol"]),
            direction=row["direction"],
            price=to_fixed(Decimal(row["price"])),
            fast_value=to_fixed(Decimal(row["fast_value"])),
            slow_value=to_fixed(Decimal(row["slow_value"])),
            ts_event=int(row["ts_event"]),
            ts_init=int(row["ts_init"]),
        )
    except (KeyError, ValueError):
        return False
    return client_order_id_for(signal, account) == client_order_id


def _failed(row: Mapping[str, Any]) -> tuple[FailedCheck, ...]:
    try:
        checks = json.loads(row.get("checks") or "[]")
    except ValueError:
        return ()
    return tuple(
        FailedCheck(
            str(c.get("name", "")), _raw(c.get("value")), _raw(c.get("limit")), c.get("message", "")
        )
        for c in checks
        if not c.get("passed", False)
    )


def _check_text(check: FailedCheck) -> str:
    figures = (
        f" ({_num(check.value)} > {_num(check.limit)})"
        if check.value is not None and check.limit is not None
        else ""
    )
    return f"{check.name}{figures}: {check.message}" if check.message else check.name + figures


def _order_text(row: Mapping[str, Any]) -> str:
    text = f"{row['side']} {_num(row['quantity'])} {row['symbol']} {row.get('order_type', '')}"
    if row.get("limit_price") is not None:
        text += f" limit {_num(row['limit_price'])}"
    if row.get("reference_price") is not None:
        text += f" ref {_num(row['reference_price'])}"
    return f"{text} account {row['account']}"


# (kind, row, record id, processed ns, summary), before latencies are known
_Raw = tuple[HopKind, Mapping[str, Any], str, int | None, str]


def _hop(
    kind: HopKind, row: Mapping[str, Any], record_id: str, processed: int | None, summary: str
) -> _Raw:
    return kind, row, record_id, processed, summary


def _details(row: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in keys:
        value = row.get(key)
        out[key] = _num(value) if isinstance(value, Decimal) else value
    return out


def build_trace(
    client_order_id: str,
    namespace: str,
    rows: Rows,
    *,
    other_namespaces: Sequence[str] = (),
) -> Trace | None:
    """The order's hops from its rows in each table (``rows[table]``: dicts of the table's
    columns plus ``_topic``, ``_partition``, ``_offset`` and ``_ingested_ms``); rows of other
    orders or namespaces are left out. None when no table holds the order."""

    def mine(table: str) -> list[Mapping[str, Any]]:
        logical = ORDER_TABLES[table]
        kept = [
            r
            for r in rows.get(table, ())
            if r.get("client_order_id") == client_order_id
            and r.get("_topic", namespace + logical) == namespace + logical
        ]
        return sorted(kept, key=lambda r: (int(r["ts_init"]), r.get("_offset", 0)))

    requests, decisions = mine("order_requests"), mine("risk_decisions")
    orders, reports, fills = mine("approved_orders"), mine("execution_reports"), mine("fills")
    if not (requests or decisions or orders or reports or fills):
        return None
    first = requests[0] if requests else orders[0] if orders else None
    signals: list[Mapping[str, Any]] = []
    if first is not None:
        signals = [
            r
            for r in rows.get("signals", ())
            if r.get("_topic", namespace + "signals") == namespace + "signals"
            and _signal_gives(r, str(first["account"]), client_order_id)
        ]

    raw: list[_Raw] = []
    for r in signals:
        text = f"{r['direction']} {r['symbol']} @ {_num(r['price'])} ({r['strategy_id']})"
        raw.append(_hop(HopKind.SIGNAL, r, str(r["signal_id"]), _int(r["ts_init"]), text))
    for r in requests:
        raw.append(_hop(HopKind.REQUEST, r, client_order_id, _int(r["ts_init"]), _order_text(r)))
    approved_at: int | None = None
    failed: tuple[FailedCheck, ...] = ()
    for i, r in enumerate(decisions):
        checks = _failed(r)
        if i == 0:
            failed = checks
        if r["decision"] == "APPROVED" and approved_at is None:
            approved_at = int(r["ts_init"])
        text = str(r["decision"])
        if checks:
            text += ": " + "; ".join(_check_text(c) for c in checks)
        raw.append(_hop(HopKind.DECISION, r, str(r["decision_id"]), _int(r["ts_init"]), text))
    for r in orders:
        # The request forwarded unchanged (its ts_init is the signals stage's): the gate
        # wrote it when it decided.
        made = approved_at if approved_at is not None else _int(r["ts_init"])
        raw.append(_hop(HopKind.ORDER, r, client_order_id, made, _order_text(r)))
    tail: list[_Raw] = []
    for r in reports:
        text = f"{r['exec_type']} → {r['order_status']}"
        if r.get("last_quantity"):
            text += f" {_num(r['last_quantity'])}@{_num(r['last_price'])}"
        text += f" cum {_num(r['cum_quantity'])} leaves {_num(r['leaves_quantity'])}"
        if r.get("venue_order_id"):
            text += f" venue id {r['venue_order_id']}"
        if r.get("reason"):
            text += f" ({r['reason']})"
        tail.append(_hop(HopKind.REPORT, r, str(r["report_id"]), _int(r["ts_init"]), text))
    for r in fills:
        text = f"{r['side']} {_num(r['quantity'])}@{_num(r['price'])} on {r['venue']}"
        if r.get("commission"):
            text += f" commission {_num(r['commission'])}"
        tail.append(_hop(HopKind.FILL, r, str(r["fill_id"]), _int(r["ts_init"]), text))
    # Reports and fills in the order they happened; a fill after the report of its event.
    tail.sort(key=lambda h: (int(h[1]["ts_event"]), h[3] or 0, _RANK[h[0]], h[1].get("_offset", 0)))
    raw.extend(tail)

    hops: list[Hop] = []
    for kind, r, record_id, processed, summary in raw:
        before = hops[-1] if hops else None
        ts_event = int(r["ts_event"])
        details = _details(r, _DETAILS[kind])
        if kind == HopKind.DECISION:
            details["failed_checks"] = [
                {"name": c.name, "value": _num(c.value), "limit": _num(c.limit)}
                | {"message": c.message}
                for c in _failed(r)
            ]
        hops.append(
            Hop(
                kind=kind,
                stage=_stage_of(_HOPS[kind][0]),
                topic=str(r.get("_topic", namespace + _HOPS[kind][0])),
                record_id=record_id,
                ts_event=ts_event,
                processed_ns=processed,
                ingested_ms=_int(r.get("_ingested_ms")),
                latency_event_ns=None if before is None else ts_event - before.ts_event,
                latency_processing_ns=(
                    None
                    if before is None or processed is None or before.processed_ns is None
                    else processed - before.processed_ns
                ),
                summary=summary,
                details=details,
            )
        )
    return Trace(
        client_order_id=client_order_id,
        namespace=namespace,
        hops=tuple(hops),
        decision=str(decisions[0]["decision"]) if decisions else None,
        failed_checks=failed,
        other_namespaces=tuple(other_namespaces),
    )


# ---- ClickHouse ----------------------------------------------------------------------------
def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class TraceLookup:
    """Where an id (or a prefix of one) was found: the full id and its namespaces, the one
    written last first; or, for an ambiguous prefix, the ids it matches."""

    client_order_id: str | None
    namespaces: tuple[str, ...] = ()
    candidates: tuple[str, ...] = ()


def _holders(
    client: ClickHouse, db: str, condition: str, prefix: str | None
) -> dict[tuple[str, str], Any]:
    """(client order id, namespace) → last ingest time, over the order-flow tables."""
    found: dict[tuple[str, str], Any] = {}
    for table, logical in ORDER_TABLES.items():
        where = condition
        if prefix is not None:
            where += f" AND _topic = {_quote(prefix + logical)}"
        else:
            where += f" AND endsWith(_topic, {_quote(logical)})"
        for coid, topic, last in client.query(
            f"SELECT client_order_id, _topic, max(_ingested_at) FROM `{db}`.`{table}` "
            f"WHERE {where} GROUP BY client_order_id, _topic LIMIT 100"
        ).rows:
            key = (str(coid), str(topic)[: -len(logical)])
            found[key] = max(found.get(key, last), last)
    return found


def find_order(client: ClickHouse, db: str, text: str, *, prefix: str | None) -> TraceLookup:
    """The order whose client order id is ``text``, else the one it is a unique prefix of."""
    holders = _holders(client, db, f"client_order_id = {_quote(text)}", prefix)
    if not holders:
        holders = _holders(client, db, f"startsWith(client_order_id, {_quote(text)})", prefix)
    ids = sorted({coid for coid, _ in holders})
    if not ids:
        return TraceLookup(None)
    if len(ids) > 1:
        return TraceLookup(None, candidates=tuple(ids))
    latest = sorted(holders.items(), key=lambda kv: kv[1], reverse=True)
    return TraceLookup(ids[0], tuple(namespace for (_, namespace), _ in latest))


def _select(client: ClickHouse, db: str, table: str, where: str) -> list[dict[str, Any]]:
    result = client.query(
        f"SELECT *, toUnixTimestamp64Milli(_ingested_at) AS _ingested_ms "
        f"FROM `{db}`.`{table}` WHERE {where} ORDER BY _partition, _offset"
    )
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows]


def read_trace(
    client: ClickHouse, db: str, text: str, *, prefix: str | None
) -> Trace | TraceLookup:
    """The trace of the order ``text`` names (in ``prefix``'s namespace, else the namespace
    written last that holds it), or the lookup saying why there is none."""
    lookup = find_order(client, db, text, prefix=prefix)
    if lookup.client_order_id is None:
        return lookup
    coid, namespace = lookup.client_order_id, lookup.namespaces[0]
    rows: dict[str, list[dict[str, Any]]] = {}
    for table, logical in ORDER_TABLES.items():
        rows[table] = _select(
            client,
            db,
            table,
            f"_topic = {_quote(namespace + logical)} AND client_order_id = {_quote(coid)}",
        )
    requested = rows["order_requests"] or rows["approved_orders"]
    if requested:
        first = requested[0]
        rows["signals"] = _select(
            client,
            db,
            "signals",
            f"_topic = {_quote(namespace + 'signals')} "
            f"AND strategy_id = {_quote(str(first['strategy_id']))} "
            f"AND symbol = {_quote(str(first['symbol']))} AND ts_event = {int(first['ts_event'])}",
        )
    trace = build_trace(coid, namespace, rows, other_namespaces=lookup.namespaces[1:])
    return trace if trace is not None else TraceLookup(None)


# ---- presentation --------------------------------------------------------------------------
def iso_ns(ns: int | None) -> str:
    """UTC nanoseconds as ISO-8601 with all nine digits."""
    if ns is None:
        return "-"
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{fraction:09d}Z"


def _ms(ns: int | None) -> str:
    return "" if ns is None else f"{ns / 1_000_000:,.3f}"


def to_json(trace: Trace) -> dict[str, Any]:
    """The trace as one JSON-able document (money as decimal strings, times as ns and ISO)."""
    return {
        "client_order_id": trace.client_order_id,
        "namespace": trace.namespace,
        "decision": trace.decision,
        "failed_checks": [
            {"name": c.name, "value": _num(c.value), "limit": _num(c.limit), "message": c.message}
            for c in trace.failed_checks
        ],
        "other_namespaces": list(trace.other_namespaces),
        "hops": [
            {
                "hop": h.kind.value,
                "stage": h.stage,
                "topic": h.topic,
                "id": h.record_id,
                "ts_event": h.ts_event,
                "event_time": iso_ns(h.ts_event),
                "processed_ns": h.processed_ns,
                "processed_time": iso_ns(h.processed_ns),
                "ingested_ms": h.ingested_ms,
                "latency_event_ms": None
                if h.latency_event_ns is None
                else h.latency_event_ns / 1_000_000,
                "latency_processing_ms": None
                if h.latency_processing_ns is None
                else h.latency_processing_ns / 1_000_000,
                "summary": h.summary,
                "details": dict(h.details),
            }
            for h in trace.hops
        ],
    }


def render(trace: Trace, console: Console) -> None:
    """A table of the hops, one row each: the record's event time and when its stage made it,
    and both latencies from the previous hop."""
    day = iso_ns(trace.hops[0].ts_event)[:10] if trace.hops else ""
    same_day = all(
        iso_ns(t)[:10] == day for h in trace.hops for t in (h.ts_event, h.processed_ns) if t
    )

    def when(ns: int | None) -> str:
        text = iso_ns(ns)
        return text[11:] if same_day and ns is not None else text

    title = f"order {trace.client_order_id} — namespace {trace.namespace!r}"
    if same_day and day:
        title += f" — {day} UTC"
    if trace.decision is not None:
        title += f" — {trace.decision}"
    table = Table(title=title)
    table.add_column("hop")
    table.add_column("stage → topic")
    table.add_column("event time / made at")
    table.add_column("Δ ms event / made", justify="right")
    table.add_column("detail")
    for hop in trace.hops:
        topic = hop.topic.removeprefix(trace.namespace)
        table.add_row(
            hop.kind.value,
            f"{hop.stage} → {topic}",
            f"{when(hop.ts_event)}\n{when(hop.processed_ns)}",
            f"{_ms(hop.latency_event_ns)}\n{_ms(hop.latency_processing_ns)}",
            hop.summary,
        )
    console.print(table)
    missing = [k.value for k in HopKind if not trace.of(k)]
    if missing:
        console.print(f"no {', '.join(missing)} stored for this order")
    if trace.other_namespaces:
        console.print(
            "the same id is also in namespace(s) "
            + ", ".join(repr(n) for n in trace.other_namespaces)
            + " (pick one with --prefix)"
        )
