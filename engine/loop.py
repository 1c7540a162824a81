"""The denoising loop, written once for every backend.

Per step: scale the latents into the UNet's input buffer (whose other half of
channels holds the image latents, written once), one UNet call for both
guidance halves, guidance combined into a reused buffer, sampler step in place.
"""

from __future__ import annotations

import dataclasses
import time

import torch

MAX_CACHED_SHAPES = 4


@dataclasses.dataclass
class Conditioning:
    """Per-request UNet inputs that stay fixed across steps (CFG halves already stacked)."""

    image_embeds: torch.Tensor  # [G*V, 1, D]
    image_latents: torch.Tensor  # [G*V, C, h, w]
    added_time_ids: torch.Tensor  # [G*V, 3]


def denoise(
    unet,
    sampler,
    latents: torch.Tensor,
    cond: Conditioning,
    guidance: torch.Tensor | None,
    generator: torch.Generator | None,
    step_times: list,
    progress: bool = False,
    buffers: dict | None = None,
) -> torch.Tensor:
    """Runs every sampler step; returns the denoised latents ([V, F, C, h, w]).

    Args:
        unet: the UNet engine.
        sampler: a sampler with timesteps set.
        latents: initial latents (already scaled by init_noise_sigma); updated in place.
        cond: conditioning; its batch is 2V with guidance, else V.
        guidance: per-frame guidance scale [1, F, 1, 1, 1], or None to skip CFG.
        generator: the request's generator (stochastic samplers draw from it).
        step_times: list that receives each step's UNet seconds.
        progress: show a progress bar.
        buffers: cache of per-shape work buffers, kept by the caller across requests.
    """
    from tqdm.auto import tqdm

    videos, frames, channels = latents.shape[:3]
    groups = 2 if guidance is not None else 1
    unet_in, timestep, guided = _work_buffers(buffers if buffers is not None else {}, groups, latents)
    unet_in[:, :, channels:] = cond.image_latents.unsqueeze(1)
    for i in tqdm(range(sampler.num_steps), desc="denoise", disable=not progress, unit="step"):
        scale = sampler.input_scale(i)
        for g in range(groups):
            torch.mul(latents, scale, out=unet_in[g * videos : (g + 1) * videos, :, :channels])
        timestep.fill_(float(sampler.timesteps[i]))
        t0 = time.perf_counter()
        out = unet(
            sample=unet_in,
            timestep=timestep,
            encoder_hidden_states=cond.image_embeds,
            added_time_ids=cond.added_time_ids,
        )["noise_pred"]
        step_times.append(time.perf_counter() - t0)
        if guidance is not None:
            uncond, cond_pred = out[:videos], out[videos:]
            torch.sub(cond_pred, uncond, out=guided)
            guided.mul_(guidance).add_(uncond)
            sampler.step(guided, i, latents, generator)
        else:
            sampler.step(out, i, latents, generator)
    return latents


def _work_buffers(cache: dict, groups: int, latents: torch.Tensor):
    """UNet input, timestep and guidance buffers for this shape, allocated once."""
    key = (groups, tuple(latents.shape))
    if key not in cache:
        if len(cache) >= MAX_CACHED_SHAPES:
            cache.pop(next(iter(cache)))  # oldest shape first
        videos, frames, channels = latents.shape[:3]
        cache[key] = (
            torch.empty((groups * videos, frames, 2 * channels, *latents.shape[3:]), dtype=torch.float32),
            torch.empty(1, dtype=torch.float32),
            torch.empty_like(latents) if groups == 2 else None,
        )
    return cache[key]
