"""Stream a JSONL dataset (.jsonl or gzip) line by line in constant memory and parse each line.

The reader never raises on bad content: every line comes out as ``ParsedLine`` with the parsed
object (or ``NOT_PARSED``) and the problems found, so the validator can report them all.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Iterator

import orjson

from graftlm.errors import NotFound

BOM = b"\xef\xbb\xbf"
GZIP_MAGIC = b"\x1f\x8b"
CHUNK_BYTES = 1 << 20
MAX_LINE_BYTES = 16 << 20  # one example this large is a mistake; keeps memory bounded
NOT_PARSED = object()
READ_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)  # a truncated or corrupt gzip stream


NO_ERRORS: tuple = ()
# A parsed line is a plain tuple (line number from 1, JSON value or NOT_PARSED, [(field, message)]):
# a tuple, not a class, because millions of them go by.
ParsedLine = tuple


def open_binary(path: str | Path):
    """The file as a binary stream, transparently gunzipped when it is gzip-compressed."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"dataset file {str(path)!r} does not exist", param="path")
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == GZIP_MAGIC else open(path, "rb")


def iter_line_batches(path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[list[bytes | None]]:
    """The file's lines in order, a chunk's worth per list; ``None`` for a line over max_line_bytes.

    Reads fixed-size chunks, so memory stays bounded even for a file without newlines; batches
    keep the per-line cost of a generator out of the hot loop. A missing final newline is fine.
    """
    tail = b""
    skipping = False  # inside an over-long line: drop bytes until its newline
    with open_binary(path) as f:
        while chunk := f.read(CHUNK_BYTES):
            parts = chunk.split(b"\n")
            if skipping:
                if len(parts) == 1:
                    continue
                parts[0], skipping = None, False
            else:
                parts[0] = tail + parts[0]
            tail = parts.pop()
            if len(tail) > max_line_bytes:
                tail, skipping = b"", True
            if parts and parts[0] is not None and len(parts[0]) > max_line_bytes:
                parts[0] = None
            if max_line_bytes < CHUNK_BYTES:  # only then can a line inside one chunk be too long
                parts = [p if p is None or len(p) <= max_line_bytes else None for p in parts]
            yield parts
        if skipping:
            yield [None]
        elif tail:
            yield [tail]


def iter_raw_lines(path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes | None]]:
    """``(line_number, bytes)`` per line, numbered from 1."""
    n = 0
    for batch in iter_line_batches(path, max_line_bytes):
        for raw in batch:
            n += 1
            yield n, raw


def parse_line(n: int, raw: bytes | None, max_line_bytes: int = MAX_LINE_BYTES) -> ParsedLine:
    """Parse one line; on failure say why (blank, BOM, not UTF-8, invalid JSON, too long)."""
    if raw is None:
        return n, NOT_PARSED, [(None, f"line is longer than {max_line_bytes} bytes; skipped")]
    try:
        return n, orjson.loads(raw), NO_ERRORS
    except orjson.JSONDecodeError as e:
        failure = e
    # slow path, only for bad lines: find the most useful reason
    errors = []
    if raw.startswith(BOM):
        errors.append((None, "line starts with a UTF-8 byte order mark (BOM); save the file as UTF-8 without BOM"))
        raw = raw[len(BOM):]
        try:
            return n, orjson.loads(raw), errors
        except orjson.JSONDecodeError as e:
            failure = e
    if not raw.strip():
        errors.append((None, "blank line; every line must be one JSON object"))
        return n, NOT_PARSED, errors
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        errors.append((None, f"not valid UTF-8: byte 0x{raw[e.start]:02x} at column {e.start + 1}"))
        return n, NOT_PARSED, errors
    errors.append((None, f"invalid JSON: {failure}"))
    return n, NOT_PARSED, errors


def iter_parsed(path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[ParsedLine]:
    """Every line of the file, parsed. A corrupt gzip stream ends the iteration with one error line."""
    n = 0
    try:
        loads, decode_error = orjson.loads, orjson.JSONDecodeError
        for n, raw in iter_raw_lines(path, max_line_bytes):
            try:  # the common case inline: parse_line's call costs more than the parse
                yield n, loads(raw), NO_ERRORS
            except (decode_error, TypeError):
                yield parse_line(n, raw, max_line_bytes)
    except READ_ERRORS as e:
        yield (n + 1, NOT_PARSED, [(None, f"cannot read past this point: {e}")])
