"""Serde throughput: AvroSerde (framing + validation) against raw fastavro, same run.

Prints records/s for both and the ratio; no assertion on time (machines are noisy).
Run: .venv/bin/python benchmarks/bench_serde.py [N]
"""

from __future__ import annotations

import io
import sys
import time

from fastavro import schemaless_reader, schemaless_writer

from schemas.models import AggressorSide, Trade
from schemas.registry import default_registry
from schemas.serde import AvroSerde


def _trades(n: int) -> list[Trade]:
    return [
        Trade(
            symbol=("AAPL", "MSFT", "SPY")[i % 3],
            venue="XNAS",
            price=190_120_000_000 + i,
            size=100_000_000_000,
            aggressor_side=AggressorSide.BUYER,
            trade_id=str(i),
            conditions=["@"],
            source="bench",
            ts_event=1_700_000_000_000_000_000 + i,
            ts_init=1_700_000_000_000_000_500 + i,
        )
        for i in range(n)
    ]


def _rate(label: str, n: int, fn) -> float:
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        fn()
        best = max(best, n / (time.perf_counter() - start))
    print(f"  {label:<38} {best:>12,.0f} records/s")
    return best


def main(n: int = 50_000) -> None:
    trades = _trades(n)
    dicts = [t.model_dump(mode="json") for t in trades]
    parsed = default_registry().current(Trade.AVRO_NAME).parsed
    serde = AvroSerde()
    encoded = [serde.encode(t) for t in trades]
    raw = []
    for d in dicts:
        buf = io.BytesIO()
        schemaless_writer(buf, parsed, d)
        raw.append(buf.getvalue())

    def raw_encode() -> None:
        for d in dicts:
            buf = io.BytesIO()
            schemaless_writer(buf, parsed, d)

    def raw_decode() -> None:
        for b in raw:
            schemaless_reader(io.BytesIO(b), parsed)

    print(f"serde benchmark, {n:,} Trade records, best of 3")
    base_enc = _rate("fastavro schemaless_writer (baseline)", n, raw_encode)
    ours_enc = _rate(
        "AvroSerde.encode (single-object)", n, lambda: [serde.encode(t) for t in trades]
    )
    base_dec = _rate("fastavro schemaless_reader (baseline)", n, raw_decode)
    ours_dec = _rate(
        "AvroSerde.decode_as (validated model)",
        n,
        lambda: [serde.decode_as(b, Trade) for b in encoded],
    )
    print(f"ratio encode ours/baseline: {ours_enc / base_enc:.2f}")
    print(f"ratio decode ours/baseline: {ours_dec / base_dec:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000)
