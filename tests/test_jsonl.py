"""StreamingJSONLReader: same records as json.loads per line, in constant memory, any chunk size."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reer_otel_memory import StreamingJSONLReader
from reer_otel_memory.errors import MalformedLineError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def write_lines(path, lines: list[bytes]) -> None:
    with open(path, "wb") as f:
        f.write(b"".join(lines))


@settings(max_examples=60, deadline=None)
@given(values=st.lists(json_values, max_size=30), ascii_only=st.booleans(), chunk_size=st.sampled_from([1, 3, 16, 4096, 1 << 20]))
def test_records_equal_json_loads_per_line_for_any_chunk_size(tmp_path_factory, values, ascii_only, chunk_size):
    path = tmp_path_factory.mktemp("jsonl") / "values.jsonl"
    write_lines(path, [json.dumps(v, ensure_ascii=ascii_only).encode() + b"\n" for v in values])
    reader = StreamingJSONLReader(path, chunk_size=chunk_size)
    assert list(reader) == values
    assert reader.stats.records == len(values)
    assert reader.stats.bytes_read == os.path.getsize(path)
    assert reader.stats.malformed_lines == 0


def test_spec_usage_with_chunk_size_8192(tmp_path):
    path = tmp_path / "records.jsonl"
    records = [{"id": i, "text": "x" * (i % 50_000)} for i in range(0, 200_000, 997)]  # lines longer than a chunk
    write_lines(path, [json.dumps(r).encode() + b"\n" for r in records])
    reader = StreamingJSONLReader(str(path), chunk_size=8192)
    seen = []
    for record in reader:
        seen.append(record)
    assert seen == records
    assert list(reader) == records  # every iteration is a new pass


@pytest.fixture
def large_jsonl(tmp_path):
    """About 40 MB of JSON lines, written before the test's memory is measured."""
    path = tmp_path / "large.jsonl"
    line = json.dumps({"trace_id": "t", "text": "x" * 400}).encode() + b"\n"
    with open(path, "wb") as f:
        for _ in range(40):
            f.write(line * (1_000_000 // len(line)))
    return path


# Enforced by the package's own pytest plugin (enabled in pyproject.toml): a peak budget far
# below the file's size, so reading it whole would fail.
@pytest.mark.limit_memory("16 MB")
def test_streaming_a_large_file_keeps_memory_far_below_its_size(large_jsonl):
    reader = StreamingJSONLReader(large_jsonl)
    assert sum(1 for _ in reader) == reader.stats.records > 90_000
    assert reader.stats.bytes_read == os.path.getsize(large_jsonl) > 39_000_000


def test_malformed_and_blank_lines_are_skipped_and_counted_with_line_numbers(tmp_path):
    path = tmp_path / "mixed.jsonl"
    write_lines(
        path,
        [
            b'{"a": 1}\n',  # 1
            b"\n",  # 2 blank
            b'  {"b": 2}  \r\n',  # 3 whitespace and CRLF: valid
            b"not json\n",  # 4
            b'{"c": "\xc3\xa9"}\n',  # 5 UTF-8
            b'{"d":\n',  # 6 a value spread over two lines is two malformed lines
            b"1}\n",  # 7
            b"1, 2\n",  # 8 two values on one line
            b"\xff\xfe\n",  # 9 invalid UTF-8
            b'{"e": 5} {"f": 6}\n',  # 10
            b"[1, 2]\n",  # 11 any JSON value is a record
        ],
    )
    for chunk_size in (5, 1 << 20):
        reader = StreamingJSONLReader(path, chunk_size=chunk_size, skip_malformed=True)
        assert list(reader) == [{"a": 1}, {"b": 2}, {"c": "é"}, [1, 2]]
        stats = reader.stats
        assert stats.malformed_lines == 6
        assert stats.malformed_line_numbers == [4, 6, 7, 8, 9, 10]
        assert stats.blank_lines == 1
        assert stats.lines_read == 11


def test_reported_malformed_line_numbers_are_bounded_and_the_count_exact(tmp_path):
    path = tmp_path / "bad.jsonl"
    write_lines(path, [b"{bad\n" if i % 2 else b"{}\n" for i in range(1000)])
    reader = StreamingJSONLReader(path, max_reported_malformed=10, skip_malformed=True)
    assert len(list(reader)) == 500
    assert reader.stats.malformed_lines == 500
    assert reader.stats.malformed_line_numbers == list(range(2, 21, 2))


def test_skip_malformed_false_raises_naming_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    write_lines(path, [b'{"ok": 1}\n', b'{"ok": 2}\n', b"{oops\n", b'{"ok": 3}\n'])
    reader = StreamingJSONLReader(path, skip_malformed=False)
    seen = []
    with pytest.raises(MalformedLineError) as raised:
        for record in reader:
            seen.append(record)
    assert seen == [{"ok": 1}, {"ok": 2}]
    assert raised.value.line_number == 3
    assert raised.value.line_offset == 20
    assert "line 3" in str(raised.value) and str(path) in str(raised.value)


def test_unterminated_last_line_returned_if_valid_else_reported_as_torn(tmp_path):
    path = tmp_path / "tail.jsonl"
    write_lines(path, [b'{"a": 1}\n', b'{"b": 2}'])
    assert list(StreamingJSONLReader(path)) == [{"a": 1}, {"b": 2}]
    strict = StreamingJSONLReader(path, parse_unterminated_tail=False)
    assert list(strict) == [{"a": 1}]
    assert (strict.stats.torn_tail_offset, strict.stats.torn_tail_bytes) == (9, 8)

    write_lines(path, [b'{"a": 1}\n', b'{"b": 2, "c'])  # a writer cut short
    reader = StreamingJSONLReader(path)
    assert list(reader) == [{"a": 1}]
    assert reader.stats.torn_tail_offset == 9
    assert reader.stats.malformed_lines == 0


def test_async_for_yields_the_same_records_and_stats(tmp_path):
    path = tmp_path / "records.jsonl"
    records = [{"i": i} for i in range(5000)]
    write_lines(path, [json.dumps(r).encode() + b"\n" for r in records] + [b"{torn"])
    reader = StreamingJSONLReader(path, chunk_size=4096)

    async def main() -> list:
        return [record async for record in reader]

    assert asyncio.run(main()) == records
    assert reader.stats.records == 5000
    assert reader.stats.torn_tail_offset == os.path.getsize(path) - 5


def test_breaking_out_early_closes_the_file(tmp_path):
    path = tmp_path / "records.jsonl"
    write_lines(path, [b'{"i": %d}\n' % i for i in range(10_000)])

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    for record in StreamingJSONLReader(path, chunk_size=1024):
        if record["i"] == 10:
            break
    assert open_fds() == before

    async def partial() -> None:
        async for record in StreamingJSONLReader(path, chunk_size=1024):
            if record["i"] == 10:
                break

    asyncio.run(partial())
    assert open_fds() == before


def test_bad_arguments_and_missing_file_raise_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"chunk_size=0"):
        StreamingJSONLReader(tmp_path / "x.jsonl", chunk_size=0)
    with pytest.raises(TypeError, match=r"file_path=42"):
        StreamingJSONLReader(42)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        list(StreamingJSONLReader(tmp_path / "missing.jsonl"))


# --- malformed lines raise by default; skipping is logged; BOM; line length -------------------


def test_a_malformed_line_raises_by_default_naming_path_line_and_start(tmp_path):
    path = tmp_path / "bad.jsonl"
    write_lines(path, [b'{"ok": 1}\n', b'{"ok": 2, "broken": tru\n', b'{"ok": 3}\n'])
    for chunk_size in (4, 1 << 20):
        with pytest.raises(MalformedLineError) as raised:
            list(StreamingJSONLReader(path, chunk_size=chunk_size))
        assert str(raised.value) == (
            f"{path}: line 2 (byte offset 10) is not valid JSON: '{{\"ok\": 2, \"broken\": tru'"
            " (pass skip_malformed=True to skip such lines)"
        )
        assert (raised.value.path, raised.value.line_number, raised.value.line_offset) == (str(path), 2, 10)


def test_skipping_logs_one_warning_per_pass_with_the_count_and_first_line_numbers(tmp_path, caplog):
    path = tmp_path / "bad.jsonl"
    write_lines(path, [b"{bad\n" if i % 3 == 0 else b"{}\n" for i in range(30)])
    reader = StreamingJSONLReader(path, skip_malformed=True)
    with caplog.at_level(logging.WARNING, logger="reer_otel_memory.trace_store.scan"):
        assert len(list(reader)) == 20
        assert len(list(reader)) == 20
    assert [r.getMessage() for r in caplog.records] == [f"{path}: skipped 10 malformed lines (lines 1, 4, 7, 10, 13, ...)"] * 2


def test_a_clean_file_logs_nothing(tmp_path, caplog):
    path = tmp_path / "good.jsonl"
    write_lines(path, [b"{}\n"] * 3)
    with caplog.at_level(logging.DEBUG, logger="reer_otel_memory.trace_store.scan"):
        assert len(list(StreamingJSONLReader(path, skip_malformed=True))) == 3
    assert caplog.records == []


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 1 << 20])
def test_a_leading_byte_order_mark_is_skipped(tmp_path, chunk_size):
    path = tmp_path / "bom.jsonl"
    write_lines(path, [b'\xef\xbb\xbf{"first": 1}\n', b'{"second": 2}\n'])
    reader = StreamingJSONLReader(path, chunk_size=chunk_size)
    assert list(reader) == [{"first": 1}, {"second": 2}]
    assert reader.stats.malformed_lines == 0


def test_a_byte_order_mark_later_in_the_file_is_malformed_and_named(tmp_path):
    path = tmp_path / "bom.jsonl"
    write_lines(path, [b"{}\n", b'\xef\xbb\xbf{"x": 1}\n'])
    with pytest.raises(MalformedLineError) as raised:
        list(StreamingJSONLReader(path))
    assert "line 2 (byte offset 3) is not valid JSON: '\\ufeff{\"x\": 1}'" in str(raised.value)


@pytest.mark.parametrize("chunk_size", [7, 64, 1 << 20])
def test_a_line_over_max_line_bytes_raises_without_reading_the_file_whole(tmp_path, chunk_size):
    path = tmp_path / "long.jsonl"
    write_lines(path, [b'{"a": 1}\n', b'{"long": "' + b"x" * 500 + b'"}\n', b'{"b": 2}\n'])
    with pytest.raises(MalformedLineError) as raised:
        list(StreamingJSONLReader(path, chunk_size=chunk_size, max_line_bytes=100))
    assert str(raised.value).startswith(f"{path}: line 2 (byte offset 9) is longer than max_line_bytes=100: '{{\"long\": \"xxx")


@pytest.mark.parametrize("chunk_size", [7, 64, 1 << 20])
def test_skipping_drops_an_over_long_line_and_reads_on(tmp_path, chunk_size):
    path = tmp_path / "long.jsonl"
    write_lines(path, [b'{"a": 1}\n', b'{"long": "' + b"x" * 500 + b'"}\n', b'{"b": 2}\n', b"x" * 300])
    reader = StreamingJSONLReader(path, chunk_size=chunk_size, max_line_bytes=100, skip_malformed=True)
    assert list(reader) == [{"a": 1}, {"b": 2}]
    assert reader.stats.malformed_line_numbers == [2, 4]
    assert reader.stats.lines_read == 3
    assert reader.stats.torn_tail_offset == path.stat().st_size - 300


def test_a_file_without_newlines_is_refused_at_the_limit(tmp_path):
    path = tmp_path / "one-line.jsonl"
    path.write_bytes(b"[" + b"1," * 5000)
    with pytest.raises(MalformedLineError, match="line 1 .* is longer than max_line_bytes=1000"):
        list(StreamingJSONLReader(path, chunk_size=256, max_line_bytes=1000))


def test_max_line_bytes_must_be_a_positive_integer(tmp_path):
    from reer_otel_memory import TraceStoreError

    with pytest.raises(TraceStoreError, match=r"max_line_bytes=0\): expected a positive number of bytes"):
        StreamingJSONLReader(tmp_path / "x.jsonl", max_line_bytes=0)


def test_async_iteration_raises_the_same_error_and_skips_with_the_same_warning(tmp_path, caplog):
    path = tmp_path / "bad.jsonl"
    write_lines(path, [b'{"ok": 1}\n', b"{oops\n", b'{"ok": 2}\n'])

    async def collect(reader: StreamingJSONLReader) -> list:
        return [record async for record in reader]

    with pytest.raises(MalformedLineError, match=r"line 2 \(byte offset 10\) is not valid JSON: '\{oops'"):
        asyncio.run(collect(StreamingJSONLReader(path)))
    with caplog.at_level(logging.WARNING, logger="reer_otel_memory.trace_store.scan"):
        assert asyncio.run(collect(StreamingJSONLReader(path, skip_malformed=True))) == [{"ok": 1}, {"ok": 2}]
    assert [r.getMessage() for r in caplog.records] == [f"{path}: skipped 1 malformed line (line 2)"]


def test_what_msgspec_refuses_reads_as_json_loads_gives_it(tmp_path):
    # NaN, Infinity, integers beyond 64 bits and lone surrogates: json.loads accepts them, msgspec does not.
    lines = [b'{"a": NaN}\n', b'{"a": -Infinity}\n', b'{"big": 123456789012345678901234567890}\n', b'{"s": "\\ud800"}\n', b"[1, 2]\n"]
    path = tmp_path / "stdlib.jsonl"
    write_lines(path, lines)
    records = list(StreamingJSONLReader(path))
    assert math.isnan(records[0]["a"]) and records[1]["a"] == -math.inf
    assert records[2]["big"] == 123456789012345678901234567890 and type(records[2]["big"]) is int
    assert records[3:] == [json.loads(line) for line in lines[3:]]


@pytest.mark.parametrize("chunk_size", [7, 1 << 20])
def test_invalid_utf8_is_malformed_at_its_line_and_byte_offset(tmp_path, chunk_size):
    path = tmp_path / "bad.jsonl"
    write_lines(path, [b'{"x": "caf\xc3\xa9"}\n', b'{"x": "\xff"}\n', b"{}\n"])
    with pytest.raises(MalformedLineError) as raised:
        list(StreamingJSONLReader(path, chunk_size=chunk_size))
    assert (raised.value.line_number, raised.value.line_offset) == (2, len('{"x": "café"}\n'.encode()))
    reader = StreamingJSONLReader(path, chunk_size=chunk_size, skip_malformed=True)
    assert list(reader) == [{"x": "café"}, {}]
    assert reader.stats.malformed_line_numbers == [2]
