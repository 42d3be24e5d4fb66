"""`omniquant trace`: one order's path across topics, from ClickHouse.

Unit: a chDB filled by hand through the sink's own table DDL and row conversion (the real
schema) with a filled order, a rejected one and the same id in a decoy namespace; the hops,
their order and their latencies are checked against figures computed here from the records'
own timestamps. Integration: the session's real pipeline run (tests/pipeline_store.py): a
filled order traced through the CLI end to end, then followed through the stages' JSON logs
and the Kafka records' ``correlation_id`` header.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import chdb_cli_env
from kafka_read import read_until
from pipeline_store import PipelineStore, pipeline_store  # noqa: F401
from pydantic import BaseModel
from typer.testing import CliRunner

from core.clickhouse import ChdbClickHouse
from omniquant.cli import app
from omniquant.trace import HopKind, Trace, build_trace, read_trace
from schemas.fixedpoint import to_fixed
from schemas.models import (
    Decision,
    ExecType,
    ExecutionReport,
    Fill,
    OrderRequest,
    OrderStatus,
    RiskCheck,
    RiskDecision,
    Signal,
    SignalDirection,
)
from schemas.serde import AvroSerde
from sinks.clickhouse import table_specs
from sinks.migrations import create_tables
from streams.logic.orders import signal_to_order

DB = "omniquant"
NS = "unit."
T0 = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z
MS = 1_000_000


def _put(client: ChdbClickHouse, prefix: str, logical: str, records: Sequence[BaseModel]) -> None:
    spec = table_specs()[logical]
    rows = [spec.row(r, prefix + logical, 0, i, T0 // MS) for i, r in enumerate(records)]
    client.insert(f"{DB}.{spec.table}", spec.column_names, rows)


def _signal(symbol: str, seq: int, direction: SignalDirection, price: str, ts: int) -> Signal:
    return Signal(
        signal_id=f"sma-{symbol}-{seq}",
        strategy_id="sma",
        symbol=symbol,
        direction=direction,
        price=to_fixed(Decimal(price)),
        fast_value=to_fixed(Decimal(price)),
        slow_value=to_fixed(Decimal(price)) - 1,
        ts_event=ts,
        ts_init=ts + 2 * MS,
    )


def _order(signal: Signal, quantity: int = 100) -> OrderRequest:
    order = signal_to_order(
        signal, current_position=0, quantity=to_fixed(quantity), ts_init=signal.ts_init
    )
    assert order is not None
    return order


def _decision(
    order: OrderRequest, ts_init: int, failed: dict[str, tuple[str, str]]
) -> RiskDecision:
    checks = [
        RiskCheck(name="quantity", passed=True, value=order.quantity, limit=to_fixed(100_000)),
        RiskCheck(
            name="notional",
            passed="notional" not in failed,
            value=to_fixed(Decimal(failed["notional"][0])) if "notional" in failed else 1,
            limit=to_fixed(Decimal(failed["notional"][1])) if "notional" in failed else 2,
            message="order notional above the limit" if "notional" in failed else "",
        ),
    ]
    return RiskDecision(
        decision_id=f"risk-{order.client_order_id}",
        client_order_id=order.client_order_id,
        account=order.account,
        symbol=order.symbol,
        side=order.side,
        quantity=order.quantity,
        decision=Decision.REJECTED if failed else Decision.APPROVED,
        reason="; ".join(f"{k}: order notional above the limit" for k in failed) or "approved",
        checks=checks,
        ts_event=order.ts_event,
        ts_init=ts_init,
    )


def _report(
    order: OrderRequest, n: int, exec_type: ExecType, status: OrderStatus, **kw: Any
) -> ExecutionReport:
    return ExecutionReport(
        report_id=f"{order.client_order_id}:{n}",
        client_order_id=order.client_order_id,
        venue_order_id="v-1",
        account=order.account,
        symbol=order.symbol,
        side=order.side,
        exec_type=exec_type,
        order_status=status,
        quantity=order.quantity,
        venue="paper",
        **kw,
    )


class Store:
    """What the hand-filled store holds, with every timestamp the trace must show."""

    def __init__(self) -> None:
        self.signal = _signal("AAPL", 7, SignalDirection.LONG, "190.25", T0)
        self.order = _order(self.signal)
        self.decision = _decision(self.order, T0 + 5 * MS, {})
        o = self.order
        q = o.quantity
        half = q // 2
        self.reports = [
            _report(
                o,
                1,
                ExecType.NEW,
                OrderStatus.NEW,
                leaves_quantity=q,
                ts_event=T0 + 50 * MS,
                ts_init=T0 + 9 * MS,
            ),
            _report(
                o,
                2,
                ExecType.PARTIAL_FILL,
                OrderStatus.PARTIALLY_FILLED,
                last_quantity=half,
                last_price=to_fixed(Decimal("190.3")),
                cum_quantity=half,
                leaves_quantity=q - half,
                ts_event=T0 + 60 * MS,
                ts_init=T0 + 20 * MS,
            ),
            _report(
                o,
                3,
                ExecType.FILL,
                OrderStatus.FILLED,
                last_quantity=q - half,
                last_price=to_fixed(Decimal("190.31")),
                cum_quantity=q,
                ts_event=T0 + 75 * MS,
                ts_init=T0 + 31 * MS,
            ),
        ]
        self.fills = [
            Fill(
                fill_id=f"{o.client_order_id}:f{i}",
                client_order_id=o.client_order_id,
                venue_order_id="v-1",
                account=o.account,
                symbol=o.symbol,
                side=o.side,
                quantity=r.last_quantity,
                price=r.last_price or 0,
                venue="paper",
                ts_event=r.ts_event,
                ts_init=r.ts_init,
            )
            for i, r in enumerate(self.reports[1:])
        ]
        # a rejected order: its signal, request and decision only
        self.rejected_signal = _signal("MSFT", 3, SignalDirection.SHORT, "410", T0 + 1000 * MS)
        self.rejected = _order(self.rejected_signal, quantity=200)
        self.rejection = _decision(self.rejected, T0 + 1004 * MS, {"notional": ("82000", "60000")})
        # another signal of the same strategy, symbol and time: not this order's
        self.decoy_signal = _signal("AAPL", 8, SignalDirection.FLAT, "190.25", T0)

    def fill(self, path: Path) -> None:
        client = ChdbClickHouse(path)
        try:
            create_tables(client, DB)
            _put(client, NS, "signals", [self.decoy_signal, self.signal, self.rejected_signal])
            _put(client, NS, "orders.requests", [self.order, self.rejected])
            _put(client, NS, "risk.decisions", [self.decision, self.rejection])
            _put(client, NS, "orders.approved", [self.order])
            # the fill report comes before its fill; stored in another order on purpose
            _put(client, NS, "execution.reports", list(reversed(self.reports)))
            _put(client, NS, "fills", self.fills)
            # the same order in an older namespace (deterministic ids: a re-run has them)
            _put(client, "old.", "orders.requests", [self.order])
        finally:
            client.close()


def _trace_json(env: dict[str, str | None], *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["trace", *args, "--json"], env=env)
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


# ---- unit: a hand-filled store ---------------------------------------------------------------
def test_filled_order_trace_has_every_hop_in_path_order_with_latencies(chdb_dir: Path) -> None:
    store = Store()
    store.fill(chdb_dir)
    doc = _trace_json(chdb_cli_env(chdb_dir), store.order.client_order_id, "--prefix", NS)

    s, o, d, r, f = store.signal, store.order, store.decision, store.reports, store.fills
    # path order: signal, request, decision, approved order, then reports and fills as they
    # happened (each fill right after the report of its event)
    expected = [
        ("signal", s.signal_id, s.ts_event, s.ts_init),
        ("request", o.client_order_id, o.ts_event, o.ts_init),
        ("decision", d.decision_id, d.ts_event, d.ts_init),
        ("order", o.client_order_id, o.ts_event, d.ts_init),  # written when the gate decided
        ("report", r[0].report_id, r[0].ts_event, r[0].ts_init),
        ("report", r[1].report_id, r[1].ts_event, r[1].ts_init),
        ("fill", f[0].fill_id, f[0].ts_event, f[0].ts_init),
        ("report", r[2].report_id, r[2].ts_event, r[2].ts_init),
        ("fill", f[1].fill_id, f[1].ts_event, f[1].ts_init),
    ]
    hops = doc["hops"]
    assert [(h["hop"], h["id"], h["ts_event"], h["processed_ns"]) for h in hops] == expected
    assert hops[0]["latency_event_ms"] is None and hops[0]["latency_processing_ms"] is None
    for before, (_, _, ts, made), hop in zip(expected, expected[1:], hops[1:], strict=False):
        assert hop["latency_event_ms"] == (ts - before[2]) / MS
        assert hop["latency_processing_ms"] == (made - before[3]) / MS
    assert [h["latency_event_ms"] for h in hops[4:]] == [50.0, 10.0, 0.0, 15.0, 0.0]
    assert hops[0]["event_time"] == "2023-11-14T22:13:20.000000000Z"
    assert hops[1]["topic"] == "unit.orders.requests"
    assert [h["stage"] for h in hops[:5]] == [
        "signals",
        "signals",
        "risk-gate",
        "risk-gate",
        "execution",
    ]
    assert doc["decision"] == "APPROVED" and doc["failed_checks"] == []
    assert hops[0]["details"]["price"] == "190.25"
    assert hops[6]["summary"] == "BUY 50@190.3 on paper"
    assert hops[5]["details"]["order_status"] == "PARTIALLY_FILLED"
    assert all(isinstance(h["ingested_ms"], int) for h in hops)


def test_rejected_order_trace_shows_its_failing_checks(chdb_dir: Path) -> None:
    store = Store()
    store.fill(chdb_dir)
    env = chdb_cli_env(chdb_dir)
    doc = _trace_json(env, store.rejected.client_order_id)
    assert doc["namespace"] == NS
    assert [h["hop"] for h in doc["hops"]] == ["signal", "request", "decision"]
    assert doc["decision"] == "REJECTED"
    assert doc["failed_checks"] == [
        {
            "name": "notional",
            "value": "82000",
            "limit": "60000",
            "message": "order notional above the limit",
        }
    ]
    decision = doc["hops"][2]
    assert decision["latency_processing_ms"] == 2.0  # ts_init 1004 ms - the signal's 1002 ms
    assert decision["summary"].startswith("REJECTED: notional (82000 > 60000)")

    table = CliRunner().invoke(app, ["trace", store.rejected.client_order_id], env=env)
    assert table.exit_code == 0, table.output
    assert "REJECTED: notional (82000 > 60000)" in table.stdout
    assert "2023-11-14 UTC" in table.stdout and "22:13:21.004000000" in table.stdout
    assert "no order, report, fill stored for this order" in table.stdout


def test_unknown_id_says_so_and_exits_1(chdb_dir: Path) -> None:
    Store().fill(chdb_dir)
    env = chdb_cli_env(chdb_dir)
    result = CliRunner().invoke(app, ["trace", "no-such-order"], env=env)
    assert result.exit_code == 1
    assert "no order with client order id 'no-such-order'" in result.output
    # known, but not in that namespace
    result = CliRunner().invoke(
        app, ["trace", Store().rejected.client_order_id, "--run", "x"], env=env
    )
    assert result.exit_code == 1
    assert "in namespace 'bt-x.'" in result.output


def test_unique_prefix_finds_the_order_and_an_ambiguous_one_lists_the_ids(chdb_dir: Path) -> None:
    store = Store()
    store.fill(chdb_dir)
    env = chdb_cli_env(chdb_dir)
    coid = store.order.client_order_id
    doc = _trace_json(env, coid[:-8])
    assert doc["client_order_id"] == coid
    # the namespace written last holding it, the other one named
    assert doc["namespace"] in {NS, "old."}
    assert set(doc["other_namespaces"]) == {NS, "old."} - {doc["namespace"]}
    ambiguous = CliRunner().invoke(app, ["trace", "sma-"], env=env)
    assert ambiguous.exit_code == 1
    assert "is the prefix of 2 ids" in ambiguous.output
    assert coid in ambiguous.output and store.rejected.client_order_id in ambiguous.output


def test_build_trace_leaves_out_other_orders_and_namespaces() -> None:
    store = Store()
    rows = {
        "order_requests": [
            store.order.model_dump() | {"_topic": "old.orders.requests"},
            store.rejected.model_dump() | {"_topic": NS + "orders.requests"},
        ]
    }
    assert build_trace(store.order.client_order_id, NS, rows) is None
    trace = build_trace(store.rejected.client_order_id, NS, rows)
    assert trace is not None and [h.kind for h in trace.hops] == [HopKind.REQUEST]
    assert trace.decision is None


def test_prefix_and_run_together_are_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["trace", "x", "--prefix", "a.", "--run", "b"], env=chdb_cli_env(tmp_path / "none")
    )
    assert result.exit_code == 2
    assert "not both" in result.output


# ---- integration: the session's real pipeline run ---------------------------------------------
def _filled_order(store: PipelineStore) -> str:
    prefix = store.env["OMNIQUANT_TOPIC_PREFIX"]
    client = ChdbClickHouse(store.chdb_path)
    try:
        rows = client.query(
            f"SELECT f.client_order_id FROM {DB}.fills AS f "
            f"WHERE f._topic = '{prefix}fills' AND f.client_order_id IN "
            f"(SELECT client_order_id FROM {DB}.order_requests "
            f"WHERE _topic = '{prefix}orders.requests') "
            "ORDER BY f.ts_event LIMIT 1"
        ).rows
    finally:
        client.close()
    assert rows, "the run filled no order that came from a signal"
    return str(rows[0][0])


def _log_lines(store: PipelineStore) -> dict[str, list[dict[str, Any]]]:
    """Every stage's JSON log lines of the run (Supervisor: <state dir>/logs/run-*/<stage>.log)."""
    runs = sorted((Path(store.env["OMNIQUANT_STATE_DIR"]) / "logs").glob("run-*"))
    assert runs, "the run left no log directory"
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(runs[-1].glob("*.log")):
        lines = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                lines.append(doc)
        out[path.stem] = lines
    return out


@pytest.mark.integration
def test_trace_of_a_filled_order_of_a_real_run_follows_it_through_tables_logs_and_headers(
    pipeline_store: PipelineStore,  # noqa: F811
    kafka_bootstrap: str,
) -> None:
    coid = _filled_order(pipeline_store)
    prefix = pipeline_store.env["OMNIQUANT_TOPIC_PREFIX"]
    env = chdb_cli_env(pipeline_store.chdb_path, pipeline_store.env)

    table = CliRunner().invoke(app, ["trace", coid], env=env)
    assert table.exit_code == 0, table.output
    print(table.stdout)  # what a user sees (pytest -s)
    doc = _trace_json(env, coid, "--prefix", prefix)
    print(json.dumps(doc, indent=2))
    hops = doc["hops"]
    kinds = [h["hop"] for h in hops]
    assert kinds[:4] == ["signal", "request", "decision", "order"], kinds
    assert set(kinds[4:]) == {"report", "fill"} and kinds[-1] == "fill", kinds
    assert doc["decision"] == "APPROVED"
    assert any(h["details"]["order_status"] == "FILLED" for h in hops if h["hop"] == "report")
    times = [h["ts_event"] for h in hops]
    assert times == sorted(times), "event times go back along the path"
    assert all(h["topic"].startswith(prefix) for h in hops)
    for h in hops[1:]:
        assert h["latency_event_ms"] is not None and h["latency_event_ms"] >= 0
    # the processing times are the stages' wall clocks: signal, then decision, then reports
    made = [h["processed_ns"] for h in hops]
    assert made[0] <= made[2] <= made[4], made

    with ChdbClickHouse(pipeline_store.chdb_path) as client:
        trace = read_trace(client, DB, coid, prefix=prefix)
    assert isinstance(trace, Trace)
    assert trace.of(HopKind.SIGNAL)[0].record_id in {
        line.get("signal_id")
        for line in _log_lines(pipeline_store).get("signals", [])
        if line.get("correlation_id") == coid
    }

    # every stage on the order's path logged a line carrying its correlation id
    logs = _log_lines(pipeline_store)
    carrying = {
        stage: [line["msg"] for line in lines if line.get("correlation_id") == coid]
        for stage, lines in logs.items()
    }
    print({stage: msgs for stage, msgs in carrying.items() if msgs})
    assert "order request" in carrying["signals"]
    assert "risk decision" in carrying["risk-gate"]
    assert "execution report" in carrying["execution"]

    # and the Kafka records of its flow carry it in the correlation_id header
    serde = AvroSerde()
    for logical, model in (
        ("orders.requests", OrderRequest),
        ("risk.decisions", RiskDecision),
        ("orders.approved", OrderRequest),
        ("execution.reports", ExecutionReport),
        ("fills", Fill),
    ):

        def tagged(messages: list[Any]) -> bool:
            return any(
                (h[0], h[1]) == ("correlation_id", coid.encode())
                for m in messages[-1:]
                for h in (m.headers() or [])
            )

        messages = read_until(kafka_bootstrap, prefix + logical, tagged, timeout_s=30)
        assert messages and tagged(messages), f"no {logical} record carries the header"
        record = serde.decode_as(messages[-1].value(), model)
        assert record.client_order_id == coid, logical
