"""Personal data in datasets: the detectors (graftlm.data.pii), validation's findings, and the data policies
(warn / redact / reject) of an upload, through the service and the API."""

from __future__ import annotations

import gzip
import io
import json
from collections import Counter

import pytest

from graftlm.data import pii
from graftlm.data.validate import validate_file

# one planted value per kind; each is a real-format value that passes its check (Luhn, mod 97, SSN rules)
PLANTED = {
    "email": "jane.doe+work@example.co.uk",
    "phone": "+1 650-253-0000",
    "payment_card": "4111 1111 1111 1111",
    "iban": "DE89 3704 0044 0532 0130 00",
    "us_ssn": "536-22-1234",
    "ip_address": "192.168.10.24",
    "secret": "sk-proj-Q7f3kLm9Xz2Rb8Vt4Np6Hw1Jc5Ys0Ud",
}
MORE_SECRETS = ["ghp_" + "Ab3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6", "AKIAIOSFODNN7EXAMPLE",
                "xoxb-2048-4096-Zq8Xc7Vb6Nm5Lk4Jh3Gf", "token Zx9Qm2LpR7vT4nW8kY3sB6dF1hJ5gC0a",
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw\n-----END RSA PRIVATE KEY-----",
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"]
MORE = {"phone": ["(415) 555-2671", "+44 20 7946 0958", "+49 30 901820", "call me on 2025550123"],
        "payment_card": ["378282246310005", "5555-5555-5555-4444", "6011111111111117"],
        "iban": ["GB82WEST12345698765432", "NL91ABNA0417164300", "FR14 2004 1010 0505 0001 3M02 606"],
        "ip_address": ["10.0.0.1", "2001:db8::8a2e:370:7334", "fe80::1ff:fe23:4567:890a"],
        "email": ["a.b@sub.example.org", "x_y@mail.example.io"], "us_ssn": ["536 22 1234"],
        "secret": MORE_SECRETS}
NOT_PERSONAL = [
    "the meeting is on 2024-01-15 at 12:30:45", "version 1.2.3.4 is out", "upgrade to v10.0.0.1", "pi is 3.14159265358979",
    "total 1,234,567.89 USD", "ISBN 978-3-16-148410-0", "torch 2.14.1 with CUDA 12.4", "order 2025550123 shipped",
    "ticket 1234567890123456", "call 555-1234", "ids 1 2 3 4 5 6 7 8 9", "a::b std::vector<int> c::d",
    "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "uuid 123e4567-e89b-12d3-a456-426614174000", "ThisIsAVeryLongCamelCaseIdentifierName",
    "room 101, floor 3, 20 people", "the year 1999 and 2000-2010", "coordinates 48.8566, 2.3522",
    "SSN-like but invalid: 000-12-3456 and 666-12-3456", "card-like without Luhn 4111 1111 1111 1112",
    "IBAN-like with a bad check DE00 3704 0044 0532 0130 00", "512 MB of memory, 16 GB disk, 4 cores at 2.4 GHz",
    "user@localhost is not an address", "https://example.com/docs/getting-started/installation-guide",
]


def kinds(text: str) -> list[str]:
    return [f.kind for f in pii.find(text)]


@pytest.mark.parametrize("kind", pii.KINDS)
def test_each_kind_is_found_with_its_span(kind):
    value = PLANTED[kind]
    text = f"Hello, here it is: {value}. Thanks!"
    found = pii.find(text)
    assert [f.kind for f in found] == [kind]
    assert text[found[0].start:found[0].end] == value


@pytest.mark.parametrize("kind,value", [(k, v) for k, vs in MORE.items() for v in vs])
def test_more_forms_of_each_kind(kind, value):
    assert kinds(f"see: {value} ok") == [kind]


@pytest.mark.parametrize("text", NOT_PERSONAL)
def test_ordinary_numbers_dates_and_versions_are_not_findings(text):
    assert kinds(text) == []


def test_overlaps_go_to_the_more_specific_kind_and_many_findings_in_one_string():
    text = (f"mail {PLANTED['email']} or call {PLANTED['phone']}, card {PLANTED['payment_card']}, "
            f"from {PLANTED['ip_address']}")
    assert kinds(text) == ["email", "phone", "payment_card", "ip_address"]
    assert kinds("write to 4155552671@example.com") == ["email"]  # its digits are not a phone number


def test_redact_replaces_each_finding_with_its_placeholder():
    text = f"mail {PLANTED['email']} key {PLANTED['secret']} ssn {PLANTED['us_ssn']}."
    assert pii.redact(text) == "mail [EMAIL] key [SECRET] ssn [SSN]."
    assert pii.redact("nothing here 2024-01-15") == "nothing here 2024-01-15"


def test_gates_pass_every_planted_value_and_skip_plain_text():
    for values in [[v] for v in PLANTED.values()] + list(MORE.values()):
        for v in values:
            assert pii.gates(json.dumps({"text": v}).encode()), v
    assert pii.gates(b'{"messages":[{"role":"user","content":"what is my balance (ticket 4521)"}]}') == 0
    # a JSON escape could hide the '@' from the byte gates: such lines open every gate
    assert pii.find(json.loads('"jane\\u0040example.com"')) and pii.gates(b'"jane\\u0040example.com"')


# --- the corpus: each kind planted in each format, every finding reported with its line and field ----------

def corpus() -> tuple[dict[str, list[str]], dict[str, set]]:
    """Per format: JSONL lines with one planted value per line (kinds cycling), and the expected findings."""
    lines: dict[str, list[str]] = {}
    expected: dict[str, set] = {}
    for fmt in ("chat", "prompt_completion", "sharegpt", "text", "preference"):
        out, want = [], set()
        for i, kind in enumerate(pii.KINDS * 2):
            value = PLANTED[kind]
            clean = f"an ordinary line {i} about version 2.{i}.1 on 2024-03-{10 + i}"
            in_answer = i >= len(pii.KINDS)  # first round in the user's text, second in the answer
            q, a = (clean, f"sure: {value}") if in_answer else (f"my data: {value}", clean)
            if fmt == "chat":
                row, field = {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}, \
                    f"messages[{int(in_answer)}].content"
            elif fmt == "prompt_completion":
                row, field = {"prompt": q, "completion": a}, "completion" if in_answer else "prompt"
            elif fmt == "sharegpt":
                row, field = {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}, \
                    f"conversations[{int(in_answer)}].value"
            elif fmt == "text":
                row, field = {"text": f"{q} {a}"}, "text"
            else:
                row = {"input": {"messages": [{"role": "user", "content": q}]},
                       "preferred_output": [{"role": "assistant", "content": a}],
                       "non_preferred_output": [{"role": "assistant", "content": "no idea"}]}
                field = "preferred_output[0].content" if in_answer else "input.messages[0].content"
            out.append(json.dumps(row))
            out.append(json.dumps(clean_row(fmt, i)))  # a clean line between planted ones
            want.add((2 * i + 1, field, kind))
        lines[fmt], expected[fmt] = out, want
    return lines, expected


def clean_row(fmt: str, i: int) -> dict:
    q, a = f"what is 12 * {i}?", f"it is {12 * i}, see section 3.{i} of the 2023 report"
    return {"chat": {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]},
            "prompt_completion": {"prompt": q, "completion": a},
            "sharegpt": {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]},
            "text": {"text": f"{q} {a}"},
            "preference": {"input": {"messages": [{"role": "user", "content": q}]},
                           "preferred_output": [{"role": "assistant", "content": a}],
                           "non_preferred_output": [{"role": "assistant", "content": "no"}]}}[fmt]


CORPUS, EXPECTED = corpus()


@pytest.mark.parametrize("fmt", list(CORPUS))
def test_validation_reports_every_planted_finding_with_line_field_and_kind(fmt, tmp_path):
    path = tmp_path / f"{fmt}.jsonl"
    path.write_text("\n".join(CORPUS[fmt]) + "\n")
    report = validate_file(path)
    assert report["valid"] and report["format"] == fmt, report["errors"]  # findings are warnings, not errors
    got = {(f["line"], f["field"], f["kind"]) for f in report["findings"]}
    assert got == EXPECTED[fmt]
    assert report["finding_count"] == len(EXPECTED[fmt])
    assert report["findings_by_kind"] == {k: 2 for k in sorted(pii.KINDS)}
    shown = json.dumps(report)
    for value in PLANTED.values():
        assert value not in shown  # the report never echoes a value


def test_an_invalid_json_line_is_scanned_as_text(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "mail jane@example.com", oops\n')
    report = validate_file(path)
    assert not report["valid"]
    assert [(f["line"], f["field"], f["kind"]) for f in report["findings"]] == [(2, None, "email")]


def test_tool_calls_are_scanned_too(tmp_path):
    row = {"messages": [{"role": "user", "content": "mail Bob"},
                        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "send", "arguments": json.dumps({"to": PLANTED["email"]})}}]},
                        {"role": "tool", "tool_call_id": "c1", "content": "sent"},
                        {"role": "assistant", "content": "done"}]}
    path = tmp_path / "tools.jsonl"
    path.write_text(json.dumps(row) + "\n")
    report = validate_file(path)
    assert [(f["field"], f["kind"]) for f in report["findings"]] == \
        [("messages[1].tool_calls[0].function.arguments", "email")]


def test_redacted_lines_keep_clean_lines_byte_for_byte(tmp_path):
    path = tmp_path / "c.jsonl"
    raw = "\n".join(CORPUS["chat"]) + "\n"
    path.write_text(raw)
    counts: Counter = Counter()
    out = b"".join(pii.redacted_lines(path, counts)).decode()
    assert counts == Counter({k: 2 for k in pii.KINDS})
    assert out.splitlines()[1::2] == raw.splitlines()[1::2]
    for kind, value in PLANTED.items():
        assert value not in out
    assert out.count(pii.PLACEHOLDERS["email"]) == 2


# --- the data policy of an upload ------------------------------------------------------------------------------

def all_formats_bytes() -> bytes:
    return ("\n".join(CORPUS["chat"]) + "\n").encode()


def stored_bytes(file_id: str) -> bytes:
    from graftlm.files import service

    return service.file_path(file_id).read_bytes()


def blob_files() -> list:
    from graftlm.config import get_settings

    root = get_settings().blobs_dir
    return sorted(p for p in root.glob("*/*") if p.parent.name != "tmp")


def test_effective_data_policy_is_the_stricter_one():
    from graftlm.errors import GraftError
    from graftlm.files.service import effective_data_policy

    assert effective_data_policy() == "warn"
    assert effective_data_policy("redact") == "redact"
    assert effective_data_policy("warn", project_policy="reject") == "reject"  # a request cannot loosen it
    assert effective_data_policy("reject", project_policy="redact") == "reject"
    with pytest.raises(GraftError) as e:
        effective_data_policy("strict")
    assert e.value.param == "data_policy"


@pytest.mark.parametrize("fmt", list(CORPUS))
def test_redact_stores_no_finding_and_says_how_many_per_kind(fmt):
    from graftlm.files import service

    data = ("\n".join(CORPUS[fmt]) + "\n").encode()
    record = service.create_file(io.BytesIO(data), f"{fmt}.jsonl", "fine-tune", data_policy="redact")
    assert record["data_policy"] == "redact"
    assert record["sensitive_data"]["redacted_by_kind"] == {k: 2 for k in sorted(pii.KINDS)}
    stored = stored_bytes(record["id"])
    assert record["bytes"] == len(stored)
    for value in PLANTED.values():
        assert value.encode() not in stored
    for placeholder in pii.PLACEHOLDERS.values():
        assert stored.count(placeholder.encode()) == 2
    assert blob_files() == [service.file_path(record["id"])]  # the original's bytes were never stored
    report = service.validate_stored_file(record["id"])
    assert report["valid"] and report["finding_count"] == 0, report
    assert len(stored.splitlines()) == len(CORPUS[fmt])


def test_redact_keeps_a_gzip_upload_gzip():
    from graftlm.files import service

    data = gzip.compress(all_formats_bytes())
    record = service.create_file(io.BytesIO(data), "c.jsonl.gz", "fine-tune", data_policy="redact")
    stored = gzip.decompress(stored_bytes(record["id"]))
    assert b"[EMAIL]" in stored and PLANTED["email"].encode() not in stored


def test_reject_stores_nothing_and_names_the_findings():
    from graftlm.errors import GraftError
    from graftlm.files import service
    from graftlm.store.db import session
    from graftlm.store.models import File

    with pytest.raises(GraftError) as e:
        service.create_file(io.BytesIO(all_formats_bytes()), "c.jsonl", "fine-tune", data_policy="reject")
    err = e.value
    assert err.status_code == 422 and err.param == "file" and err.code == "sensitive_data_rejected"
    assert "line 1: messages[0].content: email" in err.message and "2 payment_card" in err.message
    for value in PLANTED.values():
        assert value not in err.message
    with session() as s:
        assert s.query(File).count() == 0
    assert blob_files() == []
    from graftlm.config import get_settings
    assert list((get_settings().blobs_dir / "tmp").iterdir()) == []
    clean = service.create_file(io.BytesIO(b'{"text": "nothing personal here"}\n'), "ok.jsonl", "fine-tune",
                                data_policy="reject")
    assert clean["data_policy"] == "reject" and clean["sensitive_data"]["redacted_by_kind"] == {}


def test_warn_stores_the_bytes_and_validation_warns():
    from graftlm.files import service

    record = service.create_file(io.BytesIO(all_formats_bytes()), "c.jsonl", "fine-tune")
    assert record["data_policy"] == "warn" and stored_bytes(record["id"]) == all_formats_bytes()
    report = service.validate_stored_file(record["id"])
    assert report["valid"] and report["finding_count"] == 14
    f = service.get_file(record["id"])
    assert f["status"] == "processed"
    assert f["status_details"].startswith("warning: personal data found (2 email, 2 iban")
    assert "line 1: messages[0].content: email" in f["status_details"]
    assert f["sensitive_data"]["findings_by_kind"]["secret"] == 2


def test_data_policy_is_for_fine_tune_files_only():
    from graftlm.errors import GraftError
    from graftlm.files import service

    with pytest.raises(GraftError) as e:
        service.create_file(io.BytesIO(b"x"), "doc.txt", "rag", data_policy="redact")
    assert e.value.param == "data_policy"
    assert service.create_file(io.BytesIO(b"x"), "doc.txt", "rag")["sensitive_data"] is None


def test_api_upload_takes_data_policy_and_refuses_with_422(http):
    r = http.post("/v1/files", files={"file": ("c.jsonl", all_formats_bytes())},
                  data={"purpose": "fine-tune", "data_policy": "reject"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "sensitive_data_rejected" and "line 3: messages[0].content: phone" in err["message"]
    assert http.get("/v1/files").json()["data"] == []
    r = http.post("/v1/files", files={"file": ("c.jsonl", all_formats_bytes())},
                  data={"purpose": "fine-tune", "data_policy": "redact"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["sensitive_data"]["redacted_by_kind"]["email"] == 2
    content = http.get(f"/v1/files/{body['id']}/content").content
    assert b"[EMAIL]" in content and PLANTED["email"].encode() not in content
    r = http.post("/v1/files", files={"file": ("c.jsonl", all_formats_bytes())},
                  data={"purpose": "fine-tune", "data_policy": "strict"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "data_policy"
    r = http.post("/v1/files", files={"file": ("c.jsonl", all_formats_bytes())},
                  data={"purpose": "fine-tune", "data_polcy": "reject"})  # a typo is not a silent warn
    assert r.status_code == 400 and r.json()["error"]["param"] == "data_polcy"


def test_openai_sdk_sends_data_policy_as_extra_body(client):
    f = client.files.create(file=("c.jsonl", io.BytesIO(all_formats_bytes())), purpose="fine-tune",
                            extra_body={"data_policy": "redact"})
    assert f.model_extra["sensitive_data"]["redacted_by_kind"]["us_ssn"] == 2


def test_the_projects_policy_applies_and_a_request_cannot_loosen_it():
    from graftlm.errors import GraftError
    from graftlm.files import service
    from graftlm.keys import projects
    from graftlm.store import scope
    from graftlm.store.db import session
    from graftlm.store.models import File

    projects.create_project("team-a", data_policy="reject")
    with scope.acting_in("team-a"):
        with pytest.raises(GraftError) as e:
            service.create_file(io.BytesIO(all_formats_bytes()), "c.jsonl", "fine-tune", data_policy="warn")
        assert e.value.status_code == 422
    with session() as s:
        assert s.query(File).count() == 0
    assert blob_files() == []


def test_cli_validate_lists_findings_without_values_and_reject_fails(tmp_path):
    from typer.testing import CliRunner

    from graftlm.cli import app

    path = tmp_path / "c.jsonl"
    path.write_bytes(all_formats_bytes())
    runner = CliRunner()
    result = runner.invoke(app, ["data", "validate", str(path)])
    assert result.exit_code == 0, result.output  # warn: valid, with warnings
    assert "14 personal-data findings" in result.output and "payment_card" in result.output
    for value in PLANTED.values():
        assert value not in result.output
    assert runner.invoke(app, ["data", "validate", str(path), "--data-policy", "reject"]).exit_code == 1
    clean = tmp_path / "ok.jsonl"
    clean.write_text(json.dumps(clean_row("chat", 1)) + "\n")
    assert runner.invoke(app, ["data", "validate", str(clean), "--data-policy", "reject"]).exit_code == 0


def test_batch_flags_agree_with_per_line_gates():
    lines = [json.dumps({"text": v}).encode() for vs in MORE.values() for v in vs]
    lines += [json.dumps({"text": t}).encode() for t in NOT_PERSONAL] + [None, b"", b'"jane\\u0040example.com"']
    flagged = pii.flag_lines(lines)
    assert flagged == {i for i, raw in enumerate(lines) if raw and pii.gates(raw)}
    assert all(i in flagged for i in range(sum(len(vs) for vs in MORE.values())))
