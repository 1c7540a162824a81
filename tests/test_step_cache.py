"""Step caching (vidrt.step_cache) against diffusers' own hooks, on every DiT family.

The reference is diffusers itself: the same pipeline folder with ``enable_cache`` and
diffusers' FirstBlockCacheConfig / MagCacheConfig (diffusers/hooks/first_block_cache.py,
diffusers/hooks/mag_cache.py); its decisions are read from the hooks' own state after
each first-block call (benchmarks/cache_hooks.py), so the comparison is decision for
decision. Frames: within 2e-3 max abs of diffusers-with-hook at fp32 (the issue's bar);
both sides are fp32 and differ in kernel summation order and the batched guidance
halves (observed < 1e-5).

CogVideoX's tiny preset has one block, where diffusers' hooks have no "rest" to skip
(apply_first_block_cache fails on it), so its tests use a two-block copy.
"""

import collections
import copy
import json
import re
import shutil

import numpy as np
import PIL.Image
import pytest
import torch

from vidrt.errors import VidrtError

ATOL = 2e-3
STEPS = 8
BASE = dict(prompt="a cat playing the piano", negative_prompt="blurry", num_frames=9, num_inference_steps=STEPS)
IMAGE = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8))
REQUEST = {
    "tiny-wan": dict(BASE, height=32, width=48, max_sequence_length=32),
    "tiny-wan22": dict(BASE, height=32, width=48, max_sequence_length=32),
    # Wan 2.2 TI2V-5B's image to video: a time embedding per token (frame 0's at timestep 0)
    "tiny-wan22-ti2v-i2v": dict(BASE, height=32, width=64, max_sequence_length=32, image=IMAGE),
    # Wan 2.1 I2V: the condition's channels, CLIP states beside the text (diffusers finds them
    # as all but the last 512 context tokens)
    "tiny-wan21-i2v": dict(BASE, height=32, width=48, max_sequence_length=512, image=IMAGE),
    "tiny-ltx": dict(BASE, height=32, width=64),
    "cog-2": dict(BASE, height=32, width=48, max_sequence_length=16),
}
GUIDED = {"tiny-wan": 5.0, "tiny-wan22": 5.0, "tiny-wan22-ti2v-i2v": 5.0, "tiny-wan21-i2v": 5.0, "tiny-ltx": 3.0, "cog-2": 6.0}
THRESHOLDS = {"first-block": (0.1, 0.5), "mag": (0.02, 0.2)}
# MagCache's per-step ratio table is an input, measured once per model (its calibration is
# tested apart): a fixed table here, near 1 as measured ones are, so both thresholds skip.
MAG_RATIOS = (1.0, 1.03, 1.01, 1.0, 0.995, 1.002, 0.99, 0.97)


@pytest.fixture(scope="session")
def cog_two_blocks(tmp_path_factory, vidrt_cache):
    """tiny-cogvideox with a second transformer block (random weights, seed 0)."""
    from diffusers import CogVideoXTransformer3DModel

    from vidrt.sources import resolve_model

    folder = tmp_path_factory.mktemp("cog2") / "cog-2"
    shutil.copytree(resolve_model("tiny-cogvideox", progress=False).folder, folder)
    config = json.loads((folder / "transformer" / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")} | {"num_layers": 2}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        CogVideoXTransformer3DModel(**config).eval().save_pretrained(folder / "transformer")
    return folder


def _source(name, cog_two_blocks):
    return str(cog_two_blocks) if name == "cog-2" else name


@pytest.fixture(scope="module", params=list(REQUEST))
def family(request, cog_two_blocks, tmp_path_factory):
    """(name, vidrt pipeline with a first-block cache on ONNX Runtime, diffusers' pipeline)."""
    from vidrt import VideoPipeline
    from vidrt.sources import load_torch_components, resolve_model

    source = _source(request.param, cog_two_blocks)
    engines = tmp_path_factory.mktemp("cache-engines") / request.param
    pipe = VideoPipeline.from_pretrained(source, engine_dir=engines, backend="onnxruntime", progress=False,
                                         cache="first-block")
    ref = load_torch_components(resolve_model(source, progress=False))
    ref.set_progress_bar_config(disable=True)
    return request.param, pipe, ref


@pytest.fixture(scope="module")
def mag_pipe(family, cog_two_blocks):
    """The family's pipeline loaded for MagCache: its transformer cut before the first
    block (vidrt.split HEADS["embeddings"]; the out engine is the first-block cut's)."""
    from vidrt import CacheConfig, VideoPipeline

    name, pipe, _ = family
    return VideoPipeline.from_pretrained(_source(name, cog_two_blocks), engine_dir=pipe.engine_dir,
                                         backend="onnxruntime", progress=False,
                                         cache=CacheConfig("mag", mag_ratios=MAG_RATIOS))


def run_both(pipe, ref, cache, kw):
    from vidrt.benchmarks import cache_hooks

    pipe.set_cache(cache)
    log = cache_hooks.enable(ref, cache, kw["num_inference_steps"])
    try:
        got = pipe(**kw, generator=torch.Generator().manual_seed(0), output_type="np")
        want = np.asarray(ref(**kw, generator=torch.Generator().manual_seed(0), output_type="np").frames)
    finally:
        cache_hooks.disable(ref, log)
    return got, want, log


def calibrated_ratios(ref, kw, capsys) -> list[list[float]]:
    """diffusers' MagCache calibration of ``ref`` for this request: the ratio lists it
    prints, one per cache context in the order they finish (Wan: "cond", "uncond")."""
    from diffusers.hooks import MagCacheConfig

    ref.transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=kw["num_inference_steps"]))
    try:
        capsys.readouterr()
        ref(**kw, generator=torch.Generator().manual_seed(0), output_type="np")
        printed = re.findall(r"\[([0-9., e+-]+)\]", capsys.readouterr().out)
    finally:
        ref.transformer.disable_cache()
    return [[float(x) for x in p.split(",")] for p in printed]


@pytest.mark.parametrize("method", ["first-block", "mag"])
@pytest.mark.parametrize("guided", [False, True])
def test_decisions_and_frames_match_diffusers(family, mag_pipe, method, guided, capsys):
    from vidrt import CacheConfig

    name, pipe, ref = family
    pipe = mag_pipe if method == "mag" else pipe
    kw = dict(REQUEST[name], guidance_scale=GUIDED[name] if guided else 1.0)
    ratios = MAG_RATIOS if method == "mag" else None
    skipped = 0
    for threshold in THRESHOLDS[method]:
        cache = CacheConfig(method, threshold, mag_ratios=ratios)
        got, want, log = run_both(pipe, ref, cache, kw)
        expected = log.summary()
        assert set(got.timings.cache) == set(expected), (got.timings.cache, expected)
        for denoiser, counts in got.timings.cache.items():
            assert counts["decisions"] == expected[denoiser]["decisions"], (threshold, denoiser)
            skipped += counts["skipped"]
        assert np.abs(got.frames - want).max() <= ATOL
        assert want.std() > 0.01
    assert skipped > 0  # the cached path ran, not only full evaluations


def test_mag_calibration_matches_diffusers(family, mag_pipe, capsys):
    """vidrt's calibration run measures the ratios diffusers' calibration prints."""
    from vidrt import CacheConfig

    name, _, ref = family
    pipe = mag_pipe
    if name == "tiny-wan22":
        pytest.skip("diffusers' calibration of one Wan 2.2 expert never completes (it sees fewer calls than steps)")
    kw = dict(REQUEST[name], guidance_scale=GUIDED[name])
    want = calibrated_ratios(ref, kw, capsys)
    pipe.set_cache(CacheConfig("mag", mag_ratios="calibrate"))
    out = pipe(**kw, generator=torch.Generator().manual_seed(0), output_type="np")
    measured = pipe.engines["transformer"].measured_ratios
    contexts = ["cond", "uncond"] if name.startswith("tiny-wan") else ["cond_uncond"]
    assert out.timings.cache["transformer"]["skipped"] == 0
    assert len(want) == len(contexts) and all(len(w) == STEPS for w in want)
    for context, ratios in zip(contexts, want):
        np.testing.assert_allclose(measured[context], ratios, atol=1e-4)


def test_threshold_zero_runs_every_evaluation_and_equals_the_uncached_transformer(family, t2v_engine_dir):
    """At threshold 0 nothing is skipped and the three engines give the one-engine
    transformer's frames (the split itself changes nothing)."""
    from vidrt import VideoPipeline

    name, pipe, _ = family
    if name == "cog-2":
        pytest.skip("the two-block CogVideoX copy has no uncached engines in the session")
    kw = dict(REQUEST[name], guidance_scale=GUIDED[name])
    pipe.set_cache("first-block", 0.0)
    got = pipe(**kw, generator=torch.Generator().manual_seed(0), output_type="np")
    whole = VideoPipeline.from_pretrained(name, engine_dir=t2v_engine_dir(name), backend="onnxruntime", progress=False)
    want = whole(**kw, generator=torch.Generator().manual_seed(0), output_type="np").frames
    counts = got.timings.cache
    assert all(c["skipped"] == 0 and c["full"] > 0 for c in counts.values())
    assert np.abs(got.frames - want).max() <= 1e-5


def test_mag_runs_the_same_on_either_cut(family, mag_pipe):
    """A pipeline loaded for first-block switched to mag (its head holds the first block)
    decides and denoises as one loaded for mag (embeddings-only head); the mag one cannot
    switch to first-block, which needs the first block's output."""
    from vidrt import CacheConfig

    name, pipe, _ = family
    if name != "tiny-ltx":
        pytest.skip("one family is enough")
    assert {"transformer_embed", "transformer_blocks"} <= set(mag_pipe.model.specs())
    kw = dict(REQUEST[name], guidance_scale=GUIDED[name])
    cache = CacheConfig("mag", 0.2, mag_ratios=MAG_RATIOS)
    pipe.set_cache(cache)
    mag_pipe.set_cache(cache)
    want = pipe(**kw, generator=torch.Generator().manual_seed(0), output_type="np")
    got = mag_pipe(**kw, generator=torch.Generator().manual_seed(0), output_type="np")
    assert got.timings.cache == want.timings.cache and got.timings.cache["transformer"]["skipped"] > 0
    assert np.abs(got.frames - want.frames).max() <= 1e-5
    with pytest.raises(VidrtError, match="loaded for cache='mag'.*load it with cache='first-block'"):
        mag_pipe.set_cache("first-block", 0.1)


def test_wan22_experts_keep_their_own_state(family):
    """Each Wan 2.2 expert starts its own cache when it takes over (as diffusers' per-model
    hooks do): the low-noise expert's first step always runs."""
    name, pipe, _ = family
    if name != "tiny-wan22":
        pytest.skip("Wan 2.2 only")
    pipe.set_cache("first-block", 1.0)  # skip everything that may be skipped
    out = pipe(**dict(REQUEST[name], guidance_scale=5.0), generator=torch.Generator().manual_seed(0), output_type="np")
    for expert in ("transformer", "transformer_2"):
        decisions = out.timings.cache[expert]["decisions"]
        assert decisions[0] == {"uncond": True, "cond": True}
        assert all(not any(d.values()) for d in decisions[1:])


@pytest.mark.parametrize("kwargs,message", [
    (dict(model="tiny-t2v", cache="first-block"), "step caching is for the diffusion transformers"),
    (dict(model="tiny-svd", cache="first-block"), "denoiser is a U-Net"),
    (dict(model="tiny-wan", cache="first-block", cache_threshold=1.5), r"cache_threshold=1.5: must be a number in 0..1"),
    (dict(model="tiny-wan", cache="first-block", cache_threshold=-0.1), "must be a number in 0..1"),
    (dict(model="tiny-wan", cache="taylorseer"), "cache='taylorseer': choose one of first-block, mag"),
    (dict(model="tiny-wan", cache="mag"), "cache='mag' needs mag_ratios"),
    (dict(model="tiny-wan", cache_threshold=0.1), "cache_threshold needs a cache method"),
])
def test_bad_cache_options_fail_in_one_line(kwargs, message):
    from vidrt import VideoPipeline

    model = kwargs.pop("model")
    with pytest.raises(VidrtError, match=message) as e:
        VideoPipeline.from_pretrained(model, backend="onnxruntime", progress=False, build=False, **kwargs)
    assert "\n" not in str(e.value)


def test_int8_stages_quantize_as_the_whole_transformer(family, tmp_path):
    """--precision int8 with a cache quantizes each stage, calibrated on what the whole
    transformer's calibration brings it through the fp32 stages before it, so the scales
    are the whole transformer's: at threshold 0 (nothing skipped) the int8 stages give the
    int8 transformer's frames. The head and body carry Q/DQ; the out stage's projection
    stays float, as in the whole transformer."""
    from vidrt import VideoPipeline
    from vidrt.backends.onnxruntime import OnnxRuntimeBackend
    from vidrt.layout import engine_precisions

    name, pipe, _ = family
    if name != "tiny-wan":
        pytest.skip("one family is enough")
    engines = tmp_path / "engines"
    shutil.copytree(pipe.engine_dir, engines)  # the fp32 exports reused
    kw = dict(REQUEST[name], guidance_scale=GUIDED[name])
    whole = VideoPipeline.from_pretrained(name, engine_dir=engines, backend="onnxruntime", precision="int8",
                                          progress=False)
    cut = VideoPipeline.from_pretrained(name, engine_dir=engines, backend="onnxruntime", precision="int8",
                                        progress=False, cache="first-block", cache_threshold=0.0)
    assert {c: p for c, p in engine_precisions(cut.model, OnnxRuntimeBackend, "int8", None).items()
            if c.startswith("transformer")} == {"transformer_head": "int8", "transformer_body": "int8",
                                                "transformer_out": "int8"}
    for stage in ("head", "body"):
        report = json.loads((engines / f"transformer_{stage}" / "onnx-int8" / "export.json").read_text())
        assert report["quantization"]["error_vs_fp32"]["qdq"]["QuantizeLinear"] > 0
    want = whole(**kw, generator=torch.Generator().manual_seed(0), output_type="np")
    got = cut(**kw, generator=torch.Generator().manual_seed(0), output_type="np")
    assert got.timings.cache["transformer"]["skipped"] == 0
    assert np.abs(got.frames - want.frames).max() <= 1e-4


def test_tensorrt_fp8_stages_are_fp16_inside(tmp_path):
    """TensorRT's Q/DQ graphs of the stages (FP8, the rest fp16, fp32 at the interface; the
    head passes on several tensors) run on ONNX Runtime's CPU provider within 10% relative
    L2 of fp32, as the whole transformer's do (tests/test_wan.py)."""
    import dataclasses

    import onnx

    from vidrt.export.quantize import QuantConfig, export_quantized
    from vidrt.sources import resolve_model

    model = dataclasses.replace(resolve_model("tiny-wan", progress=False), split_denoisers="first-block")
    for stage in ("head", "body"):
        result, report = export_quantized(model, f"transformer_{stage}", QuantConfig(format="fp8"), tmp_path / stage,
                                          float_type="fp16")
        assert report["rel_l2"] <= 0.1 and report["qdq"]["zero_point_types"] == ["FLOAT8E4M3FN"], (stage, report)
        graph = onnx.load(str(result.onnx_path), load_external_data=False).graph
        assert all(t.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for t in [*graph.input, *graph.output])


def test_set_cache_needs_a_cached_pipeline(tiny_pipe):
    with pytest.raises(VidrtError, match="loaded without a step cache"):
        tiny_pipe.set_cache("first-block", 0.1)


@pytest.mark.parametrize("argv,message", [
    (["--cache", "first-block", "--cache-threshold", "2"], "cache_threshold=2.0: must be a number in 0..1"),
    (["--cache", "mag", "--mag-ratios", "1,x"], "--mag-ratios 1,x: write numbers"),
    (["--mag-ratios", "1,1"], "--mag-ratios goes with --cache mag"),
    (["--model", "tiny-t2v", "--cache", "first-block"], "denoiser is a U-Net"),
])
def test_cli_refuses_bad_cache_flags(argv, message, capsys):
    from vidrt.cli import main

    code = main(["generate", "--model", "tiny-wan", "--prompt", "a cat", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and re.search(message, err) and len(err.splitlines()) == 1, err


def test_serve_refuses_batching_with_a_cache():
    from vidrt.server import ServeConfig

    with pytest.raises(VidrtError, match="--max-batch merges jobs"):
        ServeConfig(model="tiny-wan", cache="first-block", max_batch=2).limits()


def test_split_profiles_agree_on_tokens():
    """TensorRT profiles of the three engines (GPU-free): the body's token range is the
    head's latent grid in tokens at every corner, for guided and unguided batches."""
    import dataclasses

    from vidrt.sources import resolve_model
    from vidrt.trt_plan import ShapeRequest, derive_profiles

    m = dataclasses.replace(resolve_model("tiny-wan", progress=False), split_denoisers="first-block")
    specs = m.specs()
    request = ShapeRequest.from_flags("batch=1,frames=5,height=16,width=16", "batch=1,frames=9,height=32,width=48",
                                      "batch=2,frames=17,height=64,width=64", None)
    profiles = {c: derive_profiles(c, specs[c], request, m.vae_scale_factor, True, m.temporal_factor)
                for c in ("transformer_head", "transformer_body", "transformer_out")}
    for head, body, out in zip(*profiles.values()):
        assert head.label == body.label == out.label
        for corner in range(3):
            b, _, f, h, w = head.shapes["sample"][corner]
            tokens = f * (h // 2) * (w // 2)
            assert body.shapes["hidden_first"][corner] == (b, tokens, 24)
            assert body.shapes["rotary_cos"][corner] == (1, tokens, 1, 12)
            assert out.shapes["hidden_last"][corner] == (b, tokens, 24)
    assert [p.label for p in profiles["transformer_body"]] == ["cfg", "no-cfg"]


def test_cache_survives_on_demand_stages(family):
    """--on-demand transformer: the three stage engines load once per request and free after."""
    from vidrt import VideoPipeline
    from vidrt.backends.base import OnDemandEngine

    name, pipe, _ = family
    if name != "tiny-wan":
        pytest.skip("one family is enough")
    lazy = VideoPipeline.from_pretrained(name, engine_dir=pipe.engine_dir, backend="onnxruntime", progress=False,
                                         cache="first-block", cache_threshold=0.1, on_demand=("transformer",))
    denoiser = lazy.engines["transformer"]
    assert all(isinstance(e, OnDemandEngine) for e in (denoiser.head, denoiser.body, denoiser.out))
    kw = dict(REQUEST[name], guidance_scale=5.0)
    pipe.set_cache("first-block", 0.1)
    want = pipe(**kw, generator=torch.Generator().manual_seed(0), output_type="np")
    got = lazy(**kw, generator=torch.Generator().manual_seed(0), output_type="np")
    assert got.timings.cache == want.timings.cache
    np.testing.assert_array_equal(got.frames, want.frames)


def test_tensorrt_builds_the_three_engines_from_one_set_of_profiles(family, tmp_path, monkeypatch):
    """Each stage's ONNX goes through the (fake, API-checked) TensorRT builder with the
    profiles vidrt derives for it: every input of every stage gets a shape per profile, the
    token counts of the three agree at each corner, both guidance profiles present."""
    from conftest import fake_trt_build_calls

    from vidrt.trt_plan import ShapeRequest, TrtOptions, builder_settings, derive_profiles

    name, pipe, _ = family
    if name != "tiny-wan":
        pytest.skip("one family is enough")
    model, specs = pipe.model, pipe.model.specs()
    shapes = {}
    for stage in ("head", "body", "out"):
        component = f"transformer_{stage}"
        profiles = derive_profiles(component, specs[component], ShapeRequest(), model.vae_scale_factor,
                                   temporal=model.temporal_factor)
        settings = builder_settings("fp16", TrtOptions(), profiles, model.fp16_fp32_layers)
        onnx = pipe.engine_dir / component / "onnx" / "model.onnx"
        calls = fake_trt_build_calls(monkeypatch, onnx, tmp_path / f"{stage}.plan", settings)
        shapes[stage] = [c[1:] for c in calls if c[0] == "profile.set_shape"]
        assert {s[0] for s in shapes[stage]} == set(specs[component].input_names)
        assert len(shapes[stage]) == 2 * len(specs[component].inputs)  # cfg and no-cfg profiles
    head = [s for s in shapes["head"] if s[0] == "sample"]
    body = [s for s in shapes["body"] if s[0] == "hidden_first"]
    out = [s for s in shapes["out"] if s[0] == "hidden_last"]
    for h, b, o in zip(head, body, out):
        for corner in (1, 2, 3):
            batch, _, f, lh, lw = h[corner]
            assert b[corner][:2] == o[corner][:2] == [batch, f * (lh // 2) * (lw // 2)]


def test_build_engines_with_cache_builds_the_stages(family, capsys):
    """build-engines --cache builds the three stage engines (reused here: the fixture built
    them), and generate --cache reports the evaluations it ran and skipped."""
    from vidrt.cli import main

    name, pipe, _ = family
    if name != "tiny-wan":
        pytest.skip("one family is enough")
    engines = str(pipe.engine_dir)
    assert main(["build-engines", "--model", name, "--backend", "onnxruntime", "--engine-dir", engines,
                 "--cache", "first-block"]) == 0
    out = capsys.readouterr().out
    assert all(f"transformer_{s}" in out for s in ("head", "body", "out")) and "reused" in out
    assert main(["generate", "--model", name, "--backend", "onnxruntime", "--engine-dir", engines, "--prompt", "a cat",
                 "--height", "32", "--width", "32", "--num-frames", "5", "--steps", "6", "--cache", "first-block",
                 "--cache-threshold", "0.5", "--output", str(pipe.engine_dir.parent / "cat.gif")]) == 0
    assert re.search(r"transformer \(first-block cache\): \d+ evaluations run, \d+ skipped", capsys.readouterr().out)


def test_openvino_engines_decide_as_diffusers(family):
    """The same on OpenVINO (the CPU backend the benchmarks use), from the same ONNX exports."""
    from vidrt import CacheConfig, VideoPipeline

    name, pipe, ref = family
    if name not in ("tiny-wan", "tiny-ltx"):
        pytest.skip("one per-half and one joint family")
    ov = VideoPipeline.from_pretrained(_source(name, None), engine_dir=pipe.engine_dir, backend="openvino",
                                       progress=False, cache="first-block")
    kw = dict(REQUEST[name], guidance_scale=GUIDED[name])
    got, want, log = run_both(ov, ref, CacheConfig("first-block", 0.5), kw)
    assert got.timings.cache["transformer"]["decisions"] == log.summary()["transformer"]["decisions"]
    assert got.timings.cache["transformer"]["skipped"] > 0
    assert np.abs(got.frames - want).max() <= ATOL


def test_saved_per_skip_reads_the_two_runs_right():
    from vidrt.benchmarks.cache_sweep import saved_per_skip, step_medians

    # A full evaluation costs 30 s, a skipped one 1 s, 16 evaluations a request: the first
    # threshold's run skips 2 (MagCache can skip at 0), the other 8.
    t0, t = 14 * 30 + 2 * 1, 8 * 30 + 8 * 1
    assert saved_per_skip(t0, 14, 2, t, 8) == pytest.approx(29 / 30)
    assert saved_per_skip(16 * 30, 16, 0, t, 8) == pytest.approx(29 / 30)
    assert saved_per_skip(t0, 14, 2, t0, 2) is None
    runs = [{"unet_steps": [30.0, 1.0, 29.0, 12.0], "cache": {"transformer": {"decisions": [
        {"cond": True, "uncond": True}, {"cond": False, "uncond": False}, {"cond": True, "uncond": True},
        {"cond": True, "uncond": False}]}}}]
    assert step_medians(runs) == (29.5, 1.0)  # the half-skipped step counts as neither


def test_cache_sweep_runs_both_sides_with_the_same_decisions(family, tmp_path):
    """run-bench --cache-sweep: vidrt and diffusers-with-hook at each threshold in one run."""
    from vidrt.cli import main

    name, pipe, _ = family
    if name != "tiny-wan":
        pytest.skip("one family is enough")
    out = tmp_path / "sweep.json"
    assert main(["run-bench", "--model", name, "--backend", "onnxruntime", "--engine-dir", str(pipe.engine_dir),
                 "--height", "32", "--width", "32", "--num-frames", "5", "--steps", str(STEPS), "--cache", "mag",
                 "--mag-ratios", ",".join(map(str, MAG_RATIOS)), "--cache-sweep", "0,0.2", "--runs", "1",
                 "--warmup", "0", "--output", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["threshold"] for r in rows] == [0, 0.2]
    for row in rows:
        assert row["same_decisions"] and row["parity"]["max_abs_err"] < ATOL
        assert (row["engine"]["full"], row["engine"]["skipped"]) == (row["baseline"]["full"], row["baseline"]["skipped"])
        assert row["engine"]["full"] + row["engine"]["skipped"] == 2 * STEPS  # Wan: a call per guidance half
    assert rows[1]["engine"]["skipped"] > rows[0]["engine"]["skipped"]
    assert rows[1]["engine"]["saved_per_skip_of_full"] is not None


class _DeviceOnly(torch.overrides.TorchFunctionMode):
    """Fails a tensor read on the host (what would wait for the GPU, or be baked into a
    CUDA graph at capture), except inside engine calls (a TensorRT engine enqueues its
    work; ONNX Runtime here reads host memory as any CPU engine does)."""

    READS = {"item", "__float__", "__bool__", "__int__", "__index__", "tolist", "numpy"}

    def __init__(self):
        super().__init__()
        self.paused = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if not self.paused and getattr(func, "__name__", "") in self.READS:
            raise AssertionError(f"a captured step read a tensor on the host ({func.__name__})")
        return func(*args, **(kwargs or {}))


class _Graphs:
    """Stands in for CUDA graph capture on the CPU, as strict as capture where it can be:
    capturing runs nothing; a replay runs the step with host tensor reads refused and
    fails if it changed the cache's host state (a real replay runs no Python)."""

    def __init__(self, denoiser):
        self.denoiser, self.mode, self.replays = denoiser, _DeviceOnly(), collections.Counter()
        for engine in (denoiser.head, denoiser.body, denoiser.out):
            engine.supports_cuda_graphs = True
            run = engine._run

            def paused(feeds, outputs, run=run):
                self.mode.paused = True
                try:
                    run(feeds, outputs)
                finally:
                    self.mode.paused = False

            engine._run = paused

    def host_state(self):
        d = self.denoiser
        return len(d.calls), [{k: (float(v) if isinstance(v, torch.Tensor) else copy.copy(v)) for k, v in vars(s).items()}
                              for s in d.states]

    def capture(self, step):
        graphs = self

        class Graph:
            def replay(self):
                before = graphs.host_state()
                with graphs.mode:
                    step()
                assert graphs.host_state() == before, "a captured step changed the cache's host state"
                graphs.replays[step.func.__name__] += 1

        return Graph()

    def restore(self):
        for engine in (self.denoiser.head, self.denoiser.body, self.denoiser.out):
            del engine.supports_cuda_graphs, engine._run


@pytest.mark.parametrize("method", ["first-block", "mag"])
def test_a_cached_step_replays_as_two_graphs_around_the_decision(family, method, cog_two_blocks):
    """With CUDA graphs the loop replays the head phase, decides on the host, and replays
    the rest for that decision (vidrt.loop). Here capture is stood in for on the CPU
    (``_Graphs``): the replayed steps read no tensor on the host and leave the decision
    state alone, and give the eager steps' decisions and frames exactly, request after
    request (buffers and graphs are reused; a new request starts its cache afresh)."""
    from vidrt import CacheConfig, VideoPipeline
    from vidrt.loop import LoopState

    name, _, _ = family
    if name not in ("tiny-wan", "tiny-ltx"):
        pytest.skip("one per-half and one joint family")
    ratios = MAG_RATIOS if method == "mag" else None
    # thresholds that mix full and skipped steps after the first (Wan: one half skipped too)
    threshold = {"tiny-wan": 0.3, "tiny-ltx": 0.1}[name] if method == "first-block" else 0.2
    cache = CacheConfig(method, threshold, mag_ratios=ratios)
    # flow-euler: Wan's default UniPC is stepped by diffusers' scheduler, which no graph can hold
    pipe = VideoPipeline.from_pretrained(name, engine_dir=family[1].engine_dir, backend="onnxruntime", progress=False,
                                         cache=cache, sampler="flow-euler")
    kw = dict(REQUEST[name], guidance_scale=GUIDED[name])
    eager = [pipe(**kw, generator=torch.Generator().manual_seed(s), output_type="np") for s in (0, 1)]
    graphs = _Graphs(pipe.engines["transformer"])
    pipe.loop_state = LoopState(capture=graphs.capture)
    try:
        replayed = [pipe(**kw, generator=torch.Generator().manual_seed(s), output_type="np") for s in (0, 1)]
    finally:
        graphs.restore()
    for want, got in zip(eager, replayed):
        assert got.timings.cache == want.timings.cache
        np.testing.assert_array_equal(got.frames, want.frames)
    counts = eager[0].timings.cache["transformer"]
    assert counts["skipped"] > 0 and counts["full"] > 0
    # Each request's first step runs eagerly; after it, the head graph and the rest graph of
    # the step's decision pattern, each run eagerly the first time it is met, then replayed.
    later = [tuple(d.values()) for r in eager for d in r.timings.cache["transformer"]["decisions"][1:]]
    patterns = set(later)
    assert len(patterns) > 1
    assert graphs.replays == {"_step_head": len(later) - 1, "_step_rest": len(later) - len(patterns)}
    assert len(pipe.loop_state.graphs) == 1 + len([p for p in patterns if later.count(p) > 1])
