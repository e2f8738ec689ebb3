"""File partitioning: every record is read exactly once, whatever the cut points; broken files are named."""

from __future__ import annotations

import json
from pathlib import Path

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
