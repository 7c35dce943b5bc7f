"""Personal data and secrets in dataset text: find them (kind and span, never the value) and redact them.

Kinds and how each is decided (a candidate pattern, then a check that most look-alikes fail):

  email         name@domain.tld
  phone         Google's libphonenumber (``phonenumbers``, leniency VALID; numbers without ``+`` read as US).
                A bare digit run (no ``+``, no separators) counts only after a word like "phone" or "call"
  payment_card  13-19 digits (groups split by one space or dash), a card network's prefix and the Luhn check
  iban          country code + check digits + account, checked by ``stdnum.iban`` (mod 97 and the country's
                length and layout)
  us_ssn        ddd-dd-dddd (or spaces), checked by ``stdnum.us.ssn`` (no area 000/666/9xx, group 00, …)
  ip_address    IPv4 and IPv6 (``ipaddress``), not a version number ("v1.2.3.4", "version 10.0.0.1")
  secret        well-known key prefixes (OpenAI/Anthropic sk-, GitHub ghp_/github_pat_, AWS AKIA/ASIA, Slack
                xox*, Google AIza, Stripe sk_live_, GitLab glpat-, Hugging Face hf_, JWTs, PEM private
                keys) and long high-entropy tokens (32+ characters mixing upper, lower and digits)

Names, postal addresses and free-form identifiers are not detected: these are patterns, not a language model.
"""

from __future__ import annotations

import ipaddress
import math
import re
import string
import zlib
from bisect import bisect_right
from collections import Counter
from itertools import accumulate
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import orjson
import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn
from stdnum.us import ssn as stdnum_ssn

from graftlm.data.reader import iter_raw_lines

PLACEHOLDERS = {"email": "[EMAIL]", "phone": "[PHONE]", "payment_card": "[CARD]", "iban": "[IBAN]",
                "us_ssn": "[SSN]", "ip_address": "[IP]", "secret": "[SECRET]"}
KINDS = tuple(PLACEHOLDERS)
DESCRIPTIONS = {"email": "an e-mail address", "phone": "a phone number", "payment_card": "a payment card number",
                "iban": "an IBAN (bank account)", "us_ssn": "a US social security number",
                "ip_address": "an IP address", "secret": "an API key or other secret"}
# where two candidates overlap, the more specific kind wins (an e-mail's digits are not a phone number)
PRIORITY = {kind: i for i, kind in enumerate(("secret", "email", "iban", "payment_card", "us_ssn", "ip_address",
                                              "phone"))}
PHONE_REGION = "US"  # how a number without a country code is read
MIN_LENGTH = 6  # the shortest finding ("a@b.co"); shorter strings are not scanned


class Finding(NamedTuple):
    kind: str
    start: int
    end: int


EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![\w-])")
SECRET = re.compile("|".join((
    r"(?<![\w-])sk-(?:proj-|ant-(?:api\d\d-)?|svcacct-)?[A-Za-z0-9_-]{20,}",
    r"(?<!\w)gh[pousr]_[A-Za-z0-9]{36,}", r"(?<!\w)github_pat_[A-Za-z0-9_]{22,}",
    r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])",
    r"(?<!\w)xox[abposr]-[A-Za-z0-9-]{15,}", r"(?<![\w-])AIza[0-9A-Za-z_-]{35}",
    r"(?<!\w)(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,}", r"(?<![\w-])glpat-[A-Za-z0-9_-]{20,}",
    r"(?<!\w)hf_[A-Za-z0-9]{30,}",
    r"(?<![\w-])eyJ[A-Za-z0-9_-]{17,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----(?:[^-]{0,8192}-----END (?:[A-Z]+ )?PRIVATE KEY-----)?",
)))
TOKEN = re.compile(r"(?<![A-Za-z0-9+/_=-])[A-Za-z0-9+/_-]{32,}={0,2}(?![A-Za-z0-9+/_=-])")
IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
CARD = re.compile(r"(?<![\d.,-])\d(?:[ -]?\d){12,18}(?![\d]|[.,-]\d)")
SSN = re.compile(r"(?<![\d-])\d{3}([- ])\d{2}\1\d{4}(?![\d]|-\d)")
IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d|\w)")
IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])")
PHONE_CANDIDATE = re.compile(r"(?<![\w+])\+?\(?\d[\d ().\-/]{5,}\d(?!\w)")
PHONE_WORDS = re.compile(r"(?i)\b(?:phone|tel|call|mobile|cell|fax|whatsapp|sms|text me|reach me)\b(?:\W+\w{1,4}){0,3}\W*$")
VERSION_BEFORE = re.compile(r"(?i)(?:\bv|version|ver\.?|release|build)\s*$")
DIGIT = re.compile(r"\d")
CARD_PREFIX = re.compile(r"4|5[1-5]|2(?:2[2-9]|[3-6]\d|7[01]|720)|3[47]|3(?:0[0-5]|[68])|6(?:011|5|4[4-9]|2)"
                         r"|35(?:2[89]|[3-8]\d)|5[06-9]")



# Gates: what a line (or string) must contain for a kind to be possible, checked with bytes.translate and
# substring searches (C speed) so that a clean line costs about a microsecond. Every detector's match passes its
# gate: a secret or token is a run of 20+ word characters (a PEM key's base64 lines are), every number kind has
# 7+ digits and separators from a digit to a digit (IBANs too: their account part is mostly digits), and so has
# an IPv6 address (":" is a separator) unless it is shortened with "::".
def _table(*groups: tuple[str, str]) -> bytes:
    table = bytearray(b" " * 256)
    for chars, to in groups:
        for c in chars.encode():
            table[c] = ord(to)
    return bytes(table)


WORD_CHARS = _table((string.ascii_letters + string.digits + "_-+/", "a"))
NUMBER_CHARS = _table((string.digits, "0"), (" ().-/:", "."))
NUMBER_RUN = re.compile(rb"0[0.]{5,}0")
LONG_RUN = b"a" * 20
GATE_EMAIL, GATE_LONG, GATE_NUMBER, GATE_COLON = 1, 2, 4, 8
ALL_GATES = 15


def gates(raw: bytes) -> int:
    """Which detector families can match in these bytes (a bit set; 0: none). A JSON escape (\\u0040) could hide
    a character from the gates, so a line holding one opens them all."""
    if b"\\u" in raw:
        return ALL_GATES
    g = GATE_EMAIL if b"@" in raw else 0
    if LONG_RUN in raw.translate(WORD_CHARS):
        g |= GATE_LONG
    if NUMBER_RUN.search(raw.translate(NUMBER_CHARS)):
        g |= GATE_NUMBER
    if b"::" in raw:
        g |= GATE_COLON
    return g


def flag_lines(batch: list[bytes | None]) -> set[int]:
    """The indices of the lines in a batch whose bytes pass some gate: the same test as ``gates`` per line, made
    on the whole batch at once (one translate and one search per gate for a megabyte of lines, instead of
    several per line)."""
    parts = [b"" if raw is None else raw for raw in batch]
    blob = b"\n".join(parts)  # \n is a space in every table: no run crosses a line
    starts: list[int] = []
    flagged: set[int] = set()

    def line_of(at: int) -> int:
        if not starts:
            starts.extend(accumulate((len(p) + 1 for p in parts), initial=0))
        return bisect_right(starts, at) - 1

    def mark_each(text: bytes, needle: bytes) -> None:
        at = text.find(needle)
        while at != -1:
            i = line_of(at)
            flagged.add(i)
            at = text.find(needle, starts[i + 1]) if i + 1 < len(starts) else -1

    for needle in (b"@", b"::") + ((b"\\u",) if b"\\" in blob else ()):  # memchr first: cheap
        mark_each(blob, needle)
    mark_each(blob.translate(WORD_CHARS), LONG_RUN)
    for m in NUMBER_RUN.finditer(blob.translate(NUMBER_CHARS)):
        flagged.add(line_of(m.start()))
    return flagged


def _luhn_card(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and CARD_PREFIX.match(digits) is not None and luhn.is_valid(digits)


def _grouped_like_a_card(raw: str) -> bool:
    """No separators, or one kind of separator between groups of 3-6 digits (4-4-4-4, 4-6-5, …)."""
    seps = {c for c in raw if not c.isdigit()}
    if not seps:
        return True
    if len(seps) > 1:
        return False
    groups = raw.split(seps.pop())
    return all(3 <= len(g) <= 6 for g in groups[:-1]) and 1 <= len(groups[-1]) <= 6


def _entropy(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def _secret_like(token: str) -> bool:
    """A random-looking key: upper, lower and digits mixed and close to random in its characters. Hex digests
    and UUIDs (no upper case) and CamelCase words (low entropy) are left alone."""
    body = token.rstrip("=")
    if not (any(c.isupper() for c in body) and any(c.islower() for c in body) and
            sum(c.isdigit() for c in body) >= 2):
        return False
    return _entropy(body) >= min(4.3, math.log2(len(body)) - 0.7)


def _phones(text: str, found: list[Finding]) -> Iterator[Finding]:
    """libphonenumber on each digit run that could be a phone number (and is not already another finding):
    the matcher costs ~1 ms a call, so it never sees a whole text, a date or a number of the wrong length."""
    for c in PHONE_CANDIDATE.finditer(text):
        start, end = c.span()
        if any(f.start <= start and end <= f.end for f in found):
            continue
        digits = sum(ch.isdigit() for ch in c.group())
        if not (7 <= digits <= 15 if c.group().startswith("+") else 10 <= digits <= 11):
            continue  # without a country code a number is read as US: 10 digits, or 11 with the leading 1
        lo = max(0, start - 1)
        for m in phonenumbers.PhoneNumberMatcher(text[lo:end], PHONE_REGION, leniency=phonenumbers.Leniency.VALID):
            s, e, raw = lo + m.start, lo + m.end, m.raw_string
            if s > 0 and text[s - 1] in ".,":  # the tail of a decimal number (3.14159265358)
                continue
            if not raw.startswith("+") and raw.isdigit() and not PHONE_WORDS.search(text[max(0, s - 40):s]):
                continue  # a bare digit run is an id or an amount unless the text says it is a number to call
            yield Finding("phone", s, e)


def find(text: str) -> list[Finding]:
    """The personal data and secrets in one string: non-overlapping findings in order of position."""
    if len(text) < MIN_LENGTH:
        return []
    g = gates(text.encode("utf-8", "surrogatepass"))
    if not g:
        return []
    found: list[Finding] = []
    if g & GATE_EMAIL:
        found += [Finding("email", m.start(), m.end()) for m in EMAIL.finditer(text)]
    if g & GATE_LONG:
        found += [Finding("secret", m.start(), m.end()) for m in SECRET.finditer(text)]
        found += [Finding("secret", m.start(), m.end()) for m in TOKEN.finditer(text) if _secret_like(m.group())]
    if g & GATE_NUMBER:
        found += [Finding("iban", m.start(), m.end()) for m in IBAN.finditer(text)
                  if stdnum_iban.is_valid(m.group())]
        for m in CARD.finditer(text):
            raw = m.group()
            if _grouped_like_a_card(raw) and _luhn_card(raw.replace(" ", "").replace("-", "")):
                found.append(Finding("payment_card", m.start(), m.end()))
        found += [Finding("us_ssn", m.start(), m.end()) for m in SSN.finditer(text)
                  if stdnum_ssn.is_valid(m.group().replace(" ", "-"))]
        for m in IPV4.finditer(text):
            if _valid_ip(m.group()) and not VERSION_BEFORE.search(text[max(0, m.start() - 12):m.start()]):
                found.append(Finding("ip_address", m.start(), m.end()))
        found += list(_phones(text, found))
    if g & (GATE_COLON | GATE_NUMBER) and text.count(":") >= 2:
        for m in IPV6.finditer(text):
            ip = m.group()
            if len(ip) >= 6 and DIGIT.search(ip) and _valid_ip(ip):
                found.append(Finding("ip_address", m.start(), m.end()))
    return _without_overlaps(found)


def _valid_ip(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
    except ValueError:
        return False
    return True


def _without_overlaps(found: list[Finding]) -> list[Finding]:
    if len(found) < 2:
        return found
    kept: list[Finding] = []
    for f in sorted(found, key=lambda f: (PRIORITY[f.kind], f.start)):
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)


def redact(text: str, findings: list[Finding] | None = None) -> str:
    """The text with each finding replaced by its kind's placeholder ([EMAIL], [PHONE], …)."""
    findings = find(text) if findings is None else findings
    if not findings:
        return text
    out, at = [], 0
    for f in findings:
        out += [text[at:f.start], PLACEHOLDERS[f.kind]]
        at = f.end
    out.append(text[at:])
    return "".join(out)


def iter_strings(value, field: str | None = None) -> Iterator[tuple[str | None, str]]:
    """Every string inside a parsed JSON line with its field path (``messages[2].content``); keys are not
    data and are skipped."""
    if type(value) is str:
        yield field, value
    elif type(value) is dict:
        for k, v in value.items():
            yield from iter_strings(v, f"{field}.{k}" if field else str(k))
    elif type(value) is list:
        for i, v in enumerate(value):
            yield from iter_strings(v, f"{field}[{i}]" if field else f"[{i}]")


def scan_value(value) -> list[tuple[str | None, str]]:
    """``[(field, kind)]`` for every finding in a parsed JSON line, in field order."""
    return [(field, f.kind) for field, text in iter_strings(value) for f in find(text)]


def redact_value(value, counts: Counter):
    """A copy of a parsed JSON line with every string redacted; adds what was replaced to counts per kind."""
    if type(value) is str:
        found = find(value)
        for f in found:
            counts[f.kind] += 1
        return redact(value, found) if found else value
    if type(value) is dict:
        return {k: redact_value(v, counts) for k, v in value.items()}
    if type(value) is list:
        return [redact_value(v, counts) for v in value]
    return value


def scan_raw_line(raw: bytes | None) -> list[tuple[str | None, str]]:
    """``[(field, kind)]`` for one JSONL line's bytes; a line that is not JSON is scanned as text (field None)."""
    if raw is None or not gates(raw):
        return []
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return [(None, f.kind) for f in find(raw.decode("utf-8", "replace"))]
    return scan_value(value)


def scan_file(path: str | Path, max_findings: int = 100) -> tuple[list[tuple[int, str | None, str]], Counter]:
    """The first max_findings ``(line, field, kind)`` of a JSONL file (gzip or not) and the count per kind."""
    listed: list = []
    counts: Counter = Counter()
    for n, raw in iter_raw_lines(path):
        for field, kind in scan_raw_line(raw):
            counts[kind] += 1
            if len(listed) < max_findings:
                listed.append((n, field, kind))
    return listed, counts


def redacted_lines(path: str | Path, counts: Counter) -> Iterator[bytes]:
    """The file's lines (newline-terminated) with every finding replaced by its placeholder; counts gets the
    replacements per kind. A line without findings keeps its bytes; a redacted one is re-serialized. A line
    the reader could not hold (over its length limit) becomes an empty line rather than unscanned bytes."""
    for _, raw in iter_raw_lines(path):
        if raw is None:
            yield b"\n"
            continue
        if not gates(raw):
            yield raw + b"\n"
            continue
        before = sum(counts.values())
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            text = raw.decode("utf-8", "surrogateescape")
            found = find(text)
            counts.update(f.kind for f in found)
            yield redact(text, found).encode("utf-8", "surrogateescape") + b"\n"
            continue
        redacted = redact_value(value, counts)
        yield (orjson.dumps(redacted) if sum(counts.values()) > before else raw) + b"\n"


def gzipped(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Chunks compressed as one gzip stream."""
    z = zlib.compressobj(6, zlib.DEFLATED, 31)
    for chunk in chunks:
        if out := z.compress(chunk):
            yield out
    yield z.flush()
