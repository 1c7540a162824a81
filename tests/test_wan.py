"""Wan 2.1 / 2.2 (diffusers WanPipeline, and WanImageToVideoPipeline for TI2V-5B): tiny-wan,
tiny-wan22, tiny-wan22-ti2v and tiny-wan22-ti2v-i2v against diffusers on the same components,
and each exported graph against diffusers' own modules.

Tolerance: frames within 2e-3 max abs of diffusers at fp32 (the issue's bar); both sides
are fp32 and differ in kernel summation order, the batched guidance halves and the text
encoder run at the prompts' length rather than max_sequence_length (observed < 1e-6).
"""

import copy
import re

import statistics

import numpy as np
import pytest
import torch

from conftest import INT8_SATURATES, StepRecorder, fake_trt_build_calls

from vidrt.errors import VidrtError

ATOL = 2e-3
KW = dict(prompt="a cat playing the piano", negative_prompt="blurry", height=32, width=48, num_frames=9,
          num_inference_steps=3, max_sequence_length=32)


def pipes(name, t2v_engine_dir):
    """(vidrt pipeline on ONNX Runtime, diffusers' pipeline from the same folder)."""
    from vidrt import VideoPipeline
    from vidrt.sources import load_torch_components, resolve_model

    pipe = VideoPipeline.from_pretrained(name, engine_dir=t2v_engine_dir(name), backend="onnxruntime", progress=False)
    ref = load_torch_components(resolve_model(name, progress=False))
    ref.set_progress_bar_config(disable=True)
    ref.folder_scheduler = ref.scheduler
    return pipe, ref


@pytest.fixture(scope="module", params=("tiny-wan", "tiny-wan22"))
def wan(request, t2v_engine_dir):
    return pipes(request.param, t2v_engine_dir)


def copy_of(engines, root):
    """A private copy of a session engine folder, for a test that adds engines to it."""
    import shutil

    return shutil.copytree(engines, root / engines.name)


def run_both(pipe, ref, sampler, seed=0, **kw):
    from vidrt.benchmarks.reference_schedulers import reference_scheduler

    pipe.sampler_name = sampler
    ref.scheduler = reference_scheduler(sampler, ref.folder_scheduler)
    got = pipe(**kw, generator=torch.Generator().manual_seed(seed), output_type="np").frames
    want = np.asarray(ref(**kw, generator=torch.Generator().manual_seed(seed), output_type="np").frames)
    pipe.sampler_name = None
    return got, want


@pytest.mark.parametrize("sampler", [None, "flow-euler"])  # None: the folder's UniPC, stepped by diffusers
@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_frames_match_diffusers(wan, sampler, guidance):
    pipe, ref = wan
    got, want = run_both(pipe, ref, sampler, **dict(KW, guidance_scale=guidance))
    assert got.shape == want.shape == (1, 9, 32, 48, 3)
    assert np.abs(got - want).max() <= ATOL
    assert want.std() > 0.01  # not a constant both sides agree on by accident


@pytest.mark.parametrize("frames,height,width", [(1, 16, 16), (5, 48, 16), (9, 16, 64)])
def test_frame_counts_and_sizes_match_diffusers(wan, frames, height, width):
    pipe, ref = wan
    got, want = run_both(pipe, ref, None, seed=3, **dict(KW, num_frames=frames, height=height, width=width))
    assert got.shape == want.shape == (1, frames, height, width, 3)
    assert np.abs(got - want).max() <= ATOL


def test_prompt_batches_with_negatives_match_diffusers(wan):
    """Two prompts of different lengths, a negative each, two videos per prompt: one text
    encoder call, one transformer batch of 8 rows per step."""
    pipe, ref = wan
    kw = dict(KW, prompt=["a red car", "fireworks over a city skyline at night"], negative_prompt=["rain", "snow, ugly"],
              num_videos_per_prompt=2, num_frames=5)
    got, want = run_both(pipe, ref, "flow-euler", seed=5, **kw)
    assert got.shape == want.shape == (4, 5, 32, 48, 3)
    assert np.abs(got - want).max() <= ATOL
    assert np.abs(got[0] - got[2]).max() > 1e-3  # two prompts, two videos


def test_prompt_embeds_match_diffusers(wan):
    """Text states as WanPipeline.encode_prompt returns them stand in for the prompts: both
    halves given, or the prompts' given and the negatives as text; diffusers given the same."""
    pipe, ref = wan
    prompts, negatives = ["a red car", "fireworks over a city skyline at night"], ["rain", "snow, ugly"]
    states, negative_states = ref.encode_prompt(prompts, negatives, max_sequence_length=32)
    kw = dict(KW, prompt=None, negative_prompt=None, prompt_embeds=states, negative_prompt_embeds=negative_states)
    got, want = run_both(pipe, ref, None, seed=2, **kw)
    texts, _ = run_both(pipe, ref, None, seed=2, **dict(KW, prompt=prompts, negative_prompt=negatives))
    assert got.shape == want.shape == (2, 9, 32, 48, 3)
    assert np.abs(got - want).max() <= ATOL
    assert np.abs(got - texts).max() <= ATOL  # the same states as vidrt's own encoder makes
    got, want = run_both(pipe, ref, None, seed=2, **dict(kw, negative_prompt=negatives, negative_prompt_embeds=None))
    assert np.abs(got - want).max() <= ATOL
    with pytest.raises(VidrtError, match="differ in length \\(negative 32, positive 16 tokens\\)"):
        pipe(**dict(kw, prompt_embeds=states[:, :16]))


def test_callback_on_step_end_as_in_diffusers(wan):
    """Called after each step with the latents diffusers holds there; the latents it
    returns replace the loop's (here scaled at step 1)."""
    pipe, ref = wan
    recorder = StepRecorder(pipe)
    kw = dict(KW, guidance_scale=5.0, callback_on_step_end=recorder)
    got, want = run_both(pipe, ref, None, seed=3, **kw)
    plain, _ = run_both(pipe, ref, None, seed=3, **dict(kw, callback_on_step_end=None))
    recorder.check_sides_agree()
    assert np.abs(got - want).max() <= ATOL
    assert np.abs(got - plain).max() > 1e-3  # the returned latents were used
    with pytest.raises(VidrtError, match="hands the callback 'latents' only"):
        pipe(**dict(kw, callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"]))


def test_both_experts_run_and_match_diffusers(wan):
    """Wan 2.2: the high-noise expert until the timestep falls below boundary_ratio * 1000,
    then the low-noise one with its own guidance scale."""
    pipe, ref = wan
    if pipe.model.transformer_2 is None:
        pytest.skip("Wan 2.1 has one transformer")
    from vidrt.samplers import make_sampler

    sampler = make_sampler(None, pipe.model.scheduler)
    sampler.set_timesteps(4)
    first, switch = pipe._experts(sampler, 2.0)
    assert first is pipe.engines["transformer"] and switch.unet is pipe.engines["transformer_2"]
    assert 0 < switch.step < 4  # both experts take steps
    got, want = run_both(pipe, ref, None, **dict(KW, num_inference_steps=4, guidance_scale=5.0, guidance_scale_2=2.0))
    assert np.abs(got - want).max() <= ATOL
    other, _ = run_both(pipe, ref, None, **dict(KW, num_inference_steps=4, guidance_scale=5.0, guidance_scale_2=4.0))
    assert np.abs(other - got).max() > 1e-4  # guidance_scale_2 reaches the second expert


def openvino_pipes(name, t2v_engine_dir, root):
    """pipes() on OpenVINO, its engines built from a private copy of the session's ONNX exports."""
    from vidrt import VideoPipeline
    from vidrt.sources import load_torch_components

    engines = copy_of(t2v_engine_dir(name), root)
    pipe = VideoPipeline.from_pretrained(name, engine_dir=engines, backend="openvino", progress=False)
    ref = load_torch_components(pipe.model)
    ref.set_progress_bar_config(disable=True)
    ref.folder_scheduler = ref.scheduler
    return pipe, ref


def test_openvino_matches_diffusers(tmp_path, t2v_engine_dir):
    pipe, ref = openvino_pipes("tiny-wan22", t2v_engine_dir, tmp_path)
    got, want = run_both(pipe, ref, None, **dict(KW, guidance_scale=5.0))
    assert np.abs(got - want).max() <= ATOL


def test_exported_graphs_equal_diffusers_modules():
    """The graph-friendly RMSNorm and attention, and the VAE decoder with its caches as
    inputs and outputs, compute what diffusers' modules do: the transformer at two shapes,
    and given diffusers' zero-padded text collapsed (collapse_padding: fewer padding
    tokens, their logits raised by the log of how many each stands for); the VAE's
    first-frame and chunk graphs (check_vae_chunks)."""
    from vidrt.export.graphs import component_graph
    from vidrt.families.wan.pipeline import collapse_padding
    from vidrt.sources import load_torch_component, resolve_model

    model = resolve_model("tiny-wan", progress=False)
    transformer = load_torch_component(model, "transformer")
    graph = component_graph("transformer", copy.deepcopy(transformer))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for shape, length in (((2, 16, 3, 4, 6), 7), ((1, 16, 5, 6, 2), 16)):
            x, text = torch.randn(shape, generator=gen), torch.randn(shape[0], length, 32, generator=gen)
            want = transformer(x, torch.full((shape[0],), 700.0), text, return_dict=False)[0]
            assert (graph(x, torch.tensor([700.0]), text, torch.zeros(shape[0], length)) - want).abs().max() <= 1e-5
        padded = torch.zeros(2, 40, 32)  # a prompt of 3 tokens and one of 5, zero-padded to 40 as WanPipeline pads
        padded[0, :3], padded[1, :5] = torch.randn(3, 32, generator=gen), torch.randn(5, 32, generator=gen)
        want = transformer(x.expand(2, -1, -1, -1, -1), torch.full((2,), 300.0), padded, return_dict=False)[0]
        short, bias = collapse_padding(padded)
        assert short.shape == (2, 8, 32) and (bias[:, :3] == 0).all() and (bias[1, 5:] > 0).all()
        assert (graph(x.expand(2, -1, -1, -1, -1), torch.tensor([300.0]), short, bias) - want).abs().max() <= 1e-5
    check_vae_chunks(model, gen)


def check_vae_chunks(model, gen):
    """The first-frame and chunk graphs chained against diffusers' decode at 1, 2 and 5
    latent frames, and the caches they pass the layout decoder_caches declares."""
    from vidrt.export.graphs import component_graph
    from vidrt.families.wan.vae import decoder_caches
    from vidrt.sources import load_torch_component

    vae = load_torch_component(model, "vae_decoder")
    first = component_graph("vae_decoder", copy.deepcopy(vae))
    chunk = component_graph("vae_decoder_chunk", copy.deepcopy(vae))
    cfg, s = vae.config, model.vae_scale_factor
    mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        for t in (1, 2, 5):
            z = torch.randn(1, cfg.z_dim, t, 3, 5, generator=gen)
            want = vae.decode(z * std + mean).sample
            frames, *caches = first(z[:, :, :1])
            # the cache layout the specs declare is the one diffusers' decoder fills
            assert [(c.shape[1], c.shape[3] // 3) for c in caches] == decoder_caches(model.vae)
            got = [frames]
            for j in range(1, t):
                frames, *caches = chunk(z[:, :, j : j + 1], *caches)
                got.append(frames)
            got = torch.cat(got, 2)
            assert got.shape == want.shape == (1, 3, 4 * t - 3, 3 * s, 5 * s)
            assert (got - want).abs().max() <= 1e-5


# Wan 2.2 TI2V-5B's layout (tiny-wan22-ti2v): 48 latent channels, expand_timesteps, the Wan
# 2.2 VAE (residual blocks, 2x2 pixel patches, spatial factor 16: sizes in multiples of 32).
@pytest.fixture(scope="module")
def ti2v(t2v_engine_dir):
    pipe, ref = pipes("tiny-wan22-ti2v", t2v_engine_dir)
    assert ref.config.expand_timesteps  # diffusers runs its per-token timestep path
    return pipe, ref


@pytest.mark.parametrize("frames,height,width,guidance,sampler", [
    (9, 32, 64, 5.0, None), (1, 32, 32, 5.0, "flow-euler"), (5, 64, 32, 1.0, None), (13, 32, 32, 5.0, None)])
def test_wan22_ti2v_matches_diffusers(ti2v, frames, height, width, guidance, sampler):
    """Text to video on TI2V-5B's layout: frame 0 alone and later latent frames through the
    Wan 2.2 VAE's residual upsampling, guidance on and off, both samplers."""
    pipe, ref = ti2v
    kw = dict(KW, num_frames=frames, height=height, width=width, guidance_scale=guidance)
    got, want = run_both(pipe, ref, sampler, seed=4, **kw)
    assert got.shape == want.shape == (1, frames, height, width, 3)
    assert np.abs(got - want).max() <= ATOL
    assert want.std() > 0.01


def test_wan22_ti2v_graphs_equal_diffusers_modules():
    """The transformer graph (one timestep per video) against diffusers' transformer given
    WanPipeline's expand_timesteps input (the step's timestep for every token, [B, tokens]);
    the Wan 2.2 VAE's first-frame and chunk graphs against its decode."""
    from vidrt.export.graphs import component_graph
    from vidrt.sources import load_torch_component, resolve_model

    model = resolve_model("tiny-wan22-ti2v", progress=False)
    transformer = load_torch_component(model, "transformer")
    graph = component_graph("transformer", copy.deepcopy(transformer))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x, text = torch.randn(2, 48, 3, 4, 6, generator=gen), torch.randn(2, 7, 32, generator=gen)
        per_token = torch.full((2, 3 * 2 * 3), 700.0)
        want = transformer(x, per_token, text, return_dict=False)[0]
        assert (graph(x, torch.tensor([700.0]), text, torch.zeros(2, 7)) - want).abs().max() <= 1e-5
    check_vae_chunks(model, gen)


def test_wan22_ti2v_sizes_are_multiples_of_32(ti2v):
    pipe, _ = ti2v
    with pytest.raises(VidrtError, match=re.escape("multiples of 32 for Wan, got 48x64; try 32x64")):
        pipe(**dict(KW, height=48, width=64))


@pytest.fixture(scope="module")
def ti2v_i2v(t2v_engine_dir):
    pipe, ref = pipes("tiny-wan22-ti2v-i2v", t2v_engine_dir)
    assert ref.config.expand_timesteps and type(ref).__name__ == "WanImageToVideoPipeline"
    return pipe, ref


def an_image(height=40, width=56, seed=0):
    import PIL.Image

    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("frames,height,width,guidance,sampler", [
    (9, 32, 64, 5.0, None), (1, 32, 32, 5.0, "flow-euler"), (13, 64, 32, 1.0, None)])
def test_wan22_ti2v_image_to_video_matches_diffusers(ti2v_i2v, frames, height, width, guidance, sampler):
    """TI2V-5B's image to video: the image (of another size, resized by both) encoded to
    its latent's mean in place of frame 0 at timestep 0 in every call and in the result;
    guidance on and off, both samplers, one frame (the image's alone) and several."""
    pipe, ref = ti2v_i2v
    assert pipe.model.kind == "wan-i2v" and "vae_encoder" in pipe.engines
    kw = dict(KW, image=an_image(), num_frames=frames, height=height, width=width, guidance_scale=guidance)
    got, want = run_both(pipe, ref, sampler, seed=5, **kw)
    assert got.shape == want.shape == (1, frames, height, width, 3)
    assert np.abs(got - want).max() <= ATOL
    assert want.std() > 0.01


def test_wan22_ti2v_image_to_video_batches_and_latents_match_diffusers(ti2v_i2v):
    """Two prompts with negatives, two videos each, one image for all (diffusers repeats
    its latent); latents out have the image's latent as frame 0, as diffusers returns them."""
    pipe, ref = ti2v_i2v
    kw = dict(KW, image=an_image(seed=1), prompt=["a cat", "a dog running on the beach"], width=64,
              negative_prompt=["blurry", "dark"], num_videos_per_prompt=2, guidance_scale=5.0)
    got, want = run_both(pipe, ref, None, seed=6, **kw)
    assert got.shape == want.shape == (4, 9, 32, 64, 3)
    assert np.abs(got - want).max() <= ATOL
    kw = dict(KW, image=an_image(seed=2), width=64, guidance_scale=5.0)
    got = pipe(**kw, generator=torch.Generator().manual_seed(7), output_type="latent").frames
    want = ref(**kw, generator=torch.Generator().manual_seed(7), output_type="latent").frames
    assert got.shape == want.shape == (1, 48, 3, 2, 4)
    assert (got - want).abs().max() <= ATOL


def test_wan22_ti2v_image_to_video_graphs_equal_diffusers_modules():
    """The transformer graph given the image's latent against diffusers' transformer called
    as WanImageToVideoPipeline calls it (frame 0 replaced, timestep 0 for its tokens, the
    step's for the others); the VAE encoder graph against diffusers' encode (argmax),
    normalised as the pipeline does."""
    from diffusers.pipelines.wan.pipeline_wan_i2v import retrieve_latents

    from vidrt.export.graphs import component_graph
    from vidrt.sources import load_torch_component, resolve_model

    model = resolve_model("tiny-wan22-ti2v-i2v", progress=False)
    transformer = load_torch_component(model, "transformer")
    graph = component_graph("transformer", copy.deepcopy(transformer))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x, image = torch.randn(2, 48, 3, 4, 6, generator=gen), torch.randn(2, 48, 4, 6, generator=gen)
        text = torch.randn(2, 7, 32, generator=gen)
        mask = torch.ones(1, 1, 3, 4, 6)
        mask[:, :, 0] = 0
        given = (1 - mask) * image[:, :, None] + mask * x
        per_token = (mask[0][0][:, ::2, ::2] * 700.0).flatten()[None].expand(2, -1)
        want = transformer(given, per_token, text, return_dict=False)[0]
        got = graph(x, torch.tensor([700.0]), text, torch.zeros(2, 7), image)
        assert (got - want).abs().max() <= 1e-5
        vae = load_torch_component(model, "vae_encoder")
        encoder = component_graph("vae_encoder", copy.deepcopy(vae))
        pixels = torch.rand(2, 3, 64, 96, generator=gen) * 2 - 1
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
        want = (retrieve_latents(vae.encode(pixels[:, :, None]), sample_mode="argmax") - mean) * inv_std
        assert (encoder(pixels) - want[:, :, 0]).abs().max() <= 1e-5


def test_wan_image_to_video_folders_vidrt_cannot_serve_are_refused(tmp_path, ti2v_i2v):
    import json
    import shutil

    from vidrt.sources import resolve_model

    pipe, _ = ti2v_i2v
    with pytest.raises(VidrtError, match="image-to-video needs an image"):
        pipe(**KW, image=None)
    folder = shutil.copytree(pipe.model.folder, tmp_path / "wan-i2v")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps(index | {"expand_timesteps": False}))
    with pytest.raises(VidrtError, match="takes the image condition as extra input channels, this one has in_channels=48"):
        resolve_model(str(folder), progress=False)


def test_text_states_are_zero_past_each_prompt(wan):
    pipe, ref = wan
    states = pipe._encode(["a cat", "a dog running on the beach at sunset"], 32)
    want, _ = ref.encode_prompt(["a cat", "a dog running on the beach at sunset"], do_classifier_free_guidance=False,
                                max_sequence_length=32)
    assert states.shape == want.shape == (2, 32, 32)
    assert (states - want).abs().max() <= 1e-5
    assert (states[0, 4:] == 0).all()


def test_bad_requests_get_one_line_errors(wan):
    pipe, _ = wan
    cases = [
        (dict(num_frames=8), "4k+1 frames"),
        (dict(height=40), "multiples of 16"),
        (dict(max_sequence_length=600), "max_sequence_length=600"),
        (dict(negative_prompt=["a", "b"]), "2 negative prompts for 1 prompts"),
    ]
    if pipe.model.transformer_2 is None:
        cases.append((dict(guidance_scale_2=3.0), "guidance_scale_2 is for Wan 2.2"))
    for extra, words in cases:
        with pytest.raises(VidrtError, match=re.escape(words)) as info:
            pipe(**dict(KW, **extra))
        assert "\n" not in str(info.value)


def test_long_prompt_is_truncated_with_a_warning(wan):
    pipe, _ = wan
    with pytest.warns(UserWarning, match="truncated to max_sequence_length=4") as caught:
        out = pipe(**dict(KW, max_sequence_length=4, num_frames=1, num_inference_steps=1))
    assert out.frames.shape == (1, 1, 32, 48, 3)
    (truncated,) = [w for w in caught if "truncated" in str(w.message)]
    assert truncated.filename == __file__  # pointed at this call, not inside vidrt


def test_folder_missing_a_component_is_refused(tmp_path):
    import shutil

    from vidrt.sources import materialize_preset, resolve_model

    folder = tmp_path / "wan"
    shutil.copytree(materialize_preset("tiny-wan", 0, progress=False), folder)
    shutil.rmtree(folder / "vae")
    with pytest.raises(VidrtError, match="vae/config.json is missing"):
        resolve_model(str(folder), progress=False)


def test_generate_writes_an_mp4(tmp_path, capsys, t2v_engine_dir):
    from vidrt.cli import main

    out = tmp_path / "wan.mp4"
    engines = str(t2v_engine_dir("tiny-wan"))
    assert main(["generate", "--model", "tiny-wan", "--prompt", "a cat", "--height", "32", "--width", "32",
                 "--num-frames", "5", "--steps", "2", "--engine-dir", engines, "--backend", "onnxruntime",
                 "--output", str(out)]) == 0
    assert out.stat().st_size > 0
    assert "5 frames" in capsys.readouterr().out
    assert main(["generate", "--model", "tiny-wan", "--prompt", "a cat", "--num-frames", "6", "--engine-dir",
                 engines, "--output", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err
    assert "num_frames=6: Wan makes 4k+1 frames" in err and err.count("\n") == 1
    assert not (tmp_path / "x.mp4").exists()


def test_run_bench_defaults_to_frames_wan_takes(tmp_path, capsys, t2v_engine_dir):
    """Without --num-frames, run-bench's 14 frames (the main job's) become 13, Wan's 4k+1."""
    import json

    from vidrt.cli import main

    out = tmp_path / "bench.json"
    assert main(["run-bench", "--model", "tiny-wan", "--height", "32", "--width", "32", "--steps", "1", "--runs", "1",
                 "--warmup", "0", "--baseline-precision", "none", "--engine-dir", str(t2v_engine_dir("tiny-wan")),
                 "--backend", "onnxruntime", "--output", str(out)]) == 0, capsys.readouterr().err
    assert json.loads(out.read_text())["config"]["num_frames_used"] == 13


def test_a_split_text_encoder_matches_diffusers(tmp_path, monkeypatch):
    """An encoder too large for one export (UMT5-XXL: 22.7 GB in fp32) is exported and run
    as a chain of parts of consecutive blocks, each loaded alone: here a tiny-wan folder
    whose UMT5 has three blocks, one per part (first, middle, last). The frames still equal
    diffusers' (whole encoder), each part's graph holds only its own weights, and its
    TensorRT profile is the encoder's."""
    import onnx
    from diffusers import WanPipeline
    from transformers import UMT5EncoderModel

    from vidrt import VideoPipeline
    from vidrt.families.wan import model as wan_model
    from vidrt.sources import load_torch_component, materialize_preset
    from vidrt.trt_plan import ShapeRequest, derive_profiles

    ref = WanPipeline.from_pretrained(materialize_preset("tiny-wan", 0, progress=False))
    config = ref.text_encoder.config
    config.num_layers = 3
    torch.manual_seed(0)
    ref.text_encoder = UMT5EncoderModel(config).eval()
    ref.save_pretrained(tmp_path / "wan")
    monkeypatch.setattr(wan_model, "TEXT_PART_BYTES", 1)  # at least one block per part: 3 parts
    engines = tmp_path / "engines"
    pipe = VideoPipeline.from_pretrained(tmp_path / "wan", engine_dir=engines, backend="onnxruntime", progress=False)
    model = pipe.model
    assert model.text_parts == ("text_encoder", "text_encoder_part1", "text_encoder_part2")
    ref.set_progress_bar_config(disable=True)
    ref.folder_scheduler = ref.scheduler
    got, want = run_both(pipe, ref, None, **dict(KW, guidance_scale=5.0))
    assert np.abs(got - want).max() <= ATOL

    vocab, dim = int(model.text_encoder["vocab_size"]), model.text_dim
    specs, shapes = model.specs(), {}
    for p in model.text_parts:
        graph = onnx.load(str(engines / p / "onnx" / "model.onnx")).graph
        assert [i.name for i in graph.input] == specs[p].input_names  # the chain's bindings, as described
        assert [o.name for o in graph.output] == specs[p].output_names
        shapes[p] = {tuple(t.dims) for t in graph.initializer}
    assert (vocab, dim) in shapes["text_encoder"] and (vocab, dim) not in shapes["text_encoder_part2"]
    middle = load_torch_component(model, "text_encoder_part1")  # block 1 read, nothing else
    loaded = {n for n, t in middle.named_parameters(remove_duplicate=False) if not t.is_meta}
    assert loaded and all(n.startswith("encoder.block.1.") for n in loaded)

    first, _ = derive_profiles("text_encoder", specs["text_encoder"], ShapeRequest(), model.vae_scale_factor,
                               temporal=4)
    part, _ = derive_profiles("text_encoder_part1", specs["text_encoder_part1"], ShapeRequest(),
                              model.vae_scale_factor, temporal=4)
    assert part.shapes["hidden_states"] == tuple(s + (dim,) for s in first.shapes["input_ids"])


def test_an_on_demand_text_encoder_is_loaded_per_call_and_matches_diffusers(wan, t2v_engine_dir, monkeypatch):
    """--on-demand text_encoder (how Wan's 22.7 GB UMT5 fits beside the transformer on a
    24 GB machine): the encoder is loaded once at pipeline load, to check it, then once per
    call and dropped; the frames are still diffusers'."""
    from vidrt import VideoPipeline
    from vidrt.backends.onnxruntime import OnnxRuntimeBackend

    _, ref = wan
    loads = []
    real_load = OnnxRuntimeBackend.load.__func__
    monkeypatch.setattr(OnnxRuntimeBackend, "load", classmethod(
        lambda cls, artifact_dir, *a, **k: loads.append(artifact_dir.parent.name) or real_load(cls, artifact_dir, *a, **k)))
    name = "tiny-wan22" if ref.transformer_2 is not None else "tiny-wan"
    pipe = VideoPipeline.from_pretrained(name, engine_dir=t2v_engine_dir(name), backend="onnxruntime",
                                         on_demand=("text_encoder",), progress=False)
    assert loads.count("text_encoder") == 1 and loads.count("transformer") == 1
    got, want = run_both(pipe, ref, None, **dict(KW, guidance_scale=5.0))
    assert np.abs(got - want).max() <= ATOL
    assert loads.count("text_encoder") == 2 and loads.count("transformer") == 1  # one more load: the call's
    assert not any(isinstance(v, OnnxRuntimeBackend) for v in vars(pipe.engines["text_encoder"]).values())

    with pytest.raises(VidrtError, match=r"--on-demand unet: not a component of this model; choose from .*text_encoder"):
        VideoPipeline.from_pretrained(name, engine_dir=t2v_engine_dir(name), backend="onnxruntime",
                                      on_demand=("unet",), progress=False)


def test_an_on_demand_transformer_loads_once_per_request_and_matches_diffusers(wan, t2v_engine_dir, monkeypatch):
    """--on-demand transformer: the denoising loop holds one load for all its steps (Wan 2.2:
    each expert in turn, the first freed before the second loads), dropped before the decoder
    runs; the frames are still diffusers'."""
    from vidrt import VideoPipeline
    from vidrt.backends.onnxruntime import OnnxRuntimeBackend

    _, ref = wan
    loads = []
    real_load = OnnxRuntimeBackend.load.__func__
    monkeypatch.setattr(OnnxRuntimeBackend, "load", classmethod(
        lambda cls, artifact_dir, *a, **k: loads.append(artifact_dir.parent.name) or real_load(cls, artifact_dir, *a, **k)))
    two = ref.transformer_2 is not None
    name = "tiny-wan22" if two else "tiny-wan"
    experts = ("transformer", "transformer_2") if two else ("transformer",)
    pipe = VideoPipeline.from_pretrained(name, engine_dir=t2v_engine_dir(name), backend="onnxruntime",
                                         on_demand=experts, progress=False)
    assert [loads.count(e) for e in experts] == [1] * len(experts)  # the probe at pipeline load
    got, want = run_both(pipe, ref, None, **dict(KW, guidance_scale=5.0))  # KW's steps: more than one
    assert np.abs(got - want).max() <= ATOL
    during = [loads.count(e) - 1 for e in experts]  # an expert whose steps the schedule skips is not loaded
    assert KW["num_inference_steps"] > 1 and max(during) == 1  # one load per request, not per step
    assert all(engine._held is None for name, engine in pipe.engines.items() if name in experts)


def test_run_bench_one_side_at_a_time(t2v_engine_dir, monkeypatch):
    """--one-side-at-a-time: each timed run loads its side, warms it up, runs and frees it,
    engine then diffusers; the figures and parity come out as in the interleaved schedule,
    and each timed run has its own matmul-ceiling probes just before and after it. The
    result's git sha is the one checked out when the 45-minute run started."""
    from vidrt.benchmarks import harness
    from vidrt.benchmarks.harness import BenchConfig, run_bench

    from conftest import ScriptedProbe

    checkout = {"git": "the run's"}

    def probe(model, cfg, device):  # made once the engines are loaded, before the timed runs
        checkout["git"] = "committed while it ran"
        return ScriptedProbe([])

    monkeypatch.setattr(harness, "_ceiling_probe", probe)
    monkeypatch.setattr(harness, "environment", lambda: dict(checkout))
    cfg = BenchConfig(model="tiny-wan", engine_dir=str(t2v_engine_dir("tiny-wan")), backend="onnxruntime",
                      height=32, width=32, num_frames=5, steps=2, runs=2, warmup=1, one_side_at_a_time=True)
    result = run_bench(cfg, progress=False)
    assert result["environment"] == {"git": "the run's"}  # taken as the run starts
    engine, baseline = result["engine"], result["baseline"]
    assert result["config"]["schedule"] == "one side at a time"
    assert len(engine["reload_s"]) == 1 and len(baseline["reload_s"]) == 1  # a load per timed run and side
    assert len(engine["warmup_s"]) == 2 and len(baseline["warmup_s"]) == 2  # each load warmed up again
    assert engine["end_to_end_s"]["min"] > 0 and baseline["end_to_end_s"]["min"] > 0
    assert result["parity"]["max_abs_err"] <= ATOL
    # the sides' peaks never coincide: what the machine held at once stays below their sum
    # (at this size the processes' libraries, not the models, are most of each side's RSS)
    assert result["peak_memory_both_mb"] < engine["peak_memory_mb"] + baseline["peak_memory_mb"]
    r = result["roofline"]
    assert r["ceiling_probes_tflops"] == [float(i) for i in range(1, 9)]  # 2 a timed run
    engine_steps = engine["stages_ms"]["transformer_step"]["samples"]
    first = r["unet_tflop_per_step"] / (statistics.median(engine_steps[:2]) / 1000) / 1.5  # probes 1 and 2
    assert r["engine_fraction_of_ceiling_paired"]["samples"][0] == pytest.approx(first)


def test_the_real_size_preset_has_wan21_t2v_13b_sizes():
    """wan2.1-t2v-1.3b is too large to create in the suite (17 GB): its configs are built on
    the meta device and counted against the published sizes (Wan2.1-T2V-1.3B's transformer
    "1.3B", 1.42 B counted; google/umt5-xxl's encoder 5.68 B; the Wan 2.1 VAE 127 M), and
    the text encoder is made in bf16 as Wan ships it, leaving torch's default dtype alone."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from vidrt.families.wan import presets
    from vidrt.sources import ALL_PRESETS

    cfg = presets.PRESETS["wan2.1-t2v-1.3b"]
    assert "wan2.1-t2v-1.3b" in ALL_PRESETS and "bf16" in cfg["differs"]
    with torch.device("meta"):
        sizes = [sum(p.numel() for p in m.parameters()) for m in (
            WanTransformer3DModel(**cfg["transformer"]), UMT5EncoderModel(UMT5Config(**cfg["text_encoder"])),
            AutoencoderKLWan(**cfg["vae"]))]
    assert [round(n / 1e6) for n in sizes] == [1419, 5681, 127]
    tiny = presets._text_encoder(UMT5EncoderModel, UMT5Config(**presets._TINY_UMT5), torch.bfloat16)
    assert tiny.shared.weight.dtype == torch.bfloat16 and torch.get_default_dtype() == torch.float32


def test_component_precision_of_the_text_encoder_sets_every_part():
    from vidrt.layout import component_precisions

    parts = ("text_encoder", "text_encoder_part1", "text_encoder_part2", "transformer")
    out = component_precisions("bf16", overrides={"text_encoder": "fp32"}, components=parts)
    assert out == {"text_encoder": "fp32", "text_encoder_part1": "fp32", "text_encoder_part2": "fp32",
                   "transformer": "bf16"}
    out = component_precisions("bf16", overrides={"text_encoder": "fp32", "text_encoder_part2": "bf16"},
                               components=parts)
    assert out["text_encoder_part1"] == "fp32" and out["text_encoder_part2"] == "bf16"  # a part named alone wins


# -- TensorRT, GPU-free: profiles and builder calls against the strict fake ------------------


def test_tensorrt_profiles_follow_video_frames_and_text_length():
    """--static/--max name video frames (4k+1) and pixels; the transformer's profile holds
    latent frames, both guidance halves, and the text states at max_sequence_length; the
    decoder takes one latent frame of one video per call."""
    from vidrt.sources import resolve_model
    from vidrt.trt_plan import ShapeRequest, derive_profiles

    model = resolve_model("tiny-wan", progress=False)
    specs = model.specs()
    req = ShapeRequest.from_flags(static="batch=1,frames=17,height=256,width=256")
    cfg, plain = derive_profiles("transformer", specs["transformer"], req, model.vae_scale_factor, temporal=4)
    assert cfg.shapes["sample"][0] == (2, 16, 5, 32, 32) and plain.shapes["sample"][0] == (1, 16, 5, 32, 32)
    assert cfg.shapes["encoder_hidden_states"][0] == (2, 512, 32)
    (chunk,) = derive_profiles("vae_decoder_chunk", specs["vae_decoder_chunk"], req, model.vae_scale_factor, temporal=4)
    assert chunk.shapes["latents"][0] == (1, 16, 1, 32, 32)  # one latent frame per call, its caches beside it
    assert chunk.shapes["cache_0"][0] == (1, 16, 2, 32, 32) and chunk.shapes["cache_23"][0] == (1, 3, 2, 256, 256)
    text_cfg, _ = derive_profiles("text_encoder", specs["text_encoder"], ShapeRequest(), model.vae_scale_factor,
                                  temporal=4)
    assert text_cfg.min_dims["L"] == 1 and text_cfg.max_dims["L"] == 64  # the prompts' token count, up to opt
    with pytest.raises(VidrtError, match="frames=16 must be 4k\\+1 for transformer"):
        derive_profiles("transformer", specs["transformer"], ShapeRequest(max={"frames": 16}), 8, temporal=4)


def test_tensorrt_fp16_build_keeps_the_norms_fp32(tmp_path, monkeypatch, t2v_engine_dir):
    """An fp16 build of the tiny-wan transformer: every float layer of a normalisation (layer
    norms, the q/k RMS norms) runs in fp32 with fp32 outputs, matmuls stay fp16, and the
    builder is told to prefer those constraints; bf16 builds keep TensorRT's own choice."""

    from vidrt import VideoPipeline
    from vidrt.trt_plan import ShapeRequest, TrtOptions, builder_settings, derive_profiles

    engines = t2v_engine_dir("tiny-wan")
    pipe = VideoPipeline.from_pretrained("tiny-wan", engine_dir=engines, backend="onnxruntime", progress=False)
    model, spec = pipe.model, pipe.model.specs()["transformer"]
    profiles = derive_profiles("transformer", spec, ShapeRequest(), model.vae_scale_factor, temporal=4)
    assert "fp32_layers" not in builder_settings("bf16", TrtOptions(), profiles, model.fp16_fp32_layers)
    settings = builder_settings("fp16", TrtOptions(), profiles, model.fp16_fp32_layers)
    calls = fake_trt_build_calls(monkeypatch, engines / "transformer" / "onnx" / "model.onnx", tmp_path / "t.plan", settings)
    fp32 = {c[1] for c in calls if c[0] == "layer.precision" and c[2] == "FLOAT"}
    assert ("config.set_flag", "PREFER_PRECISION_CONSTRAINTS") in calls
    assert "/transformer/blocks.0/norm1/LayerNormalization" in fp32
    assert any(n.startswith("/transformer/blocks.0/attn1/norm_q/") and n.endswith("ReduceMean") for n in fp32)
    assert not any("to_q" in n or "MatMul" in n for n in fp32)
    assert all(c[3] == "FLOAT" for c in calls if c[0] == "layer.set_output_type")


def test_int8_transformers_through_the_quantization_stage(tmp_path, t2v_engine_dir):
    """--precision int8 on Wan 2.2 quantizes both experts (calibrated on flow latents and
    real prompt states), keeps the text encoder and VAE fp32 and the patch embedding,
    embedders and output projection unquantized; each expert's Q/DQ graph is within 5%
    relative L2 of fp32 on held-out inputs (measured 0.4% on tiny-wan22), and the frames
    stay near diffusers' fp32 ones (random weights amplify per-step error over the steps)."""
    import json

    import onnx

    from vidrt import VideoPipeline
    from vidrt.sources import load_torch_components

    engines = copy_of(t2v_engine_dir("tiny-wan22"), tmp_path)  # the fp32 exports reused
    pipe = VideoPipeline.from_pretrained("tiny-wan22", engine_dir=engines, backend="onnxruntime", precision="int8",
                                         progress=False)
    for expert in ("transformer", "transformer_2"):
        report = json.loads((engines / expert / "onnx-int8" / "export.json").read_text())["quantization"]["error_vs_fp32"]
        # without VNNI the integer kernels saturate (conftest.INT8_SATURATES): 0.074 measured
        assert report["rel_l2"] <= (0.12 if INT8_SATURATES else 0.05) and report["qdq"]["QuantizeLinear"] > 0
        assert report["kept_high_precision"] == ["*patch_embedding*", "*condition_embedder*", "*proj_out*"]
        graph = onnx.load(str(engines / expert / "onnx-int8" / "model.onnx"), load_external_data=False).graph
        quantized_inputs = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
        patch = [n for n in graph.node if n.op_type == "Conv"]
        assert patch and not any(i in quantized_inputs for n in patch for i in n.input)
    assert not [c for c in ("text_encoder", "vae_decoder", "vae_decoder_chunk") if (engines / c / "onnx-int8").exists()]
    ref = load_torch_components(pipe.model)
    ref.set_progress_bar_config(disable=True)
    kw = dict(KW, num_inference_steps=4, guidance_scale=5.0)
    got = pipe(**kw, generator=torch.Generator().manual_seed(0), output_type="np").frames
    want = np.asarray(ref(**kw, generator=torch.Generator().manual_seed(0), output_type="np").frames)
    assert np.abs(got - want).mean() <= 0.05


def test_int8_transformer_of_ti2v_image_to_video(tmp_path, t2v_engine_dir):
    """TI2V-5B's image to video through the quantization stage: calibrated with a clean
    image latent beside the flow latents (wan_calibration.flow_batches), the Q/DQ graph
    within 5% relative L2 of fp32, the VAE encoder kept fp32, frames near diffusers'."""
    import json

    from vidrt import VideoPipeline
    from vidrt.sources import load_torch_components

    engines = copy_of(t2v_engine_dir("tiny-wan22-ti2v-i2v"), tmp_path)  # the fp32 exports reused
    pipe = VideoPipeline.from_pretrained("tiny-wan22-ti2v-i2v", engine_dir=engines, backend="onnxruntime",
                                         precision="int8", progress=False)
    report = json.loads((engines / "transformer" / "onnx-int8" / "export.json").read_text())["quantization"]
    assert report["error_vs_fp32"]["rel_l2"] <= (0.12 if INT8_SATURATES else 0.05)
    assert not (engines / "vae_encoder" / "onnx-int8").exists()
    ref = load_torch_components(pipe.model)
    ref.set_progress_bar_config(disable=True)
    kw = dict(KW, image=an_image(), width=64, num_inference_steps=4, guidance_scale=5.0)
    got = pipe(**kw, generator=torch.Generator().manual_seed(0), output_type="np").frames
    want = np.asarray(ref(**kw, generator=torch.Generator().manual_seed(0), output_type="np").frames)
    assert np.abs(got - want).mean() <= 0.05


def test_tensorrt_fp8_transformer_graph_is_fp16_inside(tmp_path):
    """TensorRT's Q/DQ graph of the transformer (FP8 weights and activations, the rest fp16,
    fp32 at the interface) runs on ONNX Runtime's CPU provider within 10% relative L2 of
    the fp32 transformer (measured 2.4% on tiny-wan; INT8 in fp16 0.4%)."""
    import onnx

    from vidrt.export.quantize import QuantConfig, export_quantized
    from vidrt.sources import resolve_model

    model = resolve_model("tiny-wan", progress=False)
    result, report = export_quantized(model, "transformer", QuantConfig(format="fp8"), tmp_path, float_type="fp16")
    assert report["rel_l2"] <= 0.1 and report["qdq"]["zero_point_types"] == ["FLOAT8E4M3FN"]
    graph = onnx.load(str(result.onnx_path), load_external_data=False).graph
    assert all(t.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for t in [*graph.input, *graph.output])
    weights = [i for i in graph.initializer if len(i.dims) >= 2]
    low = (onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT8E4M3FN)
    assert weights and sum(i.data_type in low for i in weights) >= len(weights) - 3
    # fp32 only where diffusers computes in fp32 itself: the sinusoidal timestep table and
    # each block's modulation table, added to the fp32 time embedding
    adds = {i for n in graph.node if n.op_type == "Add" for i in n.input}
    for i in weights:
        if i.data_type not in low:
            assert i.name in adds or "timesteps_proj" in i.name, i.name


def test_quantization_covers_the_transformers_only():
    from vidrt.backends.onnxruntime import OnnxRuntimeBackend as OrtBackend
    from vidrt.layout import engine_precisions
    from vidrt.sources import resolve_model

    model = resolve_model("tiny-wan22", progress=False)
    assert engine_precisions(model, OrtBackend, "int8", None) == {
        "text_encoder": "fp32", "transformer": "int8", "transformer_2": "int8", "vae_decoder": "fp32",
        "vae_decoder_chunk": "fp32"}
    with pytest.raises(VidrtError, match="quantizes transformer, transformer_2 only"):
        engine_precisions(model, OrtBackend, "int8", {"vae_decoder": "int8"})


def test_the_vae_stays_fp32_under_bf16_unless_asked():
    """As diffusers' Wan documentation advises; --component-precision still decides."""
    from vidrt.backends.openvino import OpenVinoBackend
    from vidrt.layout import engine_precisions
    from vidrt.sources import resolve_model

    model = resolve_model("tiny-wan", progress=False)
    assert engine_precisions(model, OpenVinoBackend, "bf16", None) == {
        "text_encoder": "bf16", "transformer": "bf16", "vae_decoder": "fp32", "vae_decoder_chunk": "fp32"}
    assert engine_precisions(model, OpenVinoBackend, "bf16", {"vae_decoder": "bf16"})["vae_decoder"] == "bf16"
