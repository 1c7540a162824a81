"""vidrt bench-ab: two revisions of a real git checkout, each in its own worker process.

The checkout is a clone of this repository's HEAD (in a temporary folder), so both sides
run committed code. The positive control slows head's UNet with VIDRT_DEBUG_SLOWDOWN
(an engine that sleeps after each call until the call has taken 2.5x as long); the
negative control runs the same commit on both sides.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from vidrt.cli import main

ROOT = Path(__file__).resolve().parent.parent
CASE = ["--model", "tiny-svd", "--backend", "onnxruntime", "--height", "32", "--width", "32",
        "--num-frames", "2", "--steps", "2", "--runs", "10", "--warmup", "1"]


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    if shutil.which("git") is None or subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                                                      capture_output=True).returncode:
        pytest.skip("bench-ab needs git and a git checkout of vidrt")
    repo = tmp_path_factory.mktemp("ab") / "repo"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(repo)], check=True)
    return repo


@pytest.fixture
def in_clone(clone, monkeypatch, tmp_path_factory):
    monkeypatch.chdir(clone)
    monkeypatch.setenv("VIDRT_CACHE", str(tmp_path_factory.getbasetemp() / "ab-cache"))  # shared: engines built once
    return clone


def test_a_slowed_head_is_a_regression_and_the_same_commit_is_not(capsys, in_clone, tmp_path):
    # Positive control: the UNet engine calls 2.5x slower (the stage ~1.6x: a 32x32 step is
    # ~40% sampler and loop work that is not slowed). --threshold 25 keeps the negative control's
    # chance of a false alarm far below 1% (a significant +25% between identical sides).
    code = main(["bench-ab", "--base", "HEAD", "--head-env", "VIDRT_DEBUG_SLOWDOWN=unet=2.5", "--threshold", "25",
                 "--output-dir", str(tmp_path / "out"), *CASE])
    out = capsys.readouterr().out
    assert code == 1, out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("unet ", "end to end"))}
    assert "REGRESSION" in rows["unet"] and "slower" in rows["unet"]
    assert "parity, head against base: max abs err 0" in out  # the slowdown only sleeps: same frames
    base, head = (json.loads((tmp_path / "out" / f"{n}.json").read_text()) for n in ("base", "head"))
    assert base["case"] == head["case"] and base["schema"] == head["schema"] == 2
    assert len(head["engine"]["end_to_end_s"]["samples"]) == 10
    assert head["environment"]["git"]["sha"] == base["environment"]["git"]["sha"]
    assert head["engine"]["stages_ms"]["unet"]["median"] > 1.3 * base["engine"]["stages_ms"]["unet"]["median"]
    # Both sides are vidrt imported from the clone, not from the installed tree.
    assert head["environment"]["source"] == str(in_clone)
    assert Path(base["environment"]["source"]).name == base["environment"]["git"]["sha"]

    # Negative control: the same commit on both sides.
    code = main(["bench-ab", "--base", "HEAD", "--threshold", "25", *CASE])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "REGRESSION" not in out


def test_bench_ab_bad_input_is_one_line(capsys, in_clone, tmp_path, monkeypatch):
    for args, words in (
        (["--base", "no-such-rev"], "--base no-such-rev: no such commit"),
        (["--head-env", "JUSTANAME"], "NAME=VALUE pairs"),
        (["--threshold", "-3"], "--threshold -3"),
    ):
        assert main(["bench-ab", *args, *CASE]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
    monkeypatch.chdir(tmp_path)  # not a git checkout
    assert main(["bench-ab", *CASE]) == 2
    assert "not inside one: cd into your vidrt clone" in capsys.readouterr().err
