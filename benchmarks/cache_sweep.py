"""Step caching across thresholds: vidrt's cache and diffusers' own hook, in one run.

``vidrt run-bench --cache first-block --cache-sweep 0,0.05,0.1,0.2 ...`` loads both sides
once (vidrt's head/body/out engines; diffusers' pipeline in its worker, with the hook),
warms each up with a one-step request at the benchmark's shape, then for every timed
round runs each threshold on both sides, alternating, on the same inputs and seed. Per
threshold it reports end-to-end and transformer seconds, evaluations run and skipped,
each side's frames against its own threshold-0 frames (what caching costs in quality)
and the two sides' frames against each other, and the time a skipped evaluation saved
as a fraction of a full one (saved_per_skip, from the transformer's median seconds
against the first threshold's).
"""

from __future__ import annotations

import dataclasses
import statistics

from vidrt.errors import VidrtError

from .harness import BenchConfig, Sides, _engine_run, parity, summary


def parse_thresholds(text: str) -> list[float]:
    """'0,0.05,0.1' -> [0.0, 0.05, 0.1] (0 first: every other row is measured against it).

    Raises:
        VidrtError: not numbers, or no 0 among them.
    """
    try:
        values = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise VidrtError(f"--cache-sweep {text}: write thresholds separated by commas, e.g. 0,0.05,0.1,0.2") from None
    if not values or values[0] != 0.0:
        raise VidrtError(f"--cache-sweep {text}: include 0 (no skipping), the row the others are measured against")
    return values


def run_sweep(cfg: BenchConfig, thresholds: list[float], progress: bool = True) -> dict:
    """The sweep described in the module docstring; returns its JSON-ready result."""
    from tqdm.auto import tqdm

    if cfg.cache is None:
        raise VidrtError("--cache-sweep needs --cache first-block or --cache mag")
    cfg = dataclasses.replace(cfg, cache_threshold=thresholds[0])
    sides = Sides(cfg, cfg.baseline_precision or cfg.precision, progress)
    pipe = sides.load_engines()
    baseline = sides.load_baseline() if sides.with_baseline else None
    inputs, kwargs = cfg.inputs(sides.model), cfg.request(sides.model)
    try:
        for _ in range(cfg.warmup):  # weights packed and shapes compiled on both sides, at one step
            _engine_run(pipe, inputs, cfg, kwargs | {"num_inference_steps": 1})
            if baseline is not None:
                baseline.set_cache(cfg.cache_config(), 1)
                baseline.run(inputs, cfg.seed, kwargs | {"num_inference_steps": 1})
        rows = {t: {"engine": [], "baseline": []} for t in thresholds}
        for _ in tqdm(range(cfg.runs), desc="sweep rounds", disable=not progress, unit="round"):
            for t in thresholds:
                config = dataclasses.replace(cfg, cache_threshold=t).cache_config()
                pipe.set_cache(config)
                rows[t]["engine"].append(_engine_run(pipe, inputs, cfg, kwargs))
                if baseline is not None:
                    baseline.set_cache(config, cfg.steps)
                    rows[t]["baseline"].append(baseline.run(inputs, cfg.seed, kwargs))
    finally:
        sides.close()
    denoiser = sides.model.denoiser
    table = [_row(t, rows[t], rows[thresholds[0]], denoiser) for t in thresholds]
    return {"config": dataclasses.asdict(cfg) | {"thresholds": thresholds}, "model": sides.model.label,
            "backend": sides.backend, "rows": table}


def _row(t: float, runs: dict, base: dict, denoiser: str) -> dict:
    row = {"threshold": t}
    for side in ("engine", "baseline"):
        mine, zero = runs[side], base[side]
        if not mine:
            continue
        seconds = statistics.median(r["stages"].get(denoiser, 0.0) for r in mine)
        zero_s = statistics.median(r["stages"].get(denoiser, 0.0) for r in zero)
        counts, counts0 = _counts(mine[-1]["cache"]), _counts(zero[-1]["cache"])
        saved = saved_per_skip(zero_s, counts0["full"], counts0["skipped"], seconds, counts["skipped"])
        row[side] = {"end_to_end_s": summary([r["total"] for r in mine]), f"{denoiser}_s": seconds, **counts,
                     "saved_per_skip_of_full": saved, "step_full_vs_skipped_s": step_medians(mine),
                     "step_s": [list(r["unet_steps"]) for r in mine],
                     "vs_no_cache": parity(mine[-1]["frames"], zero[-1]["frames"])}
    if runs["engine"] and runs["baseline"]:
        row["parity"] = parity(runs["engine"][-1]["frames"], runs["baseline"][-1]["frames"])
        row["same_decisions"] = all(runs["engine"][-1]["cache"][n]["decisions"] == runs["baseline"][-1]["cache"].get(n, {}).get("decisions")
                                    for n in runs["engine"][-1]["cache"])
    return row


def saved_per_skip(t0: float, full0: int, skipped0: int, t: float, skipped: int) -> float | None:
    """What a skipped evaluation saves, as a fraction of a full one, from two runs of the
    same request: t0 seconds with full0 evaluations run and skipped0 skipped (the first
    threshold's run; MagCache may skip even at 0), t seconds with ``skipped`` skipped.

    With c a full evaluation's cost, k a skip's and n = full0 + skipped0 evaluations:
    t0 - t = (skipped - skipped0)(c - k) and t0 = full0 c + skipped0 k, so the saving
    d = c - k = (t0 - t) / (skipped - skipped0) and c = (t0 + skipped0 d) / n.
    None when the two runs skip as many evaluations.
    """
    if skipped == skipped0 or not full0:
        return None
    d = (t0 - t) / (skipped - skipped0)
    return d * (full0 + skipped0) / (t0 + skipped0 * d)


def step_medians(runs: list[dict]) -> tuple[float | None, float | None]:
    """The median seconds of a step whose evaluations all ran and of one whose evaluations
    were all skipped, over ``runs``: the saving read off single steps, which this machine's
    drift between runs does not blur. A model with several transformers (Wan 2.2's
    experts) lists their decisions in the order the steps ran them."""
    full, skipped = [], []
    for run in runs:
        flags = [call for name in run["cache"] for call in run["cache"][name]["decisions"]]
        for seconds, call in zip(run["unet_steps"], flags):
            if all(call.values()):
                full.append(seconds)
            elif not any(call.values()):
                skipped.append(seconds)
    return (statistics.median(full) if full else None, statistics.median(skipped) if skipped else None)


def _counts(cache: dict) -> dict:
    return {"full": sum(c["full"] for c in cache.values()), "skipped": sum(c["skipped"] for c in cache.values())}


def format_sweep(result: dict) -> str:
    """The sweep as a Markdown table."""
    cfg = result["config"]
    lines = [f"model: {result['model']}, {cfg['height']}x{cfg['width']}, {cfg['num_frames']} frames, {cfg['steps']} steps, "
             f"cache {cfg['cache']}, {cfg['runs']} round(s); vidrt {result['backend']} {cfg['precision']}",
             "",
             "| threshold | vidrt end to end | vidrt run/skipped | vidrt saved per skip | vidrt vs no cache (PSNR) "
             "| diffusers end to end | diffusers run/skipped | diffusers saved per skip | same decisions | vidrt vs diffusers max abs |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        cells = [f"{row['threshold']:g}"]
        for side in ("engine", "baseline"):
            s = row.get(side)
            if s is None:
                cells += ["-"] * (4 if side == "engine" else 3)
                continue
            saved = "-" if s["saved_per_skip_of_full"] is None else f"{100 * s['saved_per_skip_of_full']:.0f}%"
            full, skip = s["step_full_vs_skipped_s"]
            if full and skip is not None:
                saved += f"; a step {full:.1f} s -> {skip:.2f} s ({100 * (1 - skip / full):.0f}%)"
            cells += [f"{s['end_to_end_s']['median']:.1f} s", f"{s['full']}/{s['skipped']}", saved]
            if side == "engine":
                cells.append(f"{s['vs_no_cache']['psnr_db']:.1f} dB")
        cells += [str(row.get("same_decisions", "-")),
                  f"{row['parity']['max_abs_err']:.2e}" if "parity" in row else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main_sweep(cfg: BenchConfig, thresholds_text: str) -> int:
    """run-bench --cache-sweep: runs the sweep, prints the table, writes --output."""
    import json
    from pathlib import Path

    from vidrt.fsutil import atomic_write_text

    result = run_sweep(cfg, parse_thresholds(thresholds_text))
    print(format_sweep(result))
    if cfg.output:
        atomic_write_text(Path(cfg.output), json.dumps(result, indent=1, default=float))
        print(f"wrote {cfg.output}")
    return 0
