"""Plots of benchmark results (matplotlib, drawn off-screen): ``run-bench --plot``'s stage
breakdown of one run, engine against baseline."""

from __future__ import annotations

import io
from pathlib import Path

from vidrt.errors import VidrtError

from .report import STAGE_ROWS


def pyplot():
    """matplotlib's pyplot on the off-screen Agg backend.

    Raises:
        VidrtError: matplotlib is not installed.
    """
    try:
        import matplotlib
    except ImportError:
        raise VidrtError("plots need matplotlib: pip install 'vidrt[track]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def stage_breakdown(result: dict, path: str | Path) -> Path:
    """Draws one run-bench result's per-stage medians as stacked bars (vidrt's engines and,
    when it ran, the diffusers baseline), each bar's end-to-end median beside it; writes
    a PNG to ``path`` atomically. Returns the path."""
    from vidrt.fsutil import atomic_write_text

    plt = pyplot()
    sides = [("vidrt " + result["engine"]["backend"] + " " + result["engine"]["precision"], result["engine"])]
    if result.get("baseline"):
        sides.append(("diffusers " + result["baseline"]["precision"], result["baseline"]))
    stages = [s for s in STAGE_ROWS if not s.endswith("_step") and (result["engine"]["stages_ms"].get(s) or {}).get("median")]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.7 * len(sides)))
    colors = plt.get_cmap("tab10").colors
    for y, (_, side) in enumerate(sides):
        left = 0.0
        for i, stage in enumerate(stages):
            seconds = (side["stages_ms"].get(stage) or {}).get("median", 0.0) / 1000
            ax.barh(y, seconds, left=left, color=colors[i % len(colors)], label=stage if y == 0 else None)
            left += seconds
        ax.text(side["end_to_end_s"]["median"], y, f"  {side['end_to_end_s']['median']:.2f} s", va="center")
    ax.set_yticks(range(len(sides)), [name for name, _ in sides])
    ax.invert_yaxis()
    ax.set_xlabel("seconds (median of the timed runs)")
    speedup = f", speedup {result['speedup']:.2f}x" if result.get("speedup") else ""
    ax.set_title(f"{result['model']['label']}{speedup}", fontsize=9)
    ax.legend(loc="lower right", fontsize=8, ncols=len(stages))
    ax.margins(x=0.15)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_text(path, buf.getvalue())
    return Path(path)
