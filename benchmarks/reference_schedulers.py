"""Reference schedulers for diffusers' pipelines when checking vidrt's samplers.

AnimateLCM-SVD ships its consistency scheduler outside diffusers:
``AnimateLCMSVDStochasticIterativeScheduler`` in G-U-N/AnimateLCM,
``animatelcm_svd/animatelcm_scheduler.py``. ``AnimateLCMReferenceScheduler`` is written
from that file's formulas (not from vidrt's sampler), in its data types: sigmas computed
in float64 and stored as float32 with a final 0, timesteps ``0.25·ln(sigma)`` in float64,
``init_noise_sigma = sqrt(sigma_max² + 1)``, the boundary scalings of its
``get_scalings_for_boundary_condition`` (``c_skip = sd²/(σ²+sd²)``,
``c_out = -σ·sd/sqrt(σ²+sd²)``), noise drawn on every step when the schedule has more
than one step and scaled by ``clamp(sigma_next, 0, sigma_max)``.

One difference, by design: the published pipeline calls ``scheduler.step`` without a
generator, so its noise comes from torch's global RNG. Here the generator is an
attribute set per request, so a seeded request is reproducible and the global RNG is
untouched; vidrt draws from the request's generator in the same order.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor


class AnimateLCMReferenceScheduler(SchedulerMixin, ConfigMixin):
    """The published AnimateLCM-SVD scheduler's math, with the settings every AnimateLCM-SVD
    script passes (the constructor defaults here)."""

    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 40, sigma_min: float = 0.002, sigma_max: float = 700.0,
                 sigma_data: float = 1.0, s_noise: float = 1.0, rho: float = 7.0, clip_denoised: bool = False):
        self.init_noise_sigma = (sigma_max**2 + 1) ** 0.5
        self.generator: torch.Generator | None = None
        self.timesteps = None
        self.sigmas = None
        self._step_index = None

    def _karras(self, ramp: np.ndarray) -> np.ndarray:
        cfg = self.config
        first, last = cfg.sigma_max ** (1 / cfg.rho), cfg.sigma_min ** (1 / cfg.rho)
        return (first + ramp * (last - first)) ** cfg.rho

    def set_timesteps(self, num_inference_steps: int, device=None, **kwargs):
        cfg = self.config
        # Integer training timesteps, spaced by 40 // n and counted down, mapped back onto
        # the Karras ramp in ascending order (the published file's set_timesteps).
        stride = cfg.num_train_timesteps // num_inference_steps
        train_steps = (np.arange(num_inference_steps) * stride).round()[::-1].astype(np.int64)
        sigmas = self._karras(train_steps[::-1] / (cfg.num_train_timesteps - 1))
        self.timesteps = torch.from_numpy(0.25 * np.log(sigmas + 1e-44))
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        self._step_index = None

    def _index(self, timestep) -> int:
        if self._step_index is None:
            self._step_index = int((self.timesteps == timestep).nonzero()[0].item())
        return self._step_index

    def scale_model_input(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        sigma = self.sigmas[self._index(timestep)]
        return sample / (sigma**2 + self.config.sigma_data**2) ** 0.5

    def step(self, model_output, timestep, sample, generator=None, return_dict=True):
        cfg = self.config
        i = self._index(timestep)
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        sd = cfg.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = -sigma * sd / (sigma**2 + sd**2) ** 0.5
        denoised = c_out * model_output + c_skip * sample
        if cfg.clip_denoised:
            denoised = denoised.clamp(-1, 1)
        if len(self.timesteps) > 1:
            noise = randn_tensor(model_output.shape, generator=generator or self.generator,
                                 dtype=model_output.dtype, device=model_output.device)
        else:
            noise = torch.zeros_like(model_output)
        prev_sample = denoised + noise * cfg.s_noise * sigma_next.clamp(min=0, max=cfg.sigma_max)
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev_sample) if return_dict else (prev_sample,)


# vidrt sampler -> the diffusers scheduler class that steps the same way
_DIFFUSERS_CLASS = {"euler": "EulerDiscreteScheduler", "ddim": "DDIMScheduler", "lcm": "LCMScheduler",
                    "dpm++": "DPMSolverMultistepScheduler"}


def reference_scheduler(sampler: str | None, current):
    """The scheduler diffusers' pipeline needs to step as vidrt's ``sampler`` does,
    built from the pipeline's ``current`` scheduler config (None or "scheduler":
    the model's own, unchanged)."""
    import diffusers

    if sampler == "animatelcm":
        return AnimateLCMReferenceScheduler()
    if sampler == "flow-euler":  # the flow shift of the folder's (UniPC) schedule
        from diffusers import FlowMatchEulerDiscreteScheduler

        if type(current).__name__ == "FlowMatchEulerDiscreteScheduler":
            return current
        shift = current.config.get("flow_shift", current.config.get("shift", 1.0))
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=current.config.num_train_timesteps, shift=shift)
    if sampler not in _DIFFUSERS_CLASS:
        return current
    extra = {"algorithm_type": "dpmsolver++"} if sampler == "dpm++" else {}
    return getattr(diffusers, _DIFFUSERS_CLASS[sampler]).from_config(current.config, **extra)
