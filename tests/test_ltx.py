"""LTX-Video (diffusers LTXPipeline): tiny-ltx against diffusers on the same components, and
each exported graph against diffusers' own modules.

Tolerance: frames within 2e-3 max abs of diffusers at fp32 (the issue's bar); both sides
are fp32 and differ in kernel summation order and in the batched guidance halves
(observed < 1e-6).
"""

import copy

import numpy as np
import pytest
import torch

from conftest import StepRecorder, fake_trt_build_calls
from vidrt.errors import VidrtError

ATOL = 2e-3
KW = dict(prompt="a cat playing the piano", negative_prompt="blurry", height=32, width=64, num_frames=9,
          num_inference_steps=3, max_sequence_length=32, decode_timestep=0.05, decode_noise_scale=0.025)


@pytest.fixture(scope="module")
def ltx(t2v_engine_dir):
    """(vidrt pipeline on ONNX Runtime, diffusers' LTXPipeline from the same folder)."""
    from vidrt import VideoPipeline
    from vidrt.sources import load_torch_components, resolve_model

    model = resolve_model("tiny-ltx", progress=False)
    pipe = VideoPipeline.from_pretrained("tiny-ltx", engine_dir=t2v_engine_dir("tiny-ltx"), backend="onnxruntime",
                                         progress=False)
    ref = load_torch_components(model)
    ref.set_progress_bar_config(disable=True)
    return pipe, ref


def run_both(pipe, ref, sampler=None, seed=0, generators=0, **kw):
    """Frames of vidrt (``sampler``: None for flow-euler, vidrt's own step, or "scheduler",
    the folder's FlowMatchEuler stepped by diffusers) and of diffusers, same seed; with
    ``generators``, a list of that many, one per video."""

    def gen():
        if generators:
            return [torch.Generator().manual_seed(seed + i) for i in range(generators)]
        return torch.Generator().manual_seed(seed)

    pipe.sampler_name = sampler
    got = pipe(**kw, generator=gen(), output_type="np").frames
    want = np.asarray(ref(**kw, generator=gen(), output_type="np").frames)
    pipe.sampler_name = None
    return got, want


@pytest.mark.parametrize("sampler", [None, "scheduler"])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_frames_match_diffusers(ltx, sampler, guidance):
    pipe, ref = ltx
    got, want = run_both(pipe, ref, sampler, **dict(KW, guidance_scale=guidance))
    assert got.shape == want.shape == (1, 9, 32, 64, 3)
    assert np.abs(got - want).max() <= ATOL
    assert want.std() > 0.01  # not a constant both sides agree on by accident


@pytest.mark.parametrize("sampler", [None, "scheduler"])
def test_guidance_rescale_matches_diffusers(ltx, sampler):
    """Each video's guided prediction rescaled towards its conditional one's std (diffusers'
    rescale_noise_cfg, Lin et al. 2023 section 3.4), two prompts so the std is per video."""
    pipe, ref = ltx
    kw = dict(KW, prompt=["a red car", "fireworks over a city skyline at night"], negative_prompt=["rain", "snow"],
              num_frames=5, guidance_scale=4.0, decode_timestep=[0.05, 0.05])
    plain, _ = run_both(pipe, ref, sampler, seed=4, **kw)
    got, want = run_both(pipe, ref, sampler, seed=4, **dict(kw, guidance_rescale=0.7))
    assert got.shape == want.shape == (2, 5, 32, 64, 3)
    assert np.abs(got - want).max() <= ATOL
    assert np.abs(got - plain).max() > 1e-3  # the rescale changed the frames


def test_numpy_scalars_are_numbers_as_in_diffusers(ltx):
    """Sizes, counts and scales given as NumPy scalars (read from a config, say) run as the
    same Python numbers do; diffusers takes them too."""
    pipe, _ = ltx
    kw = dict(KW, num_frames=5, guidance_scale=3.0, guidance_rescale=0.5, output_type="np")
    as_numpy = dict(kw, height=np.int64(32), width=np.int64(64), num_frames=np.int64(5), num_inference_steps=np.int64(3),
                    max_sequence_length=np.int64(32), frame_rate=np.int64(25), guidance_scale=np.float32(3.0),
                    guidance_rescale=np.float64(0.5), decode_timestep=np.float32(0.05))
    got = pipe(**as_numpy, generator=torch.Generator().manual_seed(1)).frames
    want = pipe(**kw, generator=torch.Generator().manual_seed(1)).frames
    assert np.abs(got - want).max() <= 1e-6


def test_guidance_changes_the_frames(ltx):
    pipe, _ = ltx
    kw = dict(KW, output_type="np")
    plain = pipe(**kw, guidance_scale=1.0, generator=torch.Generator().manual_seed(0)).frames
    guided = pipe(**kw, guidance_scale=8.0, generator=torch.Generator().manual_seed(0)).frames
    assert np.abs(plain - guided).max() > 1e-3


@pytest.mark.parametrize("frames,height,width", [(1, 32, 32), (5, 64, 32), (13, 32, 96)])
def test_frame_counts_and_sizes_match_diffusers(ltx, frames, height, width):
    """Sizes other than the export's trace: the rotary table, the packing and the decoder's
    upsampling follow the input's shape."""
    pipe, ref = ltx
    got, want = run_both(pipe, ref, seed=3, **dict(KW, num_frames=frames, height=height, width=width, guidance_scale=3.0))
    assert got.shape == want.shape == (1, frames, height, width, 3)
    assert np.abs(got - want).max() <= ATOL


def test_prompt_batches_with_negatives_match_diffusers(ltx):
    """Two prompts of different lengths, a negative each: one text encoder call, one
    transformer batch of 4 rows per step, per-video decode timesteps and noise."""
    pipe, ref = ltx
    kw = dict(KW, prompt=["a red car", "fireworks over a city skyline at night"], negative_prompt=["rain", "snow, ugly"],
              num_frames=5, guidance_scale=3.0, decode_timestep=[0.05, 0.2], decode_noise_scale=None)
    got, want = run_both(pipe, ref, seed=5, **kw)
    assert got.shape == want.shape == (2, 5, 32, 64, 3)
    assert np.abs(got - want).max() <= ATOL
    assert np.abs(got[0] - got[1]).max() > 1e-3


def test_videos_per_prompt_and_generator_lists_match_diffusers(ltx):
    """Two videos of one prompt. The decode values are given per video: diffusers repeats a
    single one per prompt, not per video, and its timestep-conditioned decoder then fails
    on a batch of videos (vidrt repeats it per video)."""
    pipe, ref = ltx
    kw = dict(KW, num_videos_per_prompt=2, num_frames=5, guidance_scale=3.0, decode_timestep=[0.05, 0.1],
              decode_noise_scale=[0.025, 0.05])
    got, want = run_both(pipe, ref, seed=7, generators=2, **kw)
    assert got.shape == want.shape == (2, 5, 32, 64, 3)
    assert np.abs(got - want).max() <= ATOL
    assert np.abs(got[0] - got[1]).max() > 1e-3  # each video its own generator


def test_prompt_embeds_and_masks_match_diffusers(ltx):
    """Text states and masks as LTXPipeline.encode_prompt returns them stand in for the
    prompts; diffusers given the same. As in diffusers, states need their mask."""
    pipe, ref = ltx
    prompts, negatives = ["a red car", "fireworks over a city skyline at night"], ["rain", "snow, ugly"]
    states, mask, negative_states, negative_mask = ref.encode_prompt(prompts, negatives, max_sequence_length=32)
    kw = dict(KW, prompt=None, negative_prompt=None, prompt_embeds=states, prompt_attention_mask=mask,
              negative_prompt_embeds=negative_states, negative_prompt_attention_mask=negative_mask, num_frames=5,
              guidance_scale=3.0, decode_timestep=[0.05, 0.2], decode_noise_scale=None)
    got, want = run_both(pipe, ref, seed=5, **kw)
    assert got.shape == want.shape == (2, 5, 32, 64, 3)
    assert np.abs(got - want).max() <= ATOL
    texts, _ = run_both(pipe, ref, seed=5, **dict(kw, prompt=prompts, negative_prompt=negatives, prompt_embeds=None,
                                                   prompt_attention_mask=None, negative_prompt_embeds=None,
                                                   negative_prompt_attention_mask=None))
    assert np.abs(got - texts).max() <= ATOL
    with pytest.raises(VidrtError, match="prompt_attention_mask is needed with its states"):
        pipe(**dict(kw, prompt_attention_mask=None))
    with pytest.raises(VidrtError, match="pass prompt or prompt_embeds, not both"):
        pipe(**dict(kw, prompt=prompts))


class TextLengths:
    """Wraps an engine and records the text length of every transformer call."""

    def __init__(self, engine):
        self.engine, self.seen = engine, []

    def __call__(self, **feeds):
        self.seen.append(feeds["encoder_hidden_states"].shape[1])
        return self.engine(**feeds)

    def __getattr__(self, name):
        return getattr(self.engine, name)


def test_the_transformer_gets_text_up_to_the_last_attended_token(ltx, monkeypatch):
    """LTXPipeline pads prompts to max_sequence_length and masks the padding in the
    transformer's cross-attention only (-10000 on its logits: weight exactly 0), so vidrt
    hands the transformer the tokens up to the last one any row attends, rounded up to 8:
    the frames equal diffusers' that attends all 128 (LTXVideoTransformer3DModel.forward
    in diffusers' transformer_ltx.py builds that mask). A row that attends nothing is
    softmaxed over every token: then all are kept."""
    pipe, ref = ltx
    spy = TextLengths(pipe.engines["transformer"])
    monkeypatch.setitem(pipe.engines, "transformer", spy)
    kw = dict(KW, max_sequence_length=128, num_frames=5, guidance_scale=3.0)
    got, want = run_both(pipe, ref, seed=2, **kw)
    assert np.abs(got - want).max() <= ATOL
    tokens = max(len(ref.tokenizer(t).input_ids) for t in (KW["prompt"], KW["negative_prompt"]))
    assert tokens < 16 and set(spy.seen) == {-(-tokens // 8) * 8}

    states, mask, negative_states, negative_mask = ref.encode_prompt(KW["prompt"], KW["negative_prompt"],
                                                                     max_sequence_length=40)
    spy.seen.clear()
    kw = dict(kw, prompt=None, negative_prompt=None, prompt_embeds=states, prompt_attention_mask=mask,
              negative_prompt_embeds=negative_states, negative_prompt_attention_mask=torch.zeros_like(negative_mask))
    got, want = run_both(pipe, ref, seed=2, **kw)
    assert np.abs(got - want).max() <= ATOL
    assert set(spy.seen) == {40}


def test_callback_on_step_end_sees_packed_latents_as_in_diffusers(ltx):
    """The callback gets and returns diffusers' packed [V, F*h*w, C] latents after each step."""
    pipe, ref = ltx
    recorder = StepRecorder(pipe)
    kw = dict(KW, num_frames=5, guidance_scale=3.0, callback_on_step_end=recorder)
    got, want = run_both(pipe, ref, seed=8, **kw)
    plain, _ = run_both(pipe, ref, seed=8, **dict(kw, callback_on_step_end=None))
    recorder.check_sides_agree()
    assert recorder.seen["vidrt"][0][2].shape == (1, 2 * 4 * 8, 8)
    assert np.abs(got - want).max() <= ATOL and np.abs(got - plain).max() > 1e-3
    with pytest.raises(VidrtError, match="returned latents of shape \\[1, 8\\]"):
        pipe(**dict(kw, callback_on_step_end=lambda p, i, t, k: {"latents": torch.zeros(1, 8)}))


def test_packed_latents_in_and_out_match_diffusers(ltx):
    """``latents`` and output_type="latent" use diffusers' packed [V, F*h*w, C] layout."""
    pipe, ref = ltx
    kw = dict(KW, num_frames=5, guidance_scale=3.0)
    start = torch.randn(1, 2 * 4 * 8, 8, generator=torch.Generator().manual_seed(11))
    got = pipe(**kw, latents=start.clone(), output_type="latent").frames
    want = ref(**kw, latents=start.clone(), output_type="latent").frames
    assert got.shape == want.shape == (1, 64, 8)
    assert (got - want).abs().max() <= ATOL


def test_openvino_matches_diffusers(tmp_path, t2v_engine_dir):
    import shutil

    from vidrt import VideoPipeline
    from vidrt.sources import load_torch_components

    engines = shutil.copytree(t2v_engine_dir("tiny-ltx"), tmp_path / "tiny-ltx")  # its ONNX exports reused
    pipe = VideoPipeline.from_pretrained("tiny-ltx", engine_dir=engines, backend="openvino", progress=False)
    ref = load_torch_components(pipe.model)
    ref.set_progress_bar_config(disable=True)
    got, want = run_both(pipe, ref, **dict(KW, guidance_scale=3.0))
    assert np.abs(got - want).max() <= ATOL


def test_exported_graphs_equal_diffusers_modules():
    """The graphs (in torch) against diffusers' modules at two shapes each: the transformer
    on packed latents with LTXPipeline's rope_interpolation_scale, the decoder with
    LTXPipeline's denormalisation and decode-noise blend."""
    from vidrt.export.ltx_graphs import LTXTransformerGraph, LTXVaeDecoderGraph
    from vidrt.sources import load_torch_components, resolve_model

    ref = load_torch_components(resolve_model("tiny-ltx", progress=False))
    graph = LTXTransformerGraph(copy.deepcopy(ref.transformer)).eval()
    gen = torch.Generator().manual_seed(0)
    for b, f, h, w, length in ((2, 3, 4, 6, 7), (1, 2, 5, 3, 4)):
        x = torch.randn(b, 8, f, h, w, generator=gen)
        text = torch.randn(b, length, 32, generator=gen)
        mask = torch.ones(b, length, dtype=torch.int64)
        mask[0, length // 2 :] = 0
        t = torch.tensor([700.0])
        for first in (0, 1):  # text to video; image to video (frame 0 conditions, at timestep 0)
            frames_mask = torch.tensor([first] + [0] * (f - 1))
            tokens = frames_mask.repeat_interleave(h * w)[None].float()  # LTXImageToVideoPipeline's conditioning_mask
            want = ref.transformer(hidden_states=ref._pack_latents(x), encoder_hidden_states=text,
                                   timestep=t.expand(b)[:, None] * (1 - tokens), encoder_attention_mask=mask.bool(),
                                   num_frames=f, height=h, width=w, rope_interpolation_scale=(4 / 25, 8, 8),
                                   return_dict=False)[0]
            want = ref._unpack_latents(want, f, h, w)
            got = graph(x, t, text, mask, torch.tensor([4 / 25, 8.0, 8.0]), frames_mask)
            # the time embeddings of t and 0 are computed once and gathered per token: the same
            # rows up to the GEMM's blocking (observed 0 or ~1e-7); the conditioning frame's
            # prediction too (diffusers' guidance rescale reads it before its step drops it)
            assert torch.allclose(got, want, atol=1e-5, rtol=0)
    decoder = LTXVaeDecoderGraph(ref.vae).eval()
    for b, f, h, w in ((1, 2, 4, 6), (2, 3, 3, 5)):
        z, noise = torch.randn(b, 8, f, h, w, generator=gen), torch.randn(b, 8, f, h, w, generator=gen)
        t, scale = torch.tensor([0.05, 0.3][:b]), torch.tensor([0.025, 0.5][:b])
        latents = ref._denormalize_latents(z, ref.vae.latents_mean, ref.vae.latents_std, ref.vae.config.scaling_factor)
        latents = (1 - scale[:, None, None, None, None]) * latents + scale[:, None, None, None, None] * noise
        want = ref.vae.decode(latents, t, return_dict=False)[0].clamp(-1, 1)
        assert torch.allclose(decoder(z, t, noise, scale), want, atol=1e-6)


def test_bad_requests_get_one_line_errors(ltx):
    pipe, _ = ltx
    cases = [
        (dict(num_frames=10), "num_frames=10: LTX-Video makes 4k\\+1 frames"),
        (dict(height=48), "multiples of 32 for LTX-Video, got 48x64; try 32x64"),
        (dict(guidance_rescale=float("inf")), "guidance_rescale=inf"),
        (dict(frame_rate=0), "frame_rate=0: must be positive"),
        (dict(decode_timestep=[0.1, 0.2]), "decode_timestep: 2 values for 1 videos"),
        (dict(latents=torch.zeros(1, 8, 3, 4, 8)), "packed latents of shape \\[1, 96, 8\\]"),
        (dict(max_sequence_length=0), "max_sequence_length=0"),
    ]
    for change, message in cases:
        with pytest.raises(VidrtError, match=message) as err:
            pipe(**dict(KW, **change))
        assert "\n" not in str(err.value)


def test_long_prompt_is_truncated_with_a_warning_at_the_caller(ltx):
    pipe, _ = ltx
    with pytest.warns(UserWarning, match="truncated to max_sequence_length=4") as caught:
        out = pipe(**dict(KW, max_sequence_length=4, num_frames=1, num_inference_steps=1, output_type="np"))
    assert out.frames.shape == (1, 1, 32, 64, 3)
    (truncated,) = [w for w in caught if "truncated" in str(w.message)]
    assert truncated.filename == __file__  # pointed at this call, not inside vidrt


def _with_vae(tmp_path, preset: str, vae):
    """A copy of ``preset``'s folder with ``vae`` (an AutoencoderKLLTXVideo) saved in it."""
    import shutil

    from vidrt.sources import resolve_model

    folder = shutil.copytree(resolve_model(preset, progress=False).folder, tmp_path / "model")
    vae.save_pretrained(folder / "vae")
    return folder


def _noise_injecting_folder(tmp_path):
    """tiny-ltx with noise injected as LTX-Video 0.9.1's decoder injects it, here by the
    resnets of the decoder's last two up blocks (the config lists blocks encoder-side
    first), their per-channel noise scales random (diffusers starts them at 0, which would
    hide the noise)."""
    from diffusers import AutoencoderKLLTXVideo

    from vidrt.sources import resolve_model

    old = AutoencoderKLLTXVideo.from_pretrained(resolve_model("tiny-ltx", progress=False).folder / "vae")
    vae = AutoencoderKLLTXVideo.from_config({**old.config, "decoder_inject_noise": (True, True, False, False, False)})
    vae.load_state_dict(old.state_dict(), strict=False)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(0)
        for name, p in vae.named_parameters():
            if "per_channel_scale" in name:
                p.copy_(torch.rand_like(p) + 0.5)
    return _with_vae(tmp_path, "tiny-ltx", vae)


def test_a_decoder_that_injects_noise_matches_diffusers(tmp_path):
    """LTX-Video 0.9.1's decoder adds a noise map after each conv of its resnets, drawn
    from torch's global generator (diffusers' decode takes no generator). vidrt draws the
    same maps in the same order (LTXModel.decoder_noise_upscales) and feeds them to the
    exported decoder: with the global seed set alike, the frames equal diffusers' at
    several sizes; another global seed changes them."""
    from vidrt import VideoPipeline
    from vidrt.sources import load_torch_components, resolve_model

    folder = _noise_injecting_folder(tmp_path)
    pipe = VideoPipeline.from_pretrained(str(folder), engine_dir=tmp_path / "engines", backend="onnxruntime",
                                         progress=False)
    ref = load_torch_components(resolve_model(str(folder), progress=False))
    ref.set_progress_bar_config(disable=True)
    assert pipe.model.decoder_noise_upscales  # the last two up blocks' resnets inject noise

    def frames(side, global_seed, **kw):
        torch.manual_seed(global_seed)
        return np.asarray(side(**dict(KW, guidance_scale=3.0, **kw), generator=torch.Generator().manual_seed(1),
                               output_type="np").frames)

    for size in (dict(num_frames=9, height=32, width=64), dict(num_frames=5, height=64, width=32)):
        got, want = frames(pipe, 0, **size), frames(ref, 0, **size)
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= ATOL
    assert np.abs(frames(pipe, 1, **size) - got).max() > 1e-3


def test_a_0_9_5_vae_matches_diffusers(tmp_path):
    """LTX-Video 0.9.5+'s VAE layout (diffusers scripts/convert_ltx_to_diffusers.py, its
    0.9.5 config): LTXVideo095DownBlock3D encoder blocks with spatial, temporal and
    spatio-temporal downsampling, a decoder whose residual upsamplers halve the channels
    (upsample_factor 2), timestep conditioning. Here scaled down to 8-32 channels, its
    timestep tables random (diffusers starts some at 0), through the image-to-video
    pipeline so the encoder runs too: frames equal diffusers' at 1 and 17 frames."""
    from diffusers import AutoencoderKLLTXVideo

    from vidrt import VideoPipeline
    from vidrt.sources import load_torch_components, resolve_model

    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(0)
        vae = AutoencoderKLLTXVideo(
            latent_channels=8, block_out_channels=(8, 8, 16, 16, 16), down_block_types=("LTXVideo095DownBlock3D",) * 4,
            decoder_block_out_channels=(8, 16, 32), layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1), spatio_temporal_scaling=(True, True, True, True),
            decoder_spatio_temporal_scaling=(True, True, True), decoder_inject_noise=(False,) * 4,
            downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
            upsample_residual=(True, True, True), upsample_factor=(2, 2, 2), timestep_conditioning=True,
            patch_size=2, patch_size_t=1, encoder_causal=True, decoder_causal=False, spatial_compression_ratio=16,
            temporal_compression_ratio=8).eval()
        vae.latents_mean.copy_(0.1 * torch.randn(8))
        vae.latents_std.copy_(0.5 + torch.rand(8))
        for name, p in vae.named_parameters():
            if "scale_shift_table" in name:
                p.copy_(0.1 * torch.randn_like(p))
    folder = _with_vae(tmp_path, "tiny-ltx-i2v", vae)
    pipe = VideoPipeline.from_pretrained(str(folder), engine_dir=tmp_path / "engines", backend="onnxruntime",
                                         progress=False)
    ref = load_torch_components(resolve_model(str(folder), progress=False))
    ref.set_progress_bar_config(disable=True)
    assert (pipe.model.vae_scale_factor, pipe.model.temporal_factor) == (16, 8)
    for frames, height, width in ((17, 32, 64), (1, 64, 32)):
        kw = dict(KW, image=an_image(), num_frames=frames, height=height, width=width, guidance_scale=3.0)
        got, want = run_both(pipe, ref, **kw)
        assert got.shape == want.shape == (1, frames, height, width, 3)
        assert np.abs(got - want).max() <= ATOL


def test_generate_writes_an_mp4_and_run_bench_compares_with_diffusers(tmp_path, capsys, t2v_engine_dir):
    import json

    from vidrt.cli import main

    engines = str(t2v_engine_dir("tiny-ltx"))
    out = tmp_path / "ltx.mp4"
    assert main(["generate", "--model", "tiny-ltx", "--prompt", "a cat", "--height", "32", "--width", "32",
                 "--num-frames", "5", "--steps", "2", "--engine-dir", engines, "--backend", "onnxruntime",
                 "--output", str(out)]) == 0, capsys.readouterr().err
    assert out.stat().st_size > 0
    bench = tmp_path / "bench.json"
    assert main(["run-bench", "--model", "tiny-ltx", "--height", "32", "--width", "32", "--steps", "2", "--runs", "1",
                 "--warmup", "0", "--engine-dir", engines, "--backend", "onnxruntime", "--output", str(bench)]) == 0, \
        capsys.readouterr().err
    result = json.loads(bench.read_text())
    assert result["config"]["num_frames_used"] == 13  # the 14 frames of the main job, as LTX's 4k+1 here
    assert result["parity"]["max_abs_err"] <= ATOL
    assert result["engine"]["stages_ms"]["transformer"]["median"] > 0


def test_flow_euler_with_dynamic_shifting_steps_as_diffusers():
    """Every step vidrt's flow-euler takes on LTX's shifted schedule equals
    FlowMatchEulerDiscreteScheduler.step (diffusers), sigmas and mu as LTXPipeline sets them."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

    from vidrt.families.ltx.presets import LTX_SCHEDULER
    from vidrt.samplers import make_sampler

    config = dict(FlowMatchEulerDiscreteScheduler(**LTX_SCHEDULER).config, _class_name="FlowMatchEulerDiscreteScheduler")
    sampler = make_sampler(None, config)
    assert sampler.name == "flow-euler"
    steps, mu = 5, calculate_shift(3 * 16 * 22, 1024, 4096, 0.95, 2.05)
    sigmas = np.linspace(1.0, 1 / steps, steps)
    sampler.set_timesteps(steps, sigmas=sigmas, mu=mu)
    ref = FlowMatchEulerDiscreteScheduler(**LTX_SCHEDULER)
    ref.set_timesteps(sigmas=sigmas, mu=mu)
    assert torch.equal(sampler.timesteps, ref.timesteps)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 3, 4, 4, generator=gen)
    mine = x.clone()
    for i, t in enumerate(ref.timesteps):
        v = torch.randn(x.shape, generator=gen)
        x = ref.step(v, t, x, return_dict=False)[0]
        mine = sampler.step(v, i, mine)
        assert torch.allclose(mine, x, atol=1e-6, rtol=0)
    with pytest.raises(VidrtError, match="must pass mu"):
        make_sampler(None, config).set_timesteps(steps)


@pytest.fixture(scope="module")
def ltx_i2v(t2v_engine_dir):
    """(vidrt's LTXImageToVideoPipeline on ONNX Runtime, diffusers' from the same folder)."""
    from vidrt import VideoPipeline
    from vidrt.sources import load_torch_components, resolve_model

    model = resolve_model("tiny-ltx-i2v", progress=False)
    pipe = VideoPipeline.from_pretrained("tiny-ltx-i2v", engine_dir=t2v_engine_dir("tiny-ltx-i2v"),
                                         backend="onnxruntime", progress=False)
    ref = load_torch_components(model)
    ref.set_progress_bar_config(disable=True)
    return pipe, ref


def an_image(height=32, width=64, seed=0):
    import PIL.Image

    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("sampler", [None, "scheduler"])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_image_to_video_matches_diffusers(ltx_i2v, sampler, guidance):
    """The image's latent (sampled from the request's generator) is frame 0, kept through
    the loop at timestep 0; the other frames are denoised."""
    pipe, ref = ltx_i2v
    assert pipe.model.kind == "ltx-i2v" and "vae_encoder" in pipe.engines
    got, want = run_both(pipe, ref, sampler, **dict(KW, image=an_image(), guidance_scale=guidance))
    assert got.shape == want.shape == (1, 9, 32, 64, 3)
    assert np.abs(got - want).max() <= ATOL
    assert want.std() > 0.01


@pytest.mark.parametrize("frames,height,width", [(1, 32, 32), (13, 64, 32)])
def test_image_to_video_frame_counts_and_sizes_match_diffusers(ltx_i2v, frames, height, width):
    """Also an image of another size than the video's: both resize it to height x width."""
    pipe, ref = ltx_i2v
    kw = dict(KW, image=an_image(48, 48, seed=1), num_frames=frames, height=height, width=width, guidance_scale=3.0)
    got, want = run_both(pipe, ref, seed=2, **kw)
    assert got.shape == want.shape == (1, frames, height, width, 3)
    assert np.abs(got - want).max() <= ATOL


def test_image_to_video_guidance_rescale_matches_diffusers(ltx_i2v):
    """diffusers rescales over every token, the image's frame's too, then drops that frame's
    prediction: vidrt's graph returns it, and the loop holds the frame after the rescale."""
    pipe, ref = ltx_i2v
    kw = dict(KW, image=an_image(seed=5), guidance_scale=4.0, guidance_rescale=0.7)
    got, want = run_both(pipe, ref, seed=6, **kw)
    assert np.abs(got - want).max() <= ATOL
    start = lambda: torch.Generator().manual_seed(6)  # noqa: E731
    got = pipe(**dict(kw, output_type="latent"), generator=start()).frames
    want = ref(**dict(kw, output_type="latent"), generator=start()).frames
    assert (got - want).abs().max() <= 1e-4  # latents before the decoder: closer than the frames' bar


def test_image_to_video_batches_match_diffusers(ltx_i2v):
    """Two prompts with an image each: the images' latents sampled in turn from the
    generator, then the clip's noise. With a generator per video (image i's latent from
    generator i), compared on the latents: diffusers' image-to-video decode cannot take a
    list of generators (torch.randn there, not randn_tensor)."""
    pipe, ref = ltx_i2v
    kw = dict(KW, image=[an_image(seed=3), an_image(seed=4)], prompt=["a red car", "a boat at sea"],
              negative_prompt=["rain", "snow"], num_frames=5, guidance_scale=3.0, decode_timestep=[0.05, 0.1],
              decode_noise_scale=[0.025, 0.05])
    got, want = run_both(pipe, ref, seed=9, **kw)
    assert got.shape == want.shape == (2, 5, 32, 64, 3)
    assert np.abs(got - want).max() <= ATOL
    gens = lambda: [torch.Generator().manual_seed(20 + i) for i in range(2)]  # noqa: E731
    got = pipe(**dict(kw, output_type="latent"), generator=gens()).frames
    want = ref(**dict(kw, output_type="latent"), generator=gens()).frames
    assert (got - want).abs().max() <= ATOL


def test_image_to_video_needs_an_image(ltx_i2v, tmp_path, capsys, t2v_engine_dir):
    from vidrt.cli import main

    pipe, _ = ltx_i2v
    with pytest.raises(VidrtError, match="needs an image"):
        pipe(**dict(KW, image=None))
    with pytest.raises(VidrtError, match="3 images for 1 prompts"):
        pipe(**dict(KW, image=[an_image()] * 3))
    engines = str(t2v_engine_dir("tiny-ltx-i2v"))
    assert main(["generate", "--model", "tiny-ltx-i2v", "--prompt", "a cat", "--num-frames", "5", "--engine-dir",
                 engines, "--output", str(tmp_path / "x.mp4")]) == 2
    assert "pass --image PATH" in capsys.readouterr().err
    image = tmp_path / "in.png"
    an_image().save(image)
    assert main(["generate", "--model", "tiny-ltx-i2v", "--prompt", "a cat", "--image", str(image), "--height", "32",
                 "--width", "64", "--num-frames", "5", "--steps", "2", "--engine-dir", engines, "--backend",
                 "onnxruntime", "--output", str(tmp_path / "i2v.mp4")]) == 0, capsys.readouterr().err
    assert (tmp_path / "i2v.mp4").stat().st_size > 0


def test_tensorrt_profiles_and_fp16_build_of_the_transformer(tmp_path, monkeypatch, t2v_engine_dir):
    """GPU-free: --static names video frames (8k+1 on LTX-Video, 4k+1 on tiny-ltx) and pixels;
    the transformer's profile holds latent frames and both guidance halves, its frame mask
    follows the latent frames, the decoder takes the whole latent clip of one video and
    the encoder one image; an fp16 build (the fake tensorrt, which rejects what the real
    API lacks) keeps the RMS and layer norms fp32."""

    from vidrt.sources import resolve_model
    from vidrt.trt_plan import ShapeRequest, TrtOptions, builder_settings, derive_profiles

    model = resolve_model("tiny-ltx-i2v", progress=False)
    specs = model.specs()
    req = ShapeRequest.from_flags(static="batch=1,frames=25,height=256,width=256")
    cfg, plain = derive_profiles("transformer", specs["transformer"], req, model.vae_scale_factor, temporal=4)
    assert cfg.shapes["sample"][0] == (2, 8, 7, 32, 32) and plain.shapes["sample"][0] == (1, 8, 7, 32, 32)
    assert cfg.shapes["conditioning_mask"][0] == (7,) and cfg.shapes["encoder_attention_mask"][0] == (2, 128)
    (decoder,) = derive_profiles("vae_decoder", specs["vae_decoder"], req, model.vae_scale_factor, temporal=4)
    assert decoder.shapes["latents"][0] == (1, 8, 7, 32, 32) and decoder.shapes["timestep"][0] == (1,)
    (encoder,) = derive_profiles("vae_encoder", specs["vae_encoder"], req, model.vae_scale_factor, temporal=4)
    assert encoder.shapes["image"][0] == (1, 3, 256, 256)
    with pytest.raises(VidrtError, match="frames=24 must be 4k\\+1 for transformer"):
        derive_profiles("transformer", specs["transformer"], ShapeRequest(max={"frames": 24}), 8, temporal=4)

    engines = t2v_engine_dir("tiny-ltx")
    profiles = derive_profiles("transformer", specs["transformer"], ShapeRequest(), model.vae_scale_factor, temporal=4)
    settings = builder_settings("fp16", TrtOptions(), profiles, model.fp16_fp32_layers)
    calls = fake_trt_build_calls(monkeypatch, engines / "transformer" / "onnx" / "model.onnx", tmp_path / "t.plan", settings)
    fp32 = {c[1] for c in calls if c[0] == "layer.precision" and c[2] == "FLOAT"}
    assert any("/norm_q/" in n for n in fp32) and any("norm_out" in n for n in fp32)
    assert not any("to_q" in n or "MatMul" in n for n in fp32)


def test_int8_transformer_through_the_quantization_stage(tmp_path, t2v_engine_dir):
    """--precision int8 quantizes the transformer only (calibrated on flow latents at LTX's
    shifted timesteps and real prompt states with their masks), keeping the patch
    embedding, time and caption embedders and output projection unquantized; its Q/DQ graph
    is within 5% relative L2 of fp32 on held-out inputs, and the frames stay near
    diffusers' fp32 ones."""
    import json
    import shutil

    from vidrt import VideoPipeline
    from vidrt.sources import load_torch_components

    from conftest import INT8_SATURATES

    engines = shutil.copytree(t2v_engine_dir("tiny-ltx"), tmp_path / "tiny-ltx")  # the fp32 exports reused
    pipe = VideoPipeline.from_pretrained("tiny-ltx", engine_dir=engines, backend="onnxruntime", precision="int8",
                                         progress=False)
    report = json.loads((engines / "transformer" / "onnx-int8" / "export.json").read_text())["quantization"]["error_vs_fp32"]
    assert report["rel_l2"] <= (0.12 if INT8_SATURATES else 0.05) and report["qdq"]["QuantizeLinear"] > 0
    assert report["kept_high_precision"] == ["*proj_in*", "*time_embed*", "*caption_projection*", "*proj_out*"]
    assert not [c for c in ("text_encoder", "vae_decoder") if (engines / c / "onnx-int8").exists()]
    ref = load_torch_components(pipe.model)
    ref.set_progress_bar_config(disable=True)
    kw = dict(KW, guidance_scale=3.0)
    got = pipe(**kw, generator=torch.Generator().manual_seed(0), output_type="np").frames
    want = np.asarray(ref(**kw, generator=torch.Generator().manual_seed(0), output_type="np").frames)
    assert np.abs(got - want).mean() <= 0.05


def test_a_split_t5_matches_diffusers(tmp_path, monkeypatch):
    """T5-XXL's encoder (19 GB in fp32) is exported and run as a chain of parts, each loaded
    alone; T5's blocks share block 0's position bias, which every part computes from block
    0's table: here a tiny-ltx folder whose T5 has three blocks, one per part. The frames
    still equal diffusers' (whole encoder), and each part holds its own blocks' weights
    and that table only."""
    from diffusers import LTXPipeline
    from transformers import T5EncoderModel

    from vidrt import VideoPipeline
    from vidrt.families.ltx import model as ltx_model
    from vidrt.sources import load_torch_component, materialize_preset

    ref = LTXPipeline.from_pretrained(materialize_preset("tiny-ltx", 0, progress=False))
    config = ref.text_encoder.config
    config.num_layers = 3
    torch.manual_seed(0)
    ref.text_encoder = T5EncoderModel(config).eval()
    ref.save_pretrained(tmp_path / "ltx")
    monkeypatch.setattr(ltx_model, "TEXT_PART_BYTES", 1)  # at least one block per part: 3 parts
    pipe = VideoPipeline.from_pretrained(tmp_path / "ltx", engine_dir=tmp_path / "engines", backend="onnxruntime",
                                         progress=False)
    assert pipe.model.text_parts == ("text_encoder", "text_encoder_part1", "text_encoder_part2")
    ref.set_progress_bar_config(disable=True)
    got, want = run_both(pipe, ref, **dict(KW, guidance_scale=3.0))
    assert np.abs(got - want).max() <= ATOL
    last = load_torch_component(pipe.model, "text_encoder_part2")
    loaded = {n for n, t in last.named_parameters(remove_duplicate=False) if not t.is_meta}
    assert loaded == {n for n in loaded if n.startswith(("encoder.block.2.", "encoder.final_layer_norm.",
                                                          "encoder.block.0.layer.0.SelfAttention.relative_attention_bias."))}
    assert "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in loaded


def test_the_real_size_preset_has_ltx_video_2b_sizes():
    """ltx-video-2b is too large to create in the suite (19 GB with T5-XXL): its configs are
    built on the meta device and counted (LTX-Video 2B's transformer, 1.92 B counted;
    google/t5-v1_1-xxl's encoder 4.76 B; the 0.9.0 VAE 419 M); its T5 is split into parts
    of at most TEXT_PART_BYTES, and benchmarks/ltx_layers builds the same transformer and VAE."""
    from diffusers import AutoencoderKLLTXVideo, LTXVideoTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from vidrt.benchmarks import ltx_layers
    from vidrt.families.ltx import model as ltx_model
    from vidrt.families.ltx import presets
    from vidrt.sources import ALL_PRESETS

    cfg = presets.PRESETS["ltx-video-2b"]
    assert "ltx-video-2b" in ALL_PRESETS and "bf16" in cfg["differs"] and "0.9.0" in cfg["differs"]
    with torch.device("meta"):
        modules = (LTXVideoTransformer3DModel(**cfg["transformer"]), T5EncoderModel(T5Config(**cfg["text_encoder"])),
                   AutoencoderKLLTXVideo(**cfg["vae"]))
        layers = ltx_layers.build_pipeline(2)
    assert [round(sum(p.numel() for p in m.parameters()) / 1e6) for m in modules] == [1923, 4762, 419]
    same = lambda a, b, but=(): all(a.config[k] == b.config[k] for k in b.config if not k.startswith("_") and k not in but)  # noqa: E731
    assert same(layers.vae, modules[2]) and same(layers.transformer, modules[0], but=("num_layers",))
    assert layers.text_encoder.config.d_model == 4096

    class Folder(ltx_model.SplitTextEncoderMixin):
        folder, text_encoder = "ltx-video-2b", dict(cfg["text_encoder"], architectures=["T5EncoderModel"])

    parts = Folder().split_blocks(ltx_model.TEXT_PART_BYTES, 32128)
    assert parts[0][0] == 0 and parts[-1][1] == 24 and len(parts) == 5  # 19 GB in parts of <= 4 GiB
