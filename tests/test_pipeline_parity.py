"""The parity contract: vidrt on ONNX Runtime vs diffusers' StableVideoDiffusionPipeline
on the same tiny-svd components, same image, same seeded generator.

Tolerance: 2e-3 max abs error on frames in [0, 1] (output_type="np"), the
issue's bar for fp32; seen values are ~1e-5 (kernels sum in another order).
"""

import numpy as np
import pytest
import torch

from vidrt.benchmarks.reference_schedulers import AnimateLCMReferenceScheduler
from vidrt.errors import VidrtError

from conftest import StepRecorder, make_image

TOL = 2e-3


def run_reference(reference, sampler, image, seed, **kw):
    original = reference.scheduler
    if sampler == "animatelcm":
        reference.scheduler = AnimateLCMReferenceScheduler()
        reference.scheduler.generator = torch.Generator().manual_seed(seed)
        generator = reference.scheduler.generator  # one generator for every draw, as vidrt
    else:
        generator = torch.Generator().manual_seed(seed)
    try:
        return reference(image, generator=generator, output_type="np", **kw).frames
    finally:
        reference.scheduler = original


def run_vidrt(pipe, sampler, image, seed, **kw):
    pipe.sampler_name = sampler
    try:
        return pipe(image, generator=torch.Generator().manual_seed(seed), output_type="np", **kw).frames
    finally:
        pipe.sampler_name = "euler"


CASES = [
    # (frames, height, width, chunk)
    (3, 32, 48, None),
    (5, 48, 32, 2),
    (2, 64, 64, 1),
]


@pytest.mark.parametrize("sampler", ["euler", "animatelcm"])
@pytest.mark.parametrize("max_guidance", [3.0, 1.0], ids=["cfg", "no-cfg"])
@pytest.mark.parametrize("frames,height,width,chunk", CASES)
def test_frames_match_diffusers(tiny_pipe, reference, sampler, max_guidance, frames, height, width, chunk):
    kw = dict(height=height, width=width, num_frames=frames, num_inference_steps=3,
              max_guidance_scale=max_guidance, decode_chunk_size=chunk)
    image = make_image(seed=frames)
    ours = run_vidrt(tiny_pipe, sampler, image, 42, **kw)
    ref = run_reference(reference, sampler, image, 42, **kw)
    assert ours.shape == ref.shape == (1, frames, height, width, 3)
    assert np.abs(ours - ref).max() <= TOL


@pytest.mark.parametrize("sigmas", [[80.0, 12.0, 1.5, 0.2, 0.0], [700.0, 3.0, 0.002]])
def test_custom_sigmas_match_diffusers(tiny_pipe, reference, sigmas):
    """``sigmas`` as StableVideoDiffusionPipeline takes them (one per step, then the final
    one): the steps and the timesteps diffusers' EulerDiscreteScheduler derives from them."""
    kw = dict(height=32, width=48, num_frames=3, num_inference_steps=25, sigmas=sigmas, max_guidance_scale=2.5)
    image = make_image(seed=5)
    ours = run_vidrt(tiny_pipe, "euler", image, 7, **kw)
    ref = run_reference(reference, "euler", image, 7, **kw)
    assert np.abs(ours - ref).max() <= TOL
    assert len(tiny_pipe.timings.unet_steps) == len(sigmas) - 1  # the sigmas, not num_inference_steps, set the steps
    plain = run_vidrt(tiny_pipe, "euler", image, 7, **dict(kw, sigmas=None, num_inference_steps=len(sigmas) - 1))
    assert np.abs(ours - plain).max() > 1e-3  # another schedule than the default of as many steps


def test_callback_on_step_end_as_in_diffusers(tiny_pipe, reference):
    recorder = StepRecorder(tiny_pipe)
    kw = dict(height=32, width=32, num_frames=3, num_inference_steps=3, callback_on_step_end=recorder)
    image = make_image(seed=2)
    ours = run_vidrt(tiny_pipe, "euler", image, 5, **kw)
    ref = run_reference(reference, "euler", image, 5, **kw)
    recorder.check_sides_agree()
    assert np.abs(ours - ref).max() <= TOL
    with pytest.raises(VidrtError, match="callback_on_step_end must be callable"):
        tiny_pipe(image, **dict(kw, callback_on_step_end="print"))


def test_images_of_different_sizes_in_one_request(tiny_pipe, reference):
    """diffusers stacks a list of images before resizing them, so it takes one size only;
    vidrt resizes each: every video is what that image alone gives with that video's
    generator, and the one-image request is checked against diffusers."""
    kw = dict(height=32, width=32, num_frames=2, num_inference_steps=2)
    small, large = make_image(seed=1).resize((40, 24)), make_image(seed=2).resize((64, 48))
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    both = tiny_pipe([small, large], generator=gens, output_type="np", **kw).frames
    for i, image in enumerate((small, large)):
        alone = tiny_pipe(image, generator=[torch.Generator().manual_seed(3 + i)], output_type="np", **kw).frames
        assert np.abs(both[i] - alone[0]).max() <= 1e-5
    want = run_reference(reference, "euler", large, 4, **kw)
    assert np.abs(run_vidrt(tiny_pipe, "euler", large, 4, **kw) - want).max() <= TOL


def test_batch_of_images_is_one_unet_batch(tiny_pipe, reference):
    images = [make_image(seed=1), make_image(seed=2)]
    kw = dict(height=32, width=32, num_frames=2, num_inference_steps=2)
    unet = tiny_pipe.engines["unet"]
    batches = []
    real_run = unet._run
    unet._run = lambda feeds, outputs: (batches.append(feeds["sample"].shape[0]), real_run(feeds, outputs))
    try:
        ours = run_vidrt(tiny_pipe, "euler", images, 0, **kw)
    finally:
        del unet._run
    ref = run_reference(reference, "euler", images, 0, **kw)
    assert ours.shape == (2, 2, 32, 32, 3)
    assert np.abs(ours - ref).max() <= TOL
    # Two images with guidance: one UNet call per step holding all 2 x 2 rows.
    assert batches == [4, 4]


def test_videos_per_prompt(tiny_pipe, reference):
    kw = dict(height=32, width=32, num_frames=2, num_inference_steps=2, num_videos_per_prompt=2)
    ours = run_vidrt(tiny_pipe, "euler", make_image(), 3, **kw)
    ref = run_reference(reference, "euler", make_image(), 3, **kw)
    assert ours.shape == (2, 2, 32, 32, 3)
    assert np.abs(ours - ref).max() <= TOL


def test_tensor_image_and_given_latents(tiny_pipe, reference):
    # A tensor image skips CLIP's resize in diffusers, so it must be CLIP-sized.
    image = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    latents = torch.randn(1, 2, 4, 16, 16, generator=torch.Generator().manual_seed(9))
    kw = dict(height=32, width=32, num_frames=2, num_inference_steps=2, latents=latents)
    ours = run_vidrt(tiny_pipe, "euler", image, 0, **kw)
    ref = run_reference(reference, "euler", image, 0, **kw)
    assert np.abs(ours - ref).max() <= TOL


@pytest.mark.parametrize("output_type", ["pil", "pt"])
def test_output_types_have_diffusers_layout(tiny_pipe, reference, output_type):
    kw = dict(height=32, width=48, num_frames=2, num_inference_steps=1, output_type=output_type)
    ours = tiny_pipe(make_image(), generator=torch.Generator().manual_seed(0), **kw).frames
    ref = reference(make_image(), generator=torch.Generator().manual_seed(0), **kw).frames
    if output_type == "pil":
        assert len(ours) == len(ref) == 1 and len(ours[0]) == len(ref[0]) == 2
        assert ours[0][0].size == ref[0][0].size == (48, 32)
    else:
        assert ours.shape == ref.shape == (1, 2, 3, 32, 48)
        assert (ours - ref).abs().max() <= TOL


def test_timings_are_recorded(tiny_pipe):
    tiny_pipe(make_image(), height=32, width=32, num_frames=2, num_inference_steps=3, output_type="np")
    t = tiny_pipe.timings
    assert len(t.unet_steps) == 3 and t.end_to_end >= t.unet > 0
    assert t.image_encoder > 0 and t.vae_encoder > 0 and t.vae_decoder > 0


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(num_frames=0), "num_frames=0: need at least 1 frame"),
        (dict(num_inference_steps=0), "num_inference_steps=0: need at least 1 step"),
        (dict(height=30), "multiples of 8"),
        (dict(height=2056), r"height=2056 is outside this engine's range 4..2048 and a multiple of 4"),
        (dict(num_frames=65), "num_frames=65 is outside"),
        (dict(latents=torch.full((1, 2, 4, 16, 16), float("nan"))), "NaN or Inf"),
        (dict(latents=torch.zeros(1, 3, 4, 16, 16)), "latents have shape"),
        (dict(output_type="gif"), "output_type='gif'"),
        (dict(num_inference_steps=41, sampler="animatelcm"), "1..40 steps"),
        (dict(sigmas=[5.0, 1.0, 0.0], sampler="animatelcm"), "sigmas: custom sigmas go with the euler sampler"),
        (dict(sigmas=[5.0, 0.0, 0.0]), "all above 0 but the last"),
        (dict(sigmas=[5.0]), "need >= 2 finite values"),
        (dict(sigmas="5"), "need >= 2 finite values"),
        (dict(sigmas=[5.0, None]), "sigmas must be a list of numbers"),
    ],
)
def test_bad_requests_get_clear_errors(tiny_pipe, kwargs, message):
    sampler = kwargs.pop("sampler", "euler")
    base = dict(height=32, width=32, num_frames=2, num_inference_steps=1)
    tiny_pipe.sampler_name = sampler
    try:
        with pytest.raises(VidrtError, match=message):
            tiny_pipe(make_image(), **(base | kwargs))
    finally:
        tiny_pipe.sampler_name = "euler"


def test_rgba_and_greyscale_images_are_converted(tiny_pipe):
    rgba = make_image().convert("RGBA")
    grey = make_image().convert("L")
    kw = dict(height=32, width=32, num_frames=2, num_inference_steps=1, output_type="np")
    rgb_out = tiny_pipe(make_image(), generator=torch.Generator().manual_seed(0), **kw).frames
    with pytest.warns(UserWarning, match="converted a RGBA image to RGB"):
        rgba_out = tiny_pipe(rgba, generator=torch.Generator().manual_seed(0), **kw).frames
    assert np.abs(rgba_out - rgb_out).max() <= TOL
    with pytest.warns(UserWarning, match="converted a L image to RGB"):
        tiny_pipe(grey, **kw)


def test_reused_buffers_carry_nothing_between_requests(tiny_pipe, reference):
    # Same shape twice, different images and seeds: the second request must not see the
    # first one's latents or conditioning (the step buffers, and on a GPU the captured
    # graph, are reused per shape).
    kw = dict(height=32, width=32, num_frames=2, num_inference_steps=2)
    run_vidrt(tiny_pipe, "euler", make_image(seed=11), 1, **kw)
    ours = run_vidrt(tiny_pipe, "euler", make_image(seed=12), 2, **kw)
    ref = run_reference(reference, "euler", make_image(seed=12), 2, **kw)
    assert np.abs(ours - ref).max() <= TOL


@pytest.mark.parametrize("sampler", ["euler", "animatelcm"])
def test_one_generator_per_video(tiny_pipe, reference, sampler):
    """A list of generators draws one batch row from each, as diffusers' randn_tensor."""
    kw = dict(height=32, width=32, num_frames=2, num_inference_steps=2, num_videos_per_prompt=2)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (7, 8)]  # noqa: E731
    tiny_pipe.sampler_name = sampler
    try:
        ours = tiny_pipe(make_image(), generator=gens(), output_type="np", **kw).frames
    finally:
        tiny_pipe.sampler_name = "euler"
    original = reference.scheduler
    ref_gens = gens()
    if sampler == "animatelcm":
        reference.scheduler = AnimateLCMReferenceScheduler()
        reference.scheduler.generator = ref_gens
    try:
        ref = reference(make_image(), generator=ref_gens, output_type="np", **kw).frames
    finally:
        reference.scheduler = original
    assert ours.shape == (2, 2, 32, 32, 3)
    assert np.abs(ours - ref).max() <= TOL
    with pytest.raises(VidrtError, match="3 generators for 2 videos"):
        tiny_pipe(make_image(), generator=gens() + gens()[:1], **kw)
