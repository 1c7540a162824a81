"""The run-bench table."""

from __future__ import annotations

STAGE_ROWS = ("image_encoder", "vae_encoder", "text_encoder", "unet", "unet_step", "transformer", "transformer_step",
              "vae_decoder")


def _cell(stats: dict | None, unit: str = "ms") -> str:
    if not stats:
        return "-"
    return f"{stats['median']:.1f} {unit} [{stats['min']:.1f}-{stats['max']:.1f}]"


def format_table(result: dict) -> str:
    """Engine vs baseline, per stage and end to end (medians with [min-max])."""
    e, b = result["engine"], result["baseline"]
    cfg = result["config"]
    lines = [
        f"model: {result['model']['label']}",
        f"request: {cfg['height']}x{cfg['width']}, {cfg['num_frames_used']} frames, {cfg['steps']} {cfg['sampler_used']} steps, "
        f"guidance {cfg['guidance_used']}, batch {cfg['batch_size']}; "
        f"{cfg['runs']} runs after {cfg['warmup']} warm-up",
        f"machine: {result['environment']['cpu']} ({result['environment']['cpu_count']} cpus), git {result['environment']['git_sha']}",
        "",
        f"{'stage':<18}{'vidrt ' + e['backend'] + ' ' + e['precision']:<36}{('diffusers ' + b['precision']) if b else 'baseline skipped':<36}",
    ]
    for s in STAGE_ROWS:
        if s not in e["stages_ms"]:
            continue  # a stage this model does not have
        lines.append(f"{s:<18}{_cell(e['stages_ms'].get(s)):<36}{_cell(b['stages_ms'].get(s)) if b else '':<36}")
    lines.append(f"{'end to end':<18}{_cell(e['end_to_end_s'], 's'):<36}{_cell(b['end_to_end_s'], 's') if b else '':<36}")
    for label, key, fmt in (("videos/min", "videos_per_min", ".3f"), ("frames/s", "frames_per_s", ".3f"),
                            ("peak memory MB", "peak_memory_mb", ".0f")):
        lines.append(f"{label:<18}{format(e[key], fmt):<36}{format(b[key], fmt) if b else '':<36}".rstrip())
    for side, label in ((e, "vidrt"), (b, "diffusers")):
        if side and side.get("cache"):
            runs = "; ".join(", ".join(f"{n} {c['full']} run/{c['skipped']} skipped" for n, c in run.items())
                             for run in side["cache"])
            lines.append(f"{label} step cache ({cfg['cache']}, threshold {cfg['cache_threshold']}), per timed run: {runs}")
    lines.append(f"engine build: {e['build_s']:.1f}s recorded ({e['build_s_this_run']:.1f}s in this run), "
                 f"{e['engine_size_mb']:.0f} MB, load {e['load_s']:.1f}s"
                 + (f"; diffusers load {b['load_s']:.1f}s (own process)" if b else ""))
    if b and result.get("peak_memory_both_mb"):
        lines.append(f"peak memory of both processes together: {result['peak_memory_both_mb']:.0f} MB")
    r = result.get("roofline")
    if r:
        lines.append(f"{r.get('denoiser', 'unet')}: {r['unet_tflop_per_step']:.3f} TFLOP/step (diffusers' forward "
                     f"{r.get('diffusers_unet_tflop_per_step', r['unet_tflop_per_step']):.3f}), engine {r['engine_unet_tflops']:.3f} TFLOP/s = "
                     f"{100 * r['engine_fraction_of_ceiling']:.0f}% of this machine's {r['ceiling_used']} matmul ceiling "
                     f"({r['matmul_ceiling_tflops'][r['ceiling_used']]:.2f} TFLOP/s, best of "
                     f"{', '.join(r.get('matmul_ceiling_by_library', {}).get(r['ceiling_used'], {}))}, measured once)")
        paired = [(label, r.get(key)) for label, key in (("engine", "engine_fraction_of_ceiling_paired"),
                                                         ("diffusers", "baseline_fraction_of_ceiling_paired"))]
        if any(f for _, f in paired):
            probes = r["ceiling_probes_tflops"]
            lines.append("against the ceiling probed around each timed run ("
                         f"{len(probes)} probes, {min(probes):.2f}-{max(probes):.2f} TFLOP/s): " + ", ".join(
                             f"{label} {100 * f['median']:.0f}% [{100 * f['min']:.0f}-{100 * f['max']:.0f}%]"
                             for label, f in paired if f))
    if b:
        p = result["parity"]
        lines.append(f"speedup (baseline/engine, end-to-end medians): {result['speedup']:.2f}x")
        lines.append(f"parity: max abs err {p['max_abs_err']:.2e}, mean abs err {p['mean_abs_err']:.2e}, PSNR {p['psnr_db']:.1f} dB")
    return "\n".join(lines)
