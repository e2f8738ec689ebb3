"""Batch files: NDJSON, JSON array, CSV and Parquet, read in partitions that fit in memory.

A file is cut into partitions (byte ranges ending on a line break for NDJSON, on a record's end for CSV,
row groups for Parquet, object ranges for a JSON array) so that several worker processes can parse it at
once and a file larger than memory never has to be loaded whole (seed 004: partitioned parallel
ingestion). Every function here that a worker runs is top-level and takes paths and plain values, not
live clients.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mlplat.features.definitions import FeatureSet
from mlplat.ingest.validation import ValidatedBatch, validate_events, validate_table

FORMATS = ("ndjson", "json", "csv", "parquet")
EXTENSIONS = {".ndjson": "ndjson", ".jsonl": "ndjson", ".json": "json", ".csv": "csv", ".parquet": "parquet",
              ".pq": "parquet"}
PARQUET_MAGIC = b"PAR1"


class FileFormatError(ValueError):
    """The file is not in the format it claims, or is truncated."""


@dataclass(frozen=True)
class Partition:
    index: int
    start: int  # byte offset, or the first row group for Parquet
    end: int    # exclusive


def detect_format(path: Path, declared: str | None = None) -> str:
    if declared:
        if declared not in FORMATS:
            raise FileFormatError(f"unknown format {declared!r} (expected {', '.join(FORMATS)})")
        fmt = declared
    else:
        fmt = EXTENSIONS.get(path.suffix.lower(), "")
        if not fmt:
            with path.open("rb") as f:
                head = f.read(64).lstrip()
            fmt = "parquet" if head.startswith(PARQUET_MAGIC) else "json" if head.startswith(b"[") else (
                "ndjson" if head.startswith(b"{") else "csv")
    if fmt == "parquet":
        with path.open("rb") as f:
            head = f.read(4)
            f.seek(max(path.stat().st_size - 4, 0))
            tail = f.read(4)
        if head != PARQUET_MAGIC or tail != PARQUET_MAGIC:
            raise FileFormatError(f"{path.name}: not a complete Parquet file (missing PAR1 magic bytes)")
    return fmt


def _line_ranges(path: Path, target_bytes: int, skip_header: bool) -> list[Partition]:
    size = path.stat().st_size
    ranges: list[Partition] = []
    with path.open("rb") as f:
        start = 0
        if skip_header:
            f.readline()
            start = f.tell()
        while start < size:
            f.seek(min(start + target_bytes, size))
            if f.tell() < size:
                f.readline()  # move to the end of the line the cut fell in
            end = min(f.tell(), size)
            ranges.append(Partition(len(ranges), start, end))
            start = end
    return ranges


def plan_partitions(path: Path, fmt: str, target_bytes: int = 32 << 20, block: int = 8 << 20) -> list[Partition]:
    if fmt == "ndjson":
        return _line_ranges(path, target_bytes, skip_header=False)
    if fmt == "csv":
        return _csv_ranges(path, target_bytes, block)
    if fmt == "parquet":
        return _row_group_ranges(path, target_bytes)
    return _json_ranges(path, target_bytes, block)


def _row_group_ranges(path: Path, target_bytes: int) -> list[Partition]:
    """Consecutive row groups up to target_bytes decoded (at least one group per partition): fewer, larger
    partitions mean fewer commits, and the warehouse's index insert is cheaper in large batches."""
    try:
        meta = pq.ParquetFile(path).metadata
    except (pa.ArrowInvalid, OSError) as e:
        raise FileFormatError(f"{path.name}: unreadable Parquet: {e}") from None
    ranges: list[Partition] = []
    start, size = 0, 0
    for group in range(meta.num_row_groups):
        group_bytes = meta.row_group(group).total_byte_size
        if group > start and size + group_bytes > target_bytes:
            ranges.append(Partition(len(ranges), start, group))
            start, size = group, 0
        size += group_bytes
    if start < meta.num_row_groups:
        ranges.append(Partition(len(ranges), start, meta.num_row_groups))
    return ranges


_WHITESPACE = frozenset(b" \n\r\t")
_OPEN, _CLOSE = frozenset(b"{["), frozenset(b"}]")


def _string_end(data: bytes, i: int) -> int:
    """Index just past the string that starts at data[i] (a quote), honouring backslash escapes."""
    i += 1
    while i < len(data):
        if data[i] == 0x5C:
            i += 2
            continue
        if data[i] == 0x22:
            return i + 1
        i += 1
    return i


def _scan_items(data: bytes, offset: int) -> Iterator[tuple[int, int]]:
    """Byte spans of the comma-separated JSON values in data (the body of an array)."""
    depth, start, i = 0, None, 0
    while i < len(data):
        byte = data[i]
        if byte == 0x22:
            start = i if start is None else start
            i = _string_end(data, i)
            continue
        if byte == 0x2C and depth == 0:
            if start is not None:
                yield offset + start, offset + i
            start = None
        elif byte not in _WHITESPACE:
            start = i if start is None else start
            depth += (byte in _OPEN) - (byte in _CLOSE)
        i += 1
    if start is not None:
        yield offset + start, offset + len(data)


def _array_body(path: Path) -> tuple[int, int]:
    """Byte range between the outer [ and ]: the file must be one JSON array."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(min(size, 4096))
        stripped = head.lstrip()
        if not stripped.startswith(b"["):
            raise FileFormatError(f"{path.name}: a JSON array file must start with '['")
        start = len(head) - len(stripped) + 1
        f.seek(max(size - 4096, 0))
        tail = f.read()
    trimmed = tail.rstrip()
    if not trimmed.endswith(b"]"):
        raise FileFormatError(f"{path.name}: the JSON array is not closed (truncated file?)")
    end = max(size - 4096, 0) + len(trimmed) - 1
    return start, end


def _json_ranges(path: Path, target_bytes: int, block: int = 8 << 20) -> list[Partition]:
    """Cut the array body at item boundaries, reading it one block at a time."""
    body_start, body_end = _array_body(path)
    ranges: list[Partition] = []
    with path.open("rb") as f:
        part_start = body_start
        position = body_start
        carry = b""
        while position < body_end:
            f.seek(position)
            data = carry + f.read(min(block, body_end - position))
            base = position - len(carry)
            spans = list(_scan_items(data, base))
            position += len(data) - len(carry)
            if position < body_end and spans:  # the last span may be cut by the block edge: read it again
                carry = data[spans[-1][0] - base:]
                spans = spans[:-1]
            else:
                carry = b""
            for _, end in spans:
                if end - part_start >= target_bytes:
                    ranges.append(Partition(len(ranges), part_start, end))
                    part_start = end
        if part_start < body_end:
            ranges.append(Partition(len(ranges), part_start, body_end))
    return ranges


_QUOTE = 0x22
_OPENS_AFTER = np.zeros(256, dtype=bool)  # bytes after which a quote opens a quoted CSV value
_OPENS_AFTER[[0x2C, 0x0A, 0x0D, _QUOTE]] = True
_STRAY_ROUNDS = 16  # literal quotes in one block handled vectorised before a plain loop takes over


def _quote_toggles(data: bytes, inside: bool, before: int, last_toggle: int) -> np.ndarray:
    """Positions in data where CSV quoting switches on or off, as pyarrow's reader (and Python's csv) parse.

    A quote opens quoting only where a field starts: after a comma, a line break, the file's start, or a
    quote that just closed quoting (the pair is an escaped quote). Inside quoting every quote closes it.
    Any other quote is a literal character of an unquoted value and switches nothing. `before` is the byte
    before data (a comma at the file's start), `last_toggle` the last switch, relative to data.
    Vectorised: every quote is taken as a switch and the would-be openers checked; only a quote that cannot
    open is dropped and the rest checked again, so a well-formed block costs a few numpy passes."""
    if data.find(b'"') < 0:
        return np.empty(0, dtype=np.int64)
    arr = np.frombuffer(data, dtype=np.uint8)
    quotes = np.flatnonzero(arr == _QUOTE)
    kept: list[np.ndarray] = []
    for _ in range(_STRAY_ROUNDS):
        openers = quotes[int(inside)::2]
        if not openers.size:
            break
        prev = arr[openers - 1]
        if openers[0] == 0:
            prev[0] = before
        opens = _OPENS_AFTER[prev]
        if openers[0] == quotes[0] and prev[0] == _QUOTE and quotes[0] - 1 != last_toggle:
            opens[0] = False  # the quote before it was a literal one (dropped), not a closing one
        if opens.all():
            break
        stray = 2 * int(np.argmin(opens)) + int(inside)
        kept.append(quotes[:stray])
        last_toggle = int(quotes[stray - 1]) if stray else last_toggle
        inside ^= stray % 2 == 1
        quotes = quotes[stray + 1:]
    else:  # many literal quotes in this block: one plain pass over the rest
        rest: list[int] = []
        for q in quotes.tolist():
            prev_byte = data[q - 1] if q else before
            if inside or (_OPENS_AFTER[prev_byte] and (prev_byte != _QUOTE or q - 1 == last_toggle)):
                rest.append(q)
                inside, last_toggle = not inside, q
        quotes = np.asarray(rest, dtype=np.int64)
    kept.append(quotes)
    return np.concatenate(kept) if len(kept) > 1 else kept[0]


def _csv_ranges(path: Path, target_bytes: int, block: int = 8 << 20) -> list[Partition]:
    """Byte ranges that each start where a record starts: one sequential pass, a block at a time, tracks
    where quoting is on, so a cut never falls on a line break inside a quoted value. The header is skipped.
    A file that ends inside quoting is refused here, before any partition is read."""
    size = path.stat().st_size
    ranges: list[Partition] = []
    start = -1  # where the header ends, once found
    want = 0  # the next cut is at the first record end at or after this offset
    inside, before, last_toggle, opened = False, 0x2C, -2, 0
    with path.open("rb") as f:
        base = 0
        while data := f.read(block):
            toggles = _quote_toggles(data, inside, before, last_toggle - base)
            while want < base + len(data):
                newline = data.find(b"\n", max(want - base, 0))
                if newline < 0:
                    break
                k = int(np.searchsorted(toggles, newline))
                if inside ^ (k % 2 == 1):  # a line break inside a quoted value: look past its closing quote
                    if k == len(toggles):
                        break
                    want = base + int(toggles[k]) + 1
                    continue
                end = base + newline + 1
                if start >= 0:
                    ranges.append(Partition(len(ranges), start, end))
                start, want = end, end + target_bytes
            if len(toggles):
                inside ^= len(toggles) % 2 == 1
                last_toggle = base + int(toggles[-1])
                opened = last_toggle if inside else opened
            before = data[-1]
            base += len(data)
    if inside:
        raise FileFormatError(f"{path.name}: the quoted CSV value opened at byte {opened} is never closed "
                              "(truncated file?)")
    if 0 <= start < size:
        ranges.append(Partition(len(ranges), start, size))
    return ranges


def _csv_header(path: Path) -> list[str]:
    with path.open("r", newline="", encoding="utf-8", errors="replace") as f:
        return next(csv.reader(f), [])


ARROW_BLOCK = 1 << 20  # pyarrow's default read block


def _arrow_block_size(data: bytes) -> int:
    """pyarrow (26, apache/arrow#51368) drops a line feed that starts a read block after one that ended in a
    carriage return, even inside a quoted value: a block size whose edges split no CR LF of this partition."""
    for size in range(ARROW_BLOCK, ARROW_BLOCK + 8):
        if not any(data[k - 1:k + 1] == b"\r\n" for k in range(size, len(data), size)):
            return size
    return len(data) + 1  # one block


def read_partition(path: Path, fmt: str, part: Partition) -> tuple[str, list[bytes] | pa.Table]:
    """('json', payloads) for JSON formats, ('table'|'text', Arrow table) for Parquet and CSV."""
    if fmt == "parquet":
        return "table", pq.ParquetFile(path).read_row_groups(list(range(part.start, part.end)))
    with path.open("rb") as f:
        f.seek(part.start)
        data = f.read(part.end - part.start)
    if fmt == "json":
        return "json", [data[s:e] for s, e in _scan_items(data, 0)]
    if fmt == "ndjson":
        return "json", [line for line in data.split(b"\n") if line.strip()]
    names = _csv_header(path)
    options = pacsv.ReadOptions(column_names=names, block_size=_arrow_block_size(data))
    # only an empty cell is null: "NA" (Namibia), "NULL" or "NaN" are values, as the file wrote them
    convert = pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=True,
                                   null_values=[""])
    # pyarrow cuts its blocks at line breaks: unless told that values may hold them (slower), a cut inside a
    # quoted value fails or, now and then, silently misreads the block. Without quotes no value holds one.
    parse = pacsv.ParseOptions(newlines_in_values=data.find(b'"') >= 0)
    try:
        table = pacsv.read_csv(io.BytesIO(data), read_options=options, parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid as e:
        raise FileFormatError(f"{path.name}: bad CSV in bytes {part.start}-{part.end}: {e}") from None
    return "text", table


def ingest_partition(
    path: str, fmt: str, part: Partition, fs_json: str, entity_key: str, ingest_time: dt.datetime
) -> ValidatedBatch:
    """Run in a worker process: read one partition and validate it."""
    fs = FeatureSet.model_validate_json(fs_json)
    kind, records = read_partition(Path(path), fmt, part)
    if isinstance(records, pa.Table):
        return validate_table(fs, entity_key, records, ingest_time, from_text=kind == "text")
    return validate_events(fs, entity_key, records, ingest_time)


