"""Opening input paths (format by name) and merging them into one event-time stream."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from schemas.models import Quote, Trade

from ._lean import LeanTickFile, is_lean_tick_path
from ._model import OUT_OF_RANGE, SKIP, Item, ReplayError, Skip, SourceFile, to_record
from ._tabular import CsvFile, NdjsonFile, ParquetFile

_MEMO_BUDGET = 1 << 18  # memo entries per kind shared by all Lean files of one merge

_SUFFIXES: dict[str, type[SourceFile]] = {
    ".csv": CsvFile,
    ".csv.gz": CsvFile,
    ".ndjson": NdjsonFile,
    ".ndjson.gz": NdjsonFile,
    ".jsonl": NdjsonFile,
    ".jsonl.gz": NdjsonFile,
    ".parquet": ParquetFile,
    ".pq": ParquetFile,
}


def _reader_class(path: Path) -> type[SourceFile] | None:
    if is_lean_tick_path(path):
        return LeanTickFile
    name = path.name.lower()
    for suffix, cls in _SUFFIXES.items():
        if name.endswith(suffix):
            return cls
    return None


def open_file(path: str | Path) -> SourceFile:
    """The reader for one file: Lean tick zip, CSV, NDJSON or Parquet (by path and name)."""
    path = Path(path)
    if not path.is_file():
        raise ReplayError(f"{path}: no such file")
    cls = _reader_class(path)
    if cls is None:
        raise ReplayError(
            f"{path}: unsupported file (Lean .../tick/<sym>/<yyyymmdd>_trade|quote.zip,"
            f" or {', '.join(_SUFFIXES)})"
        )
    return cls(path)  # type: ignore[call-arg]  # every concrete reader takes the path


def open_files(paths: Iterable[str | Path]) -> list[SourceFile]:
    """Readers for ``paths`` in the order given; a directory contributes every supported file
    below it, sorted by path. Fails before reading anything if a path is missing or unknown."""
    readers: list[SourceFile] = []
    seen: set[Path] = set()
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _reader_class(p))
            if not found:
                raise ReplayError(f"{path}: directory holds no supported file")
            files = found
        else:
            files = [path]
        for file in files:
            key = file.resolve()
            if key in seen:
                raise ReplayError(f"{file}: given twice (each row would be replayed twice)")
            seen.add(key)
            readers.append(open_file(file))
    if not readers:
        raise ReplayError("no input files")
    share = max(1024, _MEMO_BUDGET // len(readers))  # all files' memos together stay bounded
    for reader in readers:
        if isinstance(reader, LeanTickFile):
            reader.cache_limit = min(reader.cache_limit, share)
    return readers


def merge_items(
    readers: Sequence[SourceFile], on_skip: Callable[[Skip], None] | None = None
) -> Iterator[Item]:
    """Items of every reader in event-time order; ties break by file (given order), then line.

    Each file must itself be in time order (Lean's are). A row earlier than one before it in
    its own file is still produced, where the file has it — that is, late — and counted in
    that reader's ``out_of_order``; re-sorting would need the whole file in memory.

    With ``on_skip``, skipped rows are handed to it as they are read instead of being merged.
    """
    streams = [reader.items(i, on_skip) for i, reader in enumerate(readers)]
    if len(streams) == 1:
        return streams[0]
    return heapq.merge(*streams)


def read_files(
    paths: Iterable[str | Path],
    from_ns: int | None = None,
    to_ns: int | None = None,
) -> Iterator[Trade | Quote | Skip]:
    """Records (and Skips) of every file, merged in event-time order.

    Rows with ``ts_event`` outside ``[from_ns, to_ns)`` come out as ``Skip("out_of_range")``.
    """
    readers = open_files(paths)
    lo = -(2**63) if from_ns is None else from_ns
    hi = 2**63 if to_ns is None else to_ns
    for ts, index, line, kind, symbol, payload in merge_items(readers):
        if kind == SKIP:
            yield payload
        elif lo <= ts < hi:
            yield to_record(kind, symbol, payload, ts)
        else:  # the raw text of good rows is not kept; out-of-range rows are not dead letters
            yield Skip(OUT_OF_RANGE, b"", readers[index].path, line, f"ts_event {ts}", symbol)
