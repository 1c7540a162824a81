"""Engine directory: manifests, reuse, targeted rebuilds, corruption, refusal, atomic writes."""

import json
import shutil

import pytest
import torch

from vidrt.backends import get_backend
from vidrt.build import prepare_engines
from vidrt.errors import VidrtError
from vidrt.fsutil import atomic_dir
from vidrt.manifest import BUILD_MANIFEST, EXPORT_MANIFEST

ORT = get_backend("onnxruntime")


@pytest.fixture
def engine_dir(tiny_engine_dir, tmp_path):
    """A private copy of the session's built engines, free to break."""
    path = tmp_path / "engines"
    shutil.copytree(tiny_engine_dir, path)
    return path


def prepare(model, path, **kw):
    return prepare_engines(model, path, ORT, "fp32", progress=False, **kw)


def test_manifest_records_what_the_issue_asks(tiny_engine_dir):
    m = json.loads((tiny_engine_dir / "unet" / "onnxruntime-fp32" / BUILD_MANIFEST).read_text())
    assert m["component"] == "unet" and m["backend"] == "onnxruntime" and m["precision"] == "fp32"
    assert m["random_weights"] is True
    assert set(m["shape_ranges"]) == {"B", "F", "h", "w"}
    assert all(len(v) == 64 for v in m["onnx_sha256"].values())
    assert any(k.endswith(".safetensors") for k in m["weights_sha256"])
    assert {"torch", "diffusers", "onnx", "onnxruntime"} <= set(m["versions"])
    export = json.loads((tiny_engine_dir / "unet" / "onnx" / EXPORT_MANIFEST).read_text())
    assert export["tensorrt_ops"]["ok"] and export["parity_check"]["max_abs_err"] < 1e-3


def test_second_run_reuses_everything(tiny_model, engine_dir):
    results = prepare(tiny_model, engine_dir)
    assert all(r.reason == "reused" and not r.exported and not r.built for r in results.values())


def test_corrupted_artifact_is_rebuilt(tiny_model, engine_dir):
    artifact = engine_dir / "vae_decoder" / "onnxruntime-fp32" / "model.opt.onnx"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    results = prepare(tiny_model, engine_dir)
    assert results["vae_decoder"].built and "sha256 mismatch" in results["vae_decoder"].reason
    assert [c for c, r in results.items() if r.built] == ["vae_decoder"]


def test_truncated_onnx_is_reexported(tiny_model, engine_dir):
    onnx_file = engine_dir / "image_encoder" / "onnx" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:100])
    results = prepare(tiny_model, engine_dir)
    assert results["image_encoder"].exported and results["image_encoder"].built
    assert not results["unet"].exported


def test_refuses_instead_of_building_when_told(tiny_model, engine_dir):
    (engine_dir / "unet" / "onnxruntime-fp32" / BUILD_MANIFEST).unlink()
    with pytest.raises(VidrtError, match=r"unet engine in .* cannot be used: manifest missing .* run build-engines"):
        prepare(tiny_model, engine_dir, build=False)


def test_changed_unet_weights_rebuild_only_the_unet(tiny_model, engine_dir, tmp_path):
    from safetensors.torch import save_file

    from vidrt.sources import load_torch_component

    unet = load_torch_component(tiny_model, "unet")
    state = {k: v + 0.01 for k, v in unet.state_dict().items()}
    weights = tmp_path / "unet_lcm.safetensors"
    save_file(state, str(weights))
    results = prepare(tiny_model, engine_dir, unet_weights=str(weights))
    assert [c for c, r in results.items() if r.exported] == ["unet"]
    assert [c for c, r in results.items() if r.built] == ["unet"]


def test_unsupported_precision_is_refused(tiny_model, engine_dir):
    with pytest.raises(VidrtError, match="builds fp32, int8, fp8 engines, not fp16"):
        prepare_engines(tiny_model, engine_dir, ORT, "fp16", progress=False)


def test_atomic_dir_leaves_the_old_folder_on_failure(tmp_path):
    target = tmp_path / "engine"
    target.mkdir()
    (target / "model").write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "model").write_text("half")
            raise RuntimeError("build crashed")
    assert (target / "model").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["engine"]


def test_unavailable_backends_say_so():
    # One line: TensorRT needs a GPU, and how to install the extra.
    with pytest.raises(VidrtError, match=r"TensorRT needs an NVIDIA GPU with CUDA and this machine has none; .*pip install -e '.\[gpu\]'"):
        get_backend("tensorrt")
    with pytest.raises(VidrtError, match="unknown backend 'cuda'"):
        get_backend("cuda")


def test_engine_checks_inputs(tiny_pipe):
    enc = tiny_pipe.engines["image_encoder"]
    with pytest.raises(VidrtError, match="input 'pixel_values' axis 2 is 100, this engine needs 224"):
        enc(pixel_values=torch.zeros(1, 3, 100, 224))
    with pytest.raises(VidrtError, match="is torch.float64, this engine takes float32"):
        enc(pixel_values=torch.zeros(1, 3, 224, 224, dtype=torch.float64))
    out = enc(pixel_values=torch.zeros(2, 3, 224, 224))["image_embeds"]
    again = enc(pixel_values=torch.ones(2, 3, 224, 224))["image_embeds"]
    assert again.data_ptr() == out.data_ptr()  # output buffer reused per shape
