"""OpenVINO backend on tiny-svd: the parity tests ONNX Runtime passes, plus bf16 and
INT8 against vidrt fp32 with their own tolerances, static shapes and the model cache.

Tolerances: fp32 2e-3 max abs vs diffusers (the issue's bar). bf16 keeps 8 bits of
mantissa, so frames move by ~1e-2; bounded at 5% relative L2 against vidrt fp32
(random tiny weights; the svd-xt figure is in the issue note).
"""

import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from conftest import INT8_SATURATES, make_image
from test_pipeline_parity import run_reference

openvino = pytest.importorskip("openvino")

KW = dict(height=32, width=48, num_frames=3, num_inference_steps=3)


@pytest.fixture(scope="module")
def ov_dir(ov_engine_dir):
    return ov_engine_dir


def ov_pipe(ov_dir, precision, **kw):
    from vidrt import VideoPipeline

    return VideoPipeline.from_pretrained("tiny-svd", engine_dir=ov_dir, backend="openvino", precision=precision,
                                         progress=False, **kw)


def rel_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("sampler", ["euler", "animatelcm"])
@pytest.mark.parametrize("max_guidance", [3.0, 1.0], ids=["cfg", "no-cfg"])
def test_fp32_matches_diffusers(ov_dir, reference, sampler, max_guidance):
    pipe = ov_pipe(ov_dir, "fp32")
    pipe.sampler_name = sampler
    kw = dict(KW, max_guidance_scale=max_guidance, decode_chunk_size=2)
    ours = pipe(make_image(), generator=torch.Generator().manual_seed(5), output_type="np", **kw).frames
    ref = run_reference(reference, sampler, make_image(), 5, **kw)
    assert np.abs(ours - ref).max() <= 2e-3


def test_bf16_against_fp32(ov_dir):
    fp32 = ov_pipe(ov_dir, "fp32")(make_image(), generator=torch.Generator().manual_seed(0), output_type="np", **KW).frames
    bf16 = ov_pipe(ov_dir, "bf16")(make_image(), generator=torch.Generator().manual_seed(0), output_type="np", **KW).frames
    err = rel_l2(bf16, fp32)
    print(f"openvino bf16 vs fp32 frames: rel L2 {err:.4f}, max abs {np.abs(bf16 - fp32).max():.4f}")
    if "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert 0 < err <= 0.05
    else:  # no bf16 kernels (no AMX or AVX512-BF16): vidrt asks OpenVINO for fp32 (backends/openvino.hint)
        assert err == 0


@pytest.fixture(scope="module")
def int8_pipe(ov_dir):
    """INT8 UNet and INT8 decoder (the rest bf16), calibrated once for the module."""
    from vidrt.export.quantize import QuantConfig

    pytest.importorskip("modelopt.torch.quantization")
    return ov_pipe(ov_dir, "int8", quant=QuantConfig(format="int8", calib_steps=3, calib_frames=3),
                   component_precision={"vae_decoder": "int8"})


def test_int8_engines_against_fp32(ov_dir, int8_pipe):
    for c in ("unet", "vae_decoder"):  # the graphs OpenVINO runs, quantized
        artifact = int8_pipe.builds[c].artifact_dir
        assert artifact.name == "openvino-int8"
        assert json.loads((artifact / "manifest.json").read_text())["onnx"] == "../onnx-int8-video-layout/model.onnx"
    assert int8_pipe.builds["image_encoder"].artifact_dir.name == "openvino-bf16"  # companions run bf16
    q = int8_pipe(make_image(), generator=torch.Generator().manual_seed(0), output_type="np", **KW).frames
    f = ov_pipe(ov_dir, "fp32")(make_image(), generator=torch.Generator().manual_seed(0), output_type="np", **KW).frames
    err = np.abs(q - f)
    print(f"openvino int8 UNet + int8 decoder vs fp32 frames: mean abs {err.mean():.4f}, max abs {err.max():.4f}")
    # a broken UNet or decoder moves frames by ~0.1 or more; without VNNI the integer kernels
    # saturate (conftest.INT8_SATURATES): 0.065 measured on an AVX2-only EPYC
    assert err.mean() < (0.09 if INT8_SATURATES else 0.05)


def test_int8_decoder_runs_integer_convolutions(int8_pipe):
    """The video-layout decoder, quantized, runs its frame convolutions on OpenVINO's
    integer kernels."""
    import openvino as ov

    artifact = int8_pipe.builds["vae_decoder"].artifact_dir
    manifest = json.loads((artifact / "manifest.json").read_text())
    core = ov.Core()
    model = core.read_model(str((artifact / manifest["onnx"]).resolve()))
    request = core.compile_model(model, "CPU", {"PERF_COUNT": "YES", "INFERENCE_PRECISION_HINT": "bf16"}).create_infer_request()
    request.infer({"latents": np.random.default_rng(0).standard_normal((3, 4, 4, 6), dtype=np.float32)})
    kernels = [p.exec_type for p in request.get_profiling_info() if p.node_type == "Convolution" and p.status == p.Status.EXECUTED]
    integer = [k for k in kernels if k.upper().endswith(("I8", "U8"))]
    assert len(integer) >= len(kernels) // 2, kernels


def test_model_cache_is_the_artifact_and_is_reused(ov_dir, tiny_model):
    from vidrt.backends import get_backend
    from vidrt.build import prepare_engines

    backend = get_backend("openvino")
    prepare_engines(tiny_model, ov_dir, backend, "fp32", progress=False)  # built here or by an earlier test
    results = prepare_engines(tiny_model, ov_dir, backend, "fp32", progress=False)
    assert all(r.reason == "reused" for r in results.values())
    manifest = json.loads((ov_dir / "unet" / "openvino-fp32" / "manifest.json").read_text())
    assert any(k.startswith("ov_cache/") for k in manifest["files"])  # OpenVINO's compiled blob
    assert manifest["openvino_config"]["INFERENCE_PRECISION_HINT"] == "f32"
    # UNet and decoder are built from the graphs without frame <-> video permutes
    assert manifest["onnx"] == "../onnx-video-layout/model.onnx"
    for c, onnx_dir in (("image_encoder", "onnx"), ("vae_decoder", "onnx-video-layout")):
        assert json.loads((ov_dir / c / "openvino-fp32" / "manifest.json").read_text())["onnx"] == f"../{onnx_dir}/model.onnx"
    export = json.loads((ov_dir / "vae_decoder" / "onnx-video-layout" / "export.json").read_text())
    assert export["graph_variant"] == "video-layout"


def test_static_shape_engines(ov_dir, tmp_path):
    from vidrt.backends.openvino import OvOptions
    from vidrt.errors import VidrtError

    path = tmp_path / "static"
    shutil.copytree(ov_dir, path)
    static = {"batch": 1, "frames": 3, "height": 32, "width": 48}
    pipe = ov_pipe(path, "fp32", backend_options=OvOptions(static=static))
    artifact = pipe.builds["unet"].artifact_dir
    assert artifact.name == "openvino-fp32-static-b1-f3-h32-w48"
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["static_shapes"]["sample"] == [2, 3, 8, 16, 24]  # guided batch
    assert (path / "unet" / "openvino-fp32" / "manifest.json").is_file()  # the dynamic engines stay beside them
    dynamic = ov_pipe(path, "fp32")
    a = pipe(make_image(), generator=torch.Generator().manual_seed(0), output_type="np", **KW).frames
    b = dynamic(make_image(), generator=torch.Generator().manual_seed(0), output_type="np", **KW).frames
    assert np.abs(a - b).max() <= 1e-4  # same math, shape-specialised kernels
    with pytest.raises(VidrtError, match=r"built for the static shape \[1, 3, 224, 224\]|built for the static shape"):
        pipe(make_image(), output_type="np", **dict(KW, num_frames=4))


def test_auto_picks_openvino_on_a_cpu_and_says_so(capsys, monkeypatch):
    from vidrt.backends import get_backend
    from vidrt.backends.openvino import OpenVinoBackend

    for precision in ("fp32", "bf16", "int8"):
        assert get_backend("auto", announce=True, precision=precision) is OpenVinoBackend
        assert f"backend auto -> openvino (no CUDA GPU; OpenVINO is the fastest CPU backend for {precision})" in capsys.readouterr().out
    monkeypatch.setattr(OpenVinoBackend, "unavailable_reason", classmethod(lambda cls: "openvino is not installed"))
    assert get_backend("auto", precision="fp32").name == "onnxruntime"


def artifact_files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "openvino" in str(p))


@pytest.mark.parametrize("static", [None, {"batch": 1, "frames": 3, "height": 32, "width": 48}], ids=["dynamic", "static"])
def test_loading_uses_what_the_build_left_and_writes_nothing(ov_dir, tmp_path, static):
    from vidrt.backends.openvino import OvOptions

    path = tmp_path / "engines"
    shutil.copytree(ov_dir, path)
    options = OvOptions(static=static) if static else None
    ov_pipe(path, "bf16", backend_options=options)  # builds what is missing
    built = artifact_files(path)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        pipe = ov_pipe(path, "bf16", backend_options=options, build=False)
    assert not [str(w.message) for w in seen if "compiled" in str(w.message)]
    assert all(b.reason == "reused" for b in pipe.builds.values())
    pipe(make_image(), generator=torch.Generator().manual_seed(0), output_type="np", **KW)
    assert artifact_files(path) == built  # no blob OpenVINO wrote at load or first inference


def test_a_manifest_pointing_outside_the_engine_folder_is_refused(ov_dir, tmp_path):
    from vidrt.errors import VidrtError

    path = tmp_path / "engines"
    shutil.copytree(ov_dir, path)
    ov_pipe(path, "fp32")
    manifest_path = path / "vae_encoder" / "openvino-fp32" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    outside = tmp_path / "evil"
    shutil.copytree(path / "vae_encoder" / "onnx", outside)  # a graph with the same hashes, outside the folder
    manifest["onnx"] = str(outside / "model.onnx")
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(VidrtError, match="not this engine folder's export"):
        ov_pipe(path, "fp32", build=False)


def test_an_unreadable_manifest_is_an_error_not_a_rebuild(ov_dir, tmp_path):
    from vidrt.errors import VidrtError

    path = tmp_path / "engines"
    shutil.copytree(ov_dir, path)
    ov_pipe(path, "fp32")
    manifest = path / "unet" / "openvino-fp32" / "manifest.json"
    manifest.unlink()
    manifest.mkdir()  # reading it raises IsADirectoryError, as a permission problem would raise PermissionError
    with pytest.raises(VidrtError, match="cannot read .*manifest.json"):
        ov_pipe(path, "fp32")


def test_a_build_that_wrote_no_blob_is_refused(ov_dir, tmp_path, monkeypatch):
    from vidrt.backends.openvino import OpenVinoBackend
    from vidrt.errors import VidrtError

    path = tmp_path / "engines"
    shutil.copytree(ov_dir, path)
    shutil.rmtree(path / "vae_encoder" / "openvino-fp32", ignore_errors=True)
    real = OpenVinoBackend._config.__func__

    def without_cache(cls, precision, options, cache_dir):  # as if OpenVINO had silently not cached
        return {k: v for k, v in real(cls, precision, options, cache_dir).items() if k != "CACHE_DIR"}

    monkeypatch.setattr(OpenVinoBackend, "_config", classmethod(without_cache))
    with pytest.raises(VidrtError, match="wrote no cached blob"):
        ov_pipe(path, "fp32")
    assert not (path / "vae_encoder" / "openvino-fp32").exists()


def test_a_moved_engine_folder_rebuilds_openvino_artifacts_once(ov_dir, tmp_path):
    # OpenVINO's cache key holds the graph's path: after a move the artifacts are rebuilt
    # (a compile; the export is reused), then loads find their blobs again.
    path = tmp_path / "moved"
    shutil.copytree(ov_dir, path)
    first = ov_pipe(path, "fp32")
    assert all(b.reason == "inputs changed (weights, shapes, versions or options)" for b in first.builds.values())
    assert not any(b.exported for b in first.builds.values())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        again = ov_pipe(path, "fp32", build=False)
    assert all(b.reason == "reused" for b in again.builds.values()) and not [w for w in seen if "compiled" in str(w.message)]


def _resident_kb(folder) -> tuple[int, int]:
    """(mappings of files under ``folder``, their resident kB) in this process."""
    import re

    prefix, mapped, rss, inside = str(folder.resolve()), 0, 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):  # a mapping's header: address range ... path
                fields = line.split(maxsplit=5)
                inside = len(fields) == 6 and fields[5].strip().startswith(prefix)
                mapped += inside
            elif inside and line.startswith("Rss:"):
                rss += int(line.split()[1])
    return mapped, rss


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="reads /proc/self/smaps (Linux)")
def test_the_mapped_blob_is_given_back_after_load_and_first_run(ov_dir, tiny_model):
    """OpenVINO reads weights from its mapped blob at load and while the first inference
    repacks them; afterwards those pages are given back (for svd-xt 8.5 GB of RSS), and
    the engine still computes the same outputs from what it kept."""
    from vidrt.backends import get_backend

    backend = get_backend("openvino")
    artifact = ov_dir / "unet" / "openvino-fp32"
    engine = backend.load(artifact, tiny_model.specs()["unet"], "fp32")
    mapped, rss = _resident_kb(artifact / "ov_cache")
    assert mapped > 0  # the blob is mapped (otherwise there is nothing to give back)
    assert rss == 0
    from vidrt.export.graphs import sample_inputs, trace_point

    spec = tiny_model.specs()["unet"]
    feeds = sample_inputs(spec, trace_point(spec))
    first = engine(**feeds)[spec.output_names[0]].clone()
    assert _resident_kb(artifact / "ov_cache")[1] == 0 and engine.blob_dir is None
    second = engine(**feeds)[spec.output_names[0]]  # after the page-out: the same numbers
    assert torch.equal(first, second)


def test_engines_run_with_the_auto_partitioner_where_openvino_has_it(ov_dir, tiny_model):
    """vidrt compiles with TBB_PARTITIONER=AUTO (backends/openvino.kernel_config: the diffusion
    transformers' layers 4-7% faster on a 2-core AVX-512 Xeon); an OpenVINO without the
    property compiles without it."""
    from vidrt.backends import get_backend
    from vidrt.backends.openvino import _cpu_properties

    if "TBB_PARTITIONER" not in _cpu_properties():
        pytest.skip(f"OpenVINO {openvino.__version__} has no TBB_PARTITIONER property")
    engine = get_backend("openvino").load(ov_dir / "unet" / "openvino-fp32", tiny_model.specs()["unet"], "fp32")
    assert str(engine.compiled.get_property("TBB_PARTITIONER")).upper().endswith("AUTO")


def test_intermediate_memory_is_given_back_after_each_stage_and_request(ov_dir, reference, monkeypatch):
    """OpenVINO keeps an infer request's intermediate tensors until told (svd-xt at 128x128,
    14 frames: ~1 GB each for the UNet and the decoder). The UNet's are given back when the
    denoising loop ends, before the decoder allocates its own, and every engine's when the
    request ends; the next request computes the same frames, still diffusers' within 2e-3."""
    from vidrt.backends.openvino import OvEngine

    events = []
    run, release = OvEngine._run, OvEngine.release
    monkeypatch.setattr(OvEngine, "_run", lambda self, *a: events.append(("run", self.spec.name)) or run(self, *a))
    monkeypatch.setattr(OvEngine, "release", lambda self: events.append(("release", self.spec.name)) or release(self))
    pipe = ov_pipe(ov_dir, "fp32")
    first = pipe(make_image(), generator=torch.Generator().manual_seed(5), output_type="np", **KW).frames
    unet_runs = [i for i, e in enumerate(events) if e == ("run", "unet")]
    decoder_runs = [i for i, e in enumerate(events) if e == ("run", "vae_decoder")]
    assert len(unet_runs) == KW["num_inference_steps"] and decoder_runs  # guidance batched: a call a step
    assert ("release", "unet") in events[unet_runs[-1]:decoder_runs[0]]  # the loop's, before decoding
    names = {name for _, name in events}
    assert {name for what, name in events[decoder_runs[-1]:] if what == "release"} == names  # the request's end
    events.clear()
    second = pipe(make_image(), generator=torch.Generator().manual_seed(5), output_type="np", **KW).frames
    assert ("run", "unet") in events and np.array_equal(first, second)
    assert np.abs(second - run_reference(reference, "euler", make_image(), 5, **KW)).max() <= 2e-3


@pytest.mark.parametrize("capabilities", [["FP32", "INT8"], ["FP32", "BF16", "INT8"]])
def test_bf16_engines_on_a_cpu_without_bf16_kernels_say_they_run_fp32(capabilities, monkeypatch):
    """Without bf16 kernels (no AMX, no AVX512-BF16) OpenVINO runs a bf16 hint in fp32 on an
    AVX2-only CPU but emulates bf16 ~45x slower than fp32 on an AVX-512 one (both seen here):
    vidrt asks for fp32 on such CPUs and says so once."""
    import openvino

    from vidrt.backends import openvino as ov_backend

    class Core(openvino.Core):
        def get_property(self, device, name):
            return capabilities if name == "OPTIMIZATION_CAPABILITIES" else super().get_property(device, name)

    monkeypatch.setattr(openvino, "Core", Core)
    ov_backend.warn_without_bf16.cache_clear()
    ov_backend.native_bf16.cache_clear()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ov_backend.warn_without_bf16()
        ov_backend.warn_without_bf16()
        hints = {p: ov_backend.hint(p) for p in ("fp32", "bf16", "int8")}
    ov_backend.warn_without_bf16.cache_clear()
    ov_backend.native_bf16.cache_clear()
    native = "f32" if "BF16" not in capabilities else "bf16"
    assert hints == {"fp32": "f32", "bf16": native, "int8": native}
    said = [str(w.message) for w in seen if "no bf16 kernels" in str(w.message)]
    assert len(said) == (0 if "BF16" in capabilities else 1)
