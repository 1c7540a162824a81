"""Atomic file and directory writes, and content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import VidrtError


def sha256_file(path: str | Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def atomic_write_text(path: str | Path, text: str | bytes) -> None:
    """Writes text (or bytes) beside ``path`` and renames it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yields a fresh temporary directory that replaces ``final`` on success.

    On error the temporary directory is removed and ``final`` is untouched, so a
    reader never sees a half-written directory.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_writable(path: str | Path) -> Path:
    """Raises VidrtError when ``path``'s folder cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise VidrtError(f"cannot write {path}: folder {parent} does not exist; create it or choose another path")
    if path.is_dir():
        raise VidrtError(f"cannot write {path}: it is a directory; give a file name")
    try:  # a real file: permissions, read-only mounts and /proc-like folders all show here
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise VidrtError(f"cannot write {path}: folder {parent} is not writable ({e.strerror}); "
                         "choose another output path") from None
    return path


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str, progress: bool = True) -> Iterator[Path]:
    """Holds an exclusive lock on ``folder`` (created if missing) across processes.

    Two builds of one engine folder, or two first uses of one preset, take turns: the
    second waits, then finds the first one's work and reuses it. Leftovers of a killed
    earlier holder (atomic_dir's temporary folders) are removed once the lock is held.

    Raises:
        VidrtError: the folder cannot be created or written (a file is in the way, or it is read-only).
    """
    from filelock import FileLock, Timeout

    folder = Path(folder)
    lock_path = folder.parent / f".{folder.name}.lock"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path))
        try:
            lock.acquire(timeout=0.5)
        except Timeout:
            if progress:
                print(f"vidrt: waiting for another vidrt process using {folder} ({what})", flush=True)
            lock.acquire()
    except OSError as e:
        raise VidrtError(f"cannot use {folder} for {what}: {e.strerror or e} ({e.filename or folder}); "
                         "point --engine-dir or VIDRT_CACHE at a writable folder") from None
    try:
        sweep_stale(folder.parent, prefix=f".{folder.name}.")
        for sub in [folder, *(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))]:
            sweep_stale(sub)
        yield folder
    finally:
        lock.release()


def sweep_stale(folder: Path, prefix: str = ".") -> list[Path]:
    """Removes atomic_dir's leftovers in ``folder`` (``.NAME.*.tmp``, ``.NAME.old-PID``) whose
    name starts with ``prefix``; call it only while holding the lock that guards them."""
    removed = []
    for p in folder.iterdir() if folder.is_dir() else ():
        stale = p.name.endswith(".tmp") or ".old-" in p.name
        if p.name.startswith(prefix) and p.name.startswith(".") and stale:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed
