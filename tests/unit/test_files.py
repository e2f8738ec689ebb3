"""File partitioning: every record is read exactly once, whatever the cut points; broken files are named."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlplat.ingest import files
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



def test_only_an_empty_csv_cell_is_null(tmp_path: Path) -> None:
    """Strings that other readers take for null ("NA" is Namibia's country code) are values as written."""
    path = tmp_path / "n.csv"
    words = ["NA", "NULL", "null", "NaN", "N/A", "nan", "-NaN", "#N/A", "None"]
    path.write_text("event_id,country\n" + "".join(f"e{i},{w}\n" for i, w in enumerate(words)) + 'e97,\ne98,""\n')
    rows = records(path, "csv", 1 << 20)
    assert [r["country"] for r in rows] == [*words, None, None]  # type: ignore[index]


# values that break a line-aligned cut, or a quote count that ignores quoting rules
CSV_TEXT = ["plain", "comma, inside", 'a "quoted" word', '"', '""', "line\nbreak", "crlf\r\nbreak", "ends\n",
            "\nstarts", "ünïcödé ✓ 😀", 'all, "of"\n😀\r\n, it', " spaced ", "'single'", '",\n"']


def write_csv(path: Path, rows: list[list[str]], terminator: str = "\r\n") -> list[dict[str, str]]:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator=terminator)
        writer.writerow(["event_id", "text", "n"])
        writer.writerows(rows)
    return [{"event_id": a, "text": b, "n": c} for a, b, c in rows]


def whole_file(path: Path) -> list[dict[str, object]]:
    """The file as pyarrow parses it in one piece: what any partitioning must reproduce."""
    options = pacsv.ConvertOptions(column_types=dict.fromkeys(["event_id", "text", "n"], pa.string()),
                                   strings_can_be_null=True, null_values=[""])
    return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True),  # type: ignore[no-any-return]
                          convert_options=options).to_pylist()


@pytest.mark.parametrize("terminator", ["\r\n", "\n"])
@pytest.mark.parametrize(("target", "block"), [(1, 16), (37, 64), (500, 333), (10_000, 4096), (1 << 30, 8 << 20)])
def test_csv_values_with_quoted_line_breaks_survive_any_cut(tmp_path: Path, terminator: str, target: int,
                                                            block: int) -> None:
    """Quoted line breaks, commas, quotes and UTF-8 never split a record, across partitions and scan blocks:
    every value is read once, exactly."""
    path = tmp_path / "a.csv"
    expected = write_csv(path, [[f"e{i}", CSV_TEXT[i % len(CSV_TEXT)] * (1 + i % 3), str(i)] for i in range(400)],
                         terminator)
    parts = plan_partitions(path, "csv", target, block)
    assert len(parts) > (1 if target < 1 << 30 else 0)
    assert records(path, "csv", target, block) == expected


def test_a_csv_partition_larger_than_a_parser_block_keeps_its_quoted_line_breaks(tmp_path: Path) -> None:
    """pyarrow reads a partition in blocks of about 1 MB: told that values may hold line breaks, its blocks
    never split a quoted value either."""
    path = tmp_path / "a.csv"
    expected = write_csv(path, [[f"e{i}", f"{i}\n" + "x" * 90, str(i)] for i in range(30_000)])
    parts = plan_partitions(path, "csv", 2 << 20)
    assert len(parts) > 1 and all(p.end - p.start > 1 << 20 for p in parts[:-1])
    assert records(path, "csv", 2 << 20) == expected


def test_a_quoted_crlf_across_a_parser_block_boundary_keeps_both_bytes(tmp_path: Path) -> None:
    """pyarrow drops the line feed of a quoted "\\r\\n" split by the edge of one of its 1 MiB read blocks: the
    partition is read with block edges elsewhere. Here the first two edges would fall inside such pairs."""
    body = bytearray()
    for edge in (1 << 20, 2 << 20):
        while len(body) < edge - 200:
            body += b'f%d,"filler",1\r\n' % len(body)
        head = b'e%d,"' % edge
        body += head + b"p" * (edge - 1 - len(body) - len(head)) + b'\r\nafter",2\r\n'
        assert body[edge - 1:edge + 1] == b"\r\n"
    path = tmp_path / "a.csv"
    path.write_bytes(b"event_id,text,n\r\n" + body)
    expected = [dict(zip(["event_id", "text", "n"], r, strict=True)) for r in csv.reader(io.StringIO(
        body.decode(), newline=""))]
    assert any(r["text"].endswith("\r\nafter") for r in expected)
    assert records(path, "csv", 1 << 30) == expected


ARROW_CASES = [  # quotes that are literal characters where pyarrow (and Python's csv) take them so
    'e1,5\'10",x\n', 'e2,ab"c"d,"q""\nr"\n', 'e3,"ab"c,y\n', 'e4,x"",z\n', 'e5,"""",w\n', 'e6,"a\n""b""\n",v\n',
    'e7,a""",u\n', 'e8,",",t\n', 'e9,"x""y"z"q,s\n',
]


@pytest.mark.parametrize("rounds", [16, 1, 0])
def test_csv_literal_quotes_are_cut_as_the_reader_parses_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rounds: int) -> None:
    """A quote inside an unquoted value is a literal character and opens nothing: cuts follow pyarrow's
    reading of the whole file, in the vectorised scan and in its plain fallback (rounds=0)."""
    monkeypatch.setattr(files, "_STRAY_ROUNDS", rounds)
    path = tmp_path / "a.csv"
    path.write_text("event_id,text,n\n" + "".join(ARROW_CASES) * 40, encoding="utf-8")
    expected = whole_file(path)
    assert len(expected) == len(ARROW_CASES) * 40
    for target, block in [(1, 7), (23, 64), (300, 1000), (1 << 30, 8 << 20)]:
        assert records(path, "csv", target, block) == expected


@settings(max_examples=150, deadline=None)
@given(cells=st.lists(st.text(alphabet='ab,"\n\r é😀', max_size=12), min_size=1, max_size=40),
       raw=st.booleans(), target=st.integers(1, 200), block=st.integers(1, 300))
def test_csv_partitions_read_what_the_whole_file_holds(tmp_path_factory: pytest.TempPathFactory, cells: list[str],
                                                       raw: bool, target: int, block: int) -> None:
    """Any CSV pyarrow reads in one piece reads the same in partitions, and one it cannot read is a clear
    error: values written by a CSV writer, or raw (stray quotes included)."""
    path = tmp_path_factory.getbasetemp() / "h.csv"
    if raw:
        flat = [c.replace("\n", "").replace("\r", "").replace(",", "") for c in cells]
        lines = [f"e{i},{c},{i}" for i, c in enumerate(flat)]
        path.write_text("event_id,text,n\n" + "\n".join(lines) + "\n", encoding="utf-8")
    else:
        write_csv(path, [[f"e{i}", c, str(i)] for i, c in enumerate(cells)])
    try:
        expected = whole_file(path)
    except pa.ArrowInvalid:
        with pytest.raises(FileFormatError):
            records(path, "csv", target, block)
        return
    assert records(path, "csv", target, block) == expected


@pytest.mark.parametrize("block", [5, 8 << 20])
def test_a_csv_quote_never_closed_is_refused_before_any_partition_is_read(tmp_path: Path, block: int) -> None:
    """A file that ends inside a quoted value (truncated) is refused whole, naming where the value opened."""
    path = tmp_path / "a.csv"
    path.write_bytes(b'event_id,text\ne1,"fine"\ne2,"cut\noff here\ne3,x\n')
    with pytest.raises(FileFormatError, match=r"a.csv: the quoted CSV value opened at byte 27 is never closed"):
        plan_partitions(path, "csv", 4, block)


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
