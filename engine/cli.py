"""Command line: ``build-engines``, ``run-bench``, ``generate`` and ``serve`` (also as ``vidrt <command>``).

Each command's flags map one-to-one onto a frozen config dataclass. Errors a
user can cause print one line (``vidrt: error: ...``) and exit 2; success is 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import shutil
import sys
import time
from pathlib import Path

from . import cli_track
from .errors import VidrtError
from .options import EngineOptions
from .request import GenerateConfig, check_inputs, check_on_model, check_values, pipeline_kwargs
from .samplers import SAMPLERS

EPILOG_MODELS = (
    "models: a preset with RANDOM weights (image to video: tiny-svd, svd, svd-xt, tiny-ltx-i2v, tiny-cogvideox-i2v, "
    "tiny-cogvideox1.5-i2v, tiny-wan21-i2v, tiny-wan22-i2v, tiny-wan22-ti2v-i2v; "
    "text to video: tiny-t2v, modelscope-t2v, tiny-animatediff, animatediff, tiny-wan, tiny-wan22, tiny-wan22-ti2v, "
    "wan2.1-t2v-1.3b, tiny-ltx, ltx-video-2b, tiny-cogvideox, tiny-cogvideox1.5, cogvideox-2b), a local diffusers "
    "StableVideoDiffusionPipeline, TextToVideoSDPipeline, AnimateDiffPipeline, WanPipeline, WanImageToVideoPipeline, "
    "LTXPipeline, LTXImageToVideoPipeline, CogVideoXPipeline or CogVideoXImageToVideoPipeline folder, or a "
    "hub id (needs network)."
)


@dataclasses.dataclass(frozen=True)
class BuildConfig(EngineOptions):
    """build-engines options."""

    verify: bool = False
    calib_images: str | None = None
    calib_steps: int = 4
    keep_high_precision: str | None = None


def _model_flags(p: argparse.ArgumentParser) -> None:
    d = EngineOptions()
    g = p.add_argument_group("model and engines")
    g.add_argument("--model", default=d.model, help=f"model to run (default: {d.model})")
    g.add_argument("--unet-weights", help="safetensors UNet state dict replacing the model's UNet (AnimateLCM-SVD-xt ships so)")
    g.add_argument("--motion-adapter", help="AnimateDiff motion adapter (diffusers folder, or a checkpoint file such as "
                   "mm_sd_v15_v2.ckpt) merged into a Stable Diffusion folder's UNet")
    g.add_argument("--engine-dir", help="where engines are kept (default: under $VIDRT_CACHE or ~/.cache/vidrt)")
    g.add_argument("--backend", default=d.backend, help=f"auto, openvino, onnxruntime, tensorrt (default: {d.backend}: TensorRT with a CUDA GPU; "
                   "on a CPU OpenVINO when installed, else ONNX Runtime)")
    g.add_argument("--precision", default=d.precision, help=f"fp32; bf16 (openvino, tensorrt), fp16 (tensorrt); int8/fp8 quantize the UNet, --component-precision vae_decoder=int8,image_encoder=int8 those too (default: {d.precision})")
    g.add_argument("--seed", type=int, default=d.seed, help=f"seed for random-weight presets and for the noise (default: {d.seed})")
    g.add_argument("--component-precision", help="per-component precision, e.g. vae_decoder=fp32 where fp16 overflows")
    t = p.add_argument_group("TensorRT build (--backend tensorrt)")
    dims = "comma-separated batch=,frames=,height=,width= (batch counts videos)"
    t.add_argument("--min", help=f"smallest shape the engines take: {dims}")
    t.add_argument("--opt", help=f"shape the engines are tuned for: {dims}")
    t.add_argument("--max", help=f"largest shape the engines take: {dims}")
    t.add_argument("--static", help=f"build for exactly one shape (TensorRT and OpenVINO): {dims}")
    t.add_argument("--workspace", type=int, help="builder memory-pool cap in MiB (default: TensorRT's)")
    t.add_argument("--opt-level", type=int, default=d.opt_level, help=f"builder optimisation level 0..5 (default: {d.opt_level})")
    t.add_argument("--timing-cache", help="timing cache file, read and updated by every build")
    t.add_argument("--tf32", action="store_true", help="let fp32 layers use TF32 tensor cores (10-bit mantissa; off by default)")
    t.add_argument("--build-timeout", type=float, help="stop a component's build after this many seconds (default: no limit)")
    t.add_argument("--no-cuda-graphs", action="store_true", help="run each denoising step eagerly instead of replaying a CUDA graph")
    o = p.add_argument_group("OpenVINO (--backend openvino)")
    o.add_argument("--threads", type=int, help="inference threads (default: every core)")
    o.add_argument("--streams", type=int, default=d.streams, help=f"parallel inference streams (default: {d.streams}, lowest latency)")
    c = p.add_argument_group("step caching (diffusion transformers: Wan, LTX-Video, CogVideoX)")
    c.add_argument("--cache", choices=("first-block", "mag"), help="skip the transformer's later blocks on steps where "
                   "they change little: first-block (First Block Cache) or mag (MagCache); builds the transformer as "
                   "head/body/out engines (default: no cache)")
    c.add_argument("--cache-threshold", type=float, help="the cache's threshold in 0..1; higher skips more "
                   "(default: diffusers', 0.05 first-block, 0.06 mag)")
    c.add_argument("--mag-ratios", help="--cache mag: the model's magnitude ratios, comma-separated or @file.json, "
                   "or 'calibrate' to measure them (nothing skipped)")


def _request_flags(p: argparse.ArgumentParser, defaults, frames_help: str) -> None:
    g = p.add_argument_group("request")
    size = "576x1024 for image to video, the UNet's sample size for text to video"
    g.add_argument("--height", type=int, default=defaults.height, help=f"video height in px, multiple of 8 (default: {defaults.height or size})")
    g.add_argument("--width", type=int, default=defaults.width, help=f"video width in px, multiple of 8 (default: {defaults.width or size})")
    g.add_argument("--num-frames", type=int, default=defaults.num_frames, help=f"frames per video (default: {frames_help})")
    g.add_argument("--steps", type=int, default=defaults.steps, help=f"denoising steps (default: {defaults.steps})")
    g.add_argument("--sampler", default=defaults.sampler, choices=list(SAMPLERS),
                   help="euler, animatelcm (SVD, 4 steps, no CFG), ddim, lcm (AnimateLCM-t2v), dpm++ (DPM-Solver++), "
                   "flow-euler (Wan: flow-matching Euler), scheduler (the model's own diffusers scheduler, UniPC for Wan) "
                   "(default: the one matching the model's scheduler)")
    g.add_argument("--min-guidance", type=float, default=defaults.min_guidance, help=f"image to video: guidance at the first frame (default: {defaults.min_guidance})")
    g.add_argument("--max-guidance", type=float, default=defaults.max_guidance, help=f"image to video: guidance at the last frame; <= 1 turns CFG off (default: {defaults.max_guidance})")
    g.add_argument("--batch-size", type=int, default=defaults.batch_size, help=f"videos per request, all in one UNet batch (default: {defaults.batch_size})")
    g.add_argument("--prompt", default=defaults.prompt, help="text to video: the prompt" + (f" (default: {defaults.prompt!r})" if defaults.prompt else ""))
    g.add_argument("--negative-prompt", help="text to video: what to steer away from (default: none)")
    g.add_argument("--guidance-scale", type=float, help="text to video: CFG scale; <= 1 turns CFG off (default: the pipeline's, 9.0 ModelScope, 7.5 AnimateDiff, 5.0 Wan)")
    g.add_argument("--guidance-scale-2", type=float, help="Wan 2.2: CFG scale of the low-noise expert (default: --guidance-scale)")
    p.add_argument("--on-demand", help="comma-separated components loaded for each call and freed after it, so their "
                   "weights take memory only while they run; e.g. text_encoder for Wan's 5.7B UMT5 on a 24 GB machine "
                   "(every request then pays its load; default: every engine stays loaded)")


def build_parser() -> argparse.ArgumentParser:
    from vidrt.benchmarks.harness import BENCH_FRAMES, BenchConfig

    root = argparse.ArgumentParser(prog="vidrt", description="Compiled inference for video diffusion models.", epilog=EPILOG_MODELS)
    sub = root.add_subparsers(dest="command", required=True, metavar="{build-engines,run-bench,generate,serve,prune,compare,history,report,bench-ab,bench-suite}")

    b = sub.add_parser("build-engines", help="export the model to ONNX and build engines (reuses what is up to date)",
                       description="Export every component (image encoder, VAE encoder, UNet, temporal VAE decoder) to ONNX, "
                       "check it against PyTorch, and build it for the backend. Anything already built from the same inputs is reused.",
                       epilog=EPILOG_MODELS)
    _model_flags(b)
    b.add_argument("--verify", action="store_true", help="re-hash every engine file instead of trusting unchanged size and mtime")
    q = b.add_argument_group("quantization (--precision int8 or fp8: the UNet is quantized with nvidia-modelopt; "
                             "--component-precision vae_decoder=int8,image_encoder=int8 quantizes those too)")
    q.add_argument("--calib-images", help="folder of calibration images (default: a built-in synthetic set)")
    q.add_argument("--calib-steps", type=int, default=4, help="sampler steps whose timesteps are calibrated (default: 4)")
    q.add_argument("--keep-high-precision", help="comma-separated module-name patterns left unquantized "
                   "(default: *conv_in*,*conv_out*,*time_embedding*,*add_embedding*,*time_pos_embed*)")

    r = sub.add_parser("run-bench", help="time the engines against the diffusers baseline on the same inputs",
                       description="Warm-up, then --runs timed runs of vidrt and diffusers, interleaved, same image and seed. "
                       "Prints a table and writes JSON (schema in the README).", epilog=EPILOG_MODELS)
    _model_flags(r)
    _request_flags(r, BenchConfig(), f"{BENCH_FRAMES}, or below it the nearest count the model takes: 13 for Wan's 4k+1")
    bench = BenchConfig()
    r.add_argument("--runs", type=int, default=bench.runs, help=f"timed runs per side (default: {bench.runs})")
    r.add_argument("--warmup", type=int, default=bench.warmup, help=f"untimed warm-up runs per side (default: {bench.warmup})")
    _pipeline_arg_flag(r)
    r.add_argument("--baseline-precision", help="diffusers baseline precision: fp32, bf16 (weights), bf16-autocast, fp16 (GPU), or none to skip "
                   "(default: same as --precision; fp32 for int8/fp8)")
    r.add_argument("--one-side-at-a-time", action="store_true",
                   help="for models whose engines and baseline do not fit in memory together: per timed run, load, "
                   "warm up, run and free the engines, then the same for diffusers (runs still alternate)")
    r.add_argument("--baseline-compile", action="store_true", help="torch.compile the baseline's UNet (compile time shows in its first warm-up run)")
    r.add_argument("--image", help="image to video: conditioning image (default: a built-in synthetic image)")
    r.add_argument("--scenario", help="a named request from benchmarks/scenarios.py (a, b, c-lcm, c-euler); "
                   "sets model, size, frames, steps, sampler, guidance and batch")
    r.add_argument("--cache-sweep", metavar="THRESHOLDS", help="with --cache: run both sides at each of these "
                   "comma-separated thresholds (0 among them), report evaluations skipped, seconds saved per skip "
                   "and quality against no caching (benchmarks/cache_sweep.py)")
    r.add_argument("--output", help="write the JSON result here")
    r.add_argument("--plot", help="draw the stage breakdown, engine against baseline, to this PNG file")
    r.add_argument("--history", nargs="?", const="", metavar="DIR",
                   help="also append the result to the performance history in DIR (default DIR: $VIDRT_CACHE/history "
                   "or ~/.cache/vidrt/history); see vidrt history and vidrt compare")

    p = sub.add_parser("prune", help="list engine variants and presets; remove the unused or oversized ones",
                       description="Lists every engine variant (an ONNX export or a backend's artifact of one component) "
                       "and preset in the cache with its size and last use. With --older-than or --max-size, removes "
                       "those unused for that long, then the least recently used until the rest fits; they are rebuilt "
                       "when next needed.")
    p.add_argument("--older-than", type=float, help="remove what has not been used for this many days")
    p.add_argument("--max-size", type=float, help="then remove the least recently used until the cache fits in this many GB")
    p.add_argument("--dry-run", action="store_true", help="only say what would be removed")

    g = sub.add_parser("generate", help="generate a video from an image or a prompt",
                       description="Generate a video from --image (image-to-video models) or --prompt (text-to-video models) "
                       "and write it as MP4 (H.264), GIF, or a folder of PNG frames.",
                       epilog=EPILOG_MODELS)
    _model_flags(g)
    _request_flags(g, GenerateConfig(), "the model's: 14 for svd, 25 for svd-xt, 16 for the U-Net text-to-video models, 81 for Wan")
    g.add_argument("--image", help="image to video: conditioning image (PNG/JPEG/...; converted to RGB if needed)")
    g.add_argument("--output", default="out.mp4", help="out.mp4, out.gif, or a folder name for PNG frames (default: out.mp4)")
    g.add_argument("--format", choices=["mp4", "gif", "png"], help="force the output format (default: from --output)")
    g.add_argument("--fps", type=int, default=7, help="frames per second, also the fps conditioning (default: 7)")
    g.add_argument("--motion-bucket-id", type=int, default=127, help="amount of motion (default: 127)")
    g.add_argument("--noise-aug-strength", type=float, default=0.02, help="noise added to the image (default: 0.02)")
    g.add_argument("--decode-chunk-size", type=int, help="frames decoded at once (default: all; 16 for text to video)")
    _pipeline_arg_flag(g)
    _serve_parser(sub)
    cli_track.add_commands(sub, _model_flags, _request_flags)
    return root


def _pipeline_arg_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipeline-arg", action="append", metavar="NAME=VALUE",
                   help="another keyword of the model's pipeline, by diffusers' name, the value read as JSON "
                   "(repeatable): e.g. frame_rate=24, decode_timestep=0.05, guidance_rescale=0.7 (LTX-Video), "
                   "use_dynamic_cfg=true (CogVideoX), max_sequence_length=256, sigmas=[700,20,2,0] (SVD)")


def _serve_parser(sub) -> None:
    from .server import ServeConfig

    d = ServeConfig()
    s = sub.add_parser("serve", help="serve the model over HTTP as a job API (needs the serve extra)",
                       description="Load (building if needed) the engines, warm them up, and serve POST /v1/videos, "
                       "GET/DELETE /v1/videos/{id}, /events, /content, /healthz and /metrics (see the README). "
                       "The request flags set the defaults of requests that leave a field out.",
                       epilog=EPILOG_MODELS)
    _model_flags(s)
    _request_flags(s, d, "the model's")
    _pipeline_arg_flag(s)
    h = s.add_argument_group("server")
    h.add_argument("--host", default=d.host, help=f"address to listen on (default: {d.host}, this machine only)")
    h.add_argument("--port", type=int, default=d.port, help=f"port (default: {d.port})")
    h.add_argument("--max-queue", type=int, default=d.max_queue, help=f"jobs waiting at most; more get 429 (default: {d.max_queue})")
    h.add_argument("--job-timeout", type=float, help="seconds a job may take from submission before it ends as expired "
                   "(default: no limit; a request's timeout_s overrides it)")
    h.add_argument("--keep-results", type=float, default=d.keep_results, help=f"seconds a finished job and its video are kept (default: {d.keep_results:.0f})")
    h.add_argument("--keep-results-mb", type=float, default=d.keep_results_mb, help=f"MB of videos kept at most, oldest removed first (default: {d.keep_results_mb:.0f})")
    h.add_argument("--grace", type=float, default=d.grace, help=f"seconds a running job may finish after SIGTERM before it is cancelled (default: {d.grace:.0f})")
    h.add_argument("--no-warmup", action="store_true", help="answer /healthz without the warm-up request")
    h.add_argument("--max-batch", type=int, default=d.max_batch, help="queued one-video jobs of the same shape, steps and "
                   f"settings run together as one denoiser batch, up to this many (default: {d.max_batch}, no batching)")
    h.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_ms, help="how long a job waits for others to "
                   f"share its batch (default: {d.batch_wait_ms:.0f}: only those already queued)")
    r = s.add_argument_group("Ray Serve (--ray; needs the ray extra)")
    r.add_argument("--ray", action="store_true", help="deploy as a Ray Serve application: the same API through Serve's "
                   "proxy on --host/--port, one pipeline per replica")
    r.add_argument("--address", help="Ray cluster to join (default: start a local one)")
    r.add_argument("--replicas", type=int, default=d.replicas, help=f"pipeline replicas (the most, with --min-replicas) (default: {d.replicas})")
    r.add_argument("--min-replicas", type=int, help="autoscale between this and --replicas on ongoing requests (default: a fixed --replicas)")
    r.add_argument("--replica-cpus", type=float, default=d.replica_cpus, help=f"CPUs each replica reserves (default: {d.replica_cpus:g})")
    r.add_argument("--replica-gpus", type=float, default=d.replica_gpus, help=f"GPUs each replica reserves (default: {d.replica_gpus:g})")


def _config(cls, args: argparse.Namespace):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def _check_request_early(cfg):
    """Fails on request arguments the model cannot serve, before minutes of engine building
    (callers run check_values first, before the model is resolved); returns the model."""
    from .samplers import check_sampler
    from .sources import resolve_model

    model = resolve_model(cfg.model, seed=cfg.seed, motion_adapter=cfg.motion_adapter)
    check_sampler(cfg.sampler, model.kind)
    check_on_model(cfg, model)
    return model


def cmd_build_engines(args) -> int:
    from .sources import check_weight_paths, resolve_model

    cfg = _config(BuildConfig, args)
    check_weight_paths(cfg.unet_weights, cfg.motion_adapter)
    model = resolve_model(cfg.model, seed=cfg.seed, motion_adapter=cfg.motion_adapter)
    t0 = time.perf_counter()
    engine_dir, backend, results = _prepare_engines(cfg, model, quant=_quant_config(cfg), full_verify=cfg.verify)
    print(f"model: {model.label}")
    print(f"engines: {engine_dir}  ({backend.name}, {cfg.precision})")
    for c, r in results.items():
        state = "reused" if r.reason == "reused" else f"built in {r.build_s:.1f}s ({r.reason})"
        print(f"  {c:<14} {r.size_bytes / 2**20:9.1f} MB  {state}")
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 0


def _prepare_engines(cfg, model, **build):
    """Builds what is missing or stale of ``model``'s engines for ``cfg`` (nothing is loaded);
    returns (engine folder, backend class, prepare_engines' results)."""
    from .backends import get_backend
    from .build import prepare_engines
    from .layout import default_engine_dir

    if cfg.unet_weights:
        from .sources import check_unet_weights

        check_unet_weights(model, cfg.unet_weights)
    backend = get_backend(cfg.backend, announce=True, precision=cfg.precision)
    weights = str(Path(cfg.unet_weights).resolve()) if cfg.unet_weights else None
    engine_dir = Path(cfg.engine_dir) if cfg.engine_dir else default_engine_dir(model, weights)
    model = cfg.model_for_build(model)
    results = prepare_engines(model, engine_dir, backend, cfg.precision, unet_weights=weights,
                              **cfg.engine_kwargs(), **build)
    return engine_dir, backend, results


def _quant_config(cfg: BuildConfig):
    """QuantConfig from build-engines flags (None unless --precision or a
    --component-precision is int8/fp8)."""
    from .layout import QUANTIZED

    fmt = next((p for p in (cfg.precision, *cfg.component_precisions().values()) if p in QUANTIZED), None)
    if fmt is None:
        return None
    from vidrt.export.quantize import DEFAULT_KEEP, QuantConfig

    images: tuple[str, ...] = ()
    if cfg.calib_images:
        folder = Path(cfg.calib_images)
        if not folder.is_dir():
            raise VidrtError(f"--calib-images {folder}: not a folder of images")
        images = tuple(str(p) for p in sorted(folder.iterdir()) if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
        if not images:
            raise VidrtError(f"--calib-images {folder}: no .png/.jpg/.webp files in it")
    keep = tuple(p for p in (cfg.keep_high_precision or "").split(",") if p) or DEFAULT_KEEP
    return QuantConfig(format=fmt, calib_images=images, calib_steps=cfg.calib_steps,
                       keep_high_precision=keep, seed=cfg.seed)


def cmd_run_bench(args) -> int:
    from vidrt.benchmarks.harness import BenchConfig, run_bench
    from vidrt.benchmarks.report import format_table

    from .fsutil import atomic_write_json, check_writable

    if args.scenario:
        from vidrt.benchmarks.scenarios import scenario

        for field, value in scenario(args.scenario).items():
            setattr(args, field, value)
    cfg = _config(BenchConfig, args)
    check_values(cfg)
    for path in (cfg.output, cfg.plot):
        if path:
            check_writable(path)
    if cfg.plot:
        from vidrt.benchmarks.plots import pyplot

        pyplot()  # matplotlib missing fails here, not after the benchmark
    if cfg.history is not None:
        from vidrt.benchmarks.history import check_folder

        check_folder(cfg.history or None)
    _check_request_early(cfg)
    if cfg.cache_sweep is not None:
        from vidrt.benchmarks.cache_sweep import main_sweep

        return main_sweep(cfg, cfg.cache_sweep)
    result = run_bench(cfg)
    print(format_table(result))
    if cfg.output:
        atomic_write_json(cfg.output, result)
        print(f"wrote {cfg.output}")
    if cfg.plot:
        from vidrt.benchmarks.plots import stage_breakdown

        print(f"wrote {stage_breakdown(result, cfg.plot)}")
    if cfg.history is not None:
        from vidrt.benchmarks.history import append

        print(f"recorded in {append(result, cfg.history or None)}")
    return 0


def cmd_generate(args) -> int:
    from .video_io import check_output, load_image, video_format, write_video

    cfg = _config(GenerateConfig, args)
    if cfg.image is None and cfg.prompt is None:  # refused before a preset is materialised (gigabytes for svd-xt)
        raise VidrtError("generate needs --image PATH (image-to-video models) or --prompt \"...\" (text-to-video models)")
    check_values(cfg)
    fmt = video_format(cfg.output, cfg.format)
    check_output(cfg.output, fmt)
    model = _check_request_early(cfg)
    check_inputs(cfg, model, cfg.image is not None, image_hint="--image PATH", prompt_hint='--prompt "..."')
    image = load_image(cfg.image) if model.takes_image else None
    pipe = cfg.load_pipeline()
    out = pipe(**pipeline_kwargs(cfg, model, image))
    paths = []
    for i, frames in enumerate(out.frames):
        target = Path(cfg.output)
        if len(out.frames) > 1:
            target = target.with_name(f"{target.stem}_{i}{target.suffix}")
        paths.append(write_video(frames, target, cfg.fps, fmt))
    note = " (RANDOM WEIGHTS: expect noise)" if pipe.model.preset else ""
    t = pipe.timings
    print(f"wrote {', '.join(map(str, paths))}{note}: {len(out.frames[0])} frames, {t.end_to_end:.1f}s "
          f"({pipe.model.denoiser} {t.unet:.1f}s over {len(t.unet_steps)} steps)")
    for name, counts in t.cache.items():
        print(f"{name} ({cfg.cache} cache): {counts['full']} evaluations run, {counts['skipped']} skipped")
        if cfg.mag_ratios == "calibrate":
            for context, ratios in pipe.engines[name].measured_ratios.items():
                print(f"{name} magnitude ratios ({context}), for --mag-ratios: " + ",".join(f"{r:.5f}" for r in ratios))
    return 0


def cmd_serve(args) -> int:
    from .server import ServeConfig, serve

    cfg = _config(ServeConfig, args)
    needs = ["fastapi", "prometheus_client", "uvicorn"] + (["ray"] if cfg.ray else [])
    for name in needs:
        try:
            __import__(name)
        except ImportError:
            extra = "ray" if name == "ray" else "serve"
            raise VidrtError(f"vidrt serve{' --ray' if cfg.ray else ''} needs the {extra} extra ({name} is missing): "
                             f"pip install -e '.[{extra}]'") from None
    if not 0 < cfg.port < 65536:
        raise VidrtError(f"--port {cfg.port}: take a port number in 1..65535")
    if cfg.replicas < 1 or cfg.min_replicas is not None and not 0 <= cfg.min_replicas <= cfg.replicas:
        raise VidrtError(f"--replicas {cfg.replicas} / --min-replicas {cfg.min_replicas}: need replicas >= 1 and "
                         "0 <= min-replicas <= replicas")
    if (cfg.address or cfg.min_replicas is not None) and not cfg.ray:
        raise VidrtError("--address and --min-replicas are for --ray; add --ray or drop them")
    check_values(cfg)
    cfg.limits()
    model = _check_request_early(cfg)
    if cfg.ray:
        from .ray_serve import run_until_signal

        _prepare_engines(cfg, model)  # built once here, so the replicas only load them
        return run_until_signal(cfg)
    return serve(cfg, cfg.load_pipeline())


def cmd_prune(args) -> int:
    import time

    from . import settings
    from .prune import inventory, remove, select

    for flag, value in (("--older-than", args.older_than), ("--max-size", args.max_size)):
        if value is not None and not value >= 0:
            raise VidrtError(f"{flag} {value}: give a number >= 0")
    root = settings.cache_dir()
    entries = inventory(root)
    chosen = select(entries, args.older_than, None if args.max_size is None else int(args.max_size * 1e9))
    now = time.time()
    print(f"cache: {root}  ({sum(e.size for e in entries) / 1e9:.2f} GB in {len(entries)} entries)")
    for e in entries:
        mark = ("would remove" if args.dry_run else "remove") if e in chosen else ""
        print(f"  {e.size / 1e9:8.2f} GB  used {(now - e.last_used) / 86400:6.1f} d ago  {e.path.relative_to(root)}  {mark}".rstrip())
    if chosen and not args.dry_run:
        print(f"removed {len(chosen)} entries, {remove(chosen) / 1e9:.2f} GB freed")
    elif chosen:
        print(f"would remove {len(chosen)} entries, {sum(e.size for e in chosen) / 1e9:.2f} GB")
    return 0


COMMANDS = {"build-engines": cmd_build_engines, "run-bench": cmd_run_bench, "generate": cmd_generate,
            "serve": cmd_serve, "prune": cmd_prune} | cli_track.COMMANDS


def no_space_message(error: OSError) -> str:
    """The one line a full disk gets: where, how much is left, and what to do. Engine and
    preset writes go through temporary folders, so nothing half-written is left behind."""
    from .settings import cache_dir

    where = Path(error.filename) if error.filename else cache_dir()
    probe = next((p for p in (where, *where.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free / 2**30
    return (f"no space left on the disk of {where} ({free:.1f} GB free now): free some space (`vidrt prune` lists "
            f"engine variants and presets by last use and size) or set VIDRT_CACHE to a folder on a larger disk")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vidrt``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    previous = _terminate_like_interrupt()
    try:
        return COMMANDS[args.command](args)
    except VidrtError as e:
        print(f"vidrt: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        print(f"vidrt: error: {no_space_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vidrt: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)


def _terminate_like_interrupt():
    """SIGTERM (a job scheduler, `kill`) unwinds like Ctrl-C, so half-written engine
    and output folders are removed on the way out. Returns the previous handler
    (None off the main thread, where handlers cannot be set)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _quiet_libraries() -> None:
    """Keeps diffusers/transformers to errors only: vidrt prints its own progress."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def _sub(command: str):
    def entry() -> int:
        return main([command] + sys.argv[1:])

    return entry


build_engines_main = _sub("build-engines")
run_bench_main = _sub("run-bench")
generate_main = _sub("generate")

if __name__ == "__main__":
    sys.exit(main())
