"""TensorRT planning without a GPU: profiles, options and keys, plan compatibility,
buffer sizing and the CUDA-graph cache."""

import pytest

from vidrt.cache import BoundedCache as GraphCache
from vidrt.errors import VidrtError
from vidrt.trt_plan import (
    ShapeRequest,
    TrtOptions,
    builder_settings,
    check_plan_compatible,
    derive_profiles,
    select_profile,
    shared_device_memory,
    tensor_bytes,
)


@pytest.fixture(scope="module")
def svd_xt(tmp_path_factory):
    """The real svd-xt configs (no weights needed for planning)."""

    from vidrt.families.svd.presets import PRESETS, SVD_SCHEDULER
    from vidrt.families.svd.model import SvdModel

    cfg = PRESETS["svd-xt"]
    return SvdModel(
        folder=tmp_path_factory.mktemp("svdxt"), unet=cfg["unet"], vae=cfg["vae"], image_encoder=cfg["image_encoder"],
        feature_extractor={"image_mean": [0.5] * 3, "image_std": [0.5] * 3}, scheduler=SVD_SCHEDULER, preset=None,
    )


def test_unet_gets_cfg_and_no_cfg_profiles(svd_xt):
    req = ShapeRequest.from_flags(min="batch=1,frames=14,height=576,width=1024",
                                  opt="batch=1,frames=25,height=576,width=1024",
                                  max="batch=2,frames=25,height=576,width=1024")
    cfg, plain = derive_profiles("unet", svd_xt.specs()["unet"], req, svd_xt.vae_scale_factor)
    assert cfg.label == "cfg" and plain.label == "no-cfg"
    assert cfg.shapes["sample"] == ((2, 14, 8, 72, 128), (2, 25, 8, 72, 128), (4, 25, 8, 72, 128))
    assert plain.shapes["sample"] == ((1, 14, 8, 72, 128), (1, 25, 8, 72, 128), (2, 25, 8, 72, 128))
    assert cfg.shapes["timestep"] == ((1,), (1,), (1,))
    assert cfg.shapes["encoder_hidden_states"][2] == (4, 1, 1024)
    # A guided request (batch 2) uses profile 0, an unguided one profile 1.
    shapes = {"sample": (2, 20, 8, 72, 128), "timestep": (1,), "encoder_hidden_states": (2, 1, 1024), "added_time_ids": (2, 3)}
    assert select_profile([cfg, plain], shapes, "unet") == 0
    one = dict(shapes, sample=(1, 20, 8, 72, 128), encoder_hidden_states=(1, 1, 1024), added_time_ids=(1, 3))
    assert select_profile([cfg, plain], one, "unet") == 1


def test_static_shape_is_one_point(svd_xt):
    req = ShapeRequest.from_flags(static="batch=1,frames=14,height=576,width=1024")
    (p,) = derive_profiles("vae_encoder", svd_xt.specs()["vae_encoder"], req, svd_xt.vae_scale_factor)
    assert p.shapes["image"] == ((1, 3, 576, 1024),) * 3
    (d,) = derive_profiles("vae_decoder", svd_xt.specs()["vae_decoder"], req, svd_xt.vae_scale_factor)
    assert d.shapes["latents"][2] == (14, 4, 72, 128)


def test_defaults_end_at_the_tuned_shape_not_the_whole_range(svd_xt):
    # The model's whole range (16 rows x 64 frames x 256x256 latents) needs tens of GB of
    # activations; by default a profile ends at the description's opt point (one video,
    # the model's frames and size), and larger requests need an explicit --max.
    spec = svd_xt.specs()["unet"]
    cfg, plain = derive_profiles("unet", spec, ShapeRequest(), svd_xt.vae_scale_factor)
    lo, opt, hi = plain.shapes["sample"]
    assert lo == (1, 1, 8, 8, 8) and opt == hi == (1, 25, 8, 96, 96)
    assert cfg.shapes["sample"][2] == (2, 25, 8, 96, 96) and cfg.max_dims == {"B": 2, "F": 25, "h": 96, "w": 96}
    (dec,) = derive_profiles("vae_decoder", svd_xt.specs()["vae_decoder"], ShapeRequest(), svd_xt.vae_scale_factor)
    assert dec.shapes["latents"][2] == (8, 4, 96, 96)  # decoded 8 frames per call
    # An --opt past the default end moves the end with it; --max sets it.
    (_, wide) = derive_profiles("unet", spec, ShapeRequest.from_flags(opt="frames=40"), svd_xt.vae_scale_factor)
    assert wide.shapes["sample"][2][1] == 40
    (_, big) = derive_profiles("unet", spec, ShapeRequest.from_flags(max="batch=2,frames=64"), svd_xt.vae_scale_factor)
    assert big.shapes["sample"][2][:2] == (2, 64)


def test_profile_memory_is_estimated_and_refused_when_it_cannot_fit(svd_xt):
    from vidrt.export.memory_estimate import activation_peak_bytes
    from vidrt.trt_plan import check_profile_memory

    spec = svd_xt.specs()["unet"]
    cfg, _ = derive_profiles("unet", spec, ShapeRequest(), svd_xt.vae_scale_factor)
    need = activation_peak_bytes(svd_xt, "unet", dict(cfg.max_dims), "fp16")
    # Activations of one guided 25-frame 768x768 video in fp16: a few GiB, well under 24.
    assert 1 << 30 < need < 12 << 30
    assert activation_peak_bytes(svd_xt, "unet", dict(cfg.max_dims), "fp32") == pytest.approx(2 * need, rel=1e-6)
    line = check_profile_memory("unet", cfg, need, 3 << 30, 24 << 30)
    assert "unet profile 'cfg': up to batch=2,num_frames=25" in line and "GiB of activations" in line
    (_, huge) = derive_profiles("unet", spec, ShapeRequest.from_flags(max="batch=8,frames=64,height=2048,width=2048"),
                                svd_xt.vae_scale_factor)
    big = activation_peak_bytes(svd_xt, "unet", dict(huge.max_dims), "fp16")
    with pytest.raises(VidrtError, match="does not fit; lower --max"):
        check_profile_memory("unet", huge, big, 3 << 30, 24 << 30)


def test_precisions_the_gpu_cannot_run_are_refused():
    from vidrt.trt_plan import check_device_precision

    check_device_precision("fp8", "8.9")
    check_device_precision("bf16", "8.0")
    check_device_precision("fp16", "7.5")
    with pytest.raises(VidrtError, match=r"--precision fp8 needs compute capability 8.9 .* is 8.6: use --precision int8"):
        check_device_precision("fp8", "8.6", "A10")
    with pytest.raises(VidrtError, match=r"--precision bf16 needs compute capability 8.0 .*T4 is 7.5: use --precision fp16"):
        check_device_precision("bf16", "7.5", "T4")


def test_other_shape_ranges_build_into_their_own_folder():
    from vidrt.backends.tensorrt import TensorRTBackend

    a = TensorRTBackend.artifact_name("fp16", TrtOptions())
    b = TensorRTBackend.artifact_name("fp16", TrtOptions(shapes=ShapeRequest.from_flags(max="frames=40")))
    assert a.startswith("tensorrt-fp16-") and b.startswith("tensorrt-fp16-") and a != b
    assert a == TensorRTBackend.artifact_name("fp16", TrtOptions(timing_cache="/x"))  # a cache changes no plan


def test_fp16_vae_encoder_is_upcast_where_the_vae_asks():
    from vidrt.layout import component_precisions

    assert component_precisions("fp16", "fp16", force_upcast=True)["vae_encoder"] == "fp32"
    assert component_precisions("int8", "fp16", force_upcast=True)["vae_encoder"] == "fp32"
    assert component_precisions("fp16", "fp16", force_upcast=False)["vae_encoder"] == "fp16"
    assert component_precisions("bf16", "bf16", force_upcast=True)["vae_encoder"] == "bf16"  # diffusers upcasts fp16 only
    assert component_precisions("fp16", "fp16", {"vae_encoder": "fp16"}, force_upcast=True)["vae_encoder"] == "fp16"


@pytest.mark.parametrize(
    "flags,message",
    [
        (dict(min="height=500"), r"height=500 must be a multiple of 8|multiple of 64"),
        (dict(min="frames=30", max="frames=20"), r"needs min <= opt <= max"),
        (dict(max="frames=100"), r"num_frames=100 is outside what the model supports \(1..64\)"),
        (dict(min="bogus=1"), "unknown dimension 'bogus'"),
        (dict(min="batch=x"), "'x' is not a whole number"),
        (dict(static="batch=1", min="batch=1"), "do not combine"),
        (dict(max="batch=16"), r"with guidance needs 32 > 16"),
    ],
)
def test_bad_shape_requests_name_the_flag(svd_xt, flags, message):
    with pytest.raises(VidrtError, match=message):
        req = ShapeRequest.from_flags(**flags)
        derive_profiles("unet", svd_xt.specs()["unet"], req, svd_xt.vae_scale_factor)


def test_outside_every_profile_is_a_clear_error(svd_xt):
    req = ShapeRequest.from_flags(static="batch=1,frames=14,height=576,width=1024")
    profiles = derive_profiles("unet", svd_xt.specs()["unet"], req, svd_xt.vae_scale_factor)
    shapes = {"sample": (2, 25, 8, 72, 128), "timestep": (1,), "encoder_hidden_states": (2, 1, 1024), "added_time_ids": (2, 3)}
    with pytest.raises(VidrtError, match=r"unet: input 'sample' of shape \[2, 25, 8, 72, 128\] is outside this engine's profiles"):
        select_profile(profiles, shapes, "unet")


def test_settings_and_key(svd_xt):
    spec = svd_xt.specs()["vae_decoder"]
    profiles = derive_profiles("vae_decoder", spec, ShapeRequest(), svd_xt.vae_scale_factor)
    s16 = builder_settings("fp16", TrtOptions(), profiles)
    assert s16["flags"] == ["FP16"] and not s16["strongly_typed"] and s16["engine_host_code_allowed"] is False
    s8 = builder_settings("int8", TrtOptions(workspace_mb=512), profiles)
    assert s8["flags"] == [] and s8["strongly_typed"] and s8["workspace_bytes"] == 512 * 2**20
    assert s16["tf32"] is False and builder_settings("fp32", TrtOptions(tf32=True), profiles)["tf32"] is True
    # The timing cache path does not change the plan, so not the key.
    assert TrtOptions(timing_cache="/x").describe() == TrtOptions().describe()
    with pytest.raises(VidrtError, match="TensorRT takes 0..5"):
        TrtOptions(optimization_level=7)
    with pytest.raises(VidrtError, match="choose one of fp32, fp16, bf16, int8, fp8"):
        builder_settings("int4", TrtOptions(), profiles)


def test_plan_compatibility_is_decided_from_the_manifest():
    manifest = {"tensorrt_version": "10.15.1", "device": {"compute_capability": "8.9"},
                "settings": {"engine_host_code_allowed": False}}
    here = {"name": "NVIDIA L4", "compute_capability": "8.9"}
    assert check_plan_compatible(manifest, "10.15.1", here) is None
    assert "TensorRT 10.15.1, this is TensorRT 10.16.0" in check_plan_compatible(manifest, "10.16.0", here)
    assert "compute capability 8.9, this GPU is 9.0 (H100)" in check_plan_compatible(
        manifest, "10.15.1", {"name": "H100", "compute_capability": "9.0"})
    bad = dict(manifest, settings={"engine_host_code_allowed": True})
    assert "host code" in check_plan_compatible(bad, "10.15.1", here)


def test_buffer_sizes_cover_the_largest_profile(svd_xt):
    spec = svd_xt.specs()["unet"]
    req = ShapeRequest.from_flags(max="batch=1,frames=25,height=576,width=1024", min="batch=1,frames=1,height=64,width=64")
    profiles = derive_profiles("unet", spec, req, svd_xt.vae_scale_factor)
    sizes = tensor_bytes(spec, profiles)
    assert sizes["sample"] == 2 * 25 * 8 * 72 * 128 * 4  # the CFG profile's max batch
    assert sizes["noise_pred"] == 2 * 25 * 4 * 72 * 128 * 4
    assert tensor_bytes(spec, profiles, {"sample": "float16"})["sample"] == sizes["sample"] // 2
    assert shared_device_memory({"unet": 7 << 30, "vae_decoder": 3 << 30, "image_encoder": 1 << 30}) == 7 << 30


def test_graph_cache_is_bounded_and_releases():
    released = []
    cache = GraphCache(capacity=2, release=released.append)
    cache.put("a", "graph-a")
    cache.put("b", "graph-b")
    assert cache.get("a") == "graph-a"  # a is now most recent
    cache.put("c", "graph-c")
    assert released == ["graph-b"] and len(cache) == 2 and "a" in cache and "c" in cache
    cache.clear()
    assert sorted(released) == ["graph-a", "graph-b", "graph-c"] and len(cache) == 0
    with pytest.raises(VidrtError):
        GraphCache(capacity=0)
