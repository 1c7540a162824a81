"""`vidrt prune`: list and remove engine variants and presets by last use and size.

A variant is one folder under ``<engine dir>/<component>/``: an ONNX export
(``onnx``, ``onnx-video-layout``, ``onnx-int8-...``) or a backend's artifact
(``openvino-bf16``, ``tensorrt-fp16-<hash>``, ...). Loading or building one touches
a marker beside it (``.<name>.used``, outside the artifact, which stays as built), so
"last used" is when it last served. Removal takes the engine folder's lock, so it
never races a build; a removed export or artifact is simply rebuilt when next needed.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

from . import settings
from .fsutil import folder_lock

DAY = 86400.0


@dataclasses.dataclass(frozen=True)
class Entry:
    """One prunable folder: an engine variant or a preset."""

    path: Path
    kind: str  # "engine" or "preset"
    size: int
    last_used: float  # seconds since the epoch

    @property
    def lock_target(self) -> Path:
        """The folder whose lock guards this entry (the engine folder, or the preset itself)."""
        return self.path.parent.parent if self.kind == "engine" else self.path


def marker(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.used"


def touch_used(folder: Path) -> None:
    """Records that ``folder`` served just now (best effort: a read-only cache still serves)."""
    try:
        marker(folder).touch()
    except OSError:
        pass


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _last_used(folder: Path) -> float:
    m = marker(folder)
    return m.stat().st_mtime if m.exists() else folder.stat().st_mtime


def inventory(root: Path | None = None) -> list[Entry]:
    """Every engine variant and preset under the cache ``root`` (default: $VIDRT_CACHE)."""
    root = root or settings.cache_dir()
    entries = []
    for engine_dir in sorted((root / "engines").glob("[!.]*")):
        for component in sorted(p for p in engine_dir.glob("[!.]*") if p.is_dir()):
            for variant in sorted(p for p in component.glob("[!.]*") if p.is_dir()):
                entries.append(Entry(variant, "engine", _size(variant), _last_used(variant)))
    for preset in sorted(p for p in (root / "presets").glob("[!.]*") if p.is_dir()):
        entries.append(Entry(preset, "preset", _size(preset), _last_used(preset)))
    return entries


def select(entries: list[Entry], older_than_days: float | None = None, max_bytes: int | None = None,
           now: float | None = None) -> list[Entry]:
    """Entries to remove: unused for more than ``older_than_days``, then the least recently
    used until what stays fits in ``max_bytes``."""
    now = time.time() if now is None else now
    chosen = [e for e in entries if older_than_days is not None and now - e.last_used > older_than_days * DAY]
    if max_bytes is not None:
        kept = sorted((e for e in entries if e not in chosen), key=lambda e: e.last_used)
        total = sum(e.size for e in kept)
        for e in kept:
            if total <= max_bytes:
                break
            chosen.append(e)
            total -= e.size
    return chosen


def remove(entries: list[Entry]) -> int:
    """Removes ``entries`` under their folders' locks; returns the bytes freed."""
    freed = 0
    for e in entries:
        with folder_lock(e.lock_target, "pruning", progress=False):
            if e.path.exists():
                shutil.rmtree(e.path)
                marker(e.path).unlink(missing_ok=True)
                freed += e.size
    return freed
