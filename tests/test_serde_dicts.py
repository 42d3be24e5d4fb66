"""The dict paths of AvroSerde (the stream apps' hot path) agree with the model paths.

``decode_dict`` must accept and refuse exactly the bytes ``decode`` does — the dead letters of
every app depend on it — and give what ``model_dump(mode="json")`` of the decoded model gives;
``encode_dict`` of a model's dump must be the bytes ``encode`` writes.
"""

from __future__ import annotations

import io
from typing import Annotated, Any

import pytest
from fastavro import schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field
from test_schemas_equivalence import MODEL_IDS, records

from core.errors import SerdeError
from schemas.models import VALUE_MODELS, Bar, OrderRequest, Record, Trade
from schemas.registry import default_registry
from schemas.serde import AvroSerde, model_check

SERDE = AvroSerde()


def framed(model: type[Record], values: dict[str, Any]) -> bytes:
    """``values`` written with fastavro under ``model``'s current schema, single-object framed."""
    version = default_registry().current(model.AVRO_NAME)
    out = io.BytesIO()
    out.write(b"\xc3\x01" + version.fingerprint_le)
    schemaless_writer(out, version.parsed, values)
    return out.getvalue()


def outcome(decode: Any) -> tuple[str, Any]:
    try:
        return "ok", decode()
    except SerdeError:
        return "refused", None


@pytest.mark.parametrize("model", VALUE_MODELS, ids=MODEL_IDS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_decode_dict_gives_the_json_dump_and_encode_dict_the_same_bytes(
    model: type[Record], data: st.DataObject
) -> None:
    record = data.draw(records(model))
    encoded = SERDE.encode(record)
    decoded = SERDE.decode_dict(encoded, model)
    assert decoded == record.model_dump(mode="json")
    assert SERDE.encode_dict(model, record.model_dump()) == encoded
    assert SERDE.encode_dict(model, decoded) == encoded


@pytest.mark.parametrize("model", VALUE_MODELS, ids=MODEL_IDS)
@settings(max_examples=150, deadline=None)
@given(body=st.binary(max_size=120))
def test_decode_dict_accepts_and_refuses_exactly_what_decode_does(
    model: type[Record], body: bytes
) -> None:
    header = b"\xc3\x01" + default_registry().current(model.AVRO_NAME).fingerprint_le
    data = header + body
    as_model = outcome(lambda: SERDE.decode(data).model_dump(mode="json"))
    as_dict = outcome(lambda: SERDE.decode_dict(data, model))
    assert as_dict == as_model


@pytest.mark.parametrize(
    ("model", "values", "problem"),
    [
        (Trade, {"symbol": ""}, "symbol: length 0"),
        (Trade, {"symbol": "X" * 65}, "symbol: length 65"),
        (OrderRequest, {"quantity": 0}, "quantity: 0 <= 0"),
        (OrderRequest, {"client_order_id": "c" * 65}, "client_order_id: length 65"),
        (Bar, {"interval_ms": 0}, "interval_ms: 0 <= 0"),
        (Bar, {"trade_count": -1}, "trade_count: -1 < 0"),
    ],
)
def test_well_formed_avro_that_breaks_the_model_rules_is_refused_like_decode_does(
    model: type[Record], values: dict[str, Any], problem: str
) -> None:
    valid = {
        Trade: dict(symbol="AAPL", venue="X", price=1, size=1, source="s", ts_event=0, ts_init=0),
        OrderRequest: dict(
            client_order_id="c",
            strategy_id="s",
            symbol="AAPL",
            side="BUY",
            quantity=1,
            ts_event=0,
            ts_init=0,
        ),
        Bar: dict(
            symbol="AAPL",
            venue="X",
            interval_ms=1,
            open=1,
            high=1,
            low=1,
            close=1,
            volume=1,
            trade_count=1,
            source="s",
            ts_event=0,
            ts_init=0,
        ),
    }[model]
    dump = model.model_validate(valid).model_dump(mode="json")
    good = framed(model, dump)
    assert SERDE.decode_dict(good, model) == SERDE.decode(good).model_dump(mode="json")
    bad = framed(model, dump | values)
    with pytest.raises(SerdeError, match="is not a valid"):
        SERDE.decode(bad)
    with pytest.raises(SerdeError, match=f"is not a valid {model.__name__}.*{problem}"):
        SERDE.decode_dict(bad, model)


def test_decode_dict_of_another_record_type_is_refused() -> None:
    trade = Trade(symbol="A", venue="X", price=1, size=1, source="s", ts_event=0, ts_init=0)
    with pytest.raises(SerdeError, match=r"expected a io\.omniquant\.orders\.OrderRequest"):
        SERDE.decode_dict(SERDE.encode(trade), OrderRequest)


def test_encode_dict_refuses_values_that_do_not_fit_the_schema() -> None:
    trade = Trade(symbol="A", venue="X", price=1, size=1, source="s", ts_event=0, ts_init=0)
    with pytest.raises(SerdeError, match="cannot encode Trade"):
        SERDE.encode_dict(Trade, trade.model_dump() | {"price": 2**64})
    with pytest.raises(SerdeError, match="cannot encode Trade"):
        SERDE.encode_dict(Trade, trade.model_dump() | {"aggressor_side": "SIDEWAYS"})


class _Unusual(BaseModel):
    code: Annotated[str, Field(pattern=r"^[A-Z]+$")]
    even: Annotated[int, Field(multiple_of=2)] = 0


def test_a_rule_the_compiled_check_does_not_know_is_left_to_pydantic() -> None:
    check = model_check(_Unusual)
    assert check({"code": "ABC", "even": 2}) is None
    assert "pattern" in str(check({"code": "abc", "even": 2}))
    assert check({"code": "ABC", "even": 3}) is not None
