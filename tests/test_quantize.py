"""Quantization stage on tiny-svd: INT8 and FP8 Q/DQ UNet graphs and the INT8 temporal
VAE decoder, run on ONNX Runtime's CPU provider, their error against fp32 measured and
bounded.

Bounds: tiny-svd has random weights, whose activations quantize worse than a
trained model's; the bounds catch broken calibration or export (errors of order
1), not the few percent that quantization costs. Measured values are printed in
the issue note.
"""

import shutil

import numpy as np
import onnx
import pytest
import torch

from conftest import INT8_SATURATES

from vidrt.export.quantize import QuantConfig, export_quantized, synthetic_images

pytest.importorskip("modelopt.torch.quantization", reason="quantization needs nvidia-modelopt (pip install -e .[test])")

# mean relative L2 of the UNet output vs fp32; int8 on a CPU without VNNI, whose integer
# kernels saturate (conftest.INT8_SATURATES): 0.25 measured on tiny-svd, 0.07 with VNNI
BOUNDS = {"int8": 0.35 if INT8_SATURATES else 0.15, "fp8": 0.30}


CFG = dict(calib_steps=3, calib_frames=3)


@pytest.fixture(scope="module")
def int8_engines(tiny_model, tiny_engine_dir, tmp_path_factory):
    """tiny-svd's engines with the INT8 UNet on ONNX Runtime, quantized once for the module
    (the Q/DQ graph tests and the pipeline test read the same export)."""
    from vidrt.backends import get_backend
    from vidrt.build import prepare_engines

    engines = tmp_path_factory.mktemp("q-int8") / "engines"
    shutil.copytree(tiny_engine_dir, engines)
    builds = prepare_engines(tiny_model, engines, get_backend("onnxruntime"), "int8",
                             quant=QuantConfig(format="int8", **CFG), progress=False)
    assert builds["unet"].built and not builds["vae_decoder"].built  # fp32 parts reused
    return engines


# (format, float type of the unquantized layers): the CPU backends' INT8 graph (the
# pipeline's own export), and TensorRT's fp16 INT8 and FP8 graphs.
GRAPHS = [("int8", "fp32"), ("int8", "fp16"), ("fp8", "fp16")]


@pytest.fixture(scope="module", params=GRAPHS, ids=["-".join(g) for g in GRAPHS])
def quantized(request, tiny_model, tmp_path_factory):
    fmt, float_type = request.param
    if request.param == ("int8", "fp32"):  # the pipeline's own export, as export.json records it
        import json
        import types

        folder = request.getfixturevalue("int8_engines") / "unet" / "onnx-int8"
        record = json.loads((folder / "export.json").read_text())
        result = types.SimpleNamespace(onnx_path=folder / "model.onnx", ops=record["tensorrt_ops"])
        return fmt, float_type, result, record["quantization"]["error_vs_fp32"]
    out = tmp_path_factory.mktemp(f"q-{fmt}-{float_type}")
    result, report = export_quantized(tiny_model, "unet", QuantConfig(format=fmt, **CFG), out, float_type=float_type)
    return fmt, float_type, result, report


def test_qdq_graph_uses_standard_ops_and_zero_point_type(quantized):
    fmt, _, result, report = quantized
    model = onnx.load(str(result.onnx_path))
    assert next(o.version for o in model.opset_import if o.domain == "") >= 19
    assert all(n.domain == "" for n in model.graph.node)  # no trt:: custom ops left
    assert report["qdq"]["QuantizeLinear"] > 50 and report["qdq"]["DequantizeLinear"] > 50
    assert report["qdq"]["zero_point_types"] == (["INT8"] if fmt == "int8" else ["FLOAT8E4M3FN"])
    assert result.ops["ok"], result.ops["unsupported"]  # TensorRT's parser takes it


# Ops whose fp32 output would mean a layer left out of the graph's float type. The
# timestep's sinusoidal embedding (a few Mul/Sin/Cos on a (rows, 256) tensor) is fp32 in
# diffusers itself, and is not in this list.
COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Softmax", "InstanceNormalization",
               "GroupNormalization", "LayerNormalization", "DequantizeLinear")  # (Q outputs are int8/fp8)


def test_unquantized_layers_run_in_the_graph_float_type(quantized):
    """TensorRT builds Q/DQ graphs strongly typed: a layer is fp16 only if the graph says
    so. Its graph is fp16 inside (weights, Q/DQ scales, every compute op) behind fp32
    inputs and outputs; the CPU backends' graph stays fp32."""
    _, float_type, result, _ = quantized
    want = onnx.TensorProto.FLOAT16 if float_type == "fp16" else onnx.TensorProto.FLOAT
    model = onnx.shape_inference.infer_shapes(onnx.load(str(result.onnx_path)))
    graph = model.graph
    assert {v.type.tensor_type.elem_type for v in [*graph.input, *graph.output] if v.name != "timestep"} == {onnx.TensorProto.FLOAT}
    inits = {t.name: t.data_type for t in graph.initializer}
    consts = {n.output[0]: n.attribute[0].t.data_type for n in graph.node if n.op_type == "Constant"}
    weights = {n.input[1] for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm") and n.input[1] in inits}
    scales = {n.input[1] for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    assert {inits[w] for w in weights} <= {want, onnx.TensorProto.FLOAT8E4M3FN}
    assert {inits.get(s, consts.get(s)) for s in scales} == {want}
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.output]}
    wrong = [n.name for n in graph.node if n.op_type in COMPUTE_OPS and types.get(n.output[0]) != want]
    assert not wrong, wrong[:5]


def test_sensitive_layers_stay_high_precision(quantized):
    _, _, result, _ = quantized
    model = onnx.load(str(result.onnx_path))
    names = [n.name for n in model.graph.node if n.op_type == "QuantizeLinear"]
    for layer in ("conv_in", "conv_out", "time_embedding", "add_embedding"):
        assert not [n for n in names if f"/{layer}/" in n], layer


def test_error_against_fp32_is_reported_per_step_and_bounded(quantized):
    fmt, float_type, _, report = quantized
    assert [r["step"] for r in report["per_step"]] == [0, 1, 2]
    assert 0 < report["rel_l2"] <= BOUNDS[fmt]
    print(f"{fmt} ({float_type} inside): UNet rel L2 {report['rel_l2']:.4f}, max abs {report['max_abs_err']:.4f}")


def test_synthetic_calibration_set_is_deterministic():
    a = [np.asarray(i) for i in synthetic_images(2, 32, seed=0)]
    b = [np.asarray(i) for i in synthetic_images(2, 32, seed=0)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_int8_pipeline_frames_against_fp32(int8_engines, tiny_pipe):
    """The whole pipeline with the INT8 UNet (ONNX Runtime) vs the fp32 engines."""
    from vidrt import VideoPipeline

    pipe = VideoPipeline.from_pretrained(
        "tiny-svd", engine_dir=int8_engines, backend="onnxruntime", precision="int8",
        quant=QuantConfig(format="int8", **CFG), build=False, progress=False,
    )
    from conftest import make_image

    kw = dict(height=32, width=32, num_frames=3, num_inference_steps=3, output_type="np")
    q = pipe(make_image(), generator=torch.Generator().manual_seed(0), **kw).frames
    f = tiny_pipe(make_image(), generator=torch.Generator().manual_seed(0), **kw).frames
    err = np.abs(q - f)
    print(f"int8 frames vs fp32: max abs {err.max():.4f}, mean abs {err.mean():.5f}")
    # Frames live in [0, 1]; a broken UNet gives mean errors of ~0.1 or more.
    assert err.mean() < 0.05


DECODER_BOUND = 0.15  # mean relative L2 of the decoded frames vs the fp32 decoder


@pytest.mark.parametrize("variant", [None, "video-layout"])
def test_int8_decoder_qdq_graph_and_error(tiny_model, tmp_path, variant):
    """Both decoder graphs quantize: diffusers' (ONNX Runtime) and the video layout
    (OpenVINO), whose frame convolutions are modules the stage sees like any other."""
    from vidrt.export.quantize import decoder_calibration_batches

    cfg = QuantConfig(format="int8", calib_frames=3)
    batches = decoder_calibration_batches(tiny_model, cfg)
    assert len(batches) == 4 and batches[0]["latents"].shape[0] == 3
    assert not torch.equal(batches[0]["latents"][0], batches[0]["latents"][1])  # the clip moves
    result, report = export_quantized(tiny_model, "vae_decoder", cfg, tmp_path, variant=variant)
    model = onnx.load(str(result.onnx_path))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    fed_by_dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    quantized = [n for n in convs if n.input[0] in fed_by_dq]
    assert len(quantized) >= len(convs) // 2, f"{len(quantized)} of {len(convs)} convolutions quantized"
    assert "per_step" not in report and report["inputs"] == 4
    assert 0 < report["rel_l2"] <= DECODER_BOUND
    print(f"int8 decoder ({variant or 'diffusers'} graph): rel L2 {report['rel_l2']:.4f}, max abs {report['max_abs_err']:.4f}")


def test_component_precision_quantizes_the_decoder_only_where_asked():
    from vidrt.layout import component_precisions
    from vidrt.errors import VidrtError

    assert component_precisions("int8", "bf16") == {"image_encoder": "bf16", "vae_encoder": "bf16", "unet": "int8",
                                                    "vae_decoder": "bf16"}
    both = component_precisions("int8", "bf16", {"vae_decoder": "int8"})
    assert both["unet"] == both["vae_decoder"] == "int8" and both["image_encoder"] == "bf16"
    with pytest.raises(VidrtError, match="quantizes unet, vae_decoder, image_encoder only"):
        component_precisions("int8", "bf16", {"vae_encoder": "int8"})


def test_int8_image_encoder_keeps_embeddings_float(tiny_model, tmp_path):
    """--component-precision image_encoder=int8: CLIP's transformer layers quantized, its
    patch/position embeddings and output projection left float."""
    from vidrt.export.quantize import image_encoder_calibration_batches

    cfg = QuantConfig(format="int8")
    batches = image_encoder_calibration_batches(tiny_model, cfg)
    assert len(batches) == 4 and batches[0]["pixel_values"].shape[-1] == tiny_model.clip_image_size
    result, report = export_quantized(tiny_model, "image_encoder", cfg, tmp_path)
    model = onnx.load(str(result.onnx_path))
    quantizers = [n.name for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert any("/encoder/layers" in n for n in quantizers)
    assert not [n for n in quantizers if "embeddings" in n or "visual_projection" in n]
    assert 0 < report["rel_l2"] <= BOUNDS["int8"]
    print(f"int8 image encoder: rel L2 {report['rel_l2']:.4f}, max abs {report['max_abs_err']:.4f}")


def test_each_backend_reads_the_qdq_graph_in_its_float_type(tiny_model, tmp_path):
    """TensorRT's quantized components come from the fp16 Q/DQ graph, in a folder of its
    own; the CPU backends' from the fp32 one; unquantized components share onnx/."""
    from vidrt.backends import get_backend
    from vidrt.backends.tensorrt import TensorRTBackend
    from vidrt.layout import onnx_path

    def folder(backend, component, precision):
        return onnx_path(tiny_model, tmp_path, backend, component, precision).parent.name

    assert folder(TensorRTBackend, "unet", "int8") == "onnx-int8-fp16"
    assert folder(TensorRTBackend, "unet", "fp8") == "onnx-fp8-fp16"
    assert folder(get_backend("onnxruntime"), "unet", "int8") == "onnx-int8"
    assert folder(TensorRTBackend, "vae_decoder", "fp16") == "onnx"
