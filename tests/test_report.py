"""vidrt report: change points on recorded samples, and the page in a real headless browser.

Histories here are made of the recorded runs in tests/data/tiny_svd_runs.json (see
tests/test_tracking.py): each record takes 10 of the 30 timed runs; a "regressed" record
multiplies the UNet's values (and each run's end to end by the UNet's added time) by 1.3.
"""

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest

from vidrt.benchmarks.changepoints import change_points, fit_segments
from vidrt.benchmarks.history import append
from vidrt.benchmarks.html_report import median_interval
from vidrt.benchmarks.results import load_result
from vidrt.cli import main

RECORDED = Path(__file__).parent / "data" / "tiny_svd_runs.json"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def recorded():
    return load_result(RECORDED)


def _record(recorded, runs, sha, unet_factor=1.0):
    """A history record of the timed runs ``runs`` (indices), the UNet slowed by ``unet_factor``."""
    out = copy.deepcopy(recorded)
    for side in ("engine", "baseline"):
        stages, e2e = out[side]["stages_ms"], out[side]["end_to_end_s"]
        factor = unet_factor if side == "engine" else 1.0
        unet = [stages["unet"]["samples"][i] for i in runs]
        for name, stats in [*stages.items(), ("e2e", e2e)]:
            if not stats:
                continue
            per_run = len(stats["samples"]) // 30
            values = [stats["samples"][i * per_run + j] for i in runs for j in range(per_run)]
            if name in ("unet", "unet_step"):
                values = [v * factor for v in values]
            if name == "e2e":  # the run took the UNet's added time longer
                values = [v + u * (factor - 1) / 1000 for v, u in zip(values, unet)]
            stats.update(samples=values, median=float(np.median(values)), min=min(values), max=max(values))
    out["speedup"] = out["baseline"]["end_to_end_s"]["median"] / out["engine"]["end_to_end_s"]["median"]
    out["environment"]["git"] = {"sha": sha * 40, "dirty": False}
    return out


def _history(recorded, factors, seed=0):
    rng = np.random.default_rng(seed)
    return [_record(recorded, rng.permutation(30)[:10], f"{i:x}"[-1], f) for i, f in enumerate(factors)]


def test_a_30_percent_step_is_found_where_it_happened_and_noise_is_not(recorded):
    found = missed = false = 0
    for seed in range(10):
        history = _history(recorded, [1.0] * 6 + [1.3] * 6, seed)
        medians = [r["engine"]["stages_ms"]["unet"]["median"] for r in history]
        samples = [r["engine"]["stages_ms"]["unet"]["samples"] for r in history]
        steps = change_points(medians, samples)
        found += [s.index for s in steps] == [6] and steps[0].ratio == pytest.approx(1.3, rel=0.1)
        missed += not steps
        flat = _history(recorded, [1.0] * 12, seed + 100)
        false += bool(change_points([r["engine"]["stages_ms"]["unet"]["median"] for r in flat],
                                    [r["engine"]["stages_ms"]["unet"]["samples"] for r in flat]))
    assert found >= 9 and false <= 1, (found, missed, false)


def test_the_step_fit_is_the_optimal_segmentation():
    """Against brute force over every segmentation of a short series (the L1 Potts cost)."""
    import itertools

    rng = np.random.default_rng(3)
    y = np.r_[rng.normal(10, 0.3, 5), rng.normal(13, 0.3, 4)]
    gamma = 4.0 * float(np.median(np.abs(np.diff(y)))) / (0.6745 * np.sqrt(2))

    def cost(cuts):
        b = [0, *cuts, len(y)]
        return sum(np.abs(y[i:j] - np.median(y[i:j])).sum() + gamma for i, j in zip(b, b[1:]))

    best = min((c for k in range(len(y)) for c in itertools.combinations(range(1, len(y)), k)), key=cost)
    assert fit_segments(y) == [0, *best] == [0, 5]


def test_median_interval_is_the_binomial_order_statistics():
    # n = 10: P(Bin(10, 1/2) <= 1) = 0.0107 < 0.025 <= P(<= 2) = 0.0547, so [x_(2), x_(9)].
    assert median_interval(list(range(1, 11))) == (2.0, 9.0)
    assert median_interval([5.0, 1.0, 3.0]) == (1.0, 5.0)  # too few runs: min..max


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium; .ci/run installs it)")
def test_report_renders_in_headless_chromium_with_its_plots(recorded, tmp_path, capsys):
    pytest.importorskip("playwright", reason="needs playwright (pip install -e '.[test]')")
    from playwright.sync_api import sync_playwright

    history = tmp_path / "history"
    for r in _history(recorded, [1.0] * 5 + [1.3] * 5):
        append(r, history)
    other = _record(recorded, range(10), "e")
    other["case"]["height"] = other["case"]["width"] = 96  # a second case: its own section
    append(other, history)
    out = tmp_path / "report.html"
    assert main(["report", str(history), "--output", str(out)]) == 0
    page_text = out.read_text()
    assert "http://" not in page_text and "https://" not in page_text and "<script" not in page_text  # self-contained

    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(out.as_uri())
        page.wait_for_load_state("load")
        sizes = page.eval_on_selector_all("img.plot", "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        sections = page.locator("h2").count()
        steps = page.locator(".steps").first.inner_text()
        rows = page.locator("table").first.inner_text()
        browser.close()
    assert errors == []
    assert sections == 2 and len(sizes) == 4
    assert all(done and w > 300 and h > 100 for done, w, h in sizes), sizes
    assert "unet: +3" in steps or "unet: +2" in steps, steps  # the 1.3x step, found by the page's method
    assert "end to end" in rows
