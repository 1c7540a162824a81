"""Shared fixtures: a private vidrt cache, the tiny-svd preset, its engines and its
diffusers reference. Everything random-weight and small enough for a 2-core CPU."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import PIL.Image
import pytest
import torch

def _int8_kernels_saturate() -> bool:
    """Whether this CPU's integer GEMMs lack VNNI (and AMX): then ONNX Runtime and OpenVINO
    multiply u8 x s8 with VPMADDUBSW, whose int16 pair sums saturate (ONNX Runtime's
    quantization docs warn of it). Measured on an AVX2-only EPYC: one full-range int8 MatMul
    through ONNX Runtime's QDQ kernels is 4.2% (relative L2) off the exact dequantized math,
    1.8e-7 with its QDQ fusion off. INT8 error bounds are looser there, and say so."""
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:
        return False
    return not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


INT8_SATURATES = _int8_kernels_saturate()

GPU_REASON = "needs an NVIDIA GPU with CUDA and TensorRT (pip install -e .[gpu]); this machine has neither"


def _gpu_ready() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("tensorrt") is not None


def pytest_collection_modifyitems(config, items):
    if _gpu_ready():
        return
    skip = pytest.mark.skip(reason=GPU_REASON)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def vidrt_cache(tmp_path_factory):
    """Presets and default engine dirs go to a per-session folder, never ~/.cache."""
    path = tmp_path_factory.mktemp("vidrt-cache")
    old = os.environ.get("VIDRT_CACHE")
    os.environ["VIDRT_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("VIDRT_CACHE", None)
    else:
        os.environ["VIDRT_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_model(vidrt_cache):
    from vidrt.sources import resolve_model

    return resolve_model("tiny-svd", progress=False)


@pytest.fixture(scope="session")
def tiny_engine_dir(tmp_path_factory, tiny_model):
    """Engines for tiny-svd on ONNX Runtime, built once per session."""
    from vidrt.backends import get_backend
    from vidrt.build import prepare_engines

    path = tmp_path_factory.mktemp("engines") / "tiny"
    prepare_engines(tiny_model, path, get_backend("onnxruntime"), "fp32", progress=False)
    return path


@pytest.fixture(scope="session")
def ov_engine_dir(tiny_engine_dir, tmp_path_factory):
    """tiny-svd's engine folder with OpenVINO fp32 engines too (the ONNX export reused);
    tests add other OpenVINO variants beside them."""
    import shutil

    pytest.importorskip("openvino")
    from vidrt.backends import get_backend
    from vidrt.build import prepare_engines
    from vidrt.sources import resolve_model

    path = tmp_path_factory.mktemp("ov") / "engines"
    shutil.copytree(tiny_engine_dir, path)
    prepare_engines(resolve_model("tiny-svd", progress=False), path, get_backend("openvino"), "fp32", progress=False)
    return path


@pytest.fixture(scope="session")
def t2v_engine_dir(tmp_path_factory):
    """name -> engine folder of that text-to-video preset (ModelScope, AnimateDiff, Wan) on
    ONNX Runtime, built on first use."""
    from vidrt.backends import get_backend
    from vidrt.build import prepare_engines
    from vidrt.sources import resolve_model

    built = {}

    def engines(name: str):
        if name not in built:
            path = tmp_path_factory.mktemp("t2v") / name
            prepare_engines(resolve_model(name, progress=False), path, get_backend("onnxruntime"), "fp32", progress=False)
            built[name] = path
        return built[name]

    return engines


@pytest.fixture(scope="session")
def tiny_pipe(tiny_engine_dir):
    from vidrt import VideoPipeline

    return VideoPipeline.from_pretrained("tiny-svd", engine_dir=tiny_engine_dir, backend="onnxruntime", progress=False)


@pytest.fixture(scope="session")
def reference(tiny_model):
    """diffusers' StableVideoDiffusionPipeline on the same tiny components."""
    from vidrt.sources import load_torch_components

    pipe = load_torch_components(tiny_model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def fake_trt_build_calls(monkeypatch, onnx_path, plan_path, settings) -> list:
    """The calls a TensorRT build of ``onnx_path`` with ``settings`` makes, recorded by the
    fake tensorrt of tests/fake_trt (which rejects what TensorRT 10's API lacks)."""
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fake_trt"))
    sys.modules.pop("tensorrt", None)
    try:
        import tensorrt

        from vidrt.backends.tensorrt_build import build_plan

        tensorrt.CALLS.clear()
        build_plan(str(onnx_path), str(plan_path), settings, None)
        return list(tensorrt.CALLS)
    finally:
        sys.modules.pop("tensorrt", None)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server a test starts)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_image(h: int = 40, w: int = 56, seed: int = 0) -> PIL.Image.Image:
    rng = np.random.RandomState(seed)
    return PIL.Image.fromarray((rng.rand(h, w, 3) * 255).astype(np.uint8))


class ScriptedProbe:
    """A ceiling probe whose n-th call reads n TFLOP/s, and says when it was called."""

    def __init__(self, events):
        self.events, self.rates = events, []

    def __call__(self):
        self.events.append("probe")
        self.rates.append(float(len(self.rates) + 1))
        return self.rates[-1]


class StepRecorder:
    """A callback_on_step_end for vidrt and diffusers at once: records each side's (step,
    timestep, latents) and scales the latents at step ``scale_at`` (0.9), as a user's
    callback returning {"latents": ...} would."""

    def __init__(self, vidrt_pipe, scale_at: int = 1):
        self.vidrt_pipe, self.scale_at = vidrt_pipe, scale_at
        self.seen = {"vidrt": [], "diffusers": []}

    def __call__(self, pipe, step, timestep, kwargs):
        side = "vidrt" if pipe is self.vidrt_pipe else "diffusers"
        self.seen[side].append((step, float(timestep), kwargs["latents"].detach().clone()))
        return {"latents": kwargs["latents"] * 0.9} if step == self.scale_at else {}

    def check_sides_agree(self, tol: float = 1e-4) -> None:
        """Both sides called at the same steps and timesteps with the same latents (within
        ``tol`` of the latents' largest magnitude: SVD's start at sigma ~700; both sides are
        fp32 and differ in summation order only)."""
        ours, theirs = self.seen["vidrt"], self.seen["diffusers"]
        assert len(ours) == len(theirs) > self.scale_at
        for (i, t, a), (j, u, b) in zip(ours, theirs):
            assert i == j and abs(t - u) <= 1e-3 * max(1.0, abs(u)), (i, t, u)
            assert a.shape == b.shape and (a - b).abs().max() <= tol * max(1.0, float(b.abs().max())), i
