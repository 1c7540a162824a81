"""``vidrt report DIR --output report.html``: the performance history as one HTML page.

Per case (model, engines, request) and machine: each gated stage's median over the
recorded runs with a 95% interval band, the change points found in it
(benchmarks/changepoints.py), the speedup against diffusers over time, memory over time,
and a table of the latest run against the one before it (vidrt compare's rows). The page
is self-contained: plots are PNGs inside it, no script and no network.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np
from scipy import stats as sps

from vidrt.errors import VidrtError

from .changepoints import change_points
from .compare import compare, drift_note, metrics
from .results import describe_case, git_of


def median_interval(samples, level: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median: the order statistics whose ranks the
    binomial(n, 1/2) distribution puts around it. Below 6 runs it is [min, max], whose
    coverage is lower than ``level``."""
    x = np.sort(np.asarray(samples, dtype=float))
    n = len(x)
    k = int(sps.binom.ppf((1 - level) / 2, n, 0.5))  # the interval is [x_(k), x_(n-k+1)], 1-based
    if k < 1:
        return float(x[0]), float(x[-1])
    return float(x[k - 1]), float(x[n - k])


def cases(entries: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Records grouped by (machine id, case), oldest first."""
    out: dict[tuple[str, str], list[dict]] = {}
    for r in entries:
        key = (r["machine"].get("id") or "?", json.dumps(r["case"], sort_keys=True))
        out.setdefault(key, []).append(r)
    return out


def _series(records: list[dict]) -> dict[str, list]:
    """Per metric name: the records' Metric (None where a record lacks it)."""
    per = [metrics(r) for r in records]
    # Per-step figures are left out: their samples are several per run, which a rank test
    # would take for independent runs (the stage itself carries the same change).
    names = [n for n, x in per[-1].items() if x.gates and not n.endswith("_step")]
    return {n: [m.get(n) for m in per] for n in names}


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _labels(records):
    return [(git_of(r)["sha"] or "?")[:7] for r in records]


def stage_figure(records: list[dict]) -> tuple[str, dict[str, list]]:
    """One panel per gated metric: medians, 95% bands, change points. Returns the PNG
    (base64) and each metric's confirmed steps."""
    from .plots import pyplot

    plt = pyplot()
    series = _series(records)
    fig, axes = plt.subplots(len(series), 1, figsize=(9, 2.3 * len(series)), squeeze=False, sharex=True)
    x = np.arange(len(records))
    found = {}
    for ax, (name, ms) in zip(axes[:, 0], series.items()):
        keep = [i for i, m in enumerate(ms) if m is not None]
        med = np.array([ms[i].median for i in keep])
        bands = [median_interval(ms[i].samples) if ms[i].samples else (ms[i].median, ms[i].median) for i in keep]
        ax.plot(x[keep], med, "o-", ms=3, lw=1, color="C0")
        ax.fill_between(x[keep], [b[0] for b in bands], [b[1] for b in bands], color="C0", alpha=0.2, lw=0)
        steps = change_points(med, [ms[i].samples for i in keep])
        found[name] = [(keep[s.index], s) for s in steps]
        for idx, s in found[name]:
            ax.axvline(idx - 0.5, color="C3", ls="--", lw=1)
            ax.annotate(f"{100 * (s.ratio - 1):+.0f}%", (idx - 0.5, ax.get_ylim()[1]), color="C3",
                        fontsize=8, ha="left", va="top")
        ax.set_ylabel(f"{name} ({ms[keep[-1]].unit})", fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xticks(x, _labels(records), rotation=60, fontsize=7)
    fig.suptitle("engine medians per run, 95% interval of each median; dashed: change points", fontsize=9)
    out = _png(fig)
    plt.close(fig)
    return out, found


def trend_figure(records: list[dict]) -> str:
    """Speedup against diffusers (where measured) and peak memory over time."""
    from .plots import pyplot

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 2.6))
    x = np.arange(len(records))
    speed = [(i, r["speedup"]) for i, r in enumerate(records) if r.get("speedup")]
    if speed:
        a.plot(*zip(*speed), "o-", ms=3, lw=1, color="C2")
        a.axhline(1.0, color="grey", lw=0.8)
    else:
        a.text(0.5, 0.5, "no diffusers baseline in these runs", ha="center", va="center", transform=a.transAxes, fontsize=8)
    a.set_title("speedup over diffusers (x)", fontsize=9)
    for key, label, side in (("peak_memory_mb", "engine", "engine"), ("peak_memory_mb", "diffusers", "baseline")):
        pts = [(i, r[side][key] / 1024) for i, r in enumerate(records) if r.get(side) and r[side].get(key)]
        if pts:
            b.plot(*zip(*pts), "o-", ms=3, lw=1, label=label)
    both = [(i, r["peak_memory_both_mb"] / 1024) for i, r in enumerate(records) if r.get("peak_memory_both_mb")]
    if both:
        b.plot(*zip(*both), "o--", ms=3, lw=1, label="both processes")
    b.legend(fontsize=7)
    b.set_title("peak RSS (GiB)", fontsize=9)
    for ax in (a, b):
        ax.set_xticks(x, _labels(records), rotation=60, fontsize=7)
        ax.grid(alpha=0.3)
    out = _png(fig)
    plt.close(fig)
    return out


def _summary_rows(records: list[dict]) -> str:
    if len(records) < 2:
        return "<p>one run recorded: nothing to compare yet</p>"
    rows = compare(records[-2], records[-1], force=True)
    cells = []
    for r in rows:
        interval = f"{100 * (r.interval[0] - 1):+.1f}% .. {100 * (r.interval[1] - 1):+.1f}%" if r.interval else "-"
        cls = "bad" if r.regression else ("good" if r.verdict in ("faster", "higher") else "")
        p = f"{r.p_value:.3f}" if r.p_value is not None else "-"
        change = f"{100 * (r.ratio - 1):+.1f}%" if math.isfinite(r.ratio) else "inf"
        cells.append(f"<tr class='{cls}'><td>{html.escape(r.metric.name)}</td><td>{r.base:.4g}</td><td>{r.new:.4g}</td>"
                     f"<td>{change}</td><td>{interval}</td><td>{p}</td><td>{html.escape(r.verdict)}"
                     f"{' REGRESSION' if r.regression else ''}</td></tr>")
    head = "<tr><th>metric</th><th>previous</th><th>latest</th><th>change</th><th>95% interval</th><th>p</th><th>verdict</th></tr>"
    note = drift_note(rows)
    return f"<table>{head}{''.join(cells)}</table>" + (f"<p class='note'>{html.escape(note)}</p>" if note else "")


STYLE = """body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
td:first-child{text-align:left}tr.bad{background:#fdd}tr.good{background:#dfd}img{max-width:100%}
.steps{font-size:13px}h2{font-size:17px;margin-top:2em}"""


def render(entries: list[dict], title: str = "vidrt performance history") -> str:
    """The report page for these history records."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
             f"<p>{len(entries)} recorded runs. Change points: an exact L1 piecewise-constant fit, each step confirmed by "
             "a Mann-Whitney U test over the timed runs on either side (p &lt; 0.01 over the number of places a step could be). Summary: the latest run against the "
             "one before it (vidrt compare).</p>"]
    for n, ((machine_id, _), records) in enumerate(cases(entries).items()):
        last = records[-1]
        m = last["machine"]
        stage_png, found = stage_figure(records)
        steps = [f"<li>{html.escape(name)}: {100 * (s.ratio - 1):+.1f}% at {_labels([records[i]])[0]} "
                 f"(p={s.p_value:.2g})</li>" for name, hits in found.items() for i, s in hits]
        parts.append(
            f"<h2 id='case-{n}'>{html.escape(describe_case(last['case']))}</h2>"
            f"<p>machine {html.escape(machine_id)}: {html.escape(str(m.get('cpu')))}, {m.get('cores')} cores, "
            f"flags {html.escape(', '.join(m.get('flags') or []) or 'unknown')}; {len(records)} runs from "
            f"{html.escape(records[0].get('recorded_at', '?'))} to {html.escape(last.get('recorded_at', '?'))}</p>"
            f"<h3>latest against previous</h3>{_summary_rows(records)}"
            f"<h3>stages over time</h3><img class='plot' alt='stage medians' src='data:image/png;base64,{stage_png}'>"
            f"<div class='steps'><b>change points</b><ul>{''.join(steps) or '<li>none found</li>'}</ul></div>"
            f"<h3>speedup and memory</h3><img class='plot' alt='speedup and memory' "
            f"src='data:image/png;base64,{trend_figure(records)}'>")
    parts.append("</body></html>")
    return "".join(parts)


def write_report(directory, output: str | Path, machine: str | None = None, model: str | None = None) -> Path:
    """Renders the history in ``directory`` to ``output`` (written atomically).

    Raises:
        VidrtError: no history there, or no records matching the filters.
    """
    from vidrt.fsutil import atomic_write_text

    from .history import records

    entries = [r for r in records(directory, machine) if model in (None, r["case"]["model"])]
    if not entries:
        raise VidrtError(f"no recorded runs{' of ' + model if model else ''} in the history; record some with "
                         "run-bench --history or vidrt bench-suite")
    atomic_write_text(output, render(entries))
    return Path(output)
