"""Content-addressed blob store: files named by sha256, written via temp file + rename, streamed."""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

CHUNK = 1 << 20


class TooLarge(Exception):
    """The stream went past max_bytes; nothing was stored."""


def blob_path(root: Path, sha256: str) -> Path:
    return Path(root) / sha256[:2] / sha256


@dataclass(frozen=True)
class Staged:
    """Bytes written under root/tmp and not yet in the store: commit() moves them in, discard() removes them."""
    path: Path
    sha256: str
    size: int

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def stage_stream(root: Path, chunks: Iterable[bytes], max_bytes: int | None = None) -> Staged:
    """Write chunks to a temp file beside the store (never the whole blob in memory) and hash them."""
    tmp_dir = Path(root) / "tmp"
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
        return Staged(Path(tmp_name), digest.hexdigest(), size)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def commit(root: Path, staged: Staged) -> Path:
    final = blob_path(root, staged.sha256)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged.path, final)  # atomic on POSIX: readers see the whole blob or none
    return final


def put_stream(root: Path, chunks: Iterable[bytes], max_bytes: int | None = None) -> tuple[str, int, Path]:
    """Store an iterable of byte chunks; returns (sha256, size, path). Never holds the whole blob in memory."""
    staged = stage_stream(root, chunks, max_bytes)
    try:
        return staged.sha256, staged.size, commit(root, staged)
    except BaseException:
        staged.discard()
        raise


@contextmanager
def references_locked(root: Path) -> Iterator[None]:
    """Held while a blob gains or loses a reference (a row naming its sha256) and while an unreferenced blob is
    deleted, across threads and processes: an upload of the same bytes cannot slip between a delete's
    "no row names it" and its unlink."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".references.lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


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
