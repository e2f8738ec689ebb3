"""File partitioning: every record is read exactly once, whatever the cut points; broken files are named."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlplat.ingest.files import FileFormatError, detect_format, plan_partitions, read_partition

TRICKY = [{"event_id": f"e{i}", "text": 'a, "quoted" ] } [ { \\ value' * (i % 3), "nested": {"l": [i, {"x": ","}]}}
          for i in range(500)]


def records(path: Path, fmt: str, target: int, block: int = 8 << 20) -> list[object]:
    out: list[object] = []
    for part in plan_partitions(path, fmt, target, block):
        kind, items = read_partition(path, fmt, part)
        out += [json.loads(i) for i in items] if kind == "json" else items.to_pylist()  # type: ignore[union-attr]
    return out


@pytest.mark.parametrize(("target", "block"), [(100, 64), (1000, 333), (10_000, 4096), (1 << 30, 8 << 20)])
def test_json_array_items_survive_any_cut(tmp_path: Path, target: int, block: int) -> None:
    """Strings with commas, brackets and escapes never split an item, across partitions and read blocks."""
    path = tmp_path / "a.json"
    path.write_text(json.dumps(TRICKY, indent=1))
    assert records(path, "json", target, block) == TRICKY


@pytest.mark.parametrize("target", [50, 1000, 1 << 30])
def test_ndjson_lines_survive_any_cut(tmp_path: Path, target: int) -> None:
    """Byte-range partitions end on line breaks: each line is read once."""
    path = tmp_path / "a.ndjson"
    path.write_text("\n".join(json.dumps(r) for r in TRICKY) + "\n")
    assert records(path, "ndjson", target) == TRICKY


def test_csv_partitions_keep_the_header(tmp_path: Path) -> None:
    """Every CSV partition is parsed with the header's column names."""
    path = tmp_path / "a.csv"
    path.write_text("event_id,v\n" + "".join(f"e{i},{i}\n" for i in range(300)))
    rows = records(path, "csv", 200)
    assert rows == [{"event_id": f"e{i}", "v": str(i)} for i in range(300)]


@pytest.mark.parametrize("target", [1, 3_000, 1 << 30])
def test_parquet_partitions_group_whole_row_groups(tmp_path: Path, target: int) -> None:
    """Row groups are grouped up to the target (decoded bytes), at least one per partition, each read once."""
    path = tmp_path / "a.parquet"
    table = pa.table({"event_id": [f"e{i}" for i in range(1000)], "v": list(range(1000))})
    pq.write_table(table, path, row_group_size=100)
    parts = plan_partitions(path, "parquet", target)
    group = pq.ParquetFile(path).metadata.row_group(0).total_byte_size
    assert len(parts) == {1: 10, 3_000: -(-10 // max(1, 3_000 // group)), 1 << 30: 1}[target]
    bounds = [parts[0].start] + [p.end for p in parts]
    assert bounds == sorted(set(bounds)) and bounds[0] == 0 and bounds[-1] == 10  # contiguous, no gaps or overlaps
    assert records(path, "parquet", target) == table.to_pylist()


@pytest.mark.parametrize(("name", "content", "fmt", "named"), [
    ("x.parquet", b"PAR1 truncated", None, "PAR1"),
    ("x.parquet", b"not parquet at all", None, "PAR1"),
    ("x.json", b'[{"a": 1}, {"b": ', None, "not closed"),
    ("x.json", b'{"a": 1}', "json", "must start with"),
    ("x.bin", b"", "yaml", "unknown format"),
])
def test_broken_or_mislabelled_files_are_named(tmp_path: Path, name: str, content: bytes, fmt: str | None,
                                               named: str) -> None:
    """Truncated files, wrong magic bytes and unknown formats fail with what is wrong."""
    path = tmp_path / name
    path.write_bytes(content)
    def open_and_plan() -> None:
        plan_partitions(path, detect_format(path, fmt))

    with pytest.raises(FileFormatError, match=named):
        open_and_plan()


def test_format_is_sniffed_without_an_extension(tmp_path: Path) -> None:
    """With no telling extension, the first bytes decide."""
    for content, fmt in [(b'[{"a":1}]', "json"), (b'{"a":1}\n', "ndjson"), (b"a,b\n1,2\n", "csv")]:
        path = tmp_path / "upload.bin"
        path.write_bytes(content)
        assert detect_format(path) == fmt
