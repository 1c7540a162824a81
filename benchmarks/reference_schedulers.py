"""Reference scheduler for diffusers' pipeline when comparing the AnimateLCM sampler.

AnimateLCM-SVD ships its consistency scheduler outside diffusers. This is that
sampler written plainly, diffusers-style (one op per line, step index tracked
from the timestep), to plug into StableVideoDiffusionPipeline as the reference.
diffusers' pipeline calls ``scheduler.step`` without a generator, so the
generator is an attribute set per request: all draws then come from it, never
from the global RNG.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor


class AnimateLCMReferenceScheduler(SchedulerMixin, ConfigMixin):
    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 40, sigma_min: float = 0.002, sigma_max: float = 700.0,
                 sigma_data: float = 1.0, s_noise: float = 1.0, rho: float = 7.0):
        self.init_noise_sigma = sigma_max
        self.generator: torch.Generator | None = None
        self.timesteps = None
        self.sigmas = None
        self._step_index = None

    def set_timesteps(self, num_inference_steps: int, device=None, **kwargs):
        cfg = self.config
        step_ratio = cfg.num_train_timesteps // num_inference_steps
        timesteps = (np.arange(0, num_inference_steps) * step_ratio).round()[::-1].copy()
        ramp = timesteps[::-1].copy() / (cfg.num_train_timesteps - 1)
        min_inv_rho = cfg.sigma_min ** (1 / cfg.rho)
        max_inv_rho = cfg.sigma_max ** (1 / cfg.rho)
        sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** cfg.rho
        self.timesteps = torch.from_numpy(0.25 * np.log(sigmas + 1e-44)).to(torch.float32)
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [cfg.sigma_min]]).astype(np.float32))
        self._step_index = None

    def _index(self, timestep) -> int:
        if self._step_index is None:
            self._step_index = int((self.timesteps == timestep).nonzero()[0].item())
        return self._step_index

    def scale_model_input(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        sigma = self.sigmas[self._index(timestep)]
        return sample / ((sigma**2 + self.config.sigma_data**2) ** 0.5)

    def step(self, model_output, timestep, sample, generator=None, return_dict=True):
        cfg = self.config
        i = self._index(timestep)
        sigma = self.sigmas[i]
        sigma_next = self.sigmas[i + 1]
        c_skip = cfg.sigma_data**2 / ((sigma - cfg.sigma_min) ** 2 + cfg.sigma_data**2)
        c_out = (sigma - cfg.sigma_min) * cfg.sigma_data / (sigma**2 + cfg.sigma_data**2) ** 0.5
        denoised = c_out * model_output + c_skip * sample
        noise = randn_tensor(model_output.shape, generator=generator or self.generator, dtype=model_output.dtype)
        sigma_hat = sigma_next.clamp(min=cfg.sigma_min, max=cfg.sigma_max)
        prev_sample = denoised + noise * cfg.s_noise * sigma_hat
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
    if sampler not in _DIFFUSERS_CLASS:
        return current
    extra = {"algorithm_type": "dpmsolver++"} if sampler == "dpm++" else {}
    return getattr(diffusers, _DIFFUSERS_CLASS[sampler]).from_config(current.config, **extra)
