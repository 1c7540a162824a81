"""vidrt prune: engine variants and presets listed with size and last use; the unused or
oversized removed under the engine folder's lock, and rebuilt when next needed."""

import os
import time

from vidrt.cli import main
from vidrt.prune import inventory, marker, select


def fake_cache(root):
    """Two engine variants and a preset, with sizes and last uses set by hand."""
    old = root / "engines" / "m-1" / "unet" / "openvino-fp32"
    new = root / "engines" / "m-1" / "unet" / "onnx"
    preset = root / "presets" / "tiny-svd-seed0"
    for folder, size, days in ((old, 3000, 40), (new, 2000, 1), (preset, 1000, 10)):
        folder.mkdir(parents=True)
        (folder / "blob").write_bytes(b"x" * size)
        marker(folder).touch()
        t = time.time() - days * 86400
        os.utime(marker(folder), (t, t))
    return old, new, preset


def test_select_by_age_then_by_size(tmp_path):
    old, new, preset = fake_cache(tmp_path)
    entries = {e.path: e for e in inventory(tmp_path)}
    assert set(entries) == {old, new, preset} and entries[old].size == 3000
    by_age = select(list(entries.values()), older_than_days=30)
    assert [e.path for e in by_age] == [old]
    by_size = select(list(entries.values()), max_bytes=2500)  # least recently used go first
    assert [e.path for e in by_size] == [old, preset]


def test_prune_command_lists_and_removes(capsys, tmp_path, monkeypatch, tiny_engine_dir):
    monkeypatch.setenv("VIDRT_CACHE", str(tmp_path))
    old, new, preset = fake_cache(tmp_path)
    assert main(["prune"]) == 0
    out = capsys.readouterr().out
    assert "3 entries" in out and "engines/m-1/unet/openvino-fp32" in out and "remove" not in out
    assert main(["prune", "--older-than", "30", "--dry-run"]) == 0
    assert "would remove 1 entries" in capsys.readouterr().out and old.exists()
    assert main(["prune", "--older-than", "30"]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert not old.exists() and not marker(old).exists() and new.exists() and preset.exists()
    # A real engine folder (a copy of the session's tiny-svd engines): pruned to nothing, then
    # refused by a load that may not build, which names what is missing.
    import shutil

    import pytest

    from vidrt import VideoPipeline
    from vidrt.errors import VidrtError

    engines = tmp_path / "engines" / "real"
    shutil.copytree(tiny_engine_dir, engines)
    assert main(["prune", "--max-size", "0"]) == 0
    assert not list(engines.rglob("manifest.json")) and not list(engines.rglob("export.json"))
    with pytest.raises(VidrtError, match="not built yet"):
        VideoPipeline.from_pretrained("tiny-svd", engine_dir=engines, backend="onnxruntime", build=False, progress=False)
