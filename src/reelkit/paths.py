"""Where reelkit finds its bundled checkpoints and the optional shared evaluation clips."""

from __future__ import annotations

import os
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".gif")


def shared_data_dir() -> Path | None:
    """The folder of real evaluation clips: ``$REELKIT_SHARED_DATA``, else ``shared/data`` beside a
    source checkout (``<repo>/../shared/data``) or beside the working directory. ``None`` if absent."""
    override = os.environ.get("REELKIT_SHARED_DATA")
    candidates = [Path(override)] if override else []
    repo = Path(__file__).resolve().parents[2]
    candidates += [repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data",
                   Path.cwd() / "shared" / "data"]
    return next((c for c in candidates if c.is_dir()), None)


def shared_data_clips() -> list[Path]:
    """The real clips in :func:`shared_data_dir`, sorted by name (empty when the folder is absent)."""
    folder = shared_data_dir()
    if folder is None:
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)


def bundled_models() -> list[str]:
    """Names of the checkpoints shipped in ``reelkit/assets``: folders holding a diffusers model config or a
    pipeline index."""
    if not ASSETS_DIR.is_dir():
        return []
    return sorted(p.name for p in ASSETS_DIR.iterdir()
                  if (p / "config.json").is_file() or (p / "model_index.json").is_file())
