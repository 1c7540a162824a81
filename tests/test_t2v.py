"""Text to video: tiny-t2v (TextToVideoSDPipeline, 3D U-Net) and tiny-animatediff
(AnimateDiffPipeline, UNetMotionModel) against diffusers on the same components.

Tolerance: frames within 2e-3 max abs of diffusers at fp32 (the issue's bar); both
sides are fp32 and differ only in kernel summation order (observed ~1e-6).
Each pipeline is checked with every sampler, guidance on and off, through the
folder's own scheduler config, as a user would swap schedulers in diffusers.
"""

import shutil

import numpy as np
import pytest
import torch

from vidrt.errors import VidrtError

PIPELINES = ("tiny-t2v", "tiny-animatediff")
SAMPLERS = (None, "lcm", "dpm++", "euler")  # None: the folder's DDIM
KW = dict(num_frames=5, height=48, width=32, num_inference_steps=3)
ATOL = 2e-3


@pytest.fixture(scope="module", params=PIPELINES)
def t2v(request, t2v_engine_dir):
    """(vidrt pipeline on ONNX Runtime, the model, diffusers' pipeline) per preset."""
    from vidrt import VideoPipeline
    from vidrt.sources import load_torch_components, resolve_model

    model = resolve_model(request.param, progress=False)
    engines = t2v_engine_dir(request.param)
    pipe = VideoPipeline.from_pretrained(request.param, engine_dir=engines, backend="onnxruntime", progress=False)
    ref = load_torch_components(model)
    ref.set_progress_bar_config(disable=True)
    ref.folder_scheduler = ref.scheduler
    return pipe, model, ref


def reference(ref, sampler, **kw):
    from vidrt.benchmarks.reference_schedulers import reference_scheduler

    ref.scheduler = reference_scheduler(sampler, ref.folder_scheduler)
    return np.asarray(ref(**kw, output_type="np").frames)


@pytest.fixture(autouse=True)
def default_sampler(request):
    """Tests that pick a sampler on the shared pipeline leave it as they found it."""
    yield
    if "t2v" in request.fixturenames:
        request.getfixturevalue("t2v")[0].sampler_name = None


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("guidance", [1.0, 6.0])
def test_frames_match_diffusers(t2v, sampler, guidance):
    pipe, model, ref = t2v
    pipe.sampler_name = sampler
    kw = dict(KW, prompt="a cat playing the piano", negative_prompt="blurry", guidance_scale=guidance)
    got = pipe(**kw, generator=torch.Generator().manual_seed(4), output_type="np").frames
    want = reference(ref, sampler, **kw, generator=torch.Generator().manual_seed(4))
    assert got.shape == want.shape == (1, 5, 48, 32, 3)
    assert np.abs(got - want).max() <= ATOL
    assert want.std() > 0.01  # the frames are not a constant both sides agree on by accident


def test_prompt_batches_and_given_latents_match_diffusers(t2v):
    pipe, model, ref = t2v
    pipe.sampler_name = None
    prompts = ["a red car on a coastal road", "fireworks over a city"]
    latents = torch.randn(2, 4, 5, 24, 16, generator=torch.Generator().manual_seed(1))
    kw = dict(KW, prompt=prompts, negative_prompt=["rain", "snow"], guidance_scale=5.0)
    got = pipe(**kw, latents=latents, output_type="np").frames
    want = reference(ref, None, **kw, latents=latents)
    assert np.abs(got - want).max() <= ATOL
    assert np.abs(got[0] - got[1]).max() > 1e-3  # two prompts, two videos


def test_videos_per_prompt_and_generator_list(t2v):
    """Several videos of one prompt: one UNet batch, one generator per video; each video
    equals the one-video request with that generator (diffusers' randn_tensor order)."""
    pipe, model, _ = t2v
    pipe.sampler_name = "lcm"  # draws noise every step: the generator list must feed it too
    gens = [torch.Generator().manual_seed(s) for s in (7, 8)]
    both = pipe(prompt="waves", num_videos_per_prompt=2, generator=gens, output_type="np", **KW).frames
    for i, seed in enumerate((7, 8)):
        one = pipe(prompt="waves", generator=[torch.Generator().manual_seed(seed)], output_type="np", **KW).frames
        assert np.abs(both[i] - one[0]).max() <= 1e-4


def test_prompt_embeds_match_diffusers(t2v):
    """CLIP states as the pipeline's encode_prompt returns them stand in for the prompts
    (both halves, or the prompts' only); diffusers given the same."""
    pipe, model, ref = t2v
    prompts, negatives = ["a red car on a coastal road", "fireworks over a city"], ["rain", "snow"]
    states, negative_states = ref.encode_prompt(prompts, "cpu", 1, True, negatives)
    latents = torch.randn(2, 4, 5, 24, 16, generator=torch.Generator().manual_seed(1))
    kw = dict(KW, prompt_embeds=states, negative_prompt_embeds=negative_states, guidance_scale=5.0)
    got = pipe(**kw, latents=latents, output_type="np").frames
    want = reference(ref, None, **kw, latents=latents)
    assert got.shape == want.shape == (2, 5, 48, 32, 3)
    assert np.abs(got - want).max() <= ATOL
    got = pipe(**dict(kw, negative_prompt=negatives, negative_prompt_embeds=None), latents=latents,
               output_type="np").frames
    assert np.abs(got - want).max() <= ATOL  # the negatives encoded by vidrt: the same states
    with pytest.raises(VidrtError, match="prompt_embeds: this model takes text states of shape \\[prompts, tokens, "):
        pipe(**dict(kw, prompt_embeds=states[..., :5]))


def test_callback_on_step_end_as_in_animatediff(t2v):
    """AnimateDiffPipeline's callback_on_step_end (ModelScope's diffusers pipeline has none)."""
    from conftest import StepRecorder

    pipe, model, ref = t2v
    if model.kind != "animatediff":
        pytest.skip("TextToVideoSDPipeline has the older callback/callback_steps, no callback_on_step_end")
    pipe.sampler_name = None
    recorder = StepRecorder(pipe)
    kw = dict(KW, prompt="waves", negative_prompt="blurry", guidance_scale=5.0, callback_on_step_end=recorder)
    got = pipe(**kw, generator=torch.Generator().manual_seed(2), output_type="np").frames
    want = reference(ref, None, **kw, generator=torch.Generator().manual_seed(2))
    recorder.check_sides_agree()
    assert np.abs(got - want).max() <= ATOL


def test_output_types_and_layouts(t2v):
    pipe, model, _ = t2v
    pipe.sampler_name = None
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    np_frames = pipe(prompt="x", generator=gen(), output_type="np", **KW).frames
    pt = pipe(prompt="x", generator=gen(), output_type="pt", **KW).frames
    lat = pipe(prompt="x", generator=gen(), output_type="latent", **KW).frames
    pil = pipe(prompt="x", generator=gen(), output_type="pil", **KW).frames
    assert tuple(pt.shape) == (1, 5, 3, 48, 32) and tuple(lat.shape) == (1, 4, 5, 24, 16)
    assert len(pil) == 1 and len(pil[0]) == 5 and pil[0][0].size == (32, 48)
    assert np.abs(pt.permute(0, 1, 3, 4, 2).numpy() - np_frames).max() < 1e-6


def test_long_prompt_is_truncated_with_a_warning(t2v):
    pipe, model, _ = t2v
    long = " ".join(["astronaut"] * 200)
    with pytest.warns(UserWarning, match="truncated"):
        pipe(prompt=long, num_inference_steps=1, num_frames=2, height=32, width=32, output_type="latent")


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt=["a", "b"], negative_prompt=["c"]), "negative prompts for 2 prompts"),
    (dict(prompt=3), "prompt must be a string"),
    (dict(prompt="a", num_frames=33), "num_frames=33 is outside"),
    (dict(prompt="a", height=50), "multiples of 8"),
])
def test_bad_requests_name_the_problem(t2v, kwargs, message):
    pipe, model, _ = t2v
    if "num_frames" in kwargs and model.kind != "animatediff":
        kwargs = dict(kwargs, num_frames=65)
        message = "num_frames=65 is outside"
    with pytest.raises(VidrtError, match=message):
        pipe(**{"num_inference_steps": 1, **kwargs})


def test_preset_tokenizer_and_folder_round_trip(t2v, tmp_path):
    """The offline tokenizer covers any text; a copied folder loads as the same kind."""
    from transformers import CLIPTokenizer

    from vidrt.models import read_model

    _, model, _ = t2v
    tok = CLIPTokenizer.from_pretrained(model.folder / "tokenizer")
    ids = tok("Zebra, 42 émigrés — ok?").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.unk_token_id not in ids[1:-1]
    assert tok.model_max_length == 77 == model.max_text_length
    copy = tmp_path / "m"
    shutil.copytree(model.folder, copy)
    again = read_model(copy)
    assert again.kind == model.kind and again.unet == model.unet and again.preset == model.preset


def test_samplers_reject_the_other_family():
    from vidrt import VideoPipeline

    with pytest.raises(VidrtError, match="is not for text-to-video models"):
        VideoPipeline.from_pretrained("tiny-t2v", sampler="animatelcm", progress=False, build=False)
    with pytest.raises(VidrtError, match="is not for image-to-video"):
        VideoPipeline.from_pretrained("tiny-svd", sampler="ddim", progress=False, build=False)


def test_quantized_precisions_are_refused_for_text_to_video(tmp_path):
    from vidrt import VideoPipeline

    with pytest.raises(VidrtError, match="calibrates SVD-family and diffusion transformer models only"):
        VideoPipeline.from_pretrained("tiny-t2v", engine_dir=tmp_path, backend="onnxruntime", precision="int8",
                                      progress=False)


@pytest.mark.parametrize("name", PIPELINES)
def test_openvino_engines_match_diffusers_and_bf16_stays_close(name, tmp_path, t2v_engine_dir):
    """OpenVINO fp32 within the same 2e-3 of diffusers; bf16 (8 mantissa bits) within 5%
    relative L2 of vidrt fp32 on these random tiny weights."""
    pytest.importorskip("openvino")
    from vidrt import VideoPipeline
    from vidrt.sources import load_torch_components, resolve_model

    ref = load_torch_components(resolve_model(name, progress=False))
    ref.set_progress_bar_config(disable=True)
    kw = dict(KW, prompt="a panda eating bamboo", guidance_scale=4.0)
    want = np.asarray(ref(**kw, generator=torch.Generator().manual_seed(2), output_type="np").frames)
    got = {}
    engines = tmp_path / "engines"
    shutil.copytree(t2v_engine_dir(name), engines)  # the ONNX export is reused
    for precision in ("fp32", "bf16"):
        pipe = VideoPipeline.from_pretrained(name, engine_dir=engines, backend="openvino", precision=precision,
                                             progress=False)
        got[precision] = pipe(**kw, generator=torch.Generator().manual_seed(2), output_type="np").frames
    assert np.abs(got["fp32"] - want).max() <= ATOL
    assert np.linalg.norm(got["bf16"] - got["fp32"]) / np.linalg.norm(got["fp32"]) < 0.05


def test_tensorrt_profiles_cover_text_to_video_requests(vidrt_cache):
    """Build planning for the TensorRT path (no GPU needed): the text encoder and UNet get
    guided and unguided profiles with the text length at 77; a static shape fixes all."""
    from vidrt.sources import resolve_model
    from vidrt.trt_plan import ShapeRequest, derive_profiles, select_profile

    model = resolve_model("tiny-animatediff", progress=False)
    specs = model.specs()
    unet = derive_profiles("unet", specs["unet"], ShapeRequest(), model.vae_scale_factor)
    text = derive_profiles("text_encoder", specs["text_encoder"], ShapeRequest(), model.vae_scale_factor)
    assert [p.label for p in unet] == [p.label for p in text] == ["cfg", "no-cfg"]
    shapes = {"sample": (2, 4, 16, 32, 32), "timestep": (1,), "encoder_hidden_states": (2, 77, 32)}
    assert select_profile(unet, shapes, "unet") == 0
    static = ShapeRequest(static={"batch": 1, "frames": 8, "height": 64, "width": 64})
    (guided, _) = derive_profiles("text_encoder", specs["text_encoder"], static, model.vae_scale_factor)
    assert guided.shapes["input_ids"] == ((2, 77),) * 3
    with pytest.raises(VidrtError, match="frames"):
        derive_profiles("unet", specs["unet"], ShapeRequest(max={"frames": 40}), model.vae_scale_factor)
    from vidrt.trt_plan import tensor_bytes

    # By default a profile ends at one guided video (2 rows); token ids are int64: 8 bytes each.
    sizes = tensor_bytes(specs["text_encoder"], text)
    assert sizes["input_ids"] == 2 * 77 * 8 and sizes["last_hidden_state"] == 2 * 77 * 32 * 4


def _original_animatediff_keys(state: dict) -> dict:
    """diffusers MotionAdapter keys -> the original AnimateDiff checkpoint's layout."""
    import re

    out = {}
    for k, v in state.items():
        k = re.sub(r"(motion_modules\.\d+)\.", r"\1.temporal_transformer.", k)
        for new, old in ((".attn1", ".attention_blocks.0"), (".attn2", ".attention_blocks.1"),
                         (".norm1", ".norms.0"), (".norm2", ".norms.1"), (".norm3", ".ff_norm"),
                         (".pos_embed.pe", ".attention_blocks.0.pos_encoder.pe")):
            k = k.replace(new, old)
        out[k] = v
    return out


def test_stable_diffusion_folder_with_a_motion_adapter_file(tmp_path):
    """--motion-adapter FILE (original AnimateDiff layout, .safetensors or .ckpt) or FOLDER
    (diffusers') on a Stable Diffusion folder runs as AnimateDiff: each gives the UNet
    diffusers' UNetMotionModel.from_unet2d builds from the same adapter, and the pipeline
    (built once, from the original-layout checkpoint) matches diffusers' AnimateDiffPipeline."""
    from diffusers import AnimateDiffPipeline, MotionAdapter, StableDiffusionPipeline, UNet2DConditionModel, UNetMotionModel
    from safetensors.torch import save_file

    from vidrt import VideoPipeline
    from vidrt.families.t2v.presets import PRESETS as T2V_PRESETS
    from vidrt.sources import load_torch_component, load_torch_components, resolve_model

    cfg = T2V_PRESETS["tiny-animatediff"]
    parts = load_torch_components(resolve_model("tiny-animatediff", progress=False))
    torch.manual_seed(11)
    unet = UNet2DConditionModel(**cfg["unet"])
    # A file has no config: vidrt takes AnimateDiff's 8 heads, so the tiny adapter has 8 too.
    adapter = MotionAdapter(**{**cfg["motion_adapter"], "motion_num_attention_heads": 8}).eval()
    sd = tmp_path / "sd15"
    StableDiffusionPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=unet,
                            scheduler=parts.scheduler, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(sd)
    state = _original_animatediff_keys({k: v.contiguous() for k, v in adapter.state_dict().items()})
    paths = {suffix: tmp_path / f"mm{suffix}" for suffix in (".safetensors", ".ckpt", "-folder")}
    adapter.save_pretrained(paths["-folder"])
    save_file(state, str(paths[".safetensors"]))
    torch.save(state, paths[".ckpt"])

    with pytest.raises(VidrtError, match="add --motion-adapter"):
        resolve_model(str(sd))
    want_unet = UNetMotionModel.from_unet2d(unet, motion_adapter=adapter).state_dict()
    for suffix, path in paths.items():
        model = resolve_model(str(sd), progress=False, motion_adapter=str(path))
        assert model.kind == "animatediff" and model.motion_adapter["motion_max_seq_length"] == 32, suffix
        got_unet = load_torch_component(model, "unet").state_dict()
        assert got_unet.keys() == want_unet.keys(), suffix
        assert all(torch.equal(got_unet[k], want_unet[k]) for k in want_unet), suffix

    pipe = VideoPipeline.from_pretrained(str(sd), motion_adapter=str(paths[".ckpt"]), engine_dir=tmp_path / "e",
                                         backend="onnxruntime", progress=False)
    ref = AnimateDiffPipeline.from_pretrained(sd, motion_adapter=adapter)
    ref.set_progress_bar_config(disable=True)
    kw = dict(KW, prompt="a robot dancing", guidance_scale=3.0, output_type="np")
    got = pipe(**kw, generator=torch.Generator().manual_seed(0)).frames
    want = np.asarray(ref(**kw, generator=torch.Generator().manual_seed(0)).frames)
    assert np.abs(got - want).max() <= ATOL


def test_decode_chunks_stay_within_the_decoder_engine(t2v):
    """A decoder engine narrower than the request's chunk (TensorRT's default profile ends at
    8 frames) gets chunks it takes; frames are decoded one by one, so they do not change."""
    pipe, _, _ = t2v
    real = pipe.engines["vae_decoder"]
    sizes = []

    class Narrow:
        spec, max_dims = real.spec, {"N": 2}

        def __call__(self, **kw):
            sizes.append(kw["latents"].shape[0])
            return real(**kw)

    kw = dict(KW, prompt="a boat", generator=torch.Generator().manual_seed(1), output_type="np")
    want = pipe(**dict(kw, generator=torch.Generator().manual_seed(1))).frames
    pipe.engines["vae_decoder"] = Narrow()
    try:
        got = pipe(**kw).frames
    finally:
        pipe.engines["vae_decoder"] = real
    assert max(sizes) <= 2 and sum(sizes) == KW["num_frames"]
    assert np.abs(got - want).max() <= 1e-5
