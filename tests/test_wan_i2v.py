"""Wan image to video without expand_timesteps (diffusers' WanImageToVideoPipeline): Wan 2.1
I2V's layout (tiny-wan21-i2v: the image condition's channels and a CLIP image encoder) and
Wan 2.2 I2V-A14B's (tiny-wan22-i2v: the same channels, two experts), against diffusers on
the same components; the VAE encoder's chunk graphs, the CLIP graph and the transformer
graph against diffusers' own modules.

Tolerance as in tests/test_wan.py: frames within 2e-3 max abs of diffusers at fp32 (the
issue's bar; observed < 1e-6). Diffusers' Wan attention takes the CLIP states to be all
but the last 512 context tokens, so requests to the Wan 2.1 I2V layout keep
WanImageToVideoPipeline's default max_sequence_length of 512 (vidrt counts them instead).
"""

import copy
import json
import re
import shutil

import numpy as np
import pytest
import torch

from conftest import INT8_SATURATES
from test_wan import ATOL, KW, an_image, copy_of, openvino_pipes, pipes, run_both

from vidrt.errors import VidrtError

KW_I2V = dict(KW, max_sequence_length=512)


@pytest.fixture(scope="module", params=("tiny-wan21-i2v", "tiny-wan22-i2v"))
def i2v(request, t2v_engine_dir):
    pipe, ref = pipes(request.param, t2v_engine_dir)
    assert type(ref).__name__ == "WanImageToVideoPipeline" and not ref.config.expand_timesteps
    return pipe, ref


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("frames,height,width,guidance,sampler", [
    (9, 32, 48, 5.0, None), (1, 32, 32, 5.0, "flow-euler"), (5, 48, 32, 1.0, None), (13, 32, 32, 5.0, "flow-euler")])
def test_image_to_video_matches_diffusers(i2v, frames, height, width, guidance, sampler):
    """The image (of another size, resized by both) and zero frames encoded chunk by chunk
    into the condition beside the latents' channels, the CLIP states beside the text (Wan
    2.1 I2V); guidance on and off, both samplers, one frame and several, non-square."""
    pipe, ref = i2v
    assert pipe.model.kind == "wan-i2v" and pipe.model.image_condition == "channels"
    kw = dict(KW_I2V, image=an_image(), num_frames=frames, height=height, width=width, guidance_scale=guidance)
    got, want = run_both(pipe, ref, sampler, seed=3, **kw)
    assert got.shape == want.shape == (1, frames, height, width, 3)
    assert np.abs(got - want).max() <= ATOL
    assert want.std() > 0.01


def test_prompt_batches_and_latents_match_diffusers(i2v):
    """Two prompts with negatives and one image (diffusers encodes it once and repeats its
    condition and CLIP states); latents out as diffusers returns them."""
    pipe, ref = i2v
    kw = dict(KW_I2V, image=an_image(seed=1), prompt=["a cat", "a dog running on the beach"],
              negative_prompt=["blurry", "dark"], guidance_scale=5.0)
    got, want = run_both(pipe, ref, None, seed=6, **kw)
    assert got.shape == want.shape == (2, 9, 32, 48, 3)
    assert np.abs(got - want).max() <= ATOL
    kw = dict(KW_I2V, image=an_image(seed=2), guidance_scale=5.0)
    got = pipe(**kw, generator=gen(7), output_type="latent").frames
    want = ref(**kw, generator=gen(7), output_type="latent").frames
    assert got.shape == want.shape == (1, 16, 3, 4, 6)
    assert (got - want).abs().max() <= ATOL


def test_an_image_per_prompt_and_videos_per_prompt_equal_diffusers_one_at_a_time(i2v):
    """vidrt takes an image per prompt and several videos per prompt (diffusers takes one
    image, and its Wan 2.1 I2V no more than one video per prompt): with a generator per
    video, each video equals diffusers' run of that prompt and image alone."""
    pipe, ref = i2v
    images, prompts = [an_image(seed=2), an_image(48, 40, seed=3)], ["a cat", "a dog running on the beach"]
    kw = dict(KW_I2V, guidance_scale=5.0)
    got = pipe(**dict(kw, image=images, prompt=prompts, negative_prompt=["blurry", "dark"]), num_videos_per_prompt=2,
               generator=[gen(s) for s in range(4)]).frames
    assert got.shape == (4, 9, 32, 48, 3)
    for v, negative in ((0, "blurry"), (3, "dark")):  # the first video of the first prompt, the second of the second
        p = v // 2
        want = ref(**dict(kw, image=images[p], prompt=prompts[p], negative_prompt=negative), generator=gen(v),
                   output_type="np").frames
        assert np.abs(got[v] - np.asarray(want)[0]).max() <= ATOL
    assert np.abs(got[0] - got[1]).max() > 0.01  # each video its own draw


def test_both_a14b_experts_run_and_match_diffusers(t2v_engine_dir):
    """Wan 2.2 I2V-A14B's layout: the high-noise expert until the timestep falls below
    boundary_ratio (0.9) of 1000, then the low-noise one with guidance_scale_2."""
    from vidrt.samplers import make_sampler

    pipe, ref = pipes("tiny-wan22-i2v", t2v_engine_dir)
    sampler = make_sampler(None, pipe.model.scheduler)
    sampler.set_timesteps(4)
    _, switch = pipe._experts(sampler, 2.0)
    assert 0 < switch.step < 4 and switch.unet is pipe.engines["transformer_2"]
    kw = dict(KW_I2V, image=an_image(), num_inference_steps=4, guidance_scale=5.0, guidance_scale_2=2.0)
    got, want = run_both(pipe, ref, None, **kw)
    assert np.abs(got - want).max() <= ATOL
    other, _ = run_both(pipe, ref, None, **dict(kw, guidance_scale_2=4.0))
    assert np.abs(other - got).max() > 1e-4


@pytest.mark.parametrize("frames", [5, 13])
def test_a14b_first_and_last_frame_match_diffusers(t2v_engine_dir, frames):
    """Wan 2.2 I2V-A14B's first-last-frame to video: the clip's last frame is ``last_image``
    (of another size, resized by both), the mask 1 on it too; the last image changes the
    frames."""
    pipe, ref = pipes("tiny-wan22-i2v", t2v_engine_dir)
    kw = dict(KW_I2V, image=an_image(), last_image=an_image(48, 40, seed=9), num_frames=frames, guidance_scale=5.0)
    got, want = run_both(pipe, ref, None, seed=2, **kw)
    assert got.shape == want.shape == (1, frames, 32, 48, 3)
    assert np.abs(got - want).max() <= ATOL
    first_only = pipe(**dict(kw, last_image=None), generator=gen(2), output_type="np").frames
    assert np.abs(first_only - got).max() > 1e-3


def test_given_clip_states_match_diffusers_and_reach_every_block(t2v_engine_dir):
    """``image_embeds`` (Wan 2.1 I2V) stand in for the CLIP encoder's states: equal to
    diffusers' run whose encode_image gives them (diffusers' own ``image_embeds`` refuses
    an image beside it, which its VAE condition needs); other states give other frames,
    so the image attention is not inert."""
    pipe, ref = pipes("tiny-wan21-i2v", t2v_engine_dir)
    kw = dict(KW_I2V, image=an_image(), guidance_scale=5.0)
    states = ref.encode_image(an_image(), "cpu")
    assert pipe._clip_states(an_image(), None, 1).sub(states).abs().max() <= 1e-5  # the CLIP engine itself
    other = torch.randn(states.shape, generator=gen(0))
    ref.encode_image = lambda image, device: other
    got = pipe(**kw, image_embeds=other, generator=gen(0), output_type="np").frames
    want = np.asarray(ref(**kw, generator=gen(0), output_type="np").frames)
    assert np.abs(got - want).max() <= ATOL
    plain = pipe(**kw, generator=gen(0), output_type="np").frames
    assert np.abs(plain - got).max() > 1e-3


def test_graphs_equal_diffusers_modules():
    """The transformer graph (both layouts) against diffusers' transformer given the
    latents and condition concatenated, as WanImageToVideoPipeline calls it; the CLIP graph
    against CLIPVisionModel's hidden_states[-2]; the VAE encoder's first and chunk graphs
    chained against diffusers' encode of a clip (Wan 2.1's VAE and Wan 2.2's, with its
    pixel patches and residual blocks), their caches in the layout encoder_caches says."""
    from diffusers.pipelines.wan.pipeline_wan_i2v import retrieve_latents

    from vidrt.export.graphs import component_graph
    from vidrt.families.wan.vae import encoder_caches
    from vidrt.sources import load_torch_component, resolve_model

    g = gen(0)
    with torch.no_grad():
        for name in ("tiny-wan21-i2v", "tiny-wan22-i2v"):
            model = resolve_model(name, progress=False)
            transformer = load_torch_component(model, "transformer")
            graph = component_graph("transformer", copy.deepcopy(transformer))
            x, cond = torch.randn(2, 16, 3, 4, 6, generator=g), torch.randn(2, 20, 3, 4, 6, generator=g)
            text = torch.randn(2, 512, 32, generator=g)
            clip = (torch.randn(2, 65, 16, generator=g),) if model.image_encoder else ()
            want = transformer(torch.cat([x, cond], 1), torch.tensor([700.0] * 2), text, *clip, return_dict=False)[0]
            assert (graph(x, torch.tensor([700.0]), text, torch.zeros(2, 512), cond, *clip) - want).abs().max() <= 1e-5
        encoder = load_torch_component(model := resolve_model("tiny-wan21-i2v", progress=False), "image_encoder")
        pixels = torch.randn(2, 3, 32, 32, generator=g)
        want = encoder(pixels, output_hidden_states=True).hidden_states[-2]
        assert (component_graph("image_encoder", encoder)(pixels) - want).abs().max() <= 1e-5
        for name in ("tiny-wan21-i2v", "tiny-wan22-ti2v"):
            model = resolve_model(name, progress=False)
            vae = load_torch_component(model, "vae_encoder_first")
            first = component_graph("vae_encoder_first", copy.deepcopy(vae))
            chunk = component_graph("vae_encoder_chunk", copy.deepcopy(vae))
            mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
            inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
            layout = encoder_caches(dict(vae.config))
            for frames in (1, 5, 9):
                clip = torch.rand(2, 3, frames, 32, 64, generator=g) * 2 - 1
                want = (retrieve_latents(vae.encode(clip), sample_mode="argmax") - mean) * inv_std
                latent, *caches = first(clip[:, :, 0])
                got = [latent]
                for j in range(1, (frames - 1) // 4 + 1):
                    assert [(c.shape[1], 32 // c.shape[3], c.shape[2]) for c in caches] == layout
                    latent, *caches = chunk(clip[:, :, 4 * j - 3 : 4 * j + 1], *caches)
                    got.append(latent)
                assert [(c.shape[1], 32 // c.shape[3], c.shape[2]) for c in caches] == layout
                assert (torch.stack(got, 2) - want).abs().max() <= 1e-5


def test_openvino_matches_diffusers(tmp_path, t2v_engine_dir):
    pipe, ref = openvino_pipes("tiny-wan21-i2v", t2v_engine_dir, tmp_path)
    got, want = run_both(pipe, ref, None, **dict(KW_I2V, image=an_image(), guidance_scale=5.0))
    assert np.abs(got - want).max() <= ATOL


def test_int8_transformer_through_the_quantization_stage(tmp_path, t2v_engine_dir):
    """Wan 2.1 I2V's layout through the quantization stage: calibrated with the condition
    and CLIP states of the calibration images (wan_calibration.image_conditions), the Q/DQ
    graph within 5% relative L2 of fp32, the encoders kept fp32, frames near diffusers'."""
    from vidrt import VideoPipeline
    from vidrt.sources import load_torch_components

    engines = copy_of(t2v_engine_dir("tiny-wan21-i2v"), tmp_path)  # the fp32 exports reused
    pipe = VideoPipeline.from_pretrained("tiny-wan21-i2v", engine_dir=engines, backend="onnxruntime",
                                         precision="int8", progress=False)
    report = json.loads((engines / "transformer" / "onnx-int8" / "export.json").read_text())["quantization"]
    assert report["error_vs_fp32"]["rel_l2"] <= (0.12 if INT8_SATURATES else 0.05)
    assert not [c for c in ("image_encoder", "vae_encoder_first", "vae_encoder_chunk") if (engines / c / "onnx-int8").exists()]
    ref = load_torch_components(pipe.model)
    ref.set_progress_bar_config(disable=True)
    kw = dict(KW_I2V, image=an_image(), num_inference_steps=4, guidance_scale=5.0)
    got = pipe(**kw, generator=gen(0), output_type="np").frames
    want = np.asarray(ref(**kw, generator=gen(0), output_type="np").frames)
    assert np.abs(got - want).mean() <= 0.05


def test_tensorrt_profiles_of_the_encoders():
    """The clip's encoder chunks follow the request's pixels; CLIP takes its fixed size."""
    from vidrt.sources import resolve_model
    from vidrt.trt_plan import ShapeRequest, derive_profiles

    model = resolve_model("tiny-wan21-i2v", progress=False)
    specs = model.specs()
    req = ShapeRequest.from_flags(static="batch=1,frames=17,height=256,width=256")
    (chunk,) = derive_profiles("vae_encoder_chunk", specs["vae_encoder_chunk"], req, model.vae_scale_factor, temporal=4)
    assert chunk.shapes["frames"][0] == (1, 3, 4, 256, 256) and chunk.shapes["cache_0"][0] == (1, 3, 2, 256, 256)
    (first,) = derive_profiles("vae_encoder_first", specs["vae_encoder_first"], req, model.vae_scale_factor, temporal=4)
    assert first.shapes["image"][0] == (1, 3, 256, 256)
    (clip,) = derive_profiles("image_encoder", specs["image_encoder"], req, model.vae_scale_factor, temporal=4)
    assert clip.shapes["pixel_values"][0] == (1, 3, 32, 32)
    cfg, _ = derive_profiles("transformer", specs["transformer"], req, model.vae_scale_factor, temporal=4)
    assert cfg.shapes["condition"][0] == (2, 20, 5, 32, 32) and cfg.shapes["image_embeds"][0] == (2, 65, 16)


def test_bad_requests_and_folders_are_refused(tmp_path, t2v_engine_dir):
    from vidrt.sources import resolve_model

    pipe, _ = pipes("tiny-wan21-i2v", t2v_engine_dir)
    with pytest.raises(VidrtError, match="last_image: Wan 2.1 I2V needs .*Wan2.1-FLF2V.* does not serve yet; drop it"):
        pipe(**KW_I2V, image=an_image(), last_image=an_image())
    ti2v, _ = pipes("tiny-wan22-ti2v-i2v", t2v_engine_dir)
    with pytest.raises(VidrtError, match="last_image: TI2V-5B's image to video starts from one image"):
        ti2v(**dict(KW, width=64), image=an_image(), last_image=an_image())
    with pytest.raises(VidrtError, match=re.escape("image_embeds of shape (1, 64, 16): pass [1 or 1, 65, 16]")):
        pipe(**KW_I2V, image=an_image(), image_embeds=torch.zeros(1, 64, 16))
    with pytest.raises(VidrtError, match="image-to-video needs an image"):
        pipe(**KW_I2V, image=None)
    a14b, _ = pipes("tiny-wan22-i2v", t2v_engine_dir)
    with pytest.raises(VidrtError, match="image_embeds are the CLIP image states of Wan 2.1 I2V"):
        a14b(**KW_I2V, image=an_image(), image_embeds=torch.zeros(1, 65, 16))
    with pytest.raises(VidrtError, match="last_image needs num_frames >= 5 .*, got 1"):
        a14b(**dict(KW_I2V, num_frames=1), image=an_image(), last_image=an_image())

    def edited(name, index=None, transformer=None):
        folder = shutil.copytree(resolve_model(name, progress=False).folder, tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}")
        for path, change in ((folder / "model_index.json", index), (folder / "transformer" / "config.json", transformer)):
            if change:
                path.write_text(json.dumps(change(json.loads(path.read_text()))))
        return str(folder)

    flf2v = edited("tiny-wan21-i2v", transformer=lambda c: c | {"pos_embed_seq_len": 130})
    with pytest.raises(VidrtError, match="first-last-frame model .* is not served yet"):
        resolve_model(flf2v, progress=False)
    no_clip = edited("tiny-wan21-i2v", index=lambda i: i | {"image_encoder": [None, None]})
    with pytest.raises(VidrtError, match="image_dim and model_index.json's image_encoder must come together"):
        resolve_model(no_clip, progress=False)
