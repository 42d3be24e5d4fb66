"""Replay recorded market data into Kafka, in event-time order, every row accounted for.

Inputs (format from the path; a directory means every supported file below it):

- **Lean/AlgoSeek tick zips** ``.../tick/<sym>/<yyyymmdd>_{trade,quote}.zip`` (see ``_lean``):
  America/New_York wall-clock ms → UTC ns via zoneinfo (DST included), fractional ms kept to
  the ns, deci-cents → fixed-point exactly, exchange letter → MIC venue, condition code kept
  in ``conditions``, ``suspicious=1`` → ``flags=["suspicious"]`` (kept), one-sided quote rows
  → the other side ``None``.
- **CSV** (header row), **NDJSON**, **Parquet** with columns symbol, ts/timestamp, price,
  size, venue, bid/ask … (see ``_tabular`` for the columns and timestamp detection).

Every file is streamed (zip members in 1 MiB chunks, Parquet by record batch): memory stays
bounded whatever the file size. Each row becomes a record or a :class:`Skip` with a reason,
the raw row, file and line; nothing is dropped silently.

Ordering: the files are merged with ``heapq.merge`` on ``(ts_event, file rank, line)``, so
equal times keep the order of the files as given, then of the lines. Files are expected to be
in time order; a row earlier than one before it in the same file is **still produced**, at its
place in the file (late), and counted as ``out_of_order`` — sorting it would need the whole
file in memory, and dropping it would lose data.

Times: ``ts_event`` is the row's time; ``ts_init`` is set equal to it (as NautilusTrader's
historical loaders do) so that a replay is deterministic: the same file always gives the same
records and the same Avro bytes. The Kafka timestamp is the event time in ms.

Accounting (:class:`ReplayStats`): ``read == produced + skipped + failed`` exactly. ``read``
is what the readers counted (lines/rows of each file); produced counts broker
acknowledgements per topic; skipped counts by reason (malformed rows, dead-lettered to
``<prefix>dlq.feeds`` with their raw text and ``dlq.*`` headers; ``out_of_range`` rows
outside ``--from/--to``, which are not faults and not dead-lettered); failed counts records
the broker or librdkafka refused, never acknowledged, or — after Ctrl-C — read but not sent.
``replay`` checks the identity from independent counters, and that librdkafka's own count of
unacknowledged messages agrees, before returning.

Producing: the same librdkafka configuration as :class:`RecordProducer`
(``core.kafka.producer_config``: idempotent, acks=all, lz4, linger, murmur2 keys), but a
bare ``Producer``: RecordProducer raises at the first failed delivery, cannot count
acknowledgements per topic, and adds per-message work (a metrics label lookup, a kwargs dict)
on the hot path.

Speed: the hot path never builds pydantic models. Lean rows with the same text after the time
column (a few thousand distinct ones in a million-row file) share one parsed, validated and
Avro-encoded body, and new bodies are assembled from memoized prices, sizes and codes; a
message is ``header + symbol + body + ts + ts``. ``_avro`` checks at start-up that this
encoding is byte-identical to :meth:`AvroSerde.encode`. Records built for the public readers
use ``model_construct`` on values the readers validated themselves.

Limits: the merge keeps every input open at once (one file descriptor and bounded memos per
file); CSV/NDJSON/Parquet rows are parsed one by one (no memo), several times slower than
Lean rows.
"""

from producers.replay._files import open_file, open_files, read_files
from producers.replay._model import OUT_OF_RANGE, ReplayError, Skip, SourceFile
from producers.replay._producer import ReplayStats, parse_speed, replay
from producers.replay._time import parse_bound, parse_timestamp

__all__ = [
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
]
