"""The PyTorch baseline: diffusers' StableVideoDiffusionPipeline on the same
components, with per-stage timers around its modules."""

from __future__ import annotations

import time

import torch

from vidrt.errors import VidrtError

BASELINE_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


class StageTimer:
    """Wraps module methods so each call adds its seconds to a stage."""

    def __init__(self):
        self.seconds: dict[str, list[float]] = {}

    def reset(self):
        self.seconds = {}

    def wrap(self, obj, attr: str, stage: str):
        inner = getattr(obj, attr)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds.setdefault(stage, []).append(time.perf_counter() - t0)

        setattr(obj, attr, timed)


class DiffusersBaseline:
    """diffusers' pipeline, timed per stage like vidrt's."""

    def __init__(self, model, precision: str, unet_weights=None):
        from vidrt.sources import load_torch_components

        if precision not in BASELINE_PRECISIONS:
            raise VidrtError(
                f"--baseline-precision {precision}: choose {', '.join(BASELINE_PRECISIONS)} or none"
            )
        self.precision = precision
        self.pipe = load_torch_components(model, unet_weights)
        if precision != "fp32":
            self.pipe.to(dtype=BASELINE_PRECISIONS[precision])
        self.pipe.set_progress_bar_config(disable=True)
        self.timer = StageTimer()
        self.timer.wrap(self.pipe.image_encoder, "forward", "image_encoder")
        self.timer.wrap(self.pipe.vae, "encode", "vae_encoder")
        self.timer.wrap(self.pipe.unet, "forward", "unet")
        self.timer.wrap(self.pipe.vae, "decode", "vae_decoder")

    def weight_bytes(self) -> int:
        """Bytes of every parameter and buffer of the pipeline's models."""
        total = 0
        for module in (self.pipe.unet, self.pipe.vae, self.pipe.image_encoder):
            for t in list(module.parameters()) + list(module.buffers()):
                total += t.numel() * t.element_size()
        return total

    def __call__(self, image, generator, **kwargs):
        """Runs one request; returns (frames as np [B,F,H,W,3], {stage: seconds}, unet step seconds)."""
        self.timer.reset()
        t0 = time.perf_counter()
        with torch.no_grad():
            frames = self.pipe(image, generator=generator, output_type="np", **kwargs).frames
        total = time.perf_counter() - t0
        s = self.timer.seconds
        stages = {k: float(sum(s.get(k, []))) for k in ("image_encoder", "vae_encoder", "unet", "vae_decoder")}
        return frames, stages, list(s.get("unet", [])), total
