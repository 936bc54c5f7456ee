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


def write_json(path: str | os.PathLike, data, indent: int | None = 2, text: str | None = None) -> Path:
    """Write ``data`` as JSON atomically, refusing NaN and infinities (which JSON cannot hold): a figure
    that did not come out finite is a bug to report, not a file to write. ``text`` overrides the layout
    (already serialised from ``data``)."""
    import json

    from reelkit.errors import ReelkitError

    try:
        body = json.dumps(data, indent=indent, allow_nan=False)
    except ValueError:
        raise ReelkitError(f"{path}: refusing to write non-finite numbers (NaN or inf) to JSON") from None
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text((text if text is not None else body) + "\n")
    return path
