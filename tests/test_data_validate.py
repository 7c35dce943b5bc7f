"""validate_file: format detection, every error kind at its exact line and field, stats."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import orjson
import pytest

from graftlm.data.validate import validate_file

SYS = {"role": "system", "content": "classify"}
U = {"role": "user", "content": "what is my balance"}
A = {"role": "assistant", "content": "balance"}
CHAT = {"messages": [SYS, U, A]}
SHAREGPT = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
PC = {"prompt": "2+2=", "completion": "4"}
TEXT = {"text": "some text"}


def write(tmp_path, *lines, name="d.jsonl") -> str:
    """Write lines (dicts/lists become JSON, bytes are written as they are) one per line."""
    path = tmp_path / name
    path.write_bytes(b"".join((x if isinstance(x, bytes) else orjson.dumps(x)) + b"\n" for x in lines))
    return str(path)


def errors_of(report) -> list[tuple]:
    return [(e["line"], e["field"], e["message"]) for e in report["errors"]]


@pytest.mark.parametrize("record,fmt", [(CHAT, "chat"), (SHAREGPT, "sharegpt"), (PC, "prompt_completion"),
                                        (TEXT, "text")])
def test_each_format_is_detected_and_valid(tmp_path, record, fmt):
    report = validate_file(write(tmp_path, record, record))
    assert report["format"] == fmt
    assert report["valid"] and report["errors"] == [] and report["error_count"] == 0
    assert report["stats"]["examples"] == 2 and report["stats"]["duplicates"] == 1


def test_majority_wins_and_minority_lines_are_mixed_format_errors(tmp_path):
    report = validate_file(write(tmp_path, SHAREGPT, CHAT, CHAT))
    assert report["format"] == "chat"
    assert errors_of(report) == [(1, "conversations", "mixed formats: this line is sharegpt but the file is chat")]


def test_tie_goes_to_the_first_valid_line_and_explicit_format_overrides(tmp_path):
    path = write(tmp_path, b"not json", TEXT, CHAT)
    assert validate_file(path)["format"] == "text"
    forced = validate_file(path, fmt="chat")
    assert forced["format"] == "chat"
    assert [(e["line"], e["field"]) for e in forced["errors"]] == [(1, None), (2, "text")]


def test_unknown_explicit_format_is_a_user_error(tmp_path):
    from graftlm.errors import GraftError
    with pytest.raises(GraftError, match="unknown dataset format"):
        validate_file(write(tmp_path, CHAT), fmt="alpaca")


CASES = [  # (line written at line 2, expected (field, message fragment))
    (b'{"messages": [', (None, "invalid JSON")),
    ([CHAT], (None, "must be a JSON object, got array")),
    ({"foo": 1}, (None, "no known dataset format")),
    ({"messages": "hi"}, ("messages", "must be an array")),
    ({"messages": []}, ("messages", "is empty")),
    ({"messages": [U, "x"]}, ("messages[1]", "must be an object")),
    ({"messages": [U, {"role": "assistant"}]}, ("messages[1].content", "is missing")),
    ({"messages": [{"content": "x"}, A]}, ("messages[0].role", "is missing")),
    ({"messages": [U, {"role": "assistant", "content": 5}]}, ("messages[1].content", "must be a string, got number")),
    ({"messages": [U, {"role": "assistant", "content": " \n"}]}, ("messages[1].content", "is empty")),
    ({"messages": [U, {"role": "bot", "content": "x"}]}, ("messages[1].role", "must be one of assistant, system, user")),
    ({"messages": [U, A, SYS, U, A]}, ("messages[2].role", "system message is only allowed as the first")),
    ({"messages": [U, A, A]}, ("messages[2].role", "two assistant messages in a row")),
    ({"messages": [SYS, U, U, A]}, ("messages[2].role", "two user messages in a row")),
    ({"messages": [A, U, A]}, ("messages[0].role", "must start with a user message")),
    ({"messages": [SYS, U]}, ("messages", "has no assistant message")),
    ({"messages": [U, A, U]}, ("messages[2].role", "ends with a user message")),
    ({"messages": [U, dict(A, weight=2)]}, ("messages[1].weight", "must be 0 or 1, got 2")),
    ({"messages": [U, dict(A, weight=True)]}, ("messages[1].weight", "must be 0 or 1, got True")),
    ({"messages": [dict(U, weight=1), A]}, ("messages[0].weight", "only allowed on assistant messages")),
    ({"messages": [U, dict(A, weight=0)]}, ("messages", "every assistant message has weight 0")),
    ({"messages": [U, dict(A, tool_calls=[])]}, ("messages[1].tool_calls", "must be a non-empty array of calls")),
    (SHAREGPT, ("conversations", "mixed formats")),
    (b"", (None, "blank line")),
    (b"   \t", (None, "blank line")),
    (b'{"text": "caf\xe9"}', (None, "not valid UTF-8: byte 0xe9 at column 14")),
]


@pytest.mark.parametrize("line,expected", CASES, ids=[c[1][1][:30] for c in CASES])
def test_each_error_kind_names_line_field_and_reason(tmp_path, line, expected):
    report = validate_file(write(tmp_path, CHAT, line, CHAT))
    assert report["valid"] is False and report["format"] == "chat"
    assert report["error_count"] == 1, report["errors"]
    (error,) = report["errors"]
    assert (error["line"], error["field"]) == (2, expected[0])
    assert expected[1] in error["message"]
    assert report["stats"]["lines"] == 3 and report["stats"]["examples"] == 2
    assert report["stats"]["invalid_lines"] == 1


@pytest.mark.parametrize("record,expected", [
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "x"}]},
     ("conversations[1].from", "must be one of")),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt"}]}, ("conversations[1].value", "is missing")),
    ({"conversations": [{"from": "gpt", "value": "hi"}, {"from": "gpt", "value": "x"}]},
     ("conversations[0].from", "must start with a user message")),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]},
     ("conversations[1].from", "two user messages in a row")),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]},
     ("conversations[2].from", "ends with a user message")),
])
def test_sharegpt_errors(tmp_path, record, expected):
    report = validate_file(write(tmp_path, SHAREGPT, record))
    assert [(e["line"], e["field"]) for e in report["errors"]][0] == (2, expected[0])
    assert expected[1] in report["errors"][0]["message"]


def test_sharegpt_accepts_the_user_and_assistant_roles_the_readme_documents(tmp_path):
    record = {"conversations": [{"from": "system", "value": "be brief"}, {"from": "user", "value": "hi"},
                                {"from": "assistant", "value": "hello"}]}
    report = validate_file(write(tmp_path, record))
    assert report["valid"] and report["format"] == "sharegpt", report
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    sharegpt_row = next(line for line in readme.splitlines() if line.startswith("| `sharegpt` |"))
    assert "`user`" in sharegpt_row and "`assistant`" in sharegpt_row


def test_prompt_completion_and_text_errors(tmp_path):
    report = validate_file(write(tmp_path, PC, {"prompt": "x"}, {"prompt": "x", "completion": ""}, {"prompt": 1, "completion": "y"}))
    assert errors_of(report) == [(2, "completion", "is missing"), (3, "completion", "is empty"),
                                 (4, "prompt", "must be a string, got number")]
    report = validate_file(write(tmp_path, TEXT, {"text": None}))
    assert errors_of(report) == [(2, "text", "must be a string, got null")]


def test_a_misnamed_completion_key_is_named(tmp_path):
    report = validate_file(write(tmp_path, PC, {"prompt": "x", "response": "y"}))
    [(line, field, message)] = errors_of(report)
    assert (line, field) == (2, "completion") and "'response'" in message and "is missing" in message


def test_bom_is_reported_once_and_the_line_still_counts(tmp_path):
    report = validate_file(write(tmp_path, b"\xef\xbb\xbf" + orjson.dumps(CHAT), CHAT))
    assert [(e["line"], e["field"]) for e in report["errors"]] == [(1, None)]
    assert "byte order mark" in report["errors"][0]["message"]


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    report = validate_file(str(path))
    assert report["valid"] is False and report["format"] is None
    assert errors_of(report) == [(None, None, "the file is empty")]


def test_several_errors_on_one_line_are_all_listed(tmp_path):
    report = validate_file(write(tmp_path, {"messages": [dict(U, content=""), dict(A, weight=5), SYS]}))
    assert [e["field"] for e in report["errors"]] == ["messages[0].content", "messages[1].weight", "messages[2].role"]


def test_max_errors_caps_the_list_but_counts_all(tmp_path):
    report = validate_file(write(tmp_path, CHAT, *([b"{bad"] * 30)), max_errors=5)
    assert len(report["errors"]) == 5 and report["error_count"] == 30
    assert [e["line"] for e in report["errors"]] == [2, 3, 4, 5, 6]


def test_crlf_and_missing_final_newline_are_fine(tmp_path):
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(orjson.dumps(CHAT) + b"\r\n" + orjson.dumps(PC | {"messages": [U, A]}))
    report = validate_file(str(path))
    assert report["valid"], report["errors"]
    assert report["stats"]["lines"] == 2


def test_duplicates_are_byte_identical_lines(tmp_path):
    spaced = json.dumps(CHAT, separators=(" , ", " : ")).encode()  # same JSON, other bytes
    report = validate_file(write(tmp_path, CHAT, spaced, CHAT, b"  " + orjson.dumps(CHAT) + b"\r", {"messages": [U, A]}))
    assert report["valid"], report["errors"]
    assert report["stats"]["duplicates"] == 2  # lines 3 and 4; surrounding whitespace does not count


def test_gzip_gives_the_same_report(tmp_path):
    plain = write(tmp_path, CHAT, b"{bad", {"messages": [U, A, A]})
    gz = tmp_path / "d.jsonl.gz"
    gz.write_bytes(gzip.compress(open(plain, "rb").read()))
    assert validate_file(str(gz)) == validate_file(plain)


def test_truncated_gzip_returns_a_report(tmp_path):
    data = gzip.compress(b"".join(orjson.dumps(dict(CHAT, id=i)) + b"\n" for i in range(5000)))
    gz = tmp_path / "cut.jsonl.gz"
    gz.write_bytes(data[: len(data) // 2])
    report = validate_file(str(gz))
    assert report["valid"] is False
    assert "cannot read past this point" in report["errors"][-1]["message"]
    assert report["errors"][-1]["line"] == report["stats"]["lines"]


def test_missing_file_is_not_found(tmp_path):
    from graftlm.errors import NotFound
    with pytest.raises(NotFound):
        validate_file(str(tmp_path / "nope.jsonl"))


def test_report_is_json_serializable(tmp_path):
    report = validate_file(write(tmp_path, CHAT, b"{bad"))
    assert json.loads(json.dumps(report)) == report
