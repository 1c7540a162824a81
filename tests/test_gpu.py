"""The GPU suite: TensorRT engines on a real NVIDIA GPU. Skipped (with the reason)
on machines without CUDA and TensorRT; run it there with

    python -m pytest -m gpu -q tests/test_gpu.py

Tolerances, against ONNX Runtime fp32 on the same ONNX: fp32 engines 1e-2 relative
(TensorRT may use TF32 tensor cores, 10-bit mantissa, for fp32 builds); fp16
engines 5e-2 relative (half-precision storage and accumulation through a UNet).
"""

import json

import numpy as np
import pytest
import torch

from conftest import make_image

pytestmark = pytest.mark.gpu

COMPONENTS = ["image_encoder", "vae_encoder", "unet", "vae_decoder"]
RTOL = {"fp32": 1e-2, "fp16": 5e-2}


@pytest.fixture(scope="module")
def trt_dirs(tiny_engine_dir, tmp_path_factory):
    import shutil

    path = tmp_path_factory.mktemp("trt") / "engines"
    shutil.copytree(tiny_engine_dir, path)  # reuse the ONNX export
    return path


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_every_engine_matches_onnxruntime(trt_dirs, tiny_model, tiny_pipe, precision):
    from vidrt.backends import get_backend
    from vidrt.build import load_engines, prepare_engines
    from vidrt.export.graphs import check_point, sample_inputs

    trt = get_backend("tensorrt")
    results = prepare_engines(tiny_model, trt_dirs, trt, precision, progress=False)
    manifest = json.loads((results["unet"].artifact_dir / "manifest.json").read_text())
    assert manifest["tensorrt_version"] and manifest["device"]["compute_capability"]
    engines = load_engines(trt_dirs, trt, precision, tiny_model)
    for c in COMPONENTS:
        spec = tiny_model.specs()[c]
        feeds = sample_inputs(spec, check_point(spec), seed=3)
        want = tiny_pipe.engines[c](**feeds)[spec.output_names[0]].clone()
        got = engines[c](**{k: v.cuda() for k, v in feeds.items()})[spec.output_names[0]].cpu()
        err = (got - want).abs().max().item()
        assert err <= RTOL[precision] * max(1.0, want.abs().max().item()), (c, err)


def test_cuda_graphs_give_the_same_frames(trt_dirs):
    from vidrt import VideoPipeline

    kw = dict(height=32, width=32, num_frames=3, num_inference_steps=4, output_type="np")
    eager = VideoPipeline.from_pretrained("tiny-svd", engine_dir=trt_dirs, backend="tensorrt", precision="fp32",
                                          cuda_graphs=False, progress=False)
    graphed = VideoPipeline.from_pretrained("tiny-svd", engine_dir=trt_dirs, backend="tensorrt", precision="fp32",
                                            cuda_graphs=True, progress=False)
    a = eager(make_image(), generator=torch.Generator().manual_seed(0), **kw).frames
    b = graphed(make_image(), generator=torch.Generator().manual_seed(0), **kw).frames
    assert len(graphed.loop_state.graphs) == 1
    assert np.abs(a - b).max() <= 1e-5


@pytest.mark.parametrize("sampler", ["euler", "animatelcm"])
def test_pipeline_matches_diffusers_on_gpu(trt_dirs, reference, sampler):
    from vidrt import VideoPipeline

    pipe = VideoPipeline.from_pretrained("tiny-svd", engine_dir=trt_dirs, backend="tensorrt", precision="fp32",
                                         sampler=sampler, progress=False)
    from test_pipeline_parity import run_reference

    kw = dict(height=32, width=48, num_frames=3, num_inference_steps=3)
    ours = pipe(make_image(), generator=torch.Generator().manual_seed(1), output_type="np", **kw).frames
    ref = run_reference(reference, sampler, make_image(), 1, **kw)
    assert np.abs(ours - ref).max() <= 1e-2


def test_run_bench_on_gpu(trt_dirs, tmp_path):
    from vidrt.cli import main

    out = tmp_path / "bench.json"
    assert main(["run-bench", "--model", "tiny-svd", "--backend", "tensorrt", "--engine-dir", str(trt_dirs),
                 "--height", "32", "--width", "32", "--num-frames", "3", "--steps", "2", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["engine"]["backend"] == "tensorrt" and result["environment"]["gpu"]


@pytest.mark.parametrize("method", ["first-block", "mag"])
def test_a_step_cache_replays_as_cuda_graphs(tmp_path, method):
    """A step-cached transformer with CUDA graphs (its head, the host's decision, the rest
    for that decision) decides and denoises as without them."""
    from vidrt import CacheConfig, VideoPipeline

    ratios = (1.0, 1.03, 1.01, 1.0, 0.995, 1.002, 0.99, 0.97) if method == "mag" else None
    cache = CacheConfig(method, 0.1 if method == "first-block" else 0.2, mag_ratios=ratios)
    kw = dict(prompt="a cat", negative_prompt="blurry", height=32, width=64, num_frames=9, num_inference_steps=8,
              guidance_scale=3.0, output_type="np")
    runs = {}
    for graphs in (False, True):
        pipe = VideoPipeline.from_pretrained("tiny-ltx", engine_dir=tmp_path, backend="tensorrt", precision="fp32",
                                             cache=cache, cuda_graphs=graphs, progress=False)
        runs[graphs] = [pipe(**kw, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    assert len(pipe.loop_state.graphs) >= 2  # the head's and at least one rest's
    for eager, graphed in zip(runs[False], runs[True]):
        assert graphed.timings.cache == eager.timings.cache
        assert np.abs(graphed.frames - eager.frames).max() <= 1e-5
