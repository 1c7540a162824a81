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
    assert "fake build done" in stats["log"]


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
