"""File helpers shared by every writer: outputs appear whole or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.

    A crash or a bad input half-way through a write leaves any existing file untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)



def finite_or_null(value):
    """``value`` with every non-finite float (NaN, inf) replaced by ``None``, through dicts and lists: JSON has
    no NaN, so a figure that is not a finite number (a PSNR of identical clips, an attribute no prompt asked
    for) is written as ``null``, never as the non-standard ``NaN`` token."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(v) for v in value]
    return value


def write_json(path: str | os.PathLike, data, indent: int | None = 2) -> Path:
    """Write ``data`` as standard JSON (non-finite numbers as ``null``, see :func:`finite_or_null`),
    atomically."""
    import json

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(finite_or_null(data), indent=indent, allow_nan=False) + "\n")
    return path
