"""Samplers: pure math over latents, no backend and no I/O.

Each sampler precomputes, per step, the few scalars it needs. The loop copies a
step's scalars into a small tensor and ``apply`` reads them from there, so a step
is two or three fused in-place ops that allocate nothing, read no host value and
can be captured once in a CUDA graph and replayed for every step. Random draws
come only from the request's generator, in the order diffusers draws them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import VidrtError

SAMPLERS = ("euler", "animatelcm")


class Sampler:
    """What the loop needs of a sampler.

    ``coefficients(i)`` are the host scalars of step i: [input scale, timestep,
    step scalars...]; ``apply`` advances the latents in place from a tensor
    holding them (and from ``noise`` when ``needs_noise``).
    """

    name = ""
    init_noise_sigma = 1.0
    needs_noise = False

    def __init__(self):
        self.sigmas = torch.empty(0)
        self.timesteps = torch.empty(0)
        self._coefs: list[list[float]] = []

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def input_scale(self, i: int) -> float:
        """Factor applied to the latents before the model at step i (scale_model_input)."""
        return self._coefs[i][0]

    def coefficients(self, i: int) -> list[float]:
        return self._coefs[i]

    def set_timesteps(self, num_inference_steps: int) -> None:
        raise NotImplementedError

    def apply(self, x: torch.Tensor, model_output: torch.Tensor, coef: torch.Tensor, noise) -> torch.Tensor:
        """Advances ``x`` in place using ``coef`` (this step's coefficients, on x's device)."""
        raise NotImplementedError

    def step(self, model_output: torch.Tensor, i: int, x: torch.Tensor, generator=None) -> torch.Tensor:
        """One step outside the loop (tests, scripts): advances ``x`` in place."""
        coef = torch.tensor(self.coefficients(i), dtype=x.dtype, device=x.device)
        noise = draw_noise(x.shape, generator).to(x.device) if self.needs_noise else None
        return self.apply(x, model_output, coef, noise)


def draw_noise(shape, generator, out: torch.Tensor | None = None) -> torch.Tensor:
    """Standard normal noise as diffusers' randn_tensor draws it: on the generator's
    device (a CPU generator draws on the CPU, whatever runs the model), and with a
    list of generators one batch row from each."""
    if isinstance(generator, (list, tuple)):
        rows = [draw_noise((1, *shape[1:]), generator[i]) for i in range(shape[0])]
        noise = torch.cat(rows)
        return out.copy_(noise) if out is not None else noise
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, dtype=torch.float32, device=device, out=out)


class EulerEDMSampler(Sampler):
    """diffusers' EulerDiscreteScheduler as SVD configures it (EDM, Karras sigmas,
    continuous timesteps), deterministic (s_churn = 0).

    The schedule comes from diffusers' own scheduler class, so any scheduler
    config a model folder ships gives the same sigmas as diffusers; the step is
    vidrt's, fused into ``x ← a·x + b·model_output``.
    """

    name = "euler"

    def __init__(self, scheduler_config: dict):
        super().__init__()
        self.config = dict(scheduler_config)
        self.prediction_type = self.config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise VidrtError(f"euler sampler: prediction_type '{self.prediction_type}' is not supported")

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Computes sigmas and timesteps for ``num_inference_steps`` steps."""
        from diffusers import EulerDiscreteScheduler

        if num_inference_steps < 1:
            raise VidrtError(f"num_inference_steps={num_inference_steps}: need at least 1 step")
        config = {k: v for k, v in self.config.items() if not k.startswith("_")}
        scheduler = EulerDiscreteScheduler.from_config(config)
        scheduler.set_timesteps(num_inference_steps)
        self.sigmas = scheduler.sigmas.to(torch.float32)
        self.timesteps = scheduler.timesteps.to(torch.float32)
        self.init_noise_sigma = float(scheduler.init_noise_sigma)
        s = self.sigmas.double().tolist()
        self._coefs = [
            [1.0 / math.sqrt(s[i] ** 2 + 1), float(self.timesteps[i]), *self._step_coeffs(s[i], s[i + 1])]
            for i in range(len(s) - 1)
        ]

    def _step_coeffs(self, sigma: float, sigma_next: float) -> tuple[float, float]:
        # x_next = x + (x - denoised) / sigma * (sigma_next - sigma), denoised = c_skip·x + c_out·out
        if self.prediction_type == "v_prediction":
            c_skip, c_out = 1.0 / (sigma**2 + 1), -sigma / math.sqrt(sigma**2 + 1)
        elif self.prediction_type == "epsilon":
            c_skip, c_out = 1.0, -sigma
        else:
            c_skip, c_out = 0.0, 1.0
        ratio = (sigma_next - sigma) / sigma
        return 1.0 + (1.0 - c_skip) * ratio, -c_out * ratio

    def apply(self, x, model_output, coef, noise=None):
        return x.mul_(coef[2]).addcmul_(model_output, coef[3])


class AnimateLCMSampler(Sampler):
    """The AnimateLCM-SVD consistency sampler.

    40 training steps, Karras sigmas over sigma_min..sigma_max with rho 7 and the
    ramp ``arange(n)·(40//n)/39``, timestep ``0.25·ln(sigma)``, boundary-condition
    scalings ``denoised = c_out·out + c_skip·x``, then fresh noise scaled by the
    next sigma after every step (drawn on the last step too), no clipping.
    """

    name = "animatelcm"
    num_train_timesteps = 40
    needs_noise = True

    def __init__(self, sigma_min=0.002, sigma_max=700.0, sigma_data=1.0, rho=7.0):
        super().__init__()
        self.sigma_min, self.sigma_max, self.sigma_data, self.rho = sigma_min, sigma_max, sigma_data, rho
        self.init_noise_sigma = float(sigma_max)

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = num_inference_steps
        if not 1 <= n <= self.num_train_timesteps:
            raise VidrtError(
                f"num_inference_steps={n}: the animatelcm sampler takes 1..{self.num_train_timesteps} steps (4 is usual)"
            )
        ramp = np.arange(n) * (self.num_train_timesteps // n) / (self.num_train_timesteps - 1)
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        sigmas = (hi + ramp * (lo - hi)) ** self.rho
        self.timesteps = torch.from_numpy(0.25 * np.log(sigmas + 1e-44)).to(torch.float32)
        self.sigmas = torch.from_numpy(np.append(sigmas, self.sigma_min)).to(torch.float32)
        s = self.sigmas.double().tolist()
        sd, smin = self.sigma_data, self.sigma_min
        self._coefs = []
        for i in range(n):
            c_skip = sd**2 / ((s[i] - smin) ** 2 + sd**2)
            c_out = (s[i] - smin) * sd / math.sqrt(s[i] ** 2 + sd**2)
            noise_scale = min(max(s[i + 1], smin), self.sigma_max)
            self._coefs.append([1.0 / math.sqrt(s[i] ** 2 + sd**2), float(self.timesteps[i]), c_skip, c_out, noise_scale])

    def apply(self, x, model_output, coef, noise):
        """x ← c_skip·x + c_out·out + sigma_next·noise, in place."""
        return x.mul_(coef[2]).addcmul_(model_output, coef[3]).addcmul_(noise, coef[4])


def make_sampler(name: str, scheduler_config: dict):
    """Builds the sampler called ``name`` for a model's scheduler config."""
    if name == "euler":
        return EulerEDMSampler(scheduler_config)
    if name == "animatelcm":
        return AnimateLCMSampler()
    raise VidrtError(f"unknown sampler '{name}'; choose one of: {', '.join(SAMPLERS)}")
