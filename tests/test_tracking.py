"""Performance tracking: comparisons judged on recorded samples of real runs, schema 1 files,
refusals, and the history store under concurrent appends.

The recorded runs (tests/data/tiny_svd_runs.json) are one run-bench of tiny-svd with 30
timed runs a side; the command and machine are in the file's "config" and "machine"
(`vidrt run-bench --model tiny-svd --backend onnxruntime --height 64 --width 64
--num-frames 4 --steps 4 --runs 30 --warmup 2`, a 2-core Xeon with AVX512-VNNI and no
AMX; the UNet's robust spread there is ~5%, end to end ~5%). A
trial draws 20 of the 30 runs without replacement, gives 10 to BASE and 10 to NEW, and
for the slowdown control multiplies NEW's values of one stage by 1.2.
"""

import copy
import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from vidrt.benchmarks.compare import GATED_SHARE, Metric, compare, compare_samples, metrics, smallest_p
from vidrt.benchmarks.history import append, records
from vidrt.benchmarks.results import load_result, upgrade
from vidrt.cli import main

RECORDED = Path(__file__).parent / "data" / "tiny_svd_runs.json"
TRIALS = 200


@pytest.fixture(scope="module")
def recorded():
    return load_result(RECORDED)


def _draws(values, rng, n=10):
    pick = rng.permutation(len(values))[: 2 * n]
    values = np.asarray(values)
    return values[pick[:n]], values[pick[n:]]


@pytest.mark.parametrize("stage", ["unet", "vae_decoder", "end to end"])
def test_a_1_2x_slowdown_of_one_stage_is_flagged_and_an_unchanged_rerun_is_not(recorded, stage):
    engine = recorded["engine"]
    samples = (engine["end_to_end_s"] if stage == "end to end" else engine["stages_ms"][stage])["samples"]
    assert len(samples) == 30
    rng = np.random.default_rng(0)
    slowed = unchanged = 0
    for _ in range(TRIALS):
        base, new = _draws(samples, rng)
        a = Metric(stage, "ms", float(np.median(base)), tuple(base), gates=True)
        same = Metric(stage, "ms", float(np.median(new)), tuple(new), gates=True)
        slow = Metric(stage, "ms", float(np.median(new * 1.2)), tuple(new * 1.2), gates=True)
        slowed += compare_samples(a, slow, rng=rng).regression
        unchanged += compare_samples(a, same, rng=rng).regression
    # The bars: >= 95% of 1.2x slowdowns flagged, <= 5% of unchanged reruns.
    assert slowed / TRIALS >= 0.95, slowed
    assert unchanged / TRIALS <= 0.05, unchanged


def _subset(result, runs):
    """``result`` as if only the timed runs ``runs`` (indices) had been made."""
    out = copy.deepcopy(result)
    for side in ("engine", "baseline"):
        for stats in [*out[side]["stages_ms"].values(), out[side]["end_to_end_s"]]:
            if stats:
                per_run = len(stats["samples"]) // 30  # the per-step figures have one value per step
                values = [stats["samples"][i * per_run + j] for i in runs for j in range(per_run)]
                stats.update(samples=values, median=float(np.median(values)), min=min(values), max=max(values))
    out["speedup"] = out["baseline"]["end_to_end_s"]["median"] / out["engine"]["end_to_end_s"]["median"]
    return out


def test_an_unchanged_rerun_fails_the_gate_rarely_over_a_whole_table(recorded):
    """Every metric at once, as a compare table judges them: an unchanged rerun fails the
    gate in at most 5% of trials."""
    rng = np.random.default_rng(1)
    trials = TRIALS // 4
    failed = 0
    for _ in range(trials):
        pick = rng.permutation(30)
        base, new = _subset(recorded, pick[:10]), _subset(recorded, pick[10:20])
        failed += any(row.regression for row in compare(base, new, seed=int(rng.integers(1 << 30))))
    assert failed / trials <= 0.05, failed


def test_small_stages_are_reported_but_do_not_gate(recorded):
    """A stage under GATED_SHARE of end to end (the 5 ms image encoder) is compared, but a
    slowdown of it alone is no regression."""
    gated = {name for name, m in metrics(recorded).items() if m.gates}
    assert gated == {"unet", "unet_step", "end to end"}, gated  # the VAE decoder is ~7% here
    end_to_end_ms = 1000 * recorded["engine"]["end_to_end_s"]["median"]
    assert recorded["engine"]["stages_ms"]["image_encoder"]["median"] < GATED_SHARE * end_to_end_ms
    slow = copy.deepcopy(recorded)
    for stage in ("image_encoder", "vae_encoder"):
        stats = slow["engine"]["stages_ms"][stage]
        stats.update(median=stats["median"] * 3, samples=[v * 3 for v in stats["samples"]])
    rows = {r.metric.name: r for r in compare(recorded, slow)}
    assert rows["image_encoder"].verdict == "slower" and not rows["image_encoder"].regression
    assert not any(r.regression for r in rows.values())


def test_three_runs_a_side_cannot_be_significant():
    """With 3 against 3 a rank test's smallest p is 0.1: the table says so instead of
    calling every change noise silently."""
    assert smallest_p(3, 3) == pytest.approx(0.1)
    assert smallest_p(10, 10) < 1e-4
    a = Metric("unet", "ms", 10.0, (10.0, 10.1, 9.9), gates=True)
    b = Metric("unet", "ms", 20.0, (20.0, 20.1, 19.9), gates=True)
    row = compare_samples(a, b)
    assert row.ratio == pytest.approx(2.0) and row.verdict == "~" and not row.regression


def test_a_faster_engine_and_a_lower_speedup_read_as_such(recorded):
    base, new = copy.deepcopy(recorded), copy.deepcopy(recorded)
    for stats in [*new["engine"]["stages_ms"].values(), new["engine"]["end_to_end_s"]]:
        if stats:
            stats.update({k: v * 0.5 for k, v in stats.items() if k != "samples"}, samples=[v * 0.5 for v in stats["samples"]])
    rows = {r.metric.name: r for r in compare(base, new)}
    assert rows["end to end"].verdict == "faster" and not rows["end to end"].regression
    assert rows["speedup"].verdict == "higher" and rows["speedup"].ratio == pytest.approx(2.0, rel=0.05)
    assert rows["diffusers end to end"].verdict == "~"
    rows = {r.metric.name: r for r in compare(new, base)}  # the other way: slower, a regression
    assert rows["end to end"].verdict == "slower" and rows["end to end"].regression
    assert rows["speedup"].verdict == "lower" and not rows["speedup"].regression  # the gate is the engine's own times


def test_compare_cli_exit_codes_and_refusals(capsys, recorded, tmp_path):
    slow = copy.deepcopy(recorded)
    stats = slow["engine"]["stages_ms"]["unet"]
    stats.update(median=stats["median"] * 2, samples=[v * 2 for v in stats["samples"]])
    other = copy.deepcopy(recorded)
    other["case"]["precision"] = "bf16"
    paths = {}
    for name, r in (("base", recorded), ("slow", slow), ("other", other)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(r))
    assert main(["compare", str(paths["base"]), str(paths["slow"])]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "+100.0%" in out
    assert main(["compare", str(paths["base"]), str(paths["slow"]), "--threshold", "150"]) == 0  # within 150%
    capsys.readouterr()
    assert main(["compare", str(paths["base"]), str(paths["other"])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "case precision: fp32 vs bf16" in err and "--force" in err
    assert main(["compare", str(paths["base"]), str(paths["other"]), "--force"]) == 0
    capsys.readouterr()
    (tmp_path / "junk.json").write_text("{not json")
    assert main(["compare", str(paths["base"]), str(tmp_path / "junk.json")]) == 2
    assert "not readable as JSON" in capsys.readouterr().err
    assert main(["compare", str(paths["base"]), str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_a_schema_1_file_is_read_and_compared_without_intervals(capsys, recorded, tmp_path):
    """What run-bench wrote before schema 2: no samples, case, machine, or git fields."""
    old = copy.deepcopy(recorded)
    old["schema"] = 1
    for key in ("case", "machine"):
        del old[key]
    for side in ("engine", "baseline"):
        for stats in [*old[side]["stages_ms"].values(), old[side]["end_to_end_s"]]:
            if stats:
                del stats["samples"]
    old["config"]["component_precision"] = None
    upgraded = upgrade(copy.deepcopy(old), "old.json")
    assert upgraded["case"] == recorded["case"]
    assert upgraded["machine"]["cpu"] == recorded["machine"]["cpu"] and upgraded["machine"]["flags"] is None
    rows = compare(upgraded, recorded)  # the same machine: its unknown fields are no difference
    assert rows and all(r.verdict == "no samples" and r.interval is None for r in rows)
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert main(["compare", str(tmp_path / "old.json"), str(RECORDED)]) == 0
    assert "no samples: one side is a schema 1 result" in capsys.readouterr().out


def _append_many(folder, result, n):
    for i in range(n):
        append(result | {"seq": i}, folder)


def test_history_appends_whole_lines_from_two_processes_at_once(capsys, recorded, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(tmp_path, recorded, 25)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    (path,) = tmp_path.glob("*.jsonl")
    lines = path.read_text().splitlines()
    assert len(lines) == 50 and all(json.loads(line)["case"] == recorded["case"] for line in lines)
    # A writer killed mid-line leaves a partial record: it is skipped with a warning, and the
    # next append starts on a fresh line, so no whole record is lost.
    with open(path, "a") as f:
        f.write('{"schema": 2, "engine"')
    append(recorded, tmp_path)
    assert len(records(tmp_path)) == 51
    assert "skipping" in capsys.readouterr().err
    assert records(tmp_path, machine="no-such-machine") == []


def test_history_of_a_missing_folder_says_how_to_record(capsys, tmp_path):
    assert main(["history", str(tmp_path / "none")]) == 2
    assert "record some with run-bench --history" in capsys.readouterr().err


def test_a_slowdown_that_diffusers_shares_is_marked_as_the_machine(recorded):
    """Both sides 1.5x slower between two separate runs (a busier machine): still a
    regression by the numbers, with a note that diffusers moved too; the engine alone
    slower: no such note."""
    from vidrt.benchmarks.compare import drift_note

    def slowed(sides):
        out = copy.deepcopy(recorded)
        for side in sides:
            for stats in [*out[side]["stages_ms"].values(), out[side]["end_to_end_s"]]:
                if stats:
                    stats.update({k: v * 1.5 for k, v in stats.items() if k != "samples"},
                                 samples=[v * 1.5 for v in stats["samples"]])
        return out

    rows = compare(recorded, slowed(("engine", "baseline")))
    assert any(r.regression for r in rows) and "the machine more likely changed" in drift_note(rows)
    rows = compare(recorded, slowed(("engine",)))
    assert any(r.regression for r in rows) and drift_note(rows) is None
