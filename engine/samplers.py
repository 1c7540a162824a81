"""Samplers: pure math over latents, no backend and no I/O.

Each sampler precomputes, per step, the few scalars it needs. The loop copies a
step's scalars into a small tensor and ``apply`` reads them from there, so a step
is two or three fused in-place ops that allocate nothing, read no host value and
can be captured once in a CUDA graph and replayed for every step. Random draws
come only from the request's generator, in the order diffusers draws them.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from .errors import VidrtError

SAMPLERS = ("euler", "animatelcm", "ddim", "lcm", "dpm++", "scheduler", "flow-euler", "cogvideox-dpm")
# Samplers per model kind: SVD's EDM samplers take continuous sigmas, the others
# step discrete-timestep schedules.
# Flow-matching models (Wan) predict a velocity: the folder's scheduler (UniPC on flow
# sigmas) or flow-matching Euler.
SAMPLERS_FOR = {"image-to-video": ("euler", "animatelcm"), "text-to-video": ("ddim", "lcm", "dpm++", "euler", "scheduler"),
                "wan": ("scheduler", "flow-euler"), "wan-i2v": ("scheduler", "flow-euler"),
                "ltx": ("flow-euler", "scheduler"),
                "ltx-i2v": ("flow-euler", "scheduler"), "cogvideox": ("ddim", "cogvideox-dpm", "scheduler"),
                "cogvideox-i2v": ("ddim", "cogvideox-dpm", "scheduler")}
# A model folder's scheduler class -> the sampler that steps as it does.
DEFAULT_FOR_SCHEDULER = {"EulerDiscreteScheduler": "euler", "DDIMScheduler": "ddim", "LCMScheduler": "lcm",
                         "FlowMatchEulerDiscreteScheduler": "flow-euler", "CogVideoXDDIMScheduler": "ddim",
                         "CogVideoXDPMScheduler": "cogvideox-dpm"}


class Sampler:
    """What the loop needs of a sampler.

    ``coefficients(i)`` are the host scalars of step i: [input scale, timestep,
    step scalars...]; ``apply`` advances the latents in place from a tensor
    holding them (and from ``noise`` when ``needs_noise``).
    """

    name = ""
    init_noise_sigma = 1.0
    needs_noise = False
    capturable = True  # the step is tensor ops only (a CUDA graph can hold it)
    # Axes order in which the pipeline hands latents to its scheduler, when not the
    # latents' own (TextToVideoSDPipeline steps on [B*F, C, h, w]); noise is drawn in it.
    step_layout: tuple[int, ...] | None = None

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

    def begin(self, generator) -> None:
        """Called once per request before the first step."""

    def draws_noise(self, i: int) -> bool:
        """Whether step i draws fresh noise from the request's generator."""
        return self.needs_noise

    def draw(self, shape, generator, out: torch.Tensor | None = None) -> torch.Tensor:
        """Step noise for latents of ``shape``, drawn in the pipeline's step layout."""
        if self.step_layout is None:
            return draw_noise(shape, generator, out=out)
        perm = self.step_layout
        noise = draw_noise([shape[p] for p in perm], generator).permute(*np.argsort(perm).tolist())
        return out.copy_(noise) if out is not None else noise

    def apply(self, x: torch.Tensor, model_output: torch.Tensor, coef: torch.Tensor, noise) -> torch.Tensor:
        """Advances ``x`` in place using ``coef`` (this step's coefficients, on x's device)."""
        raise NotImplementedError

    def step(self, model_output: torch.Tensor, i: int, x: torch.Tensor, generator=None) -> torch.Tensor:
        """One step outside the loop (tests, scripts): advances ``x`` in place."""
        coef = torch.tensor(self.coefficients(i), dtype=x.dtype, device=x.device)
        noise = self.draw(x.shape, generator).to(x.device) if self.draws_noise(i) else torch.zeros_like(x)
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

    def set_timesteps(self, num_inference_steps: int | None, sigmas: list[float] | None = None) -> None:
        """Computes sigmas and timesteps for ``num_inference_steps`` steps, or for the given
        ``sigmas`` (one per step and the final one, as diffusers' ``set_timesteps`` takes them)."""
        from diffusers import EulerDiscreteScheduler

        scheduler = EulerDiscreteScheduler.from_config(_public(self.config))
        if sigmas is None:
            scheduler.set_timesteps(_check_steps(num_inference_steps))
        else:
            scheduler.set_timesteps(sigmas=check_sigmas(sigmas))
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



class FlowEulerSampler(Sampler):
    """diffusers' FlowMatchEulerDiscreteScheduler (deterministic): the schedule comes from
    the diffusers class, the step is vidrt's, ``x <- x + (sigma_next - sigma)·v``. A folder
    shipping UniPC on flow sigmas (Wan) gets the Euler schedule of the same shift."""

    name = "flow-euler"

    def __init__(self, scheduler_config: dict):
        super().__init__()
        config = _public(scheduler_config)
        if scheduler_config.get("_class_name") != "FlowMatchEulerDiscreteScheduler":
            if config.get("prediction_type", "flow_prediction") != "flow_prediction":
                raise VidrtError("flow-euler sampler: the model's scheduler does not predict flow; use --sampler scheduler")
            config = {"num_train_timesteps": config.get("num_train_timesteps", 1000),
                      "shift": config.get("flow_shift", config.get("shift", 1.0))}
        if config.get("stochastic_sampling"):
            raise VidrtError("flow-euler sampler: stochastic sampling is not supported; use --sampler scheduler")
        self.config = config

    def set_timesteps(self, num_inference_steps: int, sigmas=None, mu: float | None = None) -> None:
        """The schedule of diffusers' ``set_timesteps``: ``sigmas`` as the pipeline hands them
        (LTX: a linspace), ``mu`` the shift of a dynamically shifted schedule."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.config)
        _check_steps(num_inference_steps)
        scheduler.set_timesteps(num_inference_steps, sigmas=sigmas, mu=_shift(scheduler, mu))
        self.sigmas = scheduler.sigmas.to(torch.float32)
        self.timesteps = scheduler.timesteps.to(torch.float32)
        s = self.sigmas.tolist()
        self._coefs = [[1.0, float(self.timesteps[i]), s[i + 1] - s[i]] for i in range(len(s) - 1)]

    def apply(self, x, model_output, coef, noise=None):
        return x.addcmul_(model_output, coef[2])

class AnimateLCMSampler(Sampler):
    """The AnimateLCM-SVD consistency sampler, as published
    (``AnimateLCMSVDStochasticIterativeScheduler``, G-U-N/AnimateLCM,
    ``animatelcm_svd/animatelcm_scheduler.py``, with the settings every AnimateLCM-SVD
    script uses: 40 training steps, sigma 0.002..700, sigma_data 1, rho 7, no clipping).

    Karras sigmas over the ramp ``arange(n)·(40//n)/39``, then 0; timestep
    ``0.25·ln(sigma)``; initial noise scaled by ``sqrt(sigma_max² + 1)``; EDM's
    v-prediction scalings ``denoised = c_skip·x + c_out·out`` with
    ``c_skip = sd²/(σ²+sd²)``, ``c_out = -σ·sd/sqrt(σ²+sd²)``; then fresh noise scaled by
    the next sigma. Noise is drawn on every step of a multi-step schedule (on the last
    too, where it is scaled by 0) and never for a single step.
    """

    name = "animatelcm"
    num_train_timesteps = 40
    needs_noise = True

    def __init__(self, sigma_min=0.002, sigma_max=700.0, sigma_data=1.0, rho=7.0, s_noise=1.0):
        super().__init__()
        self.sigma_min, self.sigma_max, self.sigma_data, self.rho = sigma_min, sigma_max, sigma_data, rho
        self.s_noise = s_noise
        self.init_noise_sigma = math.sqrt(sigma_max**2 + 1)

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
        self.sigmas = torch.from_numpy(np.append(sigmas, 0.0)).to(torch.float32)
        s = self.sigmas.double().tolist()
        sd = self.sigma_data
        self._coefs = []
        for i in range(n):
            c_skip = sd**2 / (s[i] ** 2 + sd**2)
            c_out = -s[i] * sd / math.sqrt(s[i] ** 2 + sd**2)
            noise_scale = self.s_noise * min(max(s[i + 1], 0.0), self.sigma_max)
            self._coefs.append([1.0 / math.sqrt(s[i] ** 2 + sd**2), float(self.timesteps[i]), c_skip, c_out, noise_scale])

    def draws_noise(self, i: int) -> bool:
        return self.num_steps > 1

    def apply(self, x, model_output, coef, noise):
        """x ← c_skip·x + c_out·out + s_noise·sigma_next·noise, in place."""
        return x.mul_(coef[2]).addcmul_(model_output, coef[3]).addcmul_(noise, coef[4])


class _LinearStepSampler(Sampler):
    """A sampler whose step is linear in the latents and the model output: vidrt fuses
    it, taking the schedule from diffusers' ``scheduler_class`` built from the model's config."""

    scheduler_class = ""

    def __init__(self, scheduler_config: dict):
        super().__init__()
        import diffusers

        cls = self.scheduler_class
        if cls == "DDIMScheduler" and scheduler_config.get("_class_name", "").startswith("CogVideoX"):
            cls = "CogVideoXDDIMScheduler"  # the SNR-shifted schedule CogVideoX's DDIM and DPM share
        self.scheduler = getattr(diffusers, cls).from_config(_public(scheduler_config))
        cfg = self.scheduler.config
        if cfg.clip_sample or getattr(cfg, "thresholding", False):
            raise VidrtError(f"{self.name} sampler: clip_sample/thresholding make the step non-linear; "
                             "use --sampler scheduler")
        self.prediction_type = cfg.prediction_type


class DDIMSampler(_LinearStepSampler):
    """diffusers' DDIMScheduler with eta = 0 (its default in the pipelines), fused into
    ``x ← a·x + b·model_output`` per step; the schedule (timesteps, alphas) is the
    diffusers scheduler's own."""

    name = "ddim"
    scheduler_class = "DDIMScheduler"

    def set_timesteps(self, num_inference_steps: int, **schedule) -> None:
        """``schedule``: what the pipeline hands diffusers' ``set_timesteps`` besides the
        step count (LTX: sigmas and mu), kept for every request's fresh start."""
        sch = self.scheduler
        self._schedule = schedule
        if "mu" in schedule:
            schedule = dict(schedule, mu=_shift(sch, schedule["mu"]))
        sch.set_timesteps(_check_steps(num_inference_steps), **schedule)
        self.timesteps = sch.timesteps.to(torch.float32)
        stride = sch.config.num_train_timesteps // sch.num_inference_steps
        ac = sch.alphas_cumprod.double()
        self._coefs = []
        for t in sch.timesteps.tolist():
            a = float(ac[t])
            a_prev = float(ac[t - stride]) if t - stride >= 0 else float(sch.final_alpha_cumprod)
            self._coefs.append([1.0, float(t), *_ddim_coeffs(a, a_prev, self.prediction_type)])

    def apply(self, x, model_output, coef, noise=None):
        return x.mul_(coef[2]).addcmul_(model_output, coef[3])


def _ddim_coeffs(a: float, a_prev: float, prediction_type: str) -> tuple[float, float]:
    """(x, model_output) weights of sqrt(a_prev)·x0 + sqrt(1-a_prev)·eps."""
    ra, rb, rap, rbp = math.sqrt(a), math.sqrt(1 - a), math.sqrt(a_prev), math.sqrt(1 - a_prev)
    if prediction_type == "epsilon":  # x0 = (x - rb·e)/ra
        return rap / ra, rbp - rap * rb / ra
    if prediction_type == "v_prediction":  # x0 = ra·x - rb·v, eps = ra·v + rb·x
        return rap * ra + rbp * rb, -rap * rb + rbp * ra
    if prediction_type == "sample":  # x0 = out, eps = (x - ra·out)/rb
        return rbp / rb, rap - rbp * ra / rb
    raise VidrtError(f"prediction_type '{prediction_type}' is not supported")


class LCMSampler(_LinearStepSampler):
    """diffusers' LCMScheduler (AnimateLCM-t2v, LCM-LoRA): boundary-condition scalings,
    then fresh noise scaled to the next timestep after every step but the last,
    fused into ``x ← a·x + b·model_output + c·noise``."""

    name = "lcm"
    scheduler_class = "LCMScheduler"
    needs_noise = True

    def set_timesteps(self, num_inference_steps: int, **schedule) -> None:
        """``schedule``: what the pipeline hands diffusers' ``set_timesteps`` besides the
        step count (LTX: sigmas and mu), kept for every request's fresh start."""
        sch = self.scheduler
        self._schedule = schedule
        if "mu" in schedule:
            schedule = dict(schedule, mu=_shift(sch, schedule["mu"]))
        sch.set_timesteps(_check_steps(num_inference_steps), **schedule)
        ts = sch.timesteps.tolist()
        self.timesteps = sch.timesteps.to(torch.float32)
        ac = sch.alphas_cumprod.double()
        self._coefs = []
        for i, t in enumerate(ts):
            last = i == len(ts) - 1
            t_prev = ts[i + 1] if not last else t
            a = float(ac[t])
            a_prev = float(ac[t_prev]) if t_prev >= 0 else float(sch.final_alpha_cumprod)
            c_skip, c_out = (float(v) for v in sch.get_scalings_for_boundary_condition_discrete(t))
            ra, rb = math.sqrt(a), math.sqrt(1 - a)
            if self.prediction_type == "epsilon":  # denoised = c_out·(x - rb·e)/ra + c_skip·x
                wx, wo = c_out / ra + c_skip, -c_out * rb / ra
            elif self.prediction_type == "v_prediction":
                wx, wo = c_out * ra + c_skip, -c_out * rb
            else:
                wx, wo = c_skip, c_out
            scale = 1.0 if last else math.sqrt(a_prev)
            self._coefs.append([1.0, float(t), scale * wx, scale * wo, 0.0 if last else math.sqrt(1 - a_prev)])

    def draws_noise(self, i: int) -> bool:
        return i != self.num_steps - 1

    def apply(self, x, model_output, coef, noise):
        return x.mul_(coef[2]).addcmul_(model_output, coef[3]).addcmul_(noise, coef[4])


class SchedulerSampler(Sampler):
    """Any diffusers scheduler whose ``scale_model_input`` is the identity (DPM-Solver++,
    UniPC, DEIS, PNDM, DDPM, ...), stepped by the scheduler itself: multistep solvers
    keep their history there. Not capturable in a CUDA graph."""

    capturable = False

    def __init__(self, scheduler_cls: str, scheduler_config: dict, name: str = "scheduler", **overrides):
        super().__init__()
        import diffusers

        cls = getattr(diffusers, scheduler_cls, None)
        if cls is None or not hasattr(cls, "step"):
            raise VidrtError(f"the model's scheduler '{scheduler_cls}' is not a diffusers scheduler class")
        self.name = name
        self.scheduler = cls.from_config(_public(scheduler_config), **overrides)
        self._i = 0
        self._kwargs = {}
        self._schedule = {}

    def set_timesteps(self, num_inference_steps: int, **schedule) -> None:
        """``schedule``: what the pipeline hands diffusers' ``set_timesteps`` besides the
        step count (LTX: sigmas and mu), kept for every request's fresh start."""
        sch = self.scheduler
        self._schedule = schedule
        if "mu" in schedule:
            schedule = dict(schedule, mu=_shift(sch, schedule["mu"]))
        sch.set_timesteps(_check_steps(num_inference_steps), **schedule)
        self.timesteps = sch.timesteps.to(torch.float32)
        self.init_noise_sigma = float(getattr(sch, "init_noise_sigma", 1.0))  # flow schedulers have none: 1
        probe = copy.deepcopy(sch)
        if hasattr(probe, "scale_model_input") and float(probe.scale_model_input(torch.ones(1), sch.timesteps[0])) != 1.0:
            raise VidrtError(
                f"{type(sch).__name__} scales the model input by sigma; vidrt steps sigma-scaled schedulers "
                "with --sampler euler"
            )
        self._coefs = [[1.0, float(t)] for t in sch.timesteps.tolist()]

    def begin(self, generator) -> None:
        import inspect

        self.set_timesteps(self.num_steps, **self._schedule)  # fresh solver history per request
        params = inspect.signature(self.scheduler.step).parameters
        self._kwargs = ({"generator": generator} if "generator" in params else {}) | ({"eta": 0.0} if "eta" in params else {})
        self._i = 0

    def apply(self, x, model_output, coef=None, noise=None):
        perm = self.step_layout
        # Copies: solvers keep past samples/outputs, and vidrt's buffers are overwritten in place.
        view = (lambda t: t.permute(*perm).flatten(0, 1)) if perm else (lambda t: t.clone())
        t = self.scheduler.timesteps[self._i]
        prev = self.scheduler.step(view(model_output), t, view(x), **self._kwargs).prev_sample
        if perm:
            seen = [x.shape[p] for p in perm]
            prev = prev.reshape(seen).permute(*np.argsort(perm).tolist())
        self._i += 1
        return x.copy_(prev)


class CogVideoXDPMSampler(SchedulerSampler):
    """diffusers' CogVideoXDPMScheduler stepped by itself, as the CogVideoX pipelines call
    it: with the previous step's prediction of the clean sample and the previous timestep
    (its second-order update), drawing its noise from the request's generator."""

    def __init__(self, scheduler_config: dict):
        super().__init__("CogVideoXDPMScheduler", scheduler_config, "cogvideox-dpm")
        self._previous = None

    def begin(self, generator) -> None:
        super().begin(generator)
        self._previous = None

    def apply(self, x, model_output, coef=None, noise=None):
        timesteps = self.scheduler.timesteps
        back = timesteps[self._i - 1] if self._i > 0 else None
        # Copies: the scheduler keeps the prediction, and vidrt's buffers are overwritten in place.
        prev, self._previous = self.scheduler.step(model_output.clone(), self._previous, timesteps[self._i], back,
                                                   x.clone(), **self._kwargs, return_dict=False)
        self._i += 1
        return x.copy_(prev)


def _shift(scheduler, mu: float | None) -> float | None:
    """``mu`` for a dynamically shifted flow schedule (None otherwise)."""
    if not getattr(scheduler.config, "use_dynamic_shifting", False):
        return None
    if mu is None:
        raise VidrtError(f"{type(scheduler).__name__} shifts its schedule by the latent size (use_dynamic_shifting); "
                         "this model's pipeline must pass mu")
    return mu


def _public(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def check_sigmas(sigmas) -> list[float]:
    """Custom sigmas as a list: at least two finite values (each step's, then the final
    one), every one but the last above 0."""
    try:
        values = [float(s) for s in (sigmas.tolist() if hasattr(sigmas, "tolist") else sigmas)]
    except (TypeError, ValueError):
        raise VidrtError(f"sigmas must be a list of numbers, not {type(sigmas).__name__}") from None
    if len(values) < 2 or not all(math.isfinite(s) for s in values) or min(values[:-1]) <= 0 or values[-1] < 0:
        raise VidrtError(f"sigmas={values}: need >= 2 finite values (one per step, then the final one), all above 0 "
                         "but the last, which may be 0")
    return values


def _check_steps(n: int) -> int:
    if n < 1:
        raise VidrtError(f"num_inference_steps={n}: need at least 1 step")
    return n


def check_sampler(name: str | None, kind: str) -> None:
    """Raises VidrtError when sampler ``name`` does not fit a model of ``kind``."""
    allowed = SAMPLERS_FOR.get(kind, SAMPLERS_FOR["text-to-video"])
    if name is not None and name not in allowed:
        what = {"image-to-video": "image-to-video (SVD)", "wan": "Wan", "wan-i2v": "Wan", "ltx": "LTX-Video",
                "ltx-i2v": "LTX-Video", "cogvideox": "CogVideoX", "cogvideox-i2v": "CogVideoX"}.get(kind, "text-to-video")
        raise VidrtError(f"--sampler {name} is not for {what} models; choose one of {', '.join(allowed)}")


def make_sampler(name: str | None, scheduler_config: dict):
    """Builds a sampler for a model's scheduler config.

    Args:
        name: one of SAMPLERS, or None for the one that steps as the model folder's
            scheduler does (its class: Euler, DDIM, LCM; any other identity-scaled
            diffusers scheduler is stepped by diffusers itself).
        scheduler_config: the model folder's scheduler_config.json.

    Raises:
        VidrtError: unknown name, or a scheduler vidrt cannot step.
    """
    cls_name = scheduler_config.get("_class_name", "EulerDiscreteScheduler")
    if name is not None and name not in SAMPLERS:
        raise VidrtError(f"unknown sampler '{name}'; choose one of: {', '.join(SAMPLERS)}")
    if name is None:
        name = DEFAULT_FOR_SCHEDULER.get(cls_name, "scheduler")
        if name == "ddim" and (scheduler_config.get("clip_sample") or scheduler_config.get("thresholding")):
            name = "scheduler"
    if name == "euler":
        return EulerEDMSampler(scheduler_config)
    if name == "animatelcm":
        return AnimateLCMSampler()
    if name == "ddim":
        return DDIMSampler(scheduler_config)
    if name == "lcm":
        return LCMSampler(scheduler_config)
    if name == "dpm++":
        return SchedulerSampler("DPMSolverMultistepScheduler", scheduler_config, "dpm++", algorithm_type="dpmsolver++")
    if name == "cogvideox-dpm" or (name == "scheduler" and cls_name == "CogVideoXDPMScheduler"):
        return CogVideoXDPMSampler(scheduler_config)
    if name == "scheduler":
        return SchedulerSampler(cls_name, scheduler_config)
    if name == "flow-euler":
        return FlowEulerSampler(scheduler_config)
    raise VidrtError(f"unknown sampler '{name}'; choose one of: {', '.join(SAMPLERS)}")
