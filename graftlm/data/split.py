"""Load a dataset's normalized examples, hash its content, and split it 80:20 from a seed.

The split is a seeded permutation of example indices, so it is exact (round(n × fraction)
validation examples), disjoint, covers every example, and is the same on every machine.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from graftlm.data.formats import normalize
from graftlm.data.validate import scan
from graftlm.errors import GraftError

VALIDATION_FRACTION = 0.2


def load_examples(path: str | Path, fmt: str | None = None) -> tuple[str, list[dict]]:
    """``(format, normalized examples)``; raises GraftError naming the first bad line if any."""
    examples: list[dict] = []
    file_format = fmt
    for n, _, obj, errors, file_format in scan(path, fmt):
        if errors:
            field, message = errors[0]
            where = f"line {n}" + (f", {field}" if field else "")
            raise GraftError(f"{Path(path).name}: {where}: {message} (validate the file for the full list)",
                             param="training_file", code="invalid_dataset")
        examples.append(normalize(obj, file_format))
    if not examples:
        raise GraftError(f"{Path(path).name}: the file has no examples", param="training_file",
                         code="invalid_dataset")
    return file_format, examples


def dataset_hash(path: str | Path) -> str:
    """sha256 hex digest of the file's bytes (as stored, compressed or not)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def split_indices(n: int, seed: int, validation_fraction: float = VALIDATION_FRACTION) -> tuple[list[int], list[int]]:
    """``(train, validation)`` sorted example indices: disjoint, together exactly range(n).

    At least one example stays in training; with two or more examples, at least one goes to
    validation (a validation loss needs something to measure).
    """
    if not 0 <= validation_fraction < 1:
        raise GraftError(f"validation_fraction must be in [0, 1), got {validation_fraction}",
                         param="validation_fraction")
    order = list(range(n))
    random.Random(seed).shuffle(order)  # shuffle with an int seed is stable across Python versions
    k = round(n * validation_fraction)
    if validation_fraction > 0 and n >= 2:
        k = min(max(k, 1), n - 1)
    return sorted(order[k:]), sorted(order[:k])


def split_examples(examples: list, seed: int, validation_fraction: float = VALIDATION_FRACTION) -> tuple[list, list]:
    """``(train, validation)`` examples, in their original order within each part."""
    train, validation = split_indices(len(examples), seed, validation_fraction)
    return [examples[i] for i in train], [examples[i] for i in validation]
