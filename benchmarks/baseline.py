"""The PyTorch baseline: the model folder's diffusers pipeline (StableVideoDiffusionPipeline,
TextToVideoSDPipeline, AnimateDiffPipeline or WanPipeline) on the same components, with
per-stage timers around its modules and the denoiser's seconds summed per scheduler step."""

from __future__ import annotations

import time

import torch

from vidrt.errors import VidrtError

from . import cache_hooks

# bf16: bf16 weights; bf16-autocast: fp32 weights under torch.autocast (diffusers'
# two ways of running bf16; which is faster depends on the machine).
# The pipeline's models by attribute: its denoisers, and all of them.
DENOISERS = ("unet", "transformer", "transformer_2")
MODELS = (*DENOISERS, "vae", "image_encoder", "text_encoder")

BASELINE_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "bf16-autocast": torch.float32}


class StageTimer:
    """Wraps module methods so each call adds its seconds to a stage (on a GPU the
    device is synchronised around each call, so the seconds are the stage's own)."""

    def __init__(self, cuda: bool = False):
        self.cuda = cuda
        self.seconds: dict[str, list[float]] = {}
        self.steps: list[float] = []
        self._stepped = 0  # denoiser calls already counted into steps

    def reset(self):
        self.seconds = {}
        self.steps = []
        self._stepped = 0

    def close_step(self, stage: str) -> None:
        """Ends a denoising step: its seconds are the ``stage`` calls since the last one
        (two per step where diffusers runs the guidance halves as two calls)."""
        calls = self.seconds.get(stage, [])
        self.steps.append(float(sum(calls[self._stepped:])))
        self._stepped = len(calls)

    def wrap(self, obj, attr: str, stage: str):
        inner = getattr(obj, attr)

        def timed(*args, **kwargs):
            if self.cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                if self.cuda:
                    torch.cuda.synchronize()
                self.seconds.setdefault(stage, []).append(time.perf_counter() - t0)

        setattr(obj, attr, timed)


def _to_fp32(out):
    if isinstance(out, torch.Tensor):
        return out.float()
    if isinstance(out, tuple):
        return tuple(_to_fp32(o) for o in out)
    for key in ("sample", "image_embeds", "last_hidden_state"):
        if isinstance(getattr(out, key, None), torch.Tensor):
            setattr(out, key, getattr(out, key).float())
            out[key] = getattr(out, key)
    return out


def _autocast_bf16(fn, device: str):
    def run(*args, **kwargs):
        with torch.autocast(device, dtype=torch.bfloat16):
            return _to_fp32(fn(*args, **kwargs))

    return run


def check_baseline_precision(precision: str, device: str) -> None:
    """Raises VidrtError for a baseline precision diffusers cannot run on ``device``."""
    if precision not in BASELINE_PRECISIONS:
        raise VidrtError(f"--baseline-precision {precision}: choose {', '.join(BASELINE_PRECISIONS)} or none")
    if precision == "fp16" and device != "cuda":
        raise VidrtError("--baseline-precision fp16 needs a GPU; on a CPU use fp32 or bf16")


class DiffusersBaseline:
    """diffusers' pipeline, timed per stage like vidrt's."""

    def __init__(self, model, precision: str, unet_weights=None, device: str = "cpu", compile: bool = False,
                 cache=None, steps: int | None = None):
        from vidrt.sources import load_torch_components

        check_baseline_precision(precision, device)
        self.precision = precision
        dtype = BASELINE_PRECISIONS[precision]
        # What the model keeps at fp32 under bf16/fp16 (Wan's VAE, as diffusers' Wan
        # examples load it) stays fp32 here too, as on vidrt's side.
        kept = {"vae"} if dtype != torch.float32 and "vae_decoder" in model.keep_fp32 else set()
        self.pipe = load_torch_components(model, unet_weights, dtype={"default": dtype} | dict.fromkeys(kept, torch.float32))
        self.pipe.to(device=device)
        for name in MODELS:  # a motion adapter, loaded apart in fp32, gets the dtype too
            module = getattr(self.pipe, name, None)
            if module is not None:
                module.to(dtype=torch.float32 if name in kept else dtype)
        self.pipe.set_progress_bar_config(disable=True)
        if precision == "bf16-autocast":
            # Autocast around the models only: diffusers' CLIP preprocessing breaks on
            # bf16 tensors, and outputs go back to fp32 as the pipeline expects.
            for module, attr in self._timed(*((m, "decode" if m == "vae" else "forward") for m in MODELS)):
                setattr(module, attr, _autocast_bf16(getattr(module, attr), device))
        # diffusers' own step-cache hook, as vidrt's --cache (benchmarks/cache_hooks.py)
        self.cache_log = cache_hooks.enable(self.pipe, cache, steps) if cache is not None else None
        if compile:
            # Compiled on first use: the first (warm-up) run carries the compile time.
            for module, attr in self._timed(*((m, "forward") for m in DENOISERS)):
                setattr(module, attr, torch.compile(getattr(module, attr)))
        self.timer = StageTimer(cuda=device == "cuda")
        self.device = device
        self.denoiser = model.denoiser
        stages = {("image_encoder", "forward"): "image_encoder", ("vae", "encode"): "vae_encoder",
                  ("text_encoder", "forward"): "text_encoder", ("unet", "forward"): "unet",
                  # both Wan 2.2 experts count as the transformer stage
                  ("transformer", "forward"): "transformer", ("transformer_2", "forward"): "transformer",
                  ("vae", "decode"): "vae_decoder"}
        if not model.takes_image:
            del stages[("vae", "encode")]  # text to video never encodes
        for (name, attr), stage in stages.items():
            if getattr(self.pipe, name, None) is not None:
                self.timer.wrap(getattr(self.pipe, name), attr, stage)

    def _timed(self, *pairs):
        return [(getattr(self.pipe, n), a) for n, a in pairs if getattr(self.pipe, n, None) is not None]

    def weight_bytes(self) -> int:
        """Bytes of every parameter and buffer of the pipeline's models."""
        total = 0
        for module, _ in self._timed(*((m, "") for m in MODELS)):
            for t in list(module.parameters()) + list(module.buffers()):
                total += t.numel() * t.element_size()
        return total

    def __call__(self, inputs: dict, generator, **kwargs):
        """Runs one request (``inputs``: image= or prompt=); returns (frames as np
        [B,F,H,W,3], {stage: seconds}, denoiser seconds per step)."""
        scheduler = self.pipe.scheduler  # replaced after construction when the sampler asks
        if not getattr(scheduler, "_vidrt_timed", False):
            import functools

            step = scheduler.step

            # wraps: diffusers reads step's signature to decide whether to pass a generator
            @functools.wraps(step)
            def timed_step(*args, **kw):
                self.timer.close_step(self.denoiser)
                return step(*args, **kw)

            scheduler.step, scheduler._vidrt_timed = timed_step, True
        self.timer.reset()
        if self.cache_log is not None:
            self.cache_log.reset()
        t0 = time.perf_counter()
        with torch.no_grad():
            frames = self.pipe(**inputs, generator=generator, output_type="np", **kwargs).frames
        total = time.perf_counter() - t0
        s = self.timer.seconds
        stages = {k: float(sum(v)) for k, v in s.items()}
        return frames, stages, list(self.timer.steps), total
