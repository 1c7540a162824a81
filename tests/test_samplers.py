"""Samplers against diffusers' schedulers.

Tolerance: vidrt fuses each step into x <- a*x + b*out with a, b computed in
float64; diffusers computes x + (x - denoised)/sigma*dt in float32, which cancels
terms of size |x| (up to ~700*3 at sigma_max). Both are float32 at the end, so
they may differ by a few float32 ulps of |x| before the step.
"""

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from vidrt.benchmarks.reference_schedulers import AnimateLCMReferenceScheduler
from vidrt.errors import VidrtError
from vidrt.families.svd.presets import SVD_SCHEDULER
from vidrt.samplers import AnimateLCMSampler, EulerEDMSampler, make_sampler


# SVD's config, and an epsilon model with discrete timesteps inside the training range
# (SVD's sigma_max=700 with discrete timesteps gives diffusers duplicate timesteps,
# which its index lookup resolves by skipping a sigma: not a config any model ships).
EPSILON_CONFIG = SVD_SCHEDULER | {
    "prediction_type": "epsilon", "timestep_type": "discrete", "sigma_min": None, "sigma_max": None,
}


@pytest.mark.parametrize("steps", [1, 4, 25])
@pytest.mark.parametrize("config", [SVD_SCHEDULER, EPSILON_CONFIG], ids=["svd", "epsilon"])
def test_euler_matches_diffusers(steps, config):
    ref = EulerDiscreteScheduler(**config)
    ref.set_timesteps(steps)
    ours = EulerEDMSampler(config)
    ours.set_timesteps(steps)
    torch.testing.assert_close(ours.timesteps, ref.timesteps.float())
    assert ours.init_noise_sigma == pytest.approx(float(ref.init_noise_sigma))
    g = torch.Generator().manual_seed(0)
    x_ref = torch.randn(1, 3, 4, 8, 8, generator=g) * ref.init_noise_sigma
    x = x_ref.clone()
    for i, t in enumerate(ref.timesteps):
        scaled = ref.scale_model_input(x_ref, t)
        torch.testing.assert_close(x * ours.input_scale(i), scaled, rtol=1e-5, atol=1e-5)
        out = torch.randn(x.shape, generator=g)
        ulps_of_x = 8 * torch.finfo(torch.float32).eps * float(x_ref.abs().max())
        x_ref = ref.step(out, t, x_ref).prev_sample
        ours.step(out, i, x)
        torch.testing.assert_close(x, x_ref, rtol=1e-5, atol=1e-5 + ulps_of_x)


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_animatelcm_matches_the_published_scheduler_and_draws_from_the_generator(steps):
    # Reference: written from G-U-N/AnimateLCM animatelcm_svd/animatelcm_scheduler.py
    # (vidrt.benchmarks.reference_schedulers), not from vidrt's sampler.
    ref = AnimateLCMReferenceScheduler()
    ref.set_timesteps(steps)
    ours = AnimateLCMSampler()
    ours.set_timesteps(steps)
    torch.testing.assert_close(ours.timesteps, ref.timesteps.float())
    torch.testing.assert_close(ours.sigmas, ref.sigmas)
    assert ours.init_noise_sigma == pytest.approx(ref.init_noise_sigma)
    x0 = torch.randn(1, 2, 4, 4, 4, generator=torch.Generator().manual_seed(1)) * ours.init_noise_sigma
    outs = torch.randn((steps,) + x0.shape, generator=torch.Generator().manual_seed(2))
    g_ref, g_ours = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    ref.generator = g_ref
    x_ref, x = x0.clone(), x0.clone()
    torch.manual_seed(123)
    global_state = torch.get_rng_state()
    for i, t in enumerate(ref.timesteps):
        torch.testing.assert_close(x * ours.input_scale(i), ref.scale_model_input(x_ref, t))
        ulps_of_x = 8 * torch.finfo(torch.float32).eps * float(x_ref.abs().max())
        x_ref = ref.step(outs[i], t, x_ref).prev_sample
        ours.step(outs[i], i, x, g_ours)
        torch.testing.assert_close(x, x_ref, rtol=1e-5, atol=1e-5 + ulps_of_x)
    # Noise came from the request's generator (both advanced alike), never the global RNG.
    assert torch.equal(g_ref.get_state(), g_ours.get_state())
    assert torch.equal(torch.get_rng_state(), global_state)


def test_animatelcm_published_constants():
    # Numbers read off the published scheduler's formulas for 4 steps: the ramp
    # arange(4)·10/39, sigma_max 700, a final sigma of 0, init noise sqrt(700² + 1).
    s = AnimateLCMSampler()
    s.set_timesteps(4)
    assert s.init_noise_sigma == pytest.approx(700.000714, rel=1e-7)
    assert float(s.sigmas[0]) == pytest.approx(700.0, rel=1e-6) and float(s.sigmas[-1]) == 0.0
    ramp = torch.arange(4, dtype=torch.float64) * 10 / 39
    sig = (700 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 700 ** (1 / 7))) ** 7
    torch.testing.assert_close(s.sigmas[:-1], sig.float())
    torch.testing.assert_close(s.timesteps, (0.25 * sig.log()).float())
    # EDM's v-prediction scalings (sigma_data 1): c_out is negative.
    c_skip, c_out = s.coefficients(0)[2:4]
    sigma = float(s.sigmas[0])
    assert c_skip == pytest.approx(1 / (sigma**2 + 1)) and c_out == pytest.approx(-sigma / (sigma**2 + 1) ** 0.5)


def test_animatelcm_noise_draws():
    # One step draws nothing; more steps draw on every step, the last scaled by 0.
    single = AnimateLCMSampler()
    single.set_timesteps(1)
    g = torch.Generator().manual_seed(0)
    before = g.get_state()
    x = torch.zeros(1, 1, 1, 2, 2)
    single.step(torch.zeros_like(x), 0, x, g)
    assert torch.equal(before, g.get_state()) and x.abs().max() == 0
    multi = AnimateLCMSampler()
    multi.set_timesteps(2)
    assert [multi.draws_noise(i) for i in range(2)] == [True, True]
    before = g.get_state()
    multi.step(torch.zeros_like(x), 1, x, g)
    assert not torch.equal(before, g.get_state()) and x.abs().max() == 0


def test_randn_into_buffer_equals_fresh_draw():
    a = torch.randn((2, 3, 4), generator=torch.Generator().manual_seed(5))
    b = torch.empty(2, 3, 4)
    torch.randn((2, 3, 4), generator=torch.Generator().manual_seed(5), out=b)
    assert torch.equal(a, b)


def test_bad_sampler_arguments():
    with pytest.raises(VidrtError, match="takes 1..40 steps"):
        AnimateLCMSampler().set_timesteps(41)
    with pytest.raises(VidrtError, match="need at least 1 step"):
        EulerEDMSampler(SVD_SCHEDULER).set_timesteps(0)
    with pytest.raises(VidrtError, match="unknown sampler 'heun'"):
        make_sampler("heun", SVD_SCHEDULER)
    with pytest.raises(VidrtError, match="non-linear"):
        make_sampler("ddim", SVD_SCHEDULER | {"clip_sample": True})


@pytest.mark.parametrize("name, cls", [("ddim", "DDIMScheduler"), ("lcm", "LCMScheduler"),
                                       ("euler", "EulerDiscreteScheduler"), ("dpm++", "DPMSolverMultistepScheduler")])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_text_to_video_steps_equal_diffusers(name, cls, prediction):
    """vidrt's fused DDIM/LCM/Euler steps (and the diffusers-stepped DPM-Solver++) equal
    diffusers' scheduler.step on the same inputs, noise included, at every step."""
    import diffusers

    from vidrt.families.t2v.presets import MODELSCOPE_SCHEDULER

    config = MODELSCOPE_SCHEDULER | {"prediction_type": prediction, "_class_name": "DDIMScheduler"}
    ours = make_sampler(name, config)
    ours.set_timesteps(5)
    ours.begin(None)
    extra = {"algorithm_type": "dpmsolver++"} if name == "dpm++" else {}
    ref = getattr(diffusers, cls).from_config(config, **extra)
    ref.set_timesteps(5)
    assert torch.equal(ours.timesteps, ref.timesteps.float())
    x = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * ref.init_noise_sigma
    x_ref = x.clone()
    for i, t in enumerate(ref.timesteps):
        out = torch.randn(x.shape, generator=torch.Generator().manual_seed(10 + i))
        scaled = ref.scale_model_input(x_ref, t)
        assert torch.allclose(scaled, x_ref * ours.input_scale(i), rtol=1e-6)
        x_ref = ref.step(out, t, x_ref, generator=torch.Generator().manual_seed(100 + i)).prev_sample
        ours.step(out, i, x, generator=torch.Generator().manual_seed(100 + i))
        assert torch.allclose(x, x_ref, rtol=1e-5, atol=1e-5 * float(x_ref.abs().max())), (name, i)


@pytest.mark.parametrize("config", [
    {"_class_name": "UniPCMultistepScheduler", "prediction_type": "flow_prediction", "use_flow_sigmas": True,
     "flow_shift": 3.0, "num_train_timesteps": 1000},
    {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 5.0, "num_train_timesteps": 1000},
])
def test_flow_euler_steps_equal_diffusers(config):
    """vidrt's fused flow-matching Euler step equals FlowMatchEulerDiscreteScheduler.step at
    every step; a Wan folder's UniPC config gives the Euler schedule of its flow_shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    ours = make_sampler("flow-euler", config)
    ours.set_timesteps(6)
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=config.get("flow_shift", config.get("shift")))
    ref.set_timesteps(6)
    assert torch.equal(ours.timesteps, ref.timesteps.float())
    assert ours.init_noise_sigma == 1.0  # WanPipeline draws unit noise (no init_noise_sigma on flow schedulers)
    x = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    x_ref = x.clone()
    for i, t in enumerate(ref.timesteps):
        v = torch.randn(x.shape, generator=torch.Generator().manual_seed(10 + i))
        x_ref = ref.step(v, t, x_ref).prev_sample
        ours.step(v, i, x)
        assert torch.allclose(x, x_ref, rtol=1e-6, atol=1e-6), i
    assert make_sampler(None, config).name == ("flow-euler" if "shift" in config else "scheduler")


@pytest.mark.parametrize("name", ["ddim", "cogvideox-dpm"])
def test_cogvideox_steps_equal_diffusers(name):
    """vidrt's fused DDIM step on CogVideoX's SNR-shifted schedule equals
    CogVideoXDDIMScheduler.step, and the CogVideoX DPM sampler steps as CogVideoXPipeline's
    loop calls CogVideoXDPMScheduler (diffusers pipeline_cogvideox.py: the previous step's
    x0 prediction and timestep passed back, noise from the request's generator) at every step."""
    import diffusers

    from vidrt.families.cogvideox.presets import COGVIDEOX_2B_SCHEDULER

    cls = "CogVideoXDDIMScheduler" if name == "ddim" else "CogVideoXDPMScheduler"
    config = COGVIDEOX_2B_SCHEDULER | {"_class_name": cls}
    ours = make_sampler(None, config)
    assert ours.name == name  # the folder's scheduler picks the sampler
    ours.set_timesteps(5)
    ref = getattr(diffusers, cls).from_config(config)
    ref.set_timesteps(5)
    assert torch.equal(ours.timesteps, ref.timesteps.float())
    x = torch.randn(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    x_ref, old = x.clone(), None
    gen, gen_ref = torch.Generator().manual_seed(100), torch.Generator().manual_seed(100)
    ours.begin(gen)
    for i, t in enumerate(ref.timesteps):
        out = torch.randn(x.shape, generator=torch.Generator().manual_seed(10 + i))
        if name == "ddim":
            x_ref = ref.step(out, t, x_ref, eta=0.0, generator=gen_ref).prev_sample
        else:
            x_ref, old = ref.step(out, old, t, ref.timesteps[i - 1] if i > 0 else None, x_ref, eta=0.0,
                                  generator=gen_ref, return_dict=False)
        ours.apply(x, out, torch.tensor(ours.coefficients(i)), None)
        assert torch.allclose(x, x_ref, rtol=1e-5, atol=1e-5 * float(x_ref.abs().max())), (name, i)
