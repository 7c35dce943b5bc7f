"""Validate a JSONL dataset in one streaming pass: every problem with line, field and reason, plus stats.

Memory is constant except for duplicate detection, which keeps one 8-byte hash per example
(8 MB per million examples). Token statistics keep a histogram of lengths, not the lengths.
"""

from __future__ import annotations

from array import array
from collections import Counter
from itertools import islice
from pathlib import Path
from typing import Iterator

import numpy as np
import orjson

from graftlm.data import pii
from graftlm.data.checks import check_record, fast_chat_ok
from graftlm.data.formats import FORMATS, detect_format, normalize
from graftlm.data.reader import (NO_ERRORS, NOT_PARSED, READ_ERRORS, ParsedLine, iter_line_batches, iter_parsed,
                                 parse_line)
from graftlm.errors import GraftError

DETECT_WINDOW = 1000  # lines buffered to pick the file's format by majority
TRUNCATION = "right"  # what training does to an example longer than the context length


def detect_file_format(lines: list[ParsedLine]) -> str | None:
    """The majority format among parsed lines; a tie goes to the format seen first."""
    counts: Counter = Counter()
    first: dict = {}
    for i, (_, obj, _) in enumerate(lines):
        f = detect_format(obj) if obj is not NOT_PARSED else None
        if f is not None:
            counts[f] += 1
            first.setdefault(f, i)
    if not counts:
        return None
    return max(counts, key=lambda f: (counts[f], -first[f]))


def scan(path: str | Path, fmt: str | None = None, flagged: set | None = None
         ) -> Iterator[tuple[int, bytes | None, object, list, str | None]]:
    """``(line, raw_bytes, value, errors, file_format)`` per line; the format is auto-detected unless given.
    With a ``flagged`` set, each batch of lines first puts there the line numbers that may hold personal data
    (graftlm.data.pii.flag_lines).

    Detection reads the first DETECT_WINDOW lines (majority wins); if none of them has a known
    format, the first later line that has one sets it. The loop is flat on purpose: it is the
    validator's hot path.
    """
    if fmt is not None and fmt not in FORMATS:
        raise GraftError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}", param="format")
    if fmt is None:
        fmt = detect_file_format(list(islice(iter_parsed(path), DETECT_WINDOW)))
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    n = 0
    try:
        for batch in iter_line_batches(path):
            if flagged is not None:
                flagged.clear()
                flagged.update(n + 1 + i for i in pii.flag_lines(batch))
            for raw in batch:
                n += 1
                try:
                    obj = loads(raw)
                except (decode_error, TypeError):
                    _, obj, errors = parse_line(n, raw)
                    if obj is NOT_PARSED:
                        yield n, raw, obj, errors, fmt
                        continue
                else:
                    if fmt == "chat" and type(obj) is dict and fast_chat_ok(obj):
                        yield n, raw, obj, NO_ERRORS, fmt
                        continue
                    errors = NO_ERRORS
                if fmt is None:
                    fmt = detect_format(obj)
                yield n, raw, obj, [*errors, *check_record(obj, fmt)], fmt
    except READ_ERRORS as e:
        yield n + 1, None, NOT_PARSED, [(None, f"cannot read past this point: {e}")], fmt


def _token_stats(hist: Counter, trainable: int, over: int, no_target: int, context_length: int | None,
                 epochs: int) -> dict:
    n = sum(hist.values())
    if n == 0:
        return {"examples": 0, "min": None, "mean": None, "p95": None, "max": None, "total": 0,
                "total_after_truncation": 0, "trainable_total": 0, "over_context_length": 0,
                "context_length": context_length, "truncation": TRUNCATION,
                "no_trainable_tokens_after_truncation": 0, "estimated_training_tokens": 0}
    lengths = sorted(hist)
    total = sum(k * c for k, c in hist.items())
    rank, seen, p95 = -(-95 * n // 100), 0, lengths[-1]  # nearest-rank 95th percentile
    for k in lengths:
        seen += hist[k]
        if seen >= rank:
            p95 = k
            break
    kept = total if context_length is None else sum(min(k, context_length) * c for k, c in hist.items())
    return {"examples": n, "min": lengths[0], "mean": round(total / n, 2), "p95": p95, "max": lengths[-1],
            "total": total, "total_after_truncation": kept, "trainable_total": trainable,
            "over_context_length": over, "context_length": context_length, "truncation": TRUNCATION,
            "no_trainable_tokens_after_truncation": no_target, "estimated_training_tokens": kept * epochs}


def _duplicates(hashes: array) -> int:
    if len(hashes) < 2:
        return 0
    h = np.frombuffer(hashes, dtype=np.int64)
    h.sort()  # in place: no second copy of the hashes
    return int(np.count_nonzero(h[1:] == h[:-1]))


def scan_line(obj, raw: bytes | None) -> list[tuple[str | None, str]]:
    """``[(field, kind)]`` of the personal data in one line; a line that is not JSON is scanned as text. The
    line is one that graftlm.data.pii.flag_lines flagged."""
    if raw is None:
        return []
    return pii.scan_value(obj) if obj is not NOT_PARSED else pii.scan_raw_line(raw)


def finding_entry(line: int, field: str | None, kind: str) -> dict:
    """A finding as the report lists it: where and what kind, never the value."""
    return {"line": line, "field": field, "kind": kind,
            "message": f"looks like {pii.DESCRIPTIONS[kind]} (value not shown)"}


def validate_file(path: str | Path, fmt: str | None = None, tokenizer=None, context_length: int | None = None,
                  epochs: int = 3, max_errors: int = 100, scan_personal_data: bool = True,
                  max_findings: int = 100) -> dict:
    """Validate a .jsonl / .jsonl.gz dataset in one streaming pass. Never raises on bad content.

    Returns ``{"valid", "format", "errors", "error_count", "stats", "findings", "finding_count",
    "findings_by_kind"}``:
      errors       the first max_errors of ``{"line": n (from 1; None for the whole file),
                   "field": "messages[2].role" (None for the line), "message": reason}``
      error_count  all errors, listed or not; ``valid`` is ``error_count == 0``
      findings     the first max_findings personal-data findings (graftlm.data.pii), ``{"line", "field",
                   "kind", "message"}`` without the value; warnings, they do not make the file invalid
      finding_count, findings_by_kind   all findings, and their number per kind
      stats        lines, examples (valid lines), invalid_lines, duplicates (examples whose line is
                   byte-identical to an earlier one, ignoring surrounding whitespace), epochs, tokens, and
                   estimated_training_tokens; with a tokenizer, ``tokens`` holds min / mean / p95 /
                   max / total per example under the chat template, trainable_total (loss tokens),
                   over_context_length, truncation ("right"), total_after_truncation and
                   estimated_training_tokens = total_after_truncation × epochs; without one, None.
    Raises GraftError for an unknown fmt and NotFound for a missing file.
    """
    from graftlm.data.render import IGNORE_INDEX, encode_example

    file_format = fmt
    errors: list = []
    error_count = lines = examples = 0
    bad_lines = 0
    hashes = array("q")
    hist: Counter = Counter()
    trainable = over = no_target = 0
    add_hash = hashes.append
    findings: list = []
    by_kind: Counter = Counter()
    flagged: set | None = set() if scan_personal_data else None
    for n, raw, obj, errs, file_format in scan(path, fmt, flagged):
        lines += 1
        if flagged and n in flagged:
            for field, kind in scan_line(obj, raw):
                by_kind[kind] += 1
                if len(findings) < max_findings:
                    findings.append(finding_entry(n, field, kind))
        if errs:
            bad_lines += 1
            error_count += len(errs)
            for field, message in errs[: max(0, max_errors - len(errors))]:
                errors.append({"line": n, "field": field, "message": message})
            continue
        examples += 1
        add_hash(hash(raw.strip()))  # exact duplicates: same bytes; re-serializing would cost ~15% more
        if tokenizer is None:
            continue
        try:
            enc = encode_example(tokenizer, normalize(obj, file_format))
        except Exception as e:  # a template that cannot render this example is the dataset's problem too
            error_count += 1
            if len(errors) < max_errors:
                errors.append({"line": n, "field": None, "message": f"cannot tokenize: {e}"})
            continue
        n = len(enc["input_ids"])
        hist[n] += 1
        labels = enc["labels"]
        trainable += sum(1 for t in labels if t != IGNORE_INDEX)
        if context_length is not None and n > context_length:
            over += 1
            if all(t == IGNORE_INDEX for t in labels[:context_length]):
                no_target += 1
    if lines == 0:
        error_count += 1
        errors.append({"line": None, "field": None, "message": "the file is empty"})
    elif examples == 0 and error_count == 0:
        error_count += 1
        errors.append({"line": None, "field": None, "message": "the file has no examples"})
    stats = {"lines": lines, "examples": examples, "invalid_lines": bad_lines, "duplicates": _duplicates(hashes),
             "epochs": epochs, "tokens": None, "estimated_training_tokens": None}
    if tokenizer is not None:
        stats["tokens"] = _token_stats(hist, trainable, over, no_target, context_length, epochs)
        stats["estimated_training_tokens"] = stats["tokens"]["estimated_training_tokens"]
    return {"valid": error_count == 0, "format": file_format, "errors": errors, "error_count": error_count,
            "stats": stats, "findings": findings, "finding_count": sum(by_kind.values()),
            "findings_by_kind": dict(sorted(by_kind.items()))}
