"""Several processes on one engine folder or preset, and builds killed midway: real
processes, really concurrent, really killed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def vidrt(*argv, env=None):
    return subprocess.Popen([sys.executable, "-m", "vidrt.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env or os.environ.copy())


def build_args(engine_dir):
    return ["build-engines", "--model", "tiny-svd", "--engine-dir", str(engine_dir), "--backend", "onnxruntime"]


def engines_missing_the_unet(tiny_engine_dir, root: Path) -> Path:
    """A copy of the session's tiny-svd engines without the UNet: a build then exports and
    builds that one component (seconds), the others are reused."""
    import shutil

    engines = root / "engines"
    shutil.copytree(tiny_engine_dir, engines)
    shutil.rmtree(engines / "unet")
    return engines


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.name.endswith(".tmp") or ".old-" in p.name]


def wait_for_temp(root: Path, proc, timeout=120) -> None:
    """Waits until a build has a temporary folder in flight (mid-export or mid-build)."""
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if leftovers(root):
            return
        time.sleep(0.05)
    pytest.fail(f"no temporary folder appeared (exit {proc.poll()}: {proc.stderr.read() if proc.poll() is not None else ''})")


def test_two_builds_of_one_folder_take_turns(tiny_engine_dir, tmp_path):
    engines = engines_missing_the_unet(tiny_engine_dir, tmp_path)
    procs = [vidrt(*build_args(engines)) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    # One built the UNet; the other waited for it and reused all four components.
    assert sorted(o[0].count("reused") for o in outs) == [3, 4]
    assert any("waiting for another vidrt process" in o[0] for o in outs)
    assert not leftovers(tmp_path)


def test_two_first_uses_of_a_preset_take_turns(tmp_path):
    env = os.environ | {"VIDRT_CACHE": str(tmp_path)}
    code = "from vidrt.sources import materialize_preset; print(materialize_preset('tiny-svd', 7))"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    assert outs[0][0].split()[-1] == outs[1][0].split()[-1]
    assert sum("creating preset" in o[0] for o in outs) == 1
    assert not leftovers(tmp_path)


def test_a_killed_build_leaves_nothing_after_the_next_run(tiny_engine_dir, tmp_path):
    engines = engines_missing_the_unet(tiny_engine_dir, tmp_path)
    proc = vidrt(*build_args(engines))
    wait_for_temp(engines, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert leftovers(engines), "the kill should have interrupted a write"
    rerun = vidrt(*build_args(engines))
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    assert not leftovers(tmp_path)


def test_sigterm_unwinds_like_ctrl_c(tiny_engine_dir, tmp_path):
    engines = engines_missing_the_unet(tiny_engine_dir, tmp_path)
    proc = vidrt(*build_args(engines))
    wait_for_temp(engines, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err, err
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("kind", ["is-a-file", "under-a-file"])
def test_an_unusable_engine_folder_is_a_one_line_error(capsys, tiny_model, tmp_path, kind):
    from vidrt.cli import main

    blocker = tmp_path / "engines"
    blocker.write_text("not a folder")
    target = blocker if kind == "is-a-file" else blocker / "below"
    code = main(build_args(target))
    err = capsys.readouterr().err
    assert code == 2 and "cannot use" in err and err.count("\n") == 1, err


def test_an_unusable_cache_is_a_one_line_error(capsys, tmp_path, monkeypatch):
    from vidrt.cli import main

    (tmp_path / "cache").write_text("not a folder")
    monkeypatch.setenv("VIDRT_CACHE", str(tmp_path / "cache"))
    code = main(["build-engines", "--model", "tiny-svd", "--backend", "onnxruntime"])
    err = capsys.readouterr().err
    assert code == 2 and "VIDRT_CACHE" in err and err.count("\n") == 1, err
