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


GATE_SUITE = """
[tiny]
description = "one tiny case"
cases = [{ model = "tiny-svd", backend = "onnxruntime", height = 32, width = 32, num_frames = 2, steps = 2, runs = 10, warmup = 1 }]
"""


def test_the_shipped_suites_are_valid_run_bench_cases():
    from vidrt.benchmarks.ab import ABConfig
    from vidrt.benchmarks.harness import BenchConfig
    from vidrt.benchmarks.suites import suite_configs, suites

    every = suites()
    assert {"ci", "cpu", "gpu"} <= set(every)
    for name in every:
        for cls in (BenchConfig, ABConfig):
            assert suite_configs(name, cls)
    cpu = {c.scenario for c in suite_configs("cpu", BenchConfig)}
    assert {"a", "b", "c-lcm", "c-euler"} <= cpu
    assert all(c.backend == "tensorrt" for c in suite_configs("gpu", BenchConfig))


def test_gate_fails_on_a_large_slowdown_against_the_parent_and_passes_unchanged(capsys, in_clone, tmp_path):
    """The CI gate's controls: head's UNet engine 4x slower (the stage ~2.2x, end to end
    ~1.7x) fails the 50% gate; the same commit passes it."""
    suite = tmp_path / "suites.toml"
    suite.write_text(GATE_SUITE)
    gate = ["bench-suite", "tiny", "--file", str(suite), "--gate", "--base", "HEAD"]
    assert main([*gate, "--head-env", "VIDRT_DEBUG_SLOWDOWN=unet=4"]) == 1
    out = capsys.readouterr().out
    assert "performance gate FAILED" in out and "REGRESSION" in out
    assert main(gate) == 0
    assert "performance gate passed" in capsys.readouterr().out


def test_gate_without_a_parent_commit_uses_the_history(capsys, in_clone, tmp_path, monkeypatch):
    """A shallow clone has no HEAD~1: the gate compares with the newest recorded run of the
    case on this machine from another commit, and skips a case never recorded."""
    shallow = tmp_path / "shallow"
    subprocess.run(["git", "clone", "--quiet", "--depth", "1", f"file://{in_clone}", str(shallow)], check=True)
    monkeypatch.chdir(shallow)
    suite, history = tmp_path / "suites.toml", tmp_path / "history"
    suite.write_text(GATE_SUITE)
    gate = ["bench-suite", "tiny", "--file", str(suite), "--history", str(history), "--gate"]
    assert main(gate) == 0
    assert "skipped: no recorded run of this case" in capsys.readouterr().out
    # The run the gate recorded is of this commit, so it is no base; one from another
    # commit is (an earlier one's record, its sha rewritten here).
    (record_file,) = history.glob("*.jsonl")
    record = json.loads(record_file.read_text().splitlines()[0])
    record["environment"]["git"]["sha"] = "0" * 40
    with open(record_file, "a") as f:
        f.write(json.dumps(record) + "\n")
    monkeypatch.setenv("VIDRT_DEBUG_SLOWDOWN", "unet=4")  # this run's engines, in this process
    assert main(gate) == 1
    out = capsys.readouterr().out
    assert "comparing with the newest recorded run of each case" in out and "performance gate FAILED" in out


def test_bench_suite_bad_input_is_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[x]\ncases = [{ model = "tiny-svd", colour = "red" }]\n')
    for args, words in (
        (["nope"], "no benchmark suite 'nope'"),
        (["x", "--file", str(bad)], "colour is no run-bench option"),
        (["ci", "--threshold", "10"], "are --gate options"),
        ([], "needs a suite name"),
        (["ci", "--file", str(tmp_path / "none.toml")], "no such suites file"),
    ):
        assert main(["bench-suite", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
