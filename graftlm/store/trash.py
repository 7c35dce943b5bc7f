"""Deleting directories together with the rows that name them: move aside (one atomic rename), commit the
rows' deletion, then remove. A crash in between leaves a ``.deleted-*`` directory that ``sweep`` removes
(at every deletion, once older than STALE_SECONDS); a failed commit moves the directory back, so a row never names a
half-deleted directory and no deleted row leaves its bytes behind for long."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

PREFIX = ".deleted-"
STALE_SECONDS = 600.0  # a deletion in flight commits well within this; older leftovers were interrupted


def move_aside(path: Path) -> Path | None:
    """Rename path to a ``.deleted-`` sibling; None when it does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    aside = path.with_name(f"{PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    os.replace(path, aside)
    return aside


def put_back(aside: Path | None, path: Path) -> None:
    if aside is not None and aside.exists() and not Path(path).exists():
        os.replace(aside, path)


def purge(aside: Path | None) -> None:
    if aside is None:
        return
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


def sweep(root: Path, older_than_s: float = STALE_SECONDS) -> list[Path]:
    """Remove what deletions interrupted by a crash left under root, moved aside more than older_than_s ago
    (a younger one may belong to a deletion still committing); returns what was removed."""
    root = Path(root)
    if not root.is_dir():
        return []
    cutoff = time.time() - older_than_s
    left = [p for p in sorted(root.glob(f"{PREFIX}*")) if p.lstat().st_ctime <= cutoff]
    for p in left:
        purge(p)
    return left
