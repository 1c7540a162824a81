"""CogVideoX (diffusers CogVideoXPipeline and CogVideoXImageToVideoPipeline): tiny-cogvideox
and tiny-cogvideox-i2v against diffusers on the same components, and each exported graph
against diffusers' own modules.

Tolerance: frames within 2e-3 max abs of diffusers at fp32 (the issue's bar); both sides
are fp32 and differ in kernel summation order and in the batched guidance halves
(observed < 1e-5).
"""

import copy

import numpy as np
import pytest
import torch

from conftest import fake_trt_build_calls
from vidrt.errors import VidrtError

ATOL = 2e-3
KW = dict(prompt="a cat playing the piano", negative_prompt="blurry", height=32, width=48, num_frames=9,
          num_inference_steps=3, max_sequence_length=16)


def _pipes(name, engine_dir):
    from vidrt import VideoPipeline
    from vidrt.sources import load_torch_components, resolve_model

    model = resolve_model(name, progress=False)
    pipe = VideoPipeline.from_pretrained(name, engine_dir=engine_dir(name), backend="onnxruntime", progress=False)
    ref = load_torch_components(model)
    ref.set_progress_bar_config(disable=True)
    return pipe, ref


@pytest.fixture(scope="module")
def cog(t2v_engine_dir):
    """(vidrt text-to-video pipeline on ONNX Runtime, diffusers' CogVideoXPipeline from the same folder)."""
    return _pipes("tiny-cogvideox", t2v_engine_dir)


@pytest.fixture(scope="module")
def cog_i2v(t2v_engine_dir):
    return _pipes("tiny-cogvideox-i2v", t2v_engine_dir)


@pytest.fixture(scope="module")
def cog15(t2v_engine_dir):
    return _pipes("tiny-cogvideox1.5", t2v_engine_dir)


@pytest.fixture(scope="module")
def cog15_i2v(t2v_engine_dir):
    return _pipes("tiny-cogvideox1.5-i2v", t2v_engine_dir)


def image(seed=0, size=(40, 56)):
    from PIL import Image

    pixels = np.random.default_rng(seed).random((*size, 3))
    return Image.fromarray((pixels * 255).astype("uint8"))


def run_both(pipe, ref, sampler=None, seed=0, generators=0, **kw):
    """Frames of vidrt (``sampler``: None for the folder's default, else a vidrt sampler;
    diffusers then runs the matching CogVideoX scheduler class) and of diffusers, same
    seed; with ``generators``, a list of that many, one per video."""
    import diffusers

    def gen():
        if generators:
            return [torch.Generator().manual_seed(seed + i) for i in range(generators)]
        return torch.Generator().manual_seed(seed)

    scheduler = ref.scheduler
    cls = {"ddim": "CogVideoXDDIMScheduler", "cogvideox-dpm": "CogVideoXDPMScheduler"}.get(sampler)
    if cls is not None:
        ref.scheduler = getattr(diffusers, cls).from_config(scheduler.config)
    pipe.sampler_name = sampler
    try:
        got = pipe(**kw, generator=gen(), output_type="np").frames
        want = np.asarray(ref(**kw, generator=gen(), output_type="np").frames)
    finally:
        pipe.sampler_name, ref.scheduler = None, scheduler
    return got, want


@pytest.mark.parametrize("sampler", [None, "scheduler", "cogvideox-dpm"])
@pytest.mark.parametrize("guidance", [1.0, 6.0])
def test_frames_match_diffusers(cog, sampler, guidance):
    """The folder's DDIM (vidrt's fused step, then diffusers' own) and CogVideoX's DPM solver."""
    pipe, ref = cog
    got, want = run_both(pipe, ref, sampler, **dict(KW, guidance_scale=guidance))
    assert got.shape == want.shape == (1, 9, 32, 48, 3)
    assert np.abs(got - want).max() <= ATOL
    assert want.std() > 0.01  # not a constant both sides agree on by accident


def test_guidance_and_dynamic_guidance_change_the_frames_as_in_diffusers(cog):
    pipe, ref = cog
    plain, _ = run_both(pipe, ref, **dict(KW, guidance_scale=1.0))
    got, want = run_both(pipe, ref, **dict(KW, guidance_scale=6.0, use_dynamic_cfg=True))
    assert np.abs(got - want).max() <= ATOL
    assert np.abs(plain - got).max() > 1e-3


@pytest.mark.parametrize("frames,height,width", [(1, 48, 32), (5, 32, 48), (13, 64, 32), (17, 48, 80)])
def test_frame_counts_and_sizes_match_diffusers(cog, frames, height, width):
    """Sizes other than the export's trace: the sin-cos positions follow the input's shape,
    and every decode path runs (an even latent count starts with a pair; 13 frames decode
    to 16, as in diffusers; one frame, which diffusers decodes alone, as a pair of copies)."""
    pipe, ref = cog
    got, want = run_both(pipe, ref, seed=3, **dict(KW, num_frames=frames, height=height, width=width, guidance_scale=6.0))
    expected = frames if (frames - 1) // 4 % 2 == 0 else frames + 3
    assert got.shape == want.shape == (1, expected, height, width, 3)
    assert np.abs(got - want).max() <= ATOL


@pytest.mark.parametrize("sampler", [None, "cogvideox-dpm"])
def test_eta_changes_nothing_as_in_diffusers(cog, sampler):
    """diffusers hands eta to CogVideoX's DDIM and DPM schedulers' step, which ignore it
    (diffusers/schedulers/scheduling_ddim_cogvideox.py, scheduling_dpm_cogvideox.py)."""
    pipe, ref = cog
    got, want = run_both(pipe, ref, sampler, **dict(KW, guidance_scale=6.0, eta=0.8))
    plain, _ = run_both(pipe, ref, sampler, **dict(KW, guidance_scale=6.0))
    assert np.abs(got - want).max() <= ATOL
    assert np.array_equal(got, plain)


def test_prompt_batches_and_generator_lists_match_diffusers(cog):
    """Two prompts with a negative each: one text encoder call, one transformer batch of 4
    rows per step; a generator per video. diffusers' CogVideoX ignores
    num_videos_per_prompt (sets it to 1), so vidrt's two videos of one prompt are checked
    against diffusers given the prompt twice."""
    pipe, ref = cog
    kw = dict(KW, prompt=["a red car", "fireworks over a city"], negative_prompt=["rain", "snow, ugly"],
              guidance_scale=6.0, num_frames=5)
    got, want = run_both(pipe, ref, seed=5, generators=2, **kw)
    assert got.shape == want.shape == (2, 8, 32, 48, 3)
    assert np.abs(got - want).max() <= ATOL
    assert np.abs(got[0] - got[1]).max() > 1e-3
    gens = [torch.Generator().manual_seed(9 + i) for i in range(2)]
    twice = pipe(**dict(KW, num_videos_per_prompt=2, guidance_scale=6.0), generator=gens, output_type="np").frames
    gens = [torch.Generator().manual_seed(9 + i) for i in range(2)]
    want = np.asarray(ref(**dict(KW, prompt=[KW["prompt"]] * 2, negative_prompt=[KW["negative_prompt"]] * 2,
                                 guidance_scale=6.0), generator=gens, output_type="np").frames)
    assert twice.shape == want.shape == (2, 9, 32, 48, 3)
    assert np.abs(twice - want).max() <= ATOL


def test_prompt_embeds_match_diffusers(cog):
    """Text states as CogVideoXPipeline.encode_prompt returns them stand in for the prompts
    (both halves, or the prompts' only); diffusers given the same."""
    pipe, ref = cog
    prompts, negatives = ["a red car", "fireworks over a city"], ["rain", "snow, ugly"]
    states, negative_states = ref.encode_prompt(prompts, negatives, max_sequence_length=16)
    kw = dict(KW, prompt=None, negative_prompt=None, prompt_embeds=states, negative_prompt_embeds=negative_states,
              guidance_scale=6.0, num_frames=5)
    got, want = run_both(pipe, ref, seed=5, generators=2, **kw)
    assert got.shape == want.shape == (2, 8, 32, 48, 3)
    assert np.abs(got - want).max() <= ATOL
    got, want = run_both(pipe, ref, seed=5, generators=2, **dict(kw, negative_prompt=negatives,
                                                                   negative_prompt_embeds=None))
    assert np.abs(got - want).max() <= ATOL
    with pytest.raises(VidrtError, match="negative_prompt_embeds hold 1 prompts, the request 2"):
        pipe(**dict(kw, negative_prompt_embeds=negative_states[:1]))


@pytest.mark.parametrize("sampler", [None, "cogvideox-dpm"])
def test_callback_on_step_end_as_in_diffusers(cog, sampler):
    from conftest import StepRecorder

    pipe, ref = cog
    recorder = StepRecorder(pipe)
    kw = dict(KW, guidance_scale=6.0, callback_on_step_end=recorder)
    got, want = run_both(pipe, ref, sampler, seed=4, **kw)
    recorder.check_sides_agree()
    assert np.abs(got - want).max() <= ATOL


def test_latents_in_and_out_match_diffusers(cog):
    """``latents`` and output_type="latent" use diffusers' [V, F, C, h, w] layout."""
    pipe, ref = cog
    kw = dict(KW, guidance_scale=6.0)
    start = torch.randn(1, 3, 4, 4, 6, generator=torch.Generator().manual_seed(11))
    got = pipe(**kw, latents=start.clone(), output_type="latent").frames
    want = ref(**kw, latents=start.clone(), output_type="latent").frames
    assert got.shape == want.shape == (1, 3, 4, 4, 6)
    assert (got - want).abs().max() <= ATOL


@pytest.mark.parametrize("sampler", [None, "ddim"])
@pytest.mark.parametrize("guidance", [1.0, 6.0])
def test_image_to_video_matches_diffusers(cog_i2v, sampler, guidance):
    """The folder's DPM solver and the fused DDIM; the image's latent sampled from the
    request's generator before the latents' noise, as diffusers draws them; rotary tables
    and the learned position table."""
    pipe, ref = cog_i2v
    got, want = run_both(pipe, ref, sampler, seed=2, **dict(KW, image=image(), guidance_scale=guidance))
    assert got.shape == want.shape == (1, 9, 32, 48, 3)
    assert np.abs(got - want).max() <= ATOL


def test_image_to_video_batches_match_diffusers(cog_i2v):
    """An image per prompt, a generator per video."""
    pipe, ref = cog_i2v
    kw = dict(KW, image=[image(1), image(2)], prompt=["a red car", "a boat"], negative_prompt=["rain", "snow"],
              guidance_scale=6.0)
    got, want = run_both(pipe, ref, seed=4, generators=2, **kw)
    assert got.shape == want.shape == (2, 9, 32, 48, 3)
    assert np.abs(got - want).max() <= ATOL


# CogVideoX 1.5: (frames, height, width, guidance, sampler). 1 latent frame (denoised as 2,
# one frame decoded), 3 (denoised as 4, the padding in front dropped before decoding), 4 (no
# padding; an even count decodes to 16 frames) and 5 (denoised as 6); non-square sizes up to
# the 64x96 the rotary grid reaches.
CASES_1_5 = [(1, 48, 32, 6.0, None), (9, 32, 48, 6.0, None), (13, 64, 32, 1.0, "cogvideox-dpm"),
             (17, 48, 96, 6.0, "ddim")]


def _kw_1_5(frames, height, width, guidance):
    """The request at diffusers' default text length (226: no position table to fix it)."""
    kw = dict(KW, num_frames=frames, height=height, width=width, guidance_scale=guidance)
    del kw["max_sequence_length"]
    return kw


@pytest.mark.parametrize("frames,height,width,guidance,sampler", CASES_1_5)
def test_cogvideox_1_5_matches_diffusers(cog15, frames, height, width, guidance, sampler):
    """CogVideoX 1.5's layout (latent frames patched in pairs, rotary positions sliced out
    of the sample grid) through diffusers' CogVideoXPipeline, which pads the latents to an
    even count and drops the padding before decoding."""
    pipe, ref = cog15
    got, want = run_both(pipe, ref, sampler, seed=1, **_kw_1_5(frames, height, width, guidance))
    expected = frames if (frames - 1) // 4 % 2 == 0 else frames + 3
    assert got.shape == want.shape == (1, expected, height, width, 3)
    assert np.abs(got - want).max() <= ATOL
    assert want.std() > 0.01


@pytest.mark.parametrize("frames,height,width,guidance,sampler", CASES_1_5)
def test_cogvideox_1_5_image_to_video_matches_diffusers(cog15_i2v, frames, height, width, guidance, sampler):
    """CogVideoX1.5-5B-I2V's layout: the image's latent divided by the VAE's scaling factor
    (invert_scale_latents) as frame 0 of the padded latents' extra channels, and the "ofs"
    embedding at the 2.0 diffusers' pipeline feeds."""
    pipe, ref = cog15_i2v
    got, want = run_both(pipe, ref, sampler, seed=2, **dict(_kw_1_5(frames, height, width, guidance), image=image()))
    expected = frames if (frames - 1) // 4 % 2 == 0 else frames + 3
    assert got.shape == want.shape == (1, expected, height, width, 3)
    assert np.abs(got - want).max() <= ATOL


def test_cogvideox_1_5_latents_keep_the_padding_as_in_diffusers(cog15):
    """output_type="latent" returns the denoised latents with CogVideoX 1.5's padding frame,
    as diffusers does; ``latents`` given in must have it."""
    pipe, ref = cog15
    kw = dict(KW, guidance_scale=6.0)  # 9 frames: 3 latent frames, denoised as 4
    got = pipe(**kw, generator=torch.Generator().manual_seed(3), output_type="latent").frames
    want = ref(**kw, generator=torch.Generator().manual_seed(3), output_type="latent").frames
    assert got.shape == want.shape == (1, 4, 4, 4, 6)
    assert (got - want).abs().max() <= ATOL
    with pytest.raises(VidrtError, match="this request needs \\[1, 4, 4, 4, 6\\]"):
        pipe(**kw, latents=torch.zeros(1, 3, 4, 4, 6))


@pytest.mark.parametrize("name", ["tiny-cogvideox", "tiny-cogvideox1.5-i2v"])
def test_openvino_matches_diffusers(tmp_path, t2v_engine_dir, name):
    import shutil

    from vidrt import VideoPipeline
    from vidrt.sources import load_torch_components

    engines = shutil.copytree(t2v_engine_dir(name), tmp_path / name)  # its ONNX exports reused
    pipe = VideoPipeline.from_pretrained(name, engine_dir=engines, backend="openvino", progress=False)
    ref = load_torch_components(pipe.model)
    ref.set_progress_bar_config(disable=True)
    extra = {"image": image()} if "i2v" in name else {}
    got, want = run_both(pipe, ref, **dict(KW, guidance_scale=6.0, num_frames=13, **extra))
    assert np.abs(got - want).max() <= ATOL


def test_exported_graphs_equal_diffusers_modules():
    """The graphs (in torch) against diffusers' modules: the transformer at its configured
    size and at others (sin-cos positions recomputed), with rotary tables and the image's
    channels; the decoder's chunks against AutoencoderKLCogVideoX.decode; the cache list
    written from the config against the decoder's modules."""
    from diffusers.models.autoencoders.autoencoder_kl_cogvideox import CogVideoXCausalConv3d

    from vidrt.export.cogvideox_graphs import CogVideoXTransformerGraph, CogVideoXVaeChunkGraph, CogVideoXVaeDecoderGraph
    from vidrt.families.cogvideox.model import decoder_caches
    from vidrt.sources import load_torch_components, resolve_model

    ref = load_torch_components(resolve_model("tiny-cogvideox", progress=False))
    graph = CogVideoXTransformerGraph(copy.deepcopy(ref.transformer)).eval()
    gen = torch.Generator().manual_seed(0)
    t = torch.tensor([637.0])
    for b, f, h, w in ((2, 3, 4, 6), (1, 5, 6, 4), (2, 2, 2, 2)):
        x, text = torch.randn(b, f, 4, h, w, generator=gen), torch.randn(b, 16, 32, generator=gen)
        want = ref.transformer(hidden_states=x, encoder_hidden_states=text, timestep=t.long().expand(b), return_dict=False)[0]
        assert torch.allclose(graph(x, t, text), want, atol=1e-5, rtol=0)
    i2v = load_torch_components(resolve_model("tiny-cogvideox-i2v", progress=False))
    graph = CogVideoXTransformerGraph(copy.deepcopy(i2v.transformer)).eval()
    x, first, text = torch.randn(2, 3, 4, 4, 6), torch.randn(2, 4, 4, 6), torch.randn(2, 16, 32)
    rotary = i2v._prepare_rotary_positional_embeddings(32, 48, 3, "cpu")
    full = torch.cat([x, torch.cat([first[:, None], torch.zeros_like(x[:, 1:])], dim=1)], dim=2)
    want = i2v.transformer(hidden_states=full, encoder_hidden_states=text, timestep=t.long().expand(2),
                           image_rotary_emb=rotary, return_dict=False)[0]
    assert torch.allclose(graph(x, t, text, first, *rotary), want, atol=1e-5, rtol=0)

    for name in ("tiny-cogvideox1.5", "tiny-cogvideox1.5-i2v"):  # pairs of latent frames; the ofs embedding
        pipe = load_torch_components(resolve_model(name, progress=False))
        graph = CogVideoXTransformerGraph(copy.deepcopy(pipe.transformer)).eval()
        for b, f, h, w in ((2, 4, 4, 6), (1, 2, 8, 12), (2, 6, 2, 4)):
            x, text = torch.randn(b, f, 4, h, w, generator=gen), torch.randn(b, 20, 32, generator=gen)
            rotary = pipe._prepare_rotary_positional_embeddings(8 * h, 8 * w, f, "cpu")
            full, extra, ofs = x, (), {}
            if "i2v" in name:
                first = torch.randn(b, 4, h, w, generator=gen)
                full = torch.cat([x, torch.cat([first[:, None], torch.zeros_like(x[:, 1:])], dim=1)], dim=2)
                extra, ofs = (first,), {"ofs": torch.full((1,), 2.0)}  # what CogVideoXImageToVideoPipeline feeds
            want = pipe.transformer(hidden_states=full, encoder_hidden_states=text, timestep=t.long().expand(b),
                                    image_rotary_emb=rotary, return_dict=False, **ofs)[0]
            assert torch.allclose(graph(x, t, text, *extra, *rotary), want, atol=1e-5, rtol=0), (name, f, h, w)

    vae = ref.vae
    head, pair = CogVideoXVaeDecoderGraph(copy.deepcopy(vae)).eval(), CogVideoXVaeChunkGraph(copy.deepcopy(vae)).eval()
    convs = [m for m in vae.decoder.modules() if isinstance(m, CogVideoXCausalConv3d) and m.time_kernel_size > 1]
    assert [c for c, _ in decoder_caches(vae.config)] == [m.conv.in_channels for m in convs]
    for frames in (2, 4, 5):
        latents = torch.randn(1, frames, 4, 4, 6, generator=gen)
        want = vae.decode(latents.permute(0, 2, 1, 3, 4) / vae.config.scaling_factor).sample
        start = 3 if frames % 2 else 0  # diffusers' chunks: 3 latent frames first for an odd count, then pairs
        pieces, caches = [], [torch.zeros(1, c, 2, 4 * s, 6 * s) for c, s in decoder_caches(vae.config)]
        if start:
            first, *made = head(latents[:, :3])
            assert [c.shape for c in made] == [c.shape for c in caches]  # the caches the config describes
            pieces.append(first)
            caches = made
        for j in range(start, frames, 2):  # a first pair (even count) ignores the zeros it is given
            out = pair(latents[:, j : j + 2], torch.tensor([int(j == 0)]), *caches)
            pieces.append(out[0])
            caches = out[1:]
        assert torch.allclose(torch.cat(pieces, dim=2), want, atol=1e-5), frames


def test_bad_requests_get_one_line_errors(cog, cog_i2v, cog15):
    pipe, _ = cog
    cases = [
        (dict(num_frames=11), "num_frames=11: CogVideoX makes 4k\\+1 frames \\(1, 5, 9, .*\\); try 9"),
        (dict(num_frames=2), "num_frames=2: .*; try 1"),
        (dict(height=40), "multiples of 16 for CogVideoX, got 40x48; try 32x48"),
        (dict(max_sequence_length=12), "position table holds 16 text tokens; pass max_sequence_length=16"),
        (dict(eta=float("nan")), "eta=nan"),
        (dict(guidance_scale=float("nan")), "guidance_scale=nan"),
        (dict(latents=torch.zeros(1, 4, 3, 4, 6)), "latents have shape \\[1, 4, 3, 4, 6\\], this request needs \\[1, 3, 4, 4, 6\\]"),
    ]
    for change, message in cases:
        with pytest.raises(VidrtError, match=message) as err:
            pipe(**dict(KW, **change))
        assert "\n" not in str(err.value)
    i2v, _ = cog_i2v
    for change, message in [(dict(height=64), "learned position table .* is for 32x48"),
                            (dict(num_frames=13), "learned position table .* is for 9 frames"),
                            (dict(image=None), "image-to-video needs an image")]:
        with pytest.raises(VidrtError, match=message):
            i2v(**dict(KW, **{"image": image(), **change}))
    pipe, _ = cog15
    for change, message in [(dict(height=128), "128x48: CogVideoX 1.5's rotary positions reach 64x96"),
                            (dict(max_sequence_length=227), "max_sequence_length=227: must be a whole number in 1..226")]:
        with pytest.raises(VidrtError, match=message):
            pipe(**dict(KW, **change))


def test_folders_vidrt_cannot_serve_are_refused(tmp_path):
    """Temporal patches with a position table (laid out per latent frame in diffusers, so
    its shapes do not add up there either) are refused with the reason, before any export."""
    import json
    import shutil

    from vidrt.sources import resolve_model

    folder = shutil.copytree(resolve_model("tiny-cogvideox", progress=False).folder, tmp_path / "cog15")
    cfg = json.loads((folder / "transformer" / "config.json").read_text())
    (folder / "transformer" / "config.json").write_text(json.dumps(cfg | {"patch_size_t": 2}))
    with pytest.raises(VidrtError, match="patch_size_t and a position table, which diffusers cannot run either"):
        resolve_model(str(folder), progress=False)


def test_cogvideox_2b_preset_has_the_real_architecture():
    """The cogvideox-2b preset's transformer and VAE, built on the meta device (no
    weights): CogVideoX-2b's 1.69 B-parameter transformer of 30 layers of 1920, 3D sin-cos
    positions, and its 216 M-parameter VAE; benchmarks/cogvideox_layers builds the same."""
    import diffusers

    from vidrt.families.cogvideox.presets import PRESETS

    from vidrt.benchmarks import cogvideox_layers

    cfg = PRESETS["cogvideox-2b"]
    with torch.device("meta"):
        transformer = diffusers.CogVideoXTransformer3DModel(**cfg["transformer"])
        vae = diffusers.AutoencoderKLCogVideoX(**cfg["vae"])
        layers = cogvideox_layers.build_pipeline(2)  # benchmarks/cogvideox_layers: the same, cut to 2 layers
    assert transformer.config.num_layers == 30 and transformer.config.num_attention_heads * 64 == 1920
    assert not transformer.config.use_rotary_positional_embeddings
    assert round(sum(p.numel() for p in transformer.parameters()) / 1e9, 2) == 1.69
    assert round(sum(p.numel() for p in vae.parameters()) / 1e6) == 216
    same = lambda a, b, but=(): all(a.config[k] == b.config[k] for k in b.config if not k.startswith("_") and k not in but)  # noqa: E731
    assert same(layers.vae, vae) and same(layers.transformer, transformer, but=("num_layers",))
    assert layers.text_encoder.config.d_model == 4096 and layers.transformer.config.num_layers == 2
    with torch.device("meta"):  # --version 1.5: CogVideoX1.5-5B's layout, diffusers' own classes
        layers = cogvideox_layers.build_pipeline(2, version="1.5")
    t = layers.transformer.config
    assert (t.num_attention_heads * t.attention_head_dim, t.patch_size_t, t.max_text_seq_length) == (3072, 2, 224)
    assert layers.vae.config.invert_scale_latents and type(layers.scheduler).__name__ == "CogVideoXDPMScheduler"


def test_generate_writes_an_mp4_and_run_bench_compares_with_diffusers(tmp_path, capsys, t2v_engine_dir):
    import json

    from vidrt.cli import main

    engines = str(t2v_engine_dir("tiny-cogvideox"))
    out = tmp_path / "cog.mp4"
    assert main(["generate", "--model", "tiny-cogvideox", "--prompt", "a cat", "--height", "32", "--width", "48",
                 "--num-frames", "9", "--steps", "2", "--engine-dir", engines, "--backend", "onnxruntime",
                 "--output", str(out)]) == 0, capsys.readouterr().err
    assert out.stat().st_size > 0
    bench = tmp_path / "bench.json"
    assert main(["run-bench", "--model", "tiny-cogvideox", "--height", "32", "--width", "48", "--steps", "2",
                 "--runs", "1", "--warmup", "0", "--engine-dir", engines, "--backend", "onnxruntime",
                 "--output", str(bench)]) == 0, capsys.readouterr().err
    result = json.loads(bench.read_text())
    assert result["config"]["num_frames_used"] == 13  # the main job's 14 frames as 4k+1 (decoded to 16)
    assert result["parity"]["max_abs_err"] <= ATOL
    assert result["engine"]["stages_ms"]["transformer"]["median"] > 0


def test_tensorrt_profiles_and_fp16_build_of_the_transformer(tmp_path, monkeypatch, t2v_engine_dir):
    """GPU-free: --static names video frames and pixels; the transformer's profile holds
    latent frames, both guidance halves, the text length its position table fixes, the
    image's latent and rotary tables over the tokens; the decoder chunks take one video;
    the text encoder runs at the transformer's text length; an fp16 build (the fake
    tensorrt, which rejects what the real API lacks) keeps the layer norms fp32."""

    from vidrt.sources import resolve_model
    from vidrt.trt_plan import ShapeRequest, TrtOptions, builder_settings, derive_profiles

    model = resolve_model("tiny-cogvideox-i2v", progress=False)
    specs = model.specs()
    req = ShapeRequest.from_flags(static="batch=1,frames=9,height=32,width=48")
    cfg, plain = derive_profiles("transformer", specs["transformer"], req, model.vae_scale_factor, temporal=4)
    assert cfg.shapes["sample"][0] == (2, 3, 4, 4, 6) and plain.shapes["sample"][0] == (1, 3, 4, 4, 6)
    assert cfg.shapes["image_latents"][0] == (2, 4, 4, 6) and cfg.shapes["encoder_hidden_states"][0] == (2, 16, 32)
    assert cfg.shapes["rotary_cos"][0] == (3 * 2 * 3, 16)  # latent frames x (h/2) x (w/2) tokens
    text, *_ = derive_profiles("text_encoder", specs["text_encoder"], req, model.vae_scale_factor, temporal=4)
    assert text.shapes["input_ids"][0] == (2, 16)
    (chunk,) = derive_profiles("vae_decoder_chunk", specs["vae_decoder_chunk"], req, model.vae_scale_factor, temporal=4)
    assert chunk.shapes["latents"][0] == (1, 2, 4, 4, 6) and chunk.shapes["first"][0] == (1,)
    assert chunk.shapes["cache_21"][0] == (1, 8, 2, 32, 48)  # conv_out's, at full size

    engines = t2v_engine_dir("tiny-cogvideox")
    t2v = resolve_model("tiny-cogvideox", progress=False)
    profiles = derive_profiles("transformer", t2v.specs()["transformer"], ShapeRequest(), t2v.vae_scale_factor, temporal=4)
    settings = builder_settings("fp16", TrtOptions(), profiles, t2v.fp16_fp32_layers)
    calls = fake_trt_build_calls(monkeypatch, engines / "transformer" / "onnx" / "model.onnx", tmp_path / "t.plan", settings)
    fp32 = {c[1] for c in calls if c[0] == "layer.precision" and c[2] == "FLOAT"}
    assert any("/norm1/" in n for n in fp32) and any("norm_final" in n for n in fp32)
    assert not any("to_q" in n or "MatMul" in n for n in fp32)


@pytest.mark.parametrize("name", ["tiny-cogvideox", "tiny-cogvideox-i2v", "tiny-cogvideox1.5-i2v"])
def test_int8_transformer_through_the_quantization_stage(tmp_path, t2v_engine_dir, name):
    """--precision int8 quantizes the transformer only (calibrated on latents noised along
    CogVideoX's SNR-shifted schedule with real prompt states; the image's latent and rotary
    tables for image to video), keeping the patch embedding, time embedding and output
    projection unquantized; its Q/DQ graph is within 5% relative L2 of fp32 on held-out
    inputs, and the frames stay near diffusers' fp32 ones."""
    import json
    import shutil

    from vidrt import VideoPipeline
    from vidrt.sources import load_torch_components

    from conftest import INT8_SATURATES

    engines = shutil.copytree(t2v_engine_dir(name), tmp_path / name)  # the fp32 exports reused
    pipe = VideoPipeline.from_pretrained(name, engine_dir=engines, backend="onnxruntime", precision="int8",
                                         progress=False)
    report = json.loads((engines / "transformer" / "onnx-int8" / "export.json").read_text())["quantization"]["error_vs_fp32"]
    assert report["rel_l2"] <= (0.12 if INT8_SATURATES else 0.05) and report["qdq"]["QuantizeLinear"] > 0
    assert report["kept_high_precision"] == ["*patch_embed*", "*time_embedding*", "*proj_out*"]
    assert not [c for c in ("text_encoder", "vae_decoder") if (engines / c / "onnx-int8").exists()]
    ref = load_torch_components(pipe.model)
    ref.set_progress_bar_config(disable=True)
    kw = dict(KW, guidance_scale=6.0, **({"image": image()} if "i2v" in name else {}))
    got = pipe(**kw, generator=torch.Generator().manual_seed(0), output_type="np").frames
    want = np.asarray(ref(**kw, generator=torch.Generator().manual_seed(0), output_type="np").frames)
    assert np.abs(got - want).mean() <= 0.05
