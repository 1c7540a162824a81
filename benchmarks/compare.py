"""Comparing two run-bench results: did NEW get slower than BASE, beyond noise?

Per stage and end to end, the change is the ratio of medians (NEW over BASE) with a 95%
bootstrap interval over the timed runs' samples, and a Mann-Whitney U rank test (asv
and benchstat judge changes the same way). A change is significant when the test's
p-value is below ``alpha`` and the interval excludes 1; a significant slowdown beyond
``threshold`` is a regression. The engine's speedup over diffusers is compared too,
from each run's pair (baseline run over the engine run beside it, which the harness
interleaves): noise that slows the whole machine cancels in it.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np

from vidrt.errors import VidrtError

from .results import describe_case, differences, git_of

ALPHA = 0.05
THRESHOLD = 0.05
RESAMPLES = 2000
# Engine stages below this share of the end-to-end median are reported but do not gate: a
# 5 ms encoder's relative noise is tens of percent on a shared CPU, and its slowdown is
# already in end to end when it matters. Fewer gated rows also keep an unchanged rerun's
# chance of failing some row near alpha.
GATED_SHARE = 0.10


@dataclasses.dataclass(frozen=True)
class Metric:
    """One figure of a result: its median and the timed runs' values (None in schema 1)."""

    name: str
    unit: str
    median: float
    samples: tuple[float, ...] | None
    gates: bool  # a significant slowdown of it is a regression (the engine's own times)
    higher_is_better: bool = False


@dataclasses.dataclass(frozen=True)
class Row:
    """One metric of a comparison."""

    metric: Metric
    base: float
    new: float
    ratio: float  # new / base
    interval: tuple[float, float] | None  # 95% bootstrap interval of the ratio
    p_value: float | None
    verdict: str  # "slower", "faster", "~" (no change within noise), "no samples"
    regression: bool


def metrics(result: dict) -> dict[str, Metric]:
    """The figures a comparison looks at: the engine's stages (and per-step times) and end
    to end, diffusers' end to end, and the speedup."""
    out = {}
    engine = result["engine"]
    end_to_end_ms = 1000 * engine["end_to_end_s"]["median"]
    runs = len(engine["end_to_end_s"].get("samples") or ())
    for stage, stats in engine["stages_ms"].items():
        if stats and stats["median"] > 0:
            # A per-step figure has a value per step: its share of a run is steps x median.
            per_run = len(stats["samples"]) // runs if runs and stats.get("samples") else 1
            out[stage] = _metric(stage, "ms", stats, gates=per_run * stats["median"] >= GATED_SHARE * end_to_end_ms)
    out["end to end"] = _metric("end to end", "s", engine["end_to_end_s"], gates=True)
    baseline = result.get("baseline")
    if baseline:
        out["diffusers end to end"] = _metric("diffusers end to end", "s", baseline["end_to_end_s"], gates=False)
        e, b = engine["end_to_end_s"].get("samples"), baseline["end_to_end_s"].get("samples")
        pairs = tuple(x / y for x, y in zip(b, e)) if e and b and len(e) == len(b) else None
        # From the two medians, as the harness computes it, so a result edited or subset by
        # hand cannot carry a stale "speedup" field into the comparison.
        speedup = baseline["end_to_end_s"]["median"] / engine["end_to_end_s"]["median"]
        out["speedup"] = Metric("speedup", "x", speedup, pairs, gates=False, higher_is_better=True)
    return out


def _metric(name: str, unit: str, stats: dict, gates: bool) -> Metric:
    samples = stats.get("samples")
    return Metric(name, unit, stats["median"], tuple(samples) if samples else None, gates)


def compare(base: dict, new: dict, threshold: float = THRESHOLD, force: bool = False,
            alpha: float = ALPHA, resamples: int = RESAMPLES, seed: int = 0) -> list[Row]:
    """Rows for the metrics both results have, in BASE's order.

    Raises:
        VidrtError: the results measure different cases or machines (unless ``force``),
            or ``threshold`` is negative.
    """
    if not threshold >= 0:
        raise VidrtError(f"--threshold {threshold}: give a fraction >= 0, e.g. 0.05 for 5%")
    diff = differences(base, new)
    if diff and not force:
        raise VidrtError("the two results measure different things (" + "; ".join(diff)
                         + "); compare runs of one case on one machine, or pass --force")
    rng = np.random.default_rng(seed)
    a, b = metrics(base), metrics(new)
    return [compare_samples(a[k], b[k], threshold, alpha, resamples, rng) for k in a if k in b]


def compare_samples(a: Metric, b: Metric, threshold: float = THRESHOLD, alpha: float = ALPHA,
                    resamples: int = RESAMPLES, rng=None) -> Row:
    """One metric, BASE ``a`` against NEW ``b``."""
    ratio = b.median / a.median if a.median else math.inf
    if not a.samples or not b.samples or len(a.samples) < 2 or len(b.samples) < 2:
        return Row(b, a.median, b.median, ratio, None, None, "no samples", False)
    stats = _scipy_stats()

    x, y = np.asarray(a.samples, dtype=float), np.asarray(b.samples, dtype=float)
    with warnings.catch_warnings():  # identical samples make a degenerate interval, which is the answer
        warnings.simplefilter("ignore")
        ci = stats.bootstrap((x, y), _ratio_of_medians, vectorized=True, n_resamples=resamples,
                             method="percentile", rng=rng).confidence_interval
        p = float(stats.mannwhitneyu(x, y, alternative="two-sided").pvalue)
    low, high = float(ci.low), float(ci.high)
    significant = p < alpha and not low <= 1.0 <= high
    worse = ratio < 1.0 if b.higher_is_better else ratio > 1.0
    if not significant:
        verdict = "~"
    elif b.higher_is_better:
        verdict = "lower" if worse else "higher"
    else:
        verdict = "slower" if worse else "faster"
    beyond = (1.0 / ratio if b.higher_is_better else ratio) > 1.0 + threshold
    return Row(b, a.median, b.median, ratio, (low, high), p, verdict, b.gates and significant and worse and beyond)


def _scipy_stats():
    try:
        from scipy import stats
    except ImportError:
        raise VidrtError("vidrt compare needs scipy: pip install 'vidrt[track]'") from None
    return stats


def _ratio_of_medians(x, y, axis=-1):
    return np.median(y, axis=axis) / np.median(x, axis=axis)


def smallest_p(n1: int, n2: int) -> float:
    """The smallest two-sided p-value a rank test can give with n1 and n2 samples: below
    alpha only with enough runs (3 against 3 cannot go under 0.1)."""
    return 2.0 / math.comb(n1 + n2, n1)


def format_comparison(base: dict, new: dict, rows: list[Row], threshold: float = THRESHOLD) -> str:
    """A benchstat-like table, and why a change could not be judged when that is so."""
    def sha(result):
        git = git_of(result)
        return (git["sha"] or "?")[:12] + ("-dirty" if git["dirty"] else "")

    lines = [f"case: {describe_case(new['case'])}",
             f"machine: {new['machine']['cpu']} ({new['machine']['cores']} cpus)",
             f"base {sha(base)} vs new {sha(new)}; change = new/base of the medians, 95% bootstrap interval, "
             f"Mann-Whitney U p-value; regression = significant slowdown beyond {100 * threshold:g}% "
             f"of a metric without * (* = below {100 * GATED_SHARE:g}% of end to end, or not the engine's own time)", "",
             f"{'metric':<22}{'base':>12}{'new':>12}{'change':>9}  {'95% interval':<17}{'p':>7}  verdict"]
    for r in rows:
        interval = f"[{_pct(r.interval[0])}, {_pct(r.interval[1])}]" if r.interval else "-"
        p = f"{r.p_value:.3f}" if r.p_value is not None else "-"
        flag = "  REGRESSION" if r.regression else ""
        name = r.metric.name + ("" if r.metric.gates else " *")
        lines.append(f"{name:<22}{_value(r.base, r.metric.unit):>12}{_value(r.new, r.metric.unit):>12}"
                     f"{_pct(r.ratio):>9}  {interval:<17}{p:>7}  {r.verdict}{flag}")
    note = drift_note(rows)
    if note:
        lines.append(note)
    n1, n2 = (len(metrics(r)["end to end"].samples or ()) for r in (base, new))
    if min(n1, n2) < 2:
        lines.append("no samples: one side is a schema 1 result or had a single run; rerun with --runs 5 or more")
    elif smallest_p(n1, n2) >= ALPHA:
        lines.append(f"with {n1} and {n2} runs the rank test cannot reach p < {ALPHA}: "
                     "every change reads as noise; rerun with --runs 5 or more")
    return "\n".join(lines)


def drift_note(rows: list[Row]) -> str | None:
    """When diffusers, which no vidrt change touches, got significantly slower as well as a
    regressed engine metric, the machine more likely changed between the two runs than the
    engine: says so (the verdict stands; bench-ab, which interleaves, settles it)."""
    by_name = {r.metric.name: r for r in rows}
    baseline = by_name.get("diffusers end to end")
    if baseline is None or baseline.verdict != "slower" or not any(r.regression for r in rows):
        return None
    return (f"note: diffusers got {_pct(baseline.ratio)} slower between these runs too, and the speedup moved "
            f"{_pct(by_name['speedup'].ratio) if 'speedup' in by_name else '?'}: the machine more likely changed than "
            "the engine; vidrt bench-ab (runs interleaved) tells which")


def _pct(ratio: float) -> str:
    return f"{100 * (ratio - 1):+.1f}%" if math.isfinite(ratio) else "inf"


def _value(v: float, unit: str) -> str:
    return f"{v:.3f}{unit}" if unit == "x" else f"{v:.1f} {unit}" if v >= 100 else f"{v:.3g} {unit}"
