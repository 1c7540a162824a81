"""The TensorRT builder against a recording fake of the tensorrt module: which calls it
makes for each precision and profile set, the timing cache round trip, and the
child process that turns a failed or crashed build into one clear error."""

import json
import sys
from pathlib import Path

import pytest

from vidrt.errors import VidrtError
from vidrt.trt_plan import ShapeRequest, TrtOptions, builder_settings, derive_profiles

FAKE = Path(__file__).parent / "fake_trt"


@pytest.fixture
def fake_trt(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKE))
    sys.modules.pop("tensorrt", None)
    import tensorrt

    tensorrt.CALLS.clear()
    yield tensorrt
    sys.modules.pop("tensorrt", None)


def settings_for(tiny_model, component, precision, **options):
    spec = tiny_model.specs()[component]
    opts = TrtOptions(**options)
    profiles = derive_profiles(component, spec, opts.shapes, tiny_model.vae_scale_factor)
    return builder_settings(precision, opts, profiles)


def test_fp16_unet_build_calls(fake_trt, tiny_model, tmp_path):
    from vidrt.backends.tensorrt_build import build_plan

    req = ShapeRequest.from_flags(static="batch=1,frames=14,height=64,width=64")
    settings = settings_for(tiny_model, "unet", "fp16", shapes=req, workspace_mb=256, optimization_level=4)
    stats = build_plan(str(tmp_path / "model.onnx"), str(tmp_path / "model.plan"), settings, None)
    calls = fake_trt.CALLS
    assert ("builder.create_network", 0) in calls  # weakly typed: precision from flags
    assert ("config.set_flag", "FP16") in calls
    assert ("config.clear_flag", "TF32") in calls  # fp32 layers stay fp32 unless --tf32
    assert ("config.builder_optimization_level", 4) in calls
    assert ("config.set_memory_pool_limit", "WORKSPACE", 256 * 2**20) in calls
    shapes = [c for c in calls if c[0] == "profile.set_shape" and c[1] == "sample"]
    # Two profiles, guided (2 rows per video) then unguided, each a single static point.
    assert shapes == [
        ("profile.set_shape", "sample", [2, 14, 8, 32, 32], [2, 14, 8, 32, 32], [2, 14, 8, 32, 32]),
        ("profile.set_shape", "sample", [1, 14, 8, 32, 32], [1, 14, 8, 32, 32], [1, 14, 8, 32, 32]),
    ]
    assert calls.count(("config.add_optimization_profile",)) == 2
    assert calls[-1] == ("builder.build_serialized_network",)
    assert (tmp_path / "model.plan").read_bytes() == b"FAKEPLAN"
    assert "fake build done" in stats["log"] and "tactic 0x1234" not in stats["log"]  # VERBOSE filtered out


def test_int8_is_strongly_typed_and_timing_cache_round_trips(fake_trt, tiny_model, tmp_path):
    from vidrt.backends.tensorrt_build import build_plan

    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    settings = settings_for(tiny_model, "unet", "int8", timing_cache=str(cache))
    build_plan(str(tmp_path / "m.onnx"), str(tmp_path / "m.plan"), settings, str(cache))
    calls = fake_trt.CALLS
    assert ("builder.create_network", 1 << 1) in calls  # STRONGLY_TYPED: Q/DQ carries the precision
    assert not [c for c in calls if c[0] == "config.set_flag"]
    assert ("config.create_timing_cache", 3) in calls and ("config.set_timing_cache", False) in calls
    assert cache.read_bytes() == b"old+tuned"


def test_child_process_build_and_log(fake_trt, tiny_model, tmp_path, monkeypatch):
    from vidrt.backends.tensorrt_build import LOG_FILE, build_in_child

    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_TRT_LOG", str(log))
    settings = settings_for(tiny_model, "vae_decoder", "bf16")
    stats = build_in_child(tmp_path / "model.onnx", tmp_path, "model.plan", settings, None, "vae_decoder")
    assert stats["build_s"] >= 0 and stats["peak_rss_mb"] > 0
    assert (tmp_path / "model.plan").read_bytes() == b"FAKEPLAN"
    assert "fake build done" in (tmp_path / LOG_FILE).read_text()
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert ["config.set_flag", "BF16"] in calls


def test_failed_build_reports_tensorrt_words(fake_trt, tiny_model, tmp_path, monkeypatch):
    from vidrt.backends.tensorrt_build import LOG_FILE, build_in_child

    monkeypatch.setenv("FAKE_TRT_MODE", "fail")
    settings = settings_for(tiny_model, "unet", "fp16")
    with pytest.raises(VidrtError, match=r"TensorRT build of unet failed: .*out of memory while tuning tactic"):
        build_in_child(tmp_path / "model.onnx", tmp_path, "model.plan", settings, None, "unet")
    assert "RuntimeError" in (tmp_path / LOG_FILE).read_text()


def test_crashed_build_is_one_clear_error(fake_trt, tiny_model, tmp_path, monkeypatch):
    from vidrt.backends.tensorrt_build import build_in_child

    monkeypatch.setenv("FAKE_TRT_MODE", "crash")
    settings = settings_for(tiny_model, "unet", "fp16")
    with pytest.raises(VidrtError, match=r"crashed the builder process \(exit code 3\)"):
        build_in_child(tmp_path / "model.onnx", tmp_path, "model.plan", settings, None, "unet")
    assert not (tmp_path / "model.plan").exists()


def test_the_fake_refuses_what_tensorrt_10_lacks(fake_trt):
    with pytest.raises(AttributeError, match="not in TensorRT 10"):
        fake_trt.BuilderFlag.STRICT_TYPES  # removed in TensorRT 10
    with pytest.raises(AttributeError, match="not in TensorRT 10"):
        fake_trt.Builder(fake_trt.Logger()).create_builder_config().max_workspace_size = 1  # TensorRT 8's name
    with pytest.raises(AttributeError, match="not in TensorRT 10"):
        fake_trt.IExecutionContext  # noqa: B018 - not a module attribute in the allowed list
    api = json.loads((FAKE / "trt10_api.json").read_text())
    assert "TensorRT 10" in api["source"]


def test_build_timeout_and_interrupt_stop_the_child(fake_trt, tiny_model, tmp_path, monkeypatch):
    import signal
    import threading

    from vidrt.backends.tensorrt_build import build_in_child

    monkeypatch.setenv("FAKE_TRT_MODE", "hang")
    settings = settings_for(tiny_model, "vae_decoder", "fp16")
    with pytest.raises(VidrtError, match="did not finish in 2 s and was stopped"):
        build_in_child(tmp_path / "model.onnx", tmp_path, "model.plan", settings, None, "vae_decoder", timeout_s=2)
    # Ctrl-C in the parent stops the child too (no builder left running on the GPU).
    import multiprocessing

    # A shell's background job starts with SIGINT ignored; Ctrl-C's handler is what is tested.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(2.0, lambda: signal.raise_signal(signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            build_in_child(tmp_path / "model.onnx", tmp_path, "model.plan", settings, None, "vae_decoder",
                           timeout_s=120)  # a safety net: the interrupt should stop it in seconds
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]


def test_a_timing_cache_tensorrt_refuses_is_an_error(fake_trt, tiny_model, tmp_path, monkeypatch):
    from vidrt.backends.tensorrt_build import build_plan

    monkeypatch.setenv("FAKE_TRT_MODE", "bad-cache")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"from another gpu")
    settings = settings_for(tiny_model, "unet", "fp16", timing_cache=str(cache))
    with pytest.raises(RuntimeError, match="refused the timing cache"):
        build_plan(str(tmp_path / "m.onnx"), str(tmp_path / "m.plan"), settings, str(cache))


# -- runtime, on the fake's execution context (CPU tensors stand in for device memory) ----------


def fake_plan(device_memory=1024):
    return json.dumps({
        "tensors": {"latents": {"mode": "INPUT"}, "frames": {"mode": "OUTPUT", "shape_of": "latents", "set": {"1": 3}}},
        "device_memory": device_memory,
        "profiles": [{"latents": [[1, 4, 2, 2], [2, 4, 6, 6]]}, {"latents": [[3, 4, 2, 2], [8, 4, 8, 8]]}],
    }).encode()


def fake_engine(fake_trt, spec, plan, memory):
    from vidrt.backends.tensorrt import TrtEngine
    from vidrt.trt_plan import Profile

    engine = fake_trt.Runtime(fake_trt.Logger()).deserialize_cuda_engine(plan)
    profiles = [Profile({"latents": ((1, 4, 2, 2), (2, 4, 4, 4), (2, 4, 8, 8))}, "small", {"N": 2}),
                Profile({"latents": ((3, 4, 2, 2), (4, 4, 4, 4), (8, 4, 8, 8))}, "large", {"N": 8})]
    return TrtEngine(spec, engine, profiles, memory)


def decoder_spec():
    from vidrt.components import ComponentSpec, DimRange, TensorSpec

    return ComponentSpec(name="vae_decoder", inputs=(TensorSpec("latents", ("N", 4, "h", "w")),),
                         outputs=(TensorSpec("frames", ("N", 3, "h", "w")),),
                         ranges={"N": DimRange(1, 8), "h": DimRange(1, 8), "w": DimRange(1, 8)}, opt={})


def test_runtime_switches_profiles_and_checks_every_answer(fake_trt):
    import torch

    from vidrt.backends.tensorrt import SharedDeviceMemory

    memory = SharedDeviceMemory(allocate=lambda n: torch.empty(n, dtype=torch.uint8))
    eng = fake_engine(fake_trt, decoder_spec(), fake_plan(), memory)
    assert ("engine.create_execution_context", "ExecutionContextAllocationStrategy.USER_MANAGED") in fake_trt.CALLS
    assert eng.max_dims == {"N": 8}
    x, out = torch.zeros(2, 4, 4, 4), {"frames": torch.zeros(2, 3, 4, 4)}
    eng.execute({"latents": x}, out, stream=0)
    eng.execute({"latents": torch.zeros(5, 4, 4, 4)}, {"frames": torch.zeros(5, 3, 4, 4)}, stream=0)
    switches = [c for c in fake_trt.CALLS if c[0] == "context.set_optimization_profile_async"]
    assert switches == [("context.set_optimization_profile_async", 0), ("context.set_optimization_profile_async", 1)]
    with pytest.raises(VidrtError, match=r"output 'frames' will be \[2, 3, 4, 4\] but its buffer is \[2, 3, 4, 5\]"):
        eng.execute({"latents": x}, {"frames": torch.zeros(2, 3, 4, 5)}, stream=0)
    with pytest.raises(VidrtError, match=r"tensor 'latents' is torch.float16 but the engine's is torch.float32"):
        eng.execute({"latents": x.half()}, out, stream=0)
    # A shape vidrt's profile record admits but the plan does not (a stale manifest): TensorRT's answer counts.
    with pytest.raises(VidrtError, match=r"TensorRT refused shape \[2, 4, 7, 7\] for input 'latents'"):
        eng.execute({"latents": torch.zeros(2, 4, 7, 7)}, {"frames": torch.zeros(2, 3, 7, 7)}, stream=0)


def test_shared_memory_is_per_pipeline_and_never_moves_once_used(fake_trt):
    import torch

    from vidrt.backends.tensorrt import SharedDeviceMemory, TensorRTBackend

    assert TensorRTBackend.shared_state() is not TensorRTBackend.shared_state()  # one block per pipeline
    memory = SharedDeviceMemory(allocate=lambda n: torch.empty(n, dtype=torch.uint8))
    small = fake_engine(fake_trt, decoder_spec(), fake_plan(1024), memory)
    fake_engine(fake_trt, decoder_spec(), fake_plan(4096), memory)  # loaded before any run: the block grows
    small.execute({"latents": torch.zeros(2, 4, 4, 4)}, {"frames": torch.zeros(2, 3, 4, 4)}, stream=0)
    assert memory.size == 4096 and ("context.set_device_memory", 4096) in fake_trt.CALLS
    address = memory.ptr
    with pytest.raises(VidrtError, match="already in use"):  # captured graphs hold its address
        fake_engine(fake_trt, decoder_spec(), fake_plan(8192), memory)
    assert memory.ptr == address
