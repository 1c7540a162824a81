"""Performance history: an append-only store of run-bench results.

One JSON Lines file per machine fingerprint (``<machine id>.jsonl``), one result a line,
in the order they were recorded: results of different machines never mix, and a file
can be kept in git or copied between machines as it is. Appends take a lock beside the
file, so two run-bench processes recording at once write whole lines, one after the other.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path

from vidrt.errors import VidrtError

from .results import upgrade


def default_dir() -> Path:
    """$VIDRT_CACHE/history (or ~/.cache/vidrt/history)."""
    from vidrt.settings import cache_dir

    return cache_dir() / "history"


def check_folder(directory: str | Path | None = None) -> Path:
    """Creates the history folder if needed; raises VidrtError (before minutes of
    benchmarking) when it cannot be written."""
    from vidrt.fsutil import check_writable

    folder = Path(directory) if directory else default_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VidrtError(f"cannot create history folder {folder}: {e.strerror or e}; "
                         "pass --history with a writable folder") from None
    check_writable(folder / "history.jsonl")
    return folder


def append(result: dict, directory: str | Path | None = None) -> Path:
    """Appends ``result`` (a schema 2 run-bench result) to its machine's file in
    ``directory`` (default: default_dir()); returns that file.

    Raises:
        VidrtError: the folder cannot be created or written.
    """
    from filelock import FileLock

    folder = Path(directory) if directory else default_dir()
    record = {"recorded_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")} | result
    line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
    path = folder / f"{result['machine']['id']}.jsonl"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder / f".{path.name}.lock")):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                # A writer killed mid-line left no newline: start on a fresh line, so only
                # its partial record is lost, not the next one too.
                if os.fstat(fd).st_size and _last_byte(path) != b"\n":
                    line = b"\n" + line
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError as e:
        raise VidrtError(f"cannot record into history {folder}: {e.strerror or e}; "
                         "pass --history with a writable folder") from None
    return path


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def records(directory: str | Path | None = None, machine: str | None = None) -> list[dict]:
    """Every recorded result in ``directory``, oldest first (per machine file, then by time);
    ``machine`` keeps one machine's (an id or its prefix). A line that is not a whole
    result (a writer killed mid-line) is skipped with a warning.

    Raises:
        VidrtError: ``directory`` does not exist.
    """
    folder = Path(directory) if directory else default_dir()
    if not folder.is_dir():
        raise VidrtError(f"no history in {folder}: record some with run-bench --history {folder}")
    out = []
    for path in sorted(folder.glob("*.jsonl")):
        if machine and not path.stem.startswith(machine):
            continue
        for n, text in enumerate(path.read_text().splitlines(), 1):
            if not text.strip():
                continue
            try:
                out.append(upgrade(json.loads(text), f"{path}:{n}"))
            except (json.JSONDecodeError, VidrtError):
                print(f"vidrt: warning: skipping {path.name} line {n}: not a whole run-bench result", file=sys.stderr)
    return sorted(out, key=lambda r: (r["machine"].get("id") or "", r.get("recorded_at", "")))


def format_history(entries: list[dict]) -> str:
    """One line per record: when, commit, machine, case, end to end, speedup, peak memory."""
    from .results import describe_case, git_of

    lines = [f"{'recorded (UTC)':<26}{'commit':<14}{'machine':<14}{'end to end':>12}{'speedup':>9}{'peak MB':>9}  case"]
    for r in entries:
        git = git_of(r)
        sha = (git["sha"] or "?")[:10] + ("+" if git["dirty"] else "")
        e2e = r["engine"]["end_to_end_s"]["median"]
        speedup = f"{r['speedup']:.2f}x" if r.get("speedup") else "-"
        lines.append(f"{r.get('recorded_at', '?'):<26}{sha:<14}{(r['machine'].get('id') or '?'):<14}{e2e:>10.2f} s"
                     f"{speedup:>9}{r['engine']['peak_memory_mb']:>9.0f}  {describe_case(r['case'])}")
    if len(lines) == 1:
        lines.append("(no records)")
    return "\n".join(lines)
