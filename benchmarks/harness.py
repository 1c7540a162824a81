"""run-bench: vidrt's engines and the diffusers baseline, in one run, on the same inputs.

Recipe: load both, then warm-up and N timed runs, interleaved (engine, baseline,
engine, ...) so machine noise hits both alike; median/min/max per stage and end
to end; parity of the two sides' frames; JSON tagged with git sha, versions and
machine. The engines run in this process and diffusers in a worker process
(benchmarks/worker.py), so neither process holds both sides' models; memory is
reported per side and for both processes together. Where both sides do not fit in
memory at once, --one-side-at-a-time loads, warms up, runs and frees each side in
turn for every timed run.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import numpy as np
import PIL.Image
import torch

from vidrt.errors import VidrtError
from vidrt.options import RequestOptions
from vidrt.samplers import make_sampler

from .environment import environment, machine
from .memory import PeakDeviceMemory, PeakRss
from .results import case_key

STAGES = {
    "image-to-video": ("image_encoder", "vae_encoder", "unet", "vae_decoder"),
    "text-to-video-sd": ("text_encoder", "unet", "vae_decoder"),
    "animatediff": ("text_encoder", "unet", "vae_decoder"),
    "wan": ("text_encoder", "transformer", "vae_decoder"),
    "wan-i2v": ("text_encoder", "vae_encoder", "transformer", "vae_decoder"),
    "ltx": ("text_encoder", "transformer", "vae_decoder"),
    "ltx-i2v": ("text_encoder", "vae_encoder", "transformer", "vae_decoder"),
    "cogvideox": ("text_encoder", "transformer", "vae_decoder"),
    "cogvideox-i2v": ("text_encoder", "vae_encoder", "transformer", "vae_decoder"),
}


def stages_of(model) -> tuple[str, ...]:
    """The stages a run reports for ``model``: its kind's, with Wan 2.1 I2V's CLIP image
    encoder in front (the other Wan image-to-video models have none)."""
    if model.kind == "wan-i2v" and model.image_encoder is not None:
        return ("image_encoder", *STAGES[model.kind])
    return STAGES[model.kind]


SCHEMA = 2  # 2: every timed run's value ("samples"), "case", "machine"; readers take 1 too (benchmarks/results.py)
BENCH_FRAMES = 14  # the main job's frames: svd-xt's 25 would not fit the time limit on a 2-core CPU
DEFAULT_PROMPT = "a panda playing a guitar on a mountain top, cinematic, high quality"


@dataclasses.dataclass(frozen=True)
class BenchConfig(RequestOptions):
    """One run-bench invocation; CLI flags map one-to-one onto these fields.

    Defaults are the README's main job: the real svd-xt architecture at a size
    that finishes in minutes on a 2-core CPU.
    """

    height: int = 128
    width: int = 128
    num_frames: int | None = None  # None: BENCH_FRAMES, or the nearest count below it the model takes
    steps: int = 2
    runs: int = 2
    warmup: int = 1
    baseline_precision: str | None = None  # None: same as precision (fp32 for int8/fp8); "none": skip
    baseline_compile: bool = False
    one_side_at_a_time: bool = False  # load, warm up, run and free each side in turn, per timed run
    image: str | None = None
    output: str | None = None
    plot: str | None = None  # PNG of the stage breakdown
    history: str | None = None  # None: not recorded; "": the default history folder
    scenario: str | None = None
    cache_sweep: str | None = None  # thresholds, with --cache (benchmarks/cache_sweep.py)

    def frames(self, model) -> int:
        """--num-frames, else BENCH_FRAMES rounded down to the model's frame rule (Wan's VAE
        takes 4k+1 frames: 13)."""
        if self.num_frames is not None:
            return self.num_frames
        k = model.temporal_factor
        return (BENCH_FRAMES - 1) // k * k + 1 if k > 1 else BENCH_FRAMES

    def inputs(self, model) -> dict:
        """What conditions the benchmark's videos: --image (or a synthetic one) for
        image to video, --prompt (or a fixed one) for text to video; --batch-size copies."""
        if model.kind == "image-to-video":
            image = bench_image(self)
            return {"image": [image] * self.batch_size if self.batch_size > 1 else image}
        prompt = DEFAULT_PROMPT if self.prompt is None else self.prompt
        out = {"prompt": [prompt] * self.batch_size if self.batch_size > 1 else prompt}
        if model.takes_image:  # a DiT's image to video: one image, every video starts from it
            out["image"] = bench_image(self)
        return out | ({"negative_prompt": self.negative_prompt} if self.negative_prompt else {})

    def request(self, model) -> dict:
        """The pipeline keywords (vidrt's and diffusers' alike) besides inputs and generator,
        --pipeline-arg's last."""
        return self._flag_request(model) | self.pipeline_args()

    def _flag_request(self, model) -> dict:
        common = dict(height=self.height, width=self.width, num_frames=self.frames(model),
                      num_inference_steps=self.steps)
        if model.kind == "image-to-video":
            return common | dict(min_guidance_scale=self.min_guidance, max_guidance_scale=self.max_guidance)
        scale = self.guidance_scale if self.guidance_scale is not None else model.default_guidance_scale
        if model.kind in ("cogvideox", "cogvideox-i2v"):  # diffusers' 226, or what a position table holds
            common["max_sequence_length"] = model.default_text_length
        return common | dict(guidance_scale=scale)


def summary(values: list[float], scale: float = 1.0) -> dict:
    """Median, min and max of the timed runs, and every run's value (what a comparison
    between two results resamples)."""
    return {
        "median": statistics.median(values) * scale,
        "min": min(values) * scale,
        "max": max(values) * scale,
        "samples": [v * scale for v in values],
    }


def bench_image(cfg: BenchConfig) -> PIL.Image.Image:
    """The conditioning image: --image, or a fixed synthetic gradient with shapes."""
    if cfg.image:
        from vidrt.video_io import load_image

        return load_image(cfg.image)
    h, w = cfg.height, cfg.width
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x / max(w - 1, 1), y / max(h - 1, 1), ((x // 16 + y // 16) % 2) * 0.8], axis=-1)
    return PIL.Image.fromarray((img * 255).astype(np.uint8))


def run_bench(cfg: BenchConfig, progress: bool = True) -> dict:
    """Runs the benchmark; returns the result dict (see README for the schema).

    Raises:
        VidrtError: bad options, or a model/engine problem.
    """
    if cfg.runs < 1 or cfg.warmup < 0:
        raise VidrtError(f"--runs must be >= 1 and --warmup >= 0 (got {cfg.runs}, {cfg.warmup})")
    if cfg.batch_size < 1:
        raise VidrtError(f"--batch-size={cfg.batch_size}: need at least 1")
    baseline_precision = cfg.baseline_precision or (cfg.precision if cfg.precision in ("fp32", "fp16", "bf16") else "fp32")
    if baseline_precision != "none":
        from .baseline import check_baseline_precision

        check_baseline_precision(baseline_precision, "cuda" if _gpu() else "cpu")
    env = environment()  # now: a commit made while a long run runs is not the code it ran
    sides = Sides(cfg, baseline_precision, progress)
    try:
        sides.load_engines()
        probe = _ceiling_probe(sides.model, cfg, sides.device)
        runs = (_one_side_at_a_time if cfg.one_side_at_a_time else _interleaved)(cfg, sides, progress, probe)
        return _result(cfg, sides, runs, baseline_precision, env, probe)
    finally:
        sides.close()


class Sides:
    """The two sides of a benchmark: vidrt's pipeline in this process, diffusers' in a
    worker process (benchmarks/worker.py); each can be loaded and freed again, and every
    load's seconds and peak RSS are kept."""

    def __init__(self, cfg: BenchConfig, baseline_precision: str, progress: bool):
        self.cfg, self.baseline_precision, self.progress = cfg, baseline_precision, progress
        self.pipe = self.baseline = None
        self.engine_loads: list[dict] = []  # {"s", "peak_rss_mb"} per load (the first may include a build)
        self.baseline_loads: list[dict] = []
        self.model = self.builds = self.engine_dir = self.backend = self.device = None  # set by the first load

    @property
    def with_baseline(self) -> bool:
        return self.baseline_precision != "none"

    def load_engines(self):
        from vidrt import VideoPipeline

        cfg = self.cfg
        t0 = time.perf_counter()
        with PeakRss() as loading:  # (a build, where one is needed, counts too)
            self.pipe = VideoPipeline.from_pretrained(
                cfg.model, engine_dir=cfg.engine_dir, backend=cfg.backend, precision=cfg.precision,
                sampler=cfg.sampler, unet_weights=cfg.unet_weights, motion_adapter=cfg.motion_adapter, seed=cfg.seed,
                progress=self.progress and not self.engine_loads, on_demand=cfg.on_demand_components(),
                cuda_graphs=not cfg.no_cuda_graphs, cache=cfg.cache_config(), **cfg.engine_kwargs(),
            )
        self.engine_loads.append({"s": time.perf_counter() - t0, "peak_rss_mb": loading.peak_mb})
        if self.model is None:  # what the result describes: the first load's
            self.model, self.builds, self.engine_dir = self.pipe.model, self.pipe.builds, self.pipe.engine_dir
            self.backend, self.device = self.pipe.backend, self.pipe.device.type
        return self.pipe

    def free_engines(self) -> None:
        """Drops the pipeline and hands its memory back (freed heap pages too, where glibc
        can give them back), so the other side can load."""
        import gc

        from vidrt.backends.base import trim_heap

        self.pipe = None
        gc.collect()
        trim_heap()

    def load_baseline(self):
        from .worker import BaselineWorker

        cfg = self.cfg
        self.baseline = BaselineWorker(self.model, self.baseline_precision, cfg.unet_weights, device=self.device,
                                       compile=cfg.baseline_compile, sampler=cfg.sampler, cache=cfg.cache_config(),
                                       steps=cfg.steps)
        self.baseline_loads.append({"s": self.baseline.load_s, "peak_rss_mb": self.baseline.resident_mb})
        return self.baseline

    def free_baseline(self) -> None:
        if self.baseline is not None:
            self.baseline.close()
            self.baseline = None

    def close(self) -> None:
        self.free_baseline()


def _gpu() -> bool:
    return torch.cuda.is_available()


def ceiling_precision(model, cfg) -> str:
    """The matmul ceiling the denoiser is put against: its own precision's (--precision, or
    its --component-precision; an int8 denoiser: the int8 GEMM rate its quantized layers
    could reach), else bf16 (fp8)."""
    from .roofline import matmul_ceilings

    precision = cfg.component_precisions().get(model.denoiser, cfg.precision)
    return precision if precision in ("fp32", "bf16", "int8") and matmul_ceilings(precision) else "bf16"


def _ceiling_probe(model, cfg, device: str):
    """A CeilingProbe where the result has a roofline (a CPU run without step caching)."""
    from .roofline import CeilingProbe

    if device != "cpu" or cfg.cache is not None:
        return None
    return CeilingProbe(ceiling_precision(model, cfg))


def _unmetered(probe, meter: PeakRss):
    """``probe`` with its GEMMs' memory left out of ``meter`` (both processes' peak): it is
    the benchmark's own, held by neither side, and handed back before the next run."""
    from vidrt.backends.base import trim_heap

    if probe is None:
        return None

    def measure() -> float:
        with meter.paused():
            rate = probe()
            trim_heap()
        return rate

    return measure


def _timed(run_once, probe, before: float | None = None) -> tuple[dict, float | None]:
    """One timed run, with the matmul ceiling probed just before it (or ``before``, the
    previous run's closing probe) and just after it; returns (run, the closing probe)."""
    if probe is None:
        return run_once(), None
    before = probe() if before is None else before
    run = run_once()
    after = probe()
    run["ceiling_tflops"] = (before + after) / 2
    return run, after


@dataclasses.dataclass
class Runs:
    """What the timed and warm-up runs of both sides gave."""

    engine: list = dataclasses.field(default_factory=list)
    baseline: list = dataclasses.field(default_factory=list)
    warmups: dict = dataclasses.field(default_factory=lambda: {"engine": [], "baseline": []})
    warmup_peaks: dict = dataclasses.field(default_factory=lambda: {"engine": [], "baseline": []})  # RSS MB
    together_mb: float = 0.0  # both processes' RSS sampled at the same instants, peak
    schedule: str = "interleaved"

    def add(self, side: str, run: dict, warm: bool) -> None:
        if warm:
            self.warmups[side].append(run["total"])
            self.warmup_peaks[side].append(run["peak_rss_mb"])
        else:
            getattr(self, side).append(run)


def _interleaved(cfg, sides: Sides, progress: bool, probe=None) -> Runs:
    """Both sides loaded together, timed runs alternating engine, baseline, ... The engine
    warms up before the baseline loads: its first run is where a backend packs its weights
    (OpenVINO: svd-xt's UNet passes through ~3.5 GB more than it keeps), and that peak
    need not meet the baseline's weights."""
    from tqdm.auto import tqdm

    runs = Runs()
    inputs, kwargs = cfg.inputs(sides.model), cfg.request(sides.model)
    with PeakRss() as together, tqdm(total=cfg.warmup + cfg.runs, desc="bench runs", disable=not progress,
                                     unit="run") as bar:
        for _ in range(cfg.warmup):
            runs.add("engine", _engine_run(sides.pipe, inputs, cfg, kwargs), warm=True)
        baseline = sides.load_baseline() if sides.with_baseline else None
        if baseline is not None:
            together.pids.append(baseline.pid)
            for _ in range(cfg.warmup):
                runs.add("baseline", baseline.run(inputs, cfg.seed, kwargs), warm=True)
        bar.update(cfg.warmup)
        probe, last = _unmetered(probe, together), None  # the probe between two runs closes one and opens the next
        for _ in range(cfg.runs):
            run, last = _timed(lambda: _engine_run(sides.pipe, inputs, cfg, kwargs), probe, last)
            runs.add("engine", run, warm=False)
            if baseline is not None:
                run, last = _timed(lambda: baseline.run(inputs, cfg.seed, kwargs), probe, last)
                runs.add("baseline", run, warm=False)
            bar.update(1)
    runs.together_mb = together.peak_mb
    return runs


def _one_side_at_a_time(cfg, sides: Sides, progress: bool, probe=None) -> Runs:
    """For models whose two sides do not fit in memory together (Wan2.1-T2V-1.3B with its
    5.7B-parameter text encoder holds 15 GB on each side): per timed run, the engine side
    loads, runs its warm-ups and one timed run, and frees its memory; then the baseline
    does the same. Runs still alternate (engine, baseline, engine, ...) on the same
    inputs, every timed run follows its own warm-ups, and no instant holds both models."""
    from tqdm.auto import tqdm

    runs = Runs(schedule="one side at a time")
    inputs, kwargs = cfg.inputs(sides.model), cfg.request(sides.model)
    with PeakRss() as together:
        probe = _unmetered(probe, together)
        for r in tqdm(range(cfg.runs), desc="bench runs", disable=not progress, unit="run"):
            pipe = sides.pipe or sides.load_engines()
            for _ in range(cfg.warmup):
                runs.add("engine", _engine_run(pipe, inputs, cfg, kwargs), warm=True)
            runs.add("engine", _timed(lambda: _engine_run(pipe, inputs, cfg, kwargs), probe)[0], warm=False)
            pipe = None
            sides.free_engines()
            if sides.with_baseline:
                baseline = sides.load_baseline()
                together.pids.append(baseline.pid)
                for _ in range(cfg.warmup):
                    runs.add("baseline", baseline.run(inputs, cfg.seed, kwargs), warm=True)
                runs.add("baseline", _timed(lambda: baseline.run(inputs, cfg.seed, kwargs), probe)[0], warm=False)
                sides.free_baseline()
    runs.together_mb = together.peak_mb
    return runs


def _result(cfg, sides: Sides, runs: Runs, baseline_precision: str, env: dict, probe=None) -> dict:
    """The result dict, ``env`` its environment as the run started. Each side's peak memory
    is its process's peak RSS over the whole benchmark, warm-ups and loads included (the
    first run is where a backend packs its weights; the engine's first load counts its
    build too)."""
    model = sides.model
    kwargs = cfg.request(model)
    videos = cfg.batch_size
    builds = sides.builds
    frames = kwargs["num_frames"] or model.default_num_frames
    stages = stages_of(model)
    engine_peak = max([x["peak_rss_mb"] for x in sides.engine_loads] + [r["peak_rss_mb"] for r in runs.engine]
                      + runs.warmup_peaks["engine"])
    engine = _side(runs.engine, videos, frames, engine_peak, stages, model.denoiser)
    engine.update({
        "backend": sides.backend,
        "precision": cfg.precision,
        "build_s": sum(b.recorded_build_s for b in builds.values()),
        "build_s_per_component": {c: b.recorded_build_s for c, b in builds.items()},
        "build_s_this_run": sum(b.build_s for b in builds.values()),
        "engine_size_mb": sum(b.size_bytes for b in builds.values()) / 2**20,
        "load_s": sides.engine_loads[0]["s"],
        "reload_s": [x["s"] for x in sides.engine_loads[1:]],
        "on_demand": list(cfg.on_demand_components()),
        "warmup_s": runs.warmups["engine"],
        "engine_dir": str(sides.engine_dir),
    })
    config = dataclasses.asdict(cfg) | {
        "baseline_precision": baseline_precision,
        "sampler_used": make_sampler(cfg.sampler, model.scheduler).name,
        "num_frames_used": frames,
        "guidance_used": kwargs.get("guidance_scale", f"{cfg.min_guidance}..{cfg.max_guidance}"),
        "schedule": runs.schedule,
    }
    result = {
        "schema": SCHEMA,
        "case": case_key(config | {"component_precision": cfg.component_precisions() or None}, model.kind, sides.backend),
        "machine": machine(),
        "config": config,
        "model": {"label": model.label, "random_weights": bool(model.preset), "folder": str(model.folder),
                  "kind": model.kind},
        "environment": env,
        "engine": engine,
        # RSS of the engine process and the baseline worker sampled together: what the
        # machine held at once (each side's own peak is in its peak_memory_mb).
        "peak_memory_both_mb": runs.together_mb,
        "baseline": None,
        "speedup": None,
        "parity": None,
    }
    result["roofline"] = roofline(model, sides.device, cfg, engine, frames, runs, probe)
    if runs.baseline:
        baseline_peak = max([x["peak_rss_mb"] for x in sides.baseline_loads] + [r["peak_rss_mb"] for r in runs.baseline]
                            + runs.warmup_peaks["baseline"])
        result["baseline"] = _side(runs.baseline, videos, frames, baseline_peak, stages, model.denoiser) | {
            "backend": f"pytorch (diffusers {getattr(model, 'pipeline_class', 'StableVideoDiffusionPipeline')})" + (" + torch.compile" if cfg.baseline_compile else ""),
            "precision": baseline_precision, "build_s": 0.0, "load_s": sides.baseline_loads[0]["s"],
            "reload_s": [x["s"] for x in sides.baseline_loads[1:]],
            # With --baseline-compile the first warm-up run carries the compile time.
            "warmup_s": runs.warmups["baseline"],
        }
        result["speedup"] = result["baseline"]["end_to_end_s"]["median"] / engine["end_to_end_s"]["median"]
        result["parity"] = parity(runs.engine[-1]["frames"], runs.baseline[-1]["frames"])
    return result


def denoiser_flops(model, cfg, frames: int) -> tuple[int | None, int | None]:
    """FLOPs of one denoiser call of this request: vidrt's graph and diffusers' forward, at
    the request's text length (``max_sequence_length``, else the pipeline's default), or
    (None, None) where the denoiser is assembled at load time."""
    from .roofline import unet_flops

    unet_batch = cfg.batch_size * (2 if cfg.guided(model) else 1)
    text_length = cfg.request(model).get("max_sequence_length")  # None: the pipeline's default
    shape = (model, unet_batch, frames, cfg.height, cfg.width)
    flops = unet_flops(*shape, text_length=text_length)
    if flops is None:
        return None, None
    return flops, unet_flops(*shape, diffusers_graph=True, text_length=text_length)


def roofline(model, device: str, cfg, engine: dict, frames: int, runs: Runs | None = None,
             probe=None) -> dict | None:
    """UNet FLOPs per step, achieved TFLOP/s, and this machine's matmul ceilings (best over
    the libraries that run a GEMM here, each library's rate kept); with ``probe``, each
    side's timed runs against the ceiling probed around each of them."""
    from .roofline import matmul_ceilings

    if device != "cpu":
        return None  # the ceilings measured here are CPU matmuls
    if cfg.cache is not None:
        return None  # skipped steps do a fraction of a step's FLOPs: no one rate per step
    denoiser = model.denoiser
    flops, diffusers_flops = denoiser_flops(model, cfg, frames)
    if flops is None:
        return None
    by_library = {p: matmul_ceilings(p) for p in ("fp32", "bf16", "int8")}
    ceilings = {p: max(rates.values()) for p, rates in by_library.items() if rates}
    step_s = engine["stages_ms"][f"{denoiser}_step"]["median"] / 1000
    used = ceiling_precision(model, cfg)
    out = {
        "denoiser": denoiser,  # the component the unet_* figures describe (unet, or Wan's transformer)
        "unet_tflop_per_step": flops / 1e12,
        "diffusers_unet_tflop_per_step": diffusers_flops / 1e12,
        "matmul_ceiling_tflops": ceilings,
        "matmul_ceiling_by_library": by_library,
        "engine_unet_tflops": flops / step_s / 1e12,
        "engine_fraction_of_ceiling": flops / step_s / 1e12 / ceilings[used],
        "ceiling_used": used,
    }
    if probe is not None and runs is not None:
        out |= {
            "ceiling_probes_tflops": list(probe.rates),
            "engine_fraction_of_ceiling_paired": _paired_fractions(runs.engine, flops),
            "baseline_fraction_of_ceiling_paired": _paired_fractions(runs.baseline, diffusers_flops),
        }
    return out


def _paired_fractions(timed: list[dict], flops: int) -> dict | None:
    """Each timed run's denoiser rate (FLOPs over its median step) as a fraction of the
    ceiling probed around that run; summarised over the runs."""
    fractions = [flops / statistics.median(r["unet_steps"]) / 1e12 / r["ceiling_tflops"]
                 for r in timed if r.get("unet_steps") and r.get("ceiling_tflops")]
    return summary(fractions) if fractions else None


def _engine_run(pipe, inputs, cfg, kwargs) -> dict:
    with PeakRss() as mem, PeakDeviceMemory() as dev:
        out = pipe(**inputs, generator=torch.Generator().manual_seed(cfg.seed), output_type="np", **kwargs)
    t = pipe.timings
    return {
        "stages": {"image_encoder": t.image_encoder, "vae_encoder": t.vae_encoder, "text_encoder": t.text_encoder,
                   pipe.model.denoiser: t.unet, "vae_decoder": t.vae_decoder},
        "unet_steps": list(t.unet_steps), "total": t.end_to_end, "peak_rss_mb": mem.peak_mb,
        "device": dev.as_dict(), "frames": out.frames, "cache": t.cache,
    }


def _side(runs: list[dict], videos: int, frames: int, peak_mb: float, stage_names, denoiser: str = "unet") -> dict:
    """One side's figures from its timed runs; ``peak_mb`` is its process's peak RSS;
    ``<denoiser>_step`` summarises the denoiser's seconds per step."""
    totals = [r["total"] for r in runs]
    stages = {s: summary([r["stages"].get(s, 0.0) for r in runs], 1000.0) for s in stage_names}
    steps = [x for r in runs for x in r["unet_steps"]]
    stages[f"{denoiser}_step"] = summary(steps, 1000.0) if steps else None
    med = statistics.median(totals)
    return {
        "stages_ms": stages,
        "end_to_end_s": summary(totals),
        "peak_memory_mb": peak_mb,
        "peak_rss_mb_per_run": [r["peak_rss_mb"] for r in runs],
        "peak_device_memory_mb": runs[-1]["device"],
        "videos_per_min": 60.0 * videos / med,
        "frames_per_s": videos * frames / med,
        # step caching: per timed run, each denoiser's evaluations run and skipped
        "cache": [{name: {k: c[k] for k in ("full", "skipped")} for name, c in r.get("cache", {}).items()} for r in runs]
                 if any(r.get("cache") for r in runs) else None,
    }


def parity(a: np.ndarray, b: np.ndarray) -> dict:
    """Agreement of two frame arrays in [0, 1]."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    diff = np.abs(a - b)
    mse = float((diff**2).mean())
    return {
        "max_abs_err": float(diff.max()),
        "mean_abs_err": float(diff.mean()),
        "rel_l2": float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)),
        "psnr_db": float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse)),
    }
