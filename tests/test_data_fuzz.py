"""Malformed files never crash the validator; the reader's chunking and the chat fast path are exact."""

from __future__ import annotations

import gzip
import random

import orjson
import pytest

from graftlm.data import reader
from graftlm.data.checks import check_record, fast_chat_ok
from graftlm.data.validate import validate_file

GOOD = [
    {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                  {"role": "assistant", "content": "a", "weight": 1}]},
    {"conversations": [{"from": "human", "value": "h"}, {"from": "gpt", "value": "g"}]},
    {"prompt": "p", "completion": "c"},
    {"text": "t"},
]
JUNK_VALUES = [None, True, 0, 2, -1, 1.5, "", " ", "user", "assistant", "system", [], {}, [None], {"role": 1},
               "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace")]


def mutate(rng: random.Random, value, depth=0):
    """A random structural mutation of a JSON value: replace, drop, nest, or recurse."""
    if depth > 4 or rng.random() < 0.2:
        return rng.choice(JUNK_VALUES + [[value], {"x": value}])
    if isinstance(value, dict) and value:
        value = dict(value)
        key = rng.choice(list(value))
        op = rng.random()
        if op < 0.25:
            del value[key]
        elif op < 0.35:
            value[rng.choice(["role", "from", "weight", "messages", "text", "extra"])] = rng.choice(JUNK_VALUES)
        else:
            value[key] = mutate(rng, value[key], depth + 1)
        return value
    if isinstance(value, list) and value:
        value = list(value)
        i = rng.randrange(len(value))
        op = rng.random()
        if op < 0.2:
            del value[i]
        elif op < 0.4:
            value.insert(i, rng.choice(value))
        else:
            value[i] = mutate(rng, value[i], depth + 1)
        return value
    return rng.choice(JUNK_VALUES)


def corrupt_bytes(rng: random.Random, line: bytes) -> bytes:
    op = rng.randrange(6)
    if op == 0:
        return line[: rng.randrange(len(line))]  # truncated JSON
    if op == 1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))  # random bytes
    if op == 2:
        i = rng.randrange(len(line))
        return line[:i] + bytes([rng.randrange(256)]) + line[i + 1:]  # one flipped byte
    if op == 3:
        return b"\xef\xbb\xbf" + line
    if op == 4:
        return b"[" * 300 + b"]" * 300  # deep nesting
    return line.replace(b'"', b"'", 1)


def assert_well_formed_report(report: dict, lines: int | None = None):
    assert set(report) == {"valid", "format", "errors", "error_count", "stats", "findings", "finding_count",
                           "findings_by_kind"}
    assert report["error_count"] >= len(report["errors"])
    assert report["finding_count"] == sum(report["findings_by_kind"].values()) >= len(report["findings"])
    for f in report["findings"]:
        assert set(f) == {"line", "field", "kind", "message"}
    assert report["valid"] == (report["error_count"] == 0)
    for e in report["errors"]:
        assert set(e) == {"line", "field", "message"} and isinstance(e["message"], str) and e["message"]
    if lines is not None:
        assert report["stats"]["lines"] == lines
    orjson.dumps(report)


@pytest.mark.parametrize("seed", range(12))
def test_fuzzed_files_always_get_a_report(tmp_path, seed):
    rng = random.Random(seed)
    lines = []
    for _ in range(rng.randrange(1, 60)):
        line = orjson.dumps(mutate(rng, rng.choice(GOOD)) if rng.random() < 0.7 else rng.choice(GOOD))
        lines.append(corrupt_bytes(rng, line) if rng.random() < 0.3 else line)
    data = b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n"
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(data)
    report = validate_file(str(path), max_errors=10)
    assert_well_formed_report(report, lines=len(lines))
    if seed % 4 == 0:
        gz = tmp_path / "fuzz.jsonl.gz"
        gz.write_bytes(gzip.compress(data))
        assert validate_file(str(gz), max_errors=10) == report


@pytest.mark.parametrize("seed", range(6))
def test_random_bytes_files_always_get_a_report(tmp_path, seed):
    rng = random.Random(1000 + seed)
    path = tmp_path / "noise.jsonl"
    path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000))))
    assert_well_formed_report(validate_file(str(path)))
    path.write_bytes(gzip.compress(path.read_bytes())[: rng.randrange(5, 40)])  # a broken gzip stream
    assert_well_formed_report(validate_file(str(path)))


def test_fast_path_agrees_with_the_detailed_checks():
    rng = random.Random(0)
    agree_valid = 0
    for _ in range(3000):
        plain_chat = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                                   {"role": "assistant", "content": "a"}, {"role": "user", "content": "u"},
                                   {"role": "assistant", "content": "b"}]}
        record = mutate(rng, plain_chat) if rng.random() < 0.8 else plain_chat
        if not isinstance(record, dict) or "messages" not in record:
            continue
        valid = check_record(record, "chat") == []
        if fast_chat_ok(record):
            assert valid, record
        plain = isinstance(record["messages"], list) and all(isinstance(m, dict) and len(m) == 2
                                                              for m in record["messages"])
        if valid and plain:
            assert fast_chat_ok(record), record
            agree_valid += 1
    assert agree_valid > 20  # the property was exercised on valid records, not only invalid ones


def test_chunk_boundaries_and_long_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(reader, "CHUNK_BYTES", 7)
    lines = [b"a" * k for k in (0, 1, 6, 7, 8, 13, 14, 30, 2)]
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"\n".join(lines))  # no final newline
    assert [raw for _, raw in reader.iter_raw_lines(path)] == lines
    got = [(n, raw) for n, raw in reader.iter_raw_lines(path, max_line_bytes=10)]
    assert [n for n, _ in got] == list(range(1, 10))
    assert [raw for _, raw in got] == [raw if len(raw) <= 10 else None for raw in lines]


def test_an_over_long_line_is_an_error_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setattr(reader, "CHUNK_BYTES", 64)
    ok = orjson.dumps(GOOD[3])
    path = tmp_path / "long.jsonl"
    path.write_bytes(ok + b"\n" + orjson.dumps({"text": "x" * 500}) + b"\n" + ok + b"\n")
    _, obj, errors = reader.parse_line(2, None, max_line_bytes=100)
    assert obj is reader.NOT_PARSED and "longer than 100 bytes" in errors[0][1]
    assert [raw is None for _, raw in reader.iter_raw_lines(path, max_line_bytes=100)] == [False, True, False]
