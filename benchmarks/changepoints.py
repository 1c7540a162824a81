"""Change points in a benchmark's history: where its level stepped, beyond noise.

Two steps, as asv's step detection and benchstat's tests suggest. First, an exact
piecewise-constant fit: the partition of the series into segments that minimises the
sum of absolute deviations from each segment's median plus a penalty per segment
(the L1 Potts problem asv's ``step_detect.py`` solves; written here from that
formulation), the penalty scaled by the noise of one run (from the records' timed runs;
from the series itself where those are missing). Then every proposed step is
kept only if a Mann-Whitney U test between the timed runs of the records on either side
finds the two levels different at alpha / (n - 1): the fit picked the split among n - 1
places, so the plain p-value of the split it picked would be too small (Bonferroni over
the candidates). A step the raw samples cannot tell apart is noise the fit happened to pick.
"""

from __future__ import annotations

import dataclasses

import numpy as np

ALPHA = 0.01
PENALTY = 4.0  # segments cost this many noise scales: higher finds fewer steps


@dataclasses.dataclass(frozen=True)
class Step:
    """The level changed between record ``index - 1`` and record ``index``."""

    index: int
    before: float  # the median level of the segment before
    after: float
    p_value: float

    @property
    def ratio(self) -> float:
        return self.after / self.before


def noise_scale(values: np.ndarray) -> float:
    """A robust scale of the point-to-point noise: the median absolute difference of
    neighbours over 0.6745 * sqrt(2) (the normal MAD constant, for a difference of two);
    steps are rare, so they barely move it."""
    if len(values) < 3:
        return float(np.abs(values).mean() * 0.05) or 1.0
    scale = float(np.median(np.abs(np.diff(values)))) / (0.6745 * np.sqrt(2))
    return scale or float(np.abs(values).mean() * 0.01) or 1.0


def run_scale(samples) -> float | None:
    """The spread of one run: the median over records of their runs' 1.4826 * MAD (a
    standard deviation were the runs normal). Larger than a median's own noise, which
    leaves room for what moves between records (the machine's state on the day)."""
    scales = [1.4826 * float(np.median(np.abs(np.asarray(s) - np.median(s)))) for s in samples if s and len(s) >= 3]
    scales = [x for x in scales if x > 0]
    return float(np.median(scales)) if scales else None


def fit_segments(values, penalty: float | None = None, scale: float | None = None) -> list[int]:
    """The start indices of the optimal segments (the first is 0), by exact dynamic
    programming over every segmentation: O(n^2) segment costs, fine for a history of
    hundreds of records. The penalty is in units of ``scale`` (default: noise_scale of
    the series, which needs a dozen points or so to be right: with three, a step is most
    of their differences)."""
    y = np.asarray(values, dtype=float)
    n = len(y)
    if n < 2:
        return [0]
    gamma = (PENALTY if penalty is None else penalty) * (scale or noise_scale(y))
    # cost[i, j]: absolute deviation of y[i:j+1] from its median.
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    start = np.zeros(n + 1, dtype=int)
    for j in range(1, n + 1):
        for i in range(j):
            seg = y[i:j]
            c = best[i] + np.abs(seg - np.median(seg)).sum() + gamma
            if c < best[j]:
                best[j], start[j] = c, i
    cuts, j = [], n
    while j > 0:
        cuts.append(int(start[j]))
        j = start[j]
    return sorted(cuts)


def change_points(medians, samples=None, alpha: float = ALPHA, penalty: float | None = None) -> list[Step]:
    """Steps in a series of per-record medians. ``samples`` (each record's timed runs, one
    value per run: per-step figures would count one run many times) confirm each step by a
    rank test between the records on either side; without them
    every fitted step is kept, with p_value nan.

    Returns:
        The confirmed steps, oldest first.
    """
    from scipy import stats

    y = np.asarray(medians, dtype=float)
    cuts = fit_segments(y, penalty, run_scale(samples) if samples is not None else None)
    level = alpha / max(len(y) - 1, 1)
    bounds = cuts + [len(y)]
    steps = []
    for k in range(1, len(cuts)):
        left, right = slice(bounds[k - 1], bounds[k]), slice(bounds[k], bounds[k + 1])
        p = float("nan")
        if samples is not None:
            a = [v for s in samples[left] for v in (s or ())]
            b = [v for s in samples[right] for v in (s or ())]
            if len(a) < 2 or len(b) < 2:
                continue
            p = float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
            if not p < level:
                continue
        steps.append(Step(bounds[k], float(np.median(y[left])), float(np.median(y[right])), p))
    return steps
