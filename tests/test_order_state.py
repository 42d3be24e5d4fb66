"""The execution consumer's order state machine (pure): transitions, refusals, identities."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.fixedpoint import to_fixed
from schemas.models import (
    ExecType,
    ExecutionReport,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
    TimeInForce,
)
from streams.logic.order_state import (
    TERMINAL,
    Applied,
    Ignored,
    IgnoreReason,
    OrderEvent,
    Refusal,
    Refused,
    WorkingOrder,
    apply_event,
    reconcile,
)

E, S = ExecType, OrderStatus
T0 = 1_700_000_000_000_000_000
QTY = to_fixed(100)


def _order(**overrides) -> WorkingOrder:
    request = OrderRequest(
        client_order_id="c-1",
        strategy_id="test",
        account="alice",
        symbol="SPY",
        side=Side.BUY,
        quantity=QTY,
        ts_event=T0,
        ts_init=T0,
    )
    order = WorkingOrder.from_request(request, "PAPER")
    return WorkingOrder.from_dict({**order.to_dict(), **overrides}) if overrides else order


def _ev(exec_type: ExecType, status: OrderStatus | None = None, **fields) -> OrderEvent:
    fields.setdefault("venue_order_id", "v-1")
    return OrderEvent(exec_type, status or S.NEW, **fields)


def _fill(qty: int, price: str = "10", fill_id: str | None = None, **fields) -> OrderEvent:
    return _ev(
        E.PARTIAL_FILL,
        S.PARTIALLY_FILLED,
        last_quantity=to_fixed(qty),
        last_price=to_fixed(price),
        fill_id=fill_id,
        **fields,
    )


def _run(order: WorkingOrder, *events: OrderEvent) -> tuple[WorkingOrder, list[Applied]]:
    applied = []
    for event in events:
        result = apply_event(order, event, ts_init=T0 + 1)
        assert isinstance(result, Applied), result
        order = result.order
        applied.append(result)
    return order, applied


def test_an_approved_order_starts_pending_new_with_all_leaves() -> None:
    order = _order()
    assert order.status == S.PENDING_NEW
    assert order.leaves_quantity == QTY and order.cum_quantity == 0
    assert not order.is_terminal and not order.is_working


def test_acknowledged_then_filled_in_two_parts_reports_each_step() -> None:
    order, applied = _run(
        _order(),
        _ev(E.NEW, ts_event=T0 + 5),
        _fill(40, "10", "x-1", ts_event=T0 + 6),
        _fill(60, "11", "x-2", ts_event=T0 + 7),
    )
    assert [a.report.exec_type for a in applied] == [E.NEW, E.PARTIAL_FILL, E.FILL]
    assert [a.report.order_status for a in applied] == [
        S.NEW,
        S.PARTIALLY_FILLED,
        S.FILLED,
    ]
    assert [a.report.leaves_quantity for a in applied] == [QTY, to_fixed(60), 0]
    assert order.status == S.FILLED and order.is_terminal
    assert order.cum_quantity == QTY
    assert order.avg_price == to_fixed("10.6")  # (40·10 + 60·11) / 100
    fills = [a.fill for a in applied if a.fill]
    assert [(f.fill_id, f.quantity, f.price) for f in fills] == [
        ("x-1", to_fixed(40), to_fixed(10)),
        ("x-2", to_fixed(60), to_fixed(11)),
    ]
    assert all(f.venue_order_id == "v-1" and f.account == "alice" for f in fills)
    assert applied[2].report.ts_event == T0 + 7 and applied[2].report.ts_init == T0 + 1
    assert applied[0].report.report_id == "c-1:NEW"
    assert applied[1].report.report_id == "c-1:x-1"


def test_a_venue_labelled_fill_that_leaves_quantity_open_is_a_partial_fill() -> None:
    event = _ev(E.FILL, S.FILLED, last_quantity=to_fixed(30), last_price=to_fixed(10))
    order, (applied,) = _run(_order(status="NEW"), event)
    assert order.status == S.PARTIALLY_FILLED
    assert applied.report.exec_type == E.PARTIAL_FILL


def test_average_price_rounds_half_even_at_one_nano() -> None:
    order, _ = _run(
        _order(status="NEW", quantity=3),
        _ev(E.PARTIAL_FILL, last_quantity=1, last_price=1, fill_id="a"),
        _ev(E.PARTIAL_FILL, last_quantity=2, last_price=2, fill_id="b"),
    )
    assert order.avg_price == 2  # 5/3 = 1.67 → 2
    order, _ = _run(
        _order(status="NEW", quantity=2),
        _ev(E.PARTIAL_FILL, last_quantity=1, last_price=1, fill_id="a"),
        _ev(E.PARTIAL_FILL, last_quantity=1, last_price=2, fill_id="b"),
    )
    assert order.avg_price == 2  # 3/2 = 1.5 → 2 (even)


def test_the_venues_average_is_taken_when_it_covers_the_same_quantity() -> None:
    event = _fill(100, "10", "f", avg_price=to_fixed("9.99"), cum_quantity=QTY)
    order, _ = _run(_order(status="NEW"), event)
    assert order.avg_price == to_fixed("9.99")


def test_a_duplicate_fill_id_is_ignored() -> None:
    order, _ = _run(_order(status="NEW"), _fill(40, fill_id="x-1"))
    result = apply_event(order, _fill(40, fill_id="x-1"), ts_init=0)
    assert isinstance(result, Ignored) and result.reason == IgnoreReason.DUPLICATE_FILL
    # even once the order is done, a redelivered fill is a repeat, not an error
    done, _ = _run(order, _fill(60, fill_id="x-2"))
    assert isinstance(apply_event(done, _fill(60, fill_id="x-2"), ts_init=0), Ignored)


def test_a_fill_without_id_is_recognised_by_the_venues_running_total() -> None:
    order, (first,) = _run(_order(status="NEW"), _fill(40, cum_quantity=to_fixed(40)))
    assert first.fill is not None and first.fill.fill_id == f"c-1:fill:{to_fixed(40)}"
    again = apply_event(order, _fill(40, cum_quantity=to_fixed(40)), ts_init=0)
    assert isinstance(again, Ignored) and again.reason == IgnoreReason.DUPLICATE_FILL
    later, _ = _run(order, _fill(10, cum_quantity=to_fixed(50)))
    assert later.cum_quantity == to_fixed(50)


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
@pytest.mark.parametrize(
    "event",
    [
        _ev(E.NEW),
        _fill(1, fill_id="late"),
        _ev(E.PENDING_CANCEL, S.PENDING_CANCEL),
        _ev(E.REPLACED),
    ],
)
def test_nothing_moves_an_order_out_of_a_terminal_state(
    terminal: OrderStatus, event: OrderEvent
) -> None:
    order = _order(status=terminal.value)
    result = apply_event(order, event, ts_init=0)
    assert isinstance(result, Refused) and result.code == Refusal.AFTER_TERMINAL


def test_filled_to_new_is_refused_and_a_second_cancel_confirmation_is_a_repeat() -> None:
    filled = _order(status="FILLED", cum_quantity=QTY)
    refused = apply_event(filled, _ev(E.NEW), ts_init=0)
    assert isinstance(refused, Refused) and "FILLED" in refused.detail
    canceled = _order(status="CANCELED")
    repeat = apply_event(canceled, _ev(E.CANCELED, S.CANCELED), ts_init=0)
    assert isinstance(repeat, Ignored) and repeat.reason == IgnoreReason.REPEATED


def test_a_fill_beyond_the_quantity_is_refused_and_not_applied() -> None:
    order, _ = _run(_order(status="NEW"), _fill(70, fill_id="a"))
    result = apply_event(order, _fill(31, fill_id="b"), ts_init=0)
    assert isinstance(result, Refused) and result.code == Refusal.OVERFILL
    assert order.cum_quantity == to_fixed(70)  # the book keeps what it had


@pytest.mark.parametrize(
    "event", [_fill(0, fill_id="z"), _ev(E.FILL, last_quantity=5, last_price=None, fill_id="p")]
)
def test_a_fill_without_quantity_or_price_is_refused(event: OrderEvent) -> None:
    result = apply_event(_order(status="NEW"), event, ts_init=0)
    assert isinstance(result, Refused) and result.code == Refusal.BAD_FILL


@pytest.mark.parametrize(
    ("status", "exec_type"),
    [
        (S.PARTIALLY_FILLED, E.REJECTED),  # part of it traded: it cannot be rejected now
        (S.NEW, E.REPLACED),  # we never modify orders
        (S.PENDING_NEW, E.REPLACED),
    ],
)
def test_transitions_outside_the_table_are_refused(
    status: OrderStatus, exec_type: ExecType
) -> None:
    order = _order(status=status.value, cum_quantity=to_fixed(1) if status != S.NEW else 0)
    result = apply_event(order, _ev(exec_type), ts_init=0)
    assert isinstance(result, Refused) and result.code == Refusal.ILLEGAL_TRANSITION


@pytest.mark.parametrize(
    ("status", "exec_type"),
    [
        (S.NEW, E.NEW),
        (S.NEW, E.PENDING_NEW),
        (S.PARTIALLY_FILLED, E.NEW),
        (S.PENDING_CANCEL, E.PENDING_CANCEL),
        (S.PENDING_CANCEL, E.NEW),
    ],
)
def test_a_late_or_second_acknowledgement_is_a_repeat(
    status: OrderStatus, exec_type: ExecType
) -> None:
    result = apply_event(_order(status=status.value), _ev(exec_type), ts_init=0)
    assert isinstance(result, Ignored) and result.reason == IgnoreReason.REPEATED


def test_a_fill_before_the_acknowledgement_implies_it() -> None:
    order, (applied,) = _run(_order(), _fill(100, fill_id="f"))
    assert order.status == S.FILLED and order.venue_order_id == "v-1"
    assert applied.report.exec_type == E.FILL


def test_cancel_requested_then_confirmed_fills_in_between_still_count() -> None:
    order, applied = _run(
        _order(status="NEW"),
        _ev(E.PENDING_CANCEL, S.PENDING_CANCEL),
        _fill(30, fill_id="a"),
        _ev(E.CANCELED, S.CANCELED, reason="user"),
    )
    assert [a.report.order_status for a in applied] == [
        S.PENDING_CANCEL,
        S.PENDING_CANCEL,
        S.CANCELED,
    ]
    assert order.cum_quantity == to_fixed(30) and order.leaves_quantity == 0
    assert applied[2].report.reason == "user" and applied[2].report.leaves_quantity == 0


def test_a_fill_that_completes_a_pending_cancel_order_fills_it() -> None:
    order, _ = _run(
        _order(status="NEW"), _ev(E.PENDING_CANCEL, S.PENDING_CANCEL), _fill(100, fill_id="a")
    )
    assert order.status == S.FILLED


def test_a_refused_cancel_returns_the_order_to_working() -> None:
    order, applied = _run(
        _order(status="PARTIALLY_FILLED", cum_quantity=to_fixed(10), avg_price=to_fixed(1)),
        _ev(E.PENDING_CANCEL, S.PENDING_CANCEL),
        _ev(E.OTHER, S.PARTIALLY_FILLED, raw_event="order_cancel_rejected"),
    )
    assert order.status == S.PARTIALLY_FILLED and order.is_working
    assert applied[1].report.raw_event == "order_cancel_rejected"
    # a second cancel request later gets its own report id
    _, (again,) = _run(order, _ev(E.PENDING_CANCEL, S.PENDING_CANCEL))
    assert again.report.report_id != applied[0].report.report_id


def test_report_ids_are_deterministic_for_the_same_events() -> None:
    events = (_ev(E.NEW), _fill(50, fill_id="a"), _ev(E.PENDING_CANCEL), _ev(E.CANCELED))
    _, first = _run(_order(), *events)
    _, second = _run(_order(), *events)
    assert [a.report.report_id for a in first] == [a.report.report_id for a in second]
    assert len({a.report.report_id for a in first}) == len(events)


def test_a_working_order_round_trips_through_json() -> None:
    order, _ = _run(
        _order(), _ev(E.NEW), _fill(40, fill_id="x-1"), _fill(10, cum_quantity=to_fixed(50))
    )
    limit = WorkingOrder.from_dict(
        {
            **order.to_dict(),
            "order_type": "LIMIT",
            "limit_price": to_fixed(5),
            "time_in_force": "GTC",
        }
    )
    for item in (order, limit):
        assert WorkingOrder.from_dict(json.loads(json.dumps(item.to_dict()))) == item
    assert limit.order_type == OrderType.LIMIT and limit.time_in_force == TimeInForce.GTC


# ---- reconcile: the book against the venue's view ---------------------------------------


class _Venue:
    def __init__(self, status, filled=0, avg=None, reason=None) -> None:
        self.venue_order_id = "v-9"
        self.status = status
        self.filled_quantity = filled
        self.avg_price = avg
        self.ts_event = T0 + 50
        self.reason = reason


def test_reconcile_adopts_an_order_the_venue_filled_while_we_were_down() -> None:
    order = _order()  # PENDING_NEW: sent by a process that died before committing
    events = reconcile(order, _Venue(S.FILLED, QTY, to_fixed(10)))
    after, applied = _run(order, *events)
    assert [a.report.exec_type for a in applied] == [E.NEW, E.FILL]
    assert after.status == S.FILLED and after.avg_price == to_fixed(10)
    assert after.venue_order_id == "v-9"
    assert applied[1].fill is not None and applied[1].fill.quantity == QTY


def test_reconcile_emits_only_the_quantity_missing_at_the_price_that_makes_the_average() -> None:
    order, _ = _run(_order(), _ev(E.NEW), _fill(40, "10", "a"))
    # the venue filled 100 at an average of 10.6: the missing 60 went at 11
    after, applied = _run(order, *reconcile(order, _Venue(S.FILLED, QTY, to_fixed("10.6"))))
    assert [(a.fill.quantity, a.fill.price) for a in applied if a.fill] == [
        (to_fixed(60), to_fixed(11))
    ]
    assert after.cum_quantity == QTY and after.avg_price == to_fixed("10.6")


def test_reconcile_of_an_order_the_book_already_matches_is_nothing() -> None:
    order, _ = _run(_order(), _ev(E.NEW), _fill(40, "10", "a"))
    assert reconcile(order, _Venue(S.PARTIALLY_FILLED, to_fixed(40), to_fixed(10))) == []


def test_reconcile_brings_a_cancel_and_a_rejection_across() -> None:
    order, _ = _run(_order(), _ev(E.NEW))
    after, _ = _run(order, *reconcile(order, _Venue(S.CANCELED, reason="halt")))
    assert after.status == S.CANCELED
    rejected, (report,) = _run(_order(), *reconcile(_order(), _Venue(S.REJECTED, reason="no")))
    assert rejected.status == S.REJECTED and report.report.reason == "no"


# ---- properties over random event sequences ---------------------------------------------

_EXEC_TYPES = [
    E.PENDING_NEW,
    E.NEW,
    E.PARTIAL_FILL,
    E.FILL,
    E.PENDING_CANCEL,
    E.CANCELED,
    E.REPLACED,
    E.REJECTED,
    E.EXPIRED,
    E.OTHER,
]
_events = st.builds(
    OrderEvent,
    exec_type=st.sampled_from(_EXEC_TYPES),
    status=st.sampled_from(list(OrderStatus)),
    venue_order_id=st.sampled_from([None, "v-1"]),
    last_quantity=st.integers(min_value=-2, max_value=60),
    last_price=st.one_of(st.none(), st.integers(min_value=-1, max_value=1_000)),
    avg_price=st.one_of(st.none(), st.integers(min_value=1, max_value=1_000)),
    cum_quantity=st.integers(min_value=0, max_value=120),
    # a small pool of ids, so duplicates are common
    fill_id=st.one_of(st.none(), st.sampled_from(["f1", "f2", "f3", "f4", "f5"])),
    reason=st.none(),
    raw_event=st.none(),
    ts_event=st.integers(min_value=0, max_value=10),
)


@settings(max_examples=400, deadline=None)
@given(quantity=st.integers(min_value=1, max_value=100), events=st.lists(_events, max_size=40))
def test_random_event_sequences_keep_the_books_invariants(
    quantity: int, events: list[OrderEvent]
) -> None:
    order = _order(quantity=quantity)
    fills, report_ids = [], set()
    terminal: OrderStatus | None = None
    for event in events:
        result = apply_event(order, event, ts_init=0)
        if not isinstance(result, Applied):
            continue  # refused or ignored: nothing changes, so nothing to check
        assert terminal is None, f"{result.report.exec_type} applied after {terminal}"
        before, order = order, result.order
        assert isinstance(result.report, ExecutionReport)
        assert result.report.report_id not in report_ids
        report_ids.add(result.report.report_id)
        assert order.cum_quantity >= before.cum_quantity
        if result.fill is not None:
            fills.append(result.fill)
        if order.is_terminal:
            terminal = order.status
    assert 0 <= order.cum_quantity <= order.quantity
    assert sum(f.quantity for f in fills) == order.cum_quantity
    assert len({f.fill_id for f in fills}) == len(fills)
    if fills:
        assert min(f.price for f in fills) <= order.avg_price <= max(f.price for f in fills) or (
            # a venue's own average is taken as given
            any(e.avg_price is not None for e in events)
        )
    if terminal is not None:
        assert order.status == terminal
    if order.status == S.FILLED:
        assert order.cum_quantity == order.quantity
