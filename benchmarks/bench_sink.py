"""ClickHouse sink throughput against a raw chDB Arrow insert of the same rows, same run.

Real ticks (Lean/AlgoSeek SPY and IBM trades and quotes of 7 Oct 2013) as the dicts Quix
hands the sink. The sink side is everything the sink does per checkpoint: ``add`` per
record, the restart check, dicts → Arrow, the INSERT with its dedup token. The raw side
inserts the already built Arrow tables into identical tables. Also: two tables flushed by one
insert thread against four. Kafka and Avro decoding are not in either figure.
Prints figures and ratios; no assertion on time (machines are noisy).
Run: .venv/bin/python benchmarks/bench_sink.py [ROWS_PER_TABLE]
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import shared_data

from core.clickhouse import ChdbClickHouse
from producers.replay import read_files
from schemas.models import Quote, Trade
from sinks.clickhouse import ClickHouseSink, table_specs
from sinks.migrations import migrate

DB = "omniquant"
BATCH = 50_000
FILES = {
    "market.trades": [
        "Lean/Data/equity/usa/tick/spy/20131007_trade.zip",
        "Lean/Data/equity/usa/tick/ibm/20131007_trade.zip",
    ],
    "market.quotes": [
        "Lean/Data/equity/usa/tick/bac/20131008_quote.zip",
        "Lean/Data/equity/usa/tick/ibm/20131007_quote.zip",
    ],
}


def _records(logical: str, n: int) -> list[dict[str, Any]]:
    paths = [shared_data() / p for p in FILES[logical] if (shared_data() / p).exists()]
    if not paths:
        sys.exit(f"no data: {FILES[logical]} under {shared_data()}")
    kind = Trade if logical == "market.trades" else Quote
    records = (r for r in read_files(paths) if isinstance(r, kind))
    return [r.model_dump(mode="python") for r in itertools.islice(records, n)]


def _sink_run(path: Path, data: dict[str, list[dict[str, Any]]], threads: int) -> float:
    specs = table_specs()
    topics = {f"b{threads}.{logical}": specs[logical] for logical in data}
    sink = ClickHouseSink(lambda: ChdbClickHouse(path), DB, dict(topics), threads=threads)
    n = max(len(v) for v in data.values())
    started = time.perf_counter()
    for start in range(0, n, BATCH):
        for logical, records in data.items():
            topic = f"b{threads}.{logical}"
            for offset in range(start, min(start + BATCH, len(records))):
                sink.add(records[offset], None, offset, [], topic, 0, offset)
        sink.flush()
    took = time.perf_counter() - started
    sink.close()
    return took


def _raw_run(client: ChdbClickHouse, data: dict[str, list[dict[str, Any]]]) -> float:
    specs = table_specs()
    tables = []
    for logical, records in data.items():
        table = specs[logical].table
        client.command(f"CREATE TABLE {DB}.raw_{table} AS {DB}.{table}")
        for start in range(0, len(records), BATCH):
            entries = [
                (offset, offset, records[offset], None, [])
                for offset in range(start, min(start + BATCH, len(records)))
            ]
            arrow = specs[logical].arrow([(f"raw.{logical}", 0, entries)])
            tables.append((f"{DB}.raw_{table}", arrow))
    started = time.perf_counter()
    for name, arrow in tables:
        client.insert_arrow(name, arrow)
    return time.perf_counter() - started


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    data = {logical: _records(logical, n) for logical in FILES}
    rows = sum(len(v) for v in data.values())
    path = Path(tempfile.mkdtemp(prefix="bench-sink-")) / "chdb"
    with ChdbClickHouse(path) as client:
        migrate(client, DB)
        raw = _raw_run(client, data)
        one = _sink_run(path, data, threads=1)
        four = _sink_run(path, data, threads=4)
        counts = client.query(
            f"SELECT _topic, count() FROM {DB}.trades GROUP BY 1 ORDER BY 1"
        ).rows  # fmt: skip
    print(
        f"{rows:,} rows ({', '.join(f'{k} {len(v):,}' for k, v in data.items())}), "
        f"batches of {BATCH:,}"
    )
    print(f"raw chDB insert from Arrow : {rows / raw:12,.0f} rows/s")
    print(f"sink, 1 insert thread      : {rows / one:12,.0f} rows/s  ({raw / one:.2f}x raw)")
    print(f"sink, 4 insert threads     : {rows / four:12,.0f} rows/s  ({raw / four:.2f}x raw)")
    print(f"4 threads vs 1             : {one / four:.2f}x")
    print(f"trades stored per topic    : {counts}")


if __name__ == "__main__":
    main()
