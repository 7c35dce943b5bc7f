"""Content-addressed blob store: files named by sha256, written via temp file + rename, streamed."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterable

CHUNK = 1 << 20


class TooLarge(Exception):
    """The stream went past max_bytes; nothing was stored."""


def blob_path(root: Path, sha256: str) -> Path:
    return Path(root) / sha256[:2] / sha256


def put_stream(root: Path, chunks: Iterable[bytes], max_bytes: int | None = None) -> tuple[str, int, Path]:
    """Store an iterable of byte chunks; returns (sha256, size, path). Never holds the whole blob in memory."""
    root = Path(root)
    tmp_dir = root / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise TooLarge(f"upload exceeds the limit of {max_bytes} bytes")
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        sha = digest.hexdigest()
        final = blob_path(root, sha)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp_name, final)  # atomic on POSIX: readers see the whole blob or none
        return sha, size, final
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def put_file(root: Path, fileobj: BinaryIO, max_bytes: int | None = None) -> tuple[str, int, Path]:
    return put_stream(root, iter(lambda: fileobj.read(CHUNK), b""), max_bytes)


def iter_blob(root: Path, sha256: str, chunk_size: int = CHUNK):
    with open(blob_path(root, sha256), "rb") as f:
        while chunk := f.read(chunk_size):
            yield chunk


def delete_blob(root: Path, sha256: str) -> None:
    blob_path(root, sha256).unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
