"""Engine-directory manifests: what was built from what, and whether it still holds.

Layout, per component::

    <engine_dir>/<component>/onnx/model.onnx (+ model.onnx.data)  export.json
    <engine_dir>/<component>/<backend>-<precision>/<artifact files> manifest.json

Each manifest records a cache key (a hash of everything the files depend on)
and the sha256 of every file it covers. A directory is reused only when the key
matches and every file verifies; anything else is rebuilt. Directories are
written whole into a temporary folder and renamed into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import VidrtError
from .fsutil import sha256_file

SCHEMA = 1
EXPORT_MANIFEST = "export.json"
BUILD_MANIFEST = "manifest.json"


def file_record(path: Path) -> dict:
    st = path.stat()
    return {"sha256": sha256_file(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def files_record(paths: list[Path], root: Path) -> dict:
    return {str(p.relative_to(root)): file_record(p) for p in paths}


def read_manifest(path: Path) -> dict | None:
    """The manifest at ``path``, or None when missing or not a vidrt manifest (→ rebuild).

    Raises:
        VidrtError: the file exists but cannot be read (permissions, a folder in its
            place): a rebuild would not fix that, and would cost gigabytes and minutes.
    """
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return None  # torn or foreign content: rebuilt
    except OSError as e:
        raise VidrtError(f"cannot read {path}: {e.strerror or e}; fix its permissions (or remove it to rebuild)") from None
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else None


def verify(folder: Path, manifest_name: str, key: str, full: bool = False) -> tuple[dict | None, str]:
    """Checks a built folder against its manifest.

    Args:
        folder: the component's onnx/ or backend folder.
        manifest_name: export.json or manifest.json.
        key: the cache key the caller expects.
        full: re-hash every file even when size and mtime are unchanged.

    Returns:
        (manifest, "") when the folder can be reused, else (None, reason).
    """
    manifest = read_manifest(folder / manifest_name)
    if manifest is None:
        return None, "not built yet" if not folder.exists() else "manifest missing or unreadable"
    if manifest.get("key") != key:
        return None, "inputs changed (weights, shapes, versions or options)"
    for rel, rec in manifest.get("files", {}).items():
        path = folder / rel
        if not inside(path, folder):
            return None, f"its manifest lists {rel}, outside {folder}"
        if not path.is_file():
            return None, f"{rel} is missing"
        st = path.stat()
        if st.st_size != rec["size"]:
            return None, f"{rel} is corrupted (size {st.st_size} != {rec['size']})"
        if full or st.st_mtime_ns != rec["mtime_ns"]:
            if sha256_file(path) != rec["sha256"]:
                return None, f"{rel} is corrupted (sha256 mismatch)"
    return manifest, ""


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` (symlinks resolved) lies within ``folder``."""
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
    except ValueError:
        return False
    return True


def refuse(component: str, folder: Path, reason: str) -> VidrtError:
    return VidrtError(
        f"{component} engine in {folder} cannot be used: {reason}; run build-engines "
        "(or VideoPipeline.from_pretrained(..., build=True)) to rebuild it"
    )


def source_hashes(paths: list[Path], cache: dict | None = None) -> dict:
    """sha256 of source weight files, reusing ``cache`` entries whose size/mtime match."""
    out = {}
    for p in paths:
        st = os.stat(p)
        old = (cache or {}).get(str(p))
        if old and old.get("size") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns:
            out[str(p)] = old
        else:
            out[str(p)] = {"sha256": sha256_file(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return out
