"""Export of every tiny-svd component: ONNX vs PyTorch, TensorRT op check, external data."""

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from vidrt.export.graphs import check_point, component_graph, sample_inputs
from vidrt.export.onnx_export import ATOL, DATA_FILE, RTOL, export_component
from vidrt.export.opcheck import check_tensorrt_ops, tensorrt_ops
from vidrt.sources import load_torch_component

COMPONENTS = ["image_encoder", "vae_encoder", "unet", "vae_decoder"]


@pytest.fixture(scope="module")
def modules(tiny_model):
    return {c: load_torch_component(tiny_model, c) for c in COMPONENTS}


@pytest.mark.parametrize("component", COMPONENTS)
def test_export_matches_torch_and_parses_for_tensorrt(component, tiny_model, tiny_engine_dir):
    """The graphs build-engines exported for the session's engines (export_component,
    as every build runs it): their export-time check and TensorRT op check, and their
    bindings."""
    import json

    spec = tiny_model.specs()[component]
    folder = tiny_engine_dir / component / "onnx"
    record = json.loads((folder / "export.json").read_text())
    check = record["parity_check"]
    # Export-time check ran at a shape unlike the trace shape, within ATOL + RTOL*max|ref|.
    assert check["max_abs_err"] <= ATOL + RTOL * check["max_abs_ref"]
    assert not (folder / DATA_FILE).exists()  # tiny weights stay inside the graph
    assert record["tensorrt_ops"]["ok"], record["tensorrt_ops"]["unsupported"]
    model = onnx.load(str(folder / "model.onnx"))
    assert [i.name for i in model.graph.input] == spec.input_names
    assert [o.name for o in model.graph.output] == spec.output_names
    if component == "unet":  # one-token cross-attention: values only, no queries, keys or softmax
        cross = {n.name.split("/attn2/")[1].split("/")[0] for n in model.graph.node if "/attn2/" in n.name}
        assert {"to_v", "to_out.0"} <= cross and not cross & {"to_q", "to_k", "Softmax"}, cross


def _trained_like(vae):
    """A copy of the tiny VAE whose group norms and time mixers are away from their
    initial values (1, 0 and an even blend), so every term of the decoder counts."""
    vae = copy.deepcopy(vae)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in vae.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 0.4 - 0.2)
        for name, p in vae.named_parameters():
            if name.endswith("mix_factor"):
                p.fill_(0.3)
    return vae


def test_video_layout_decoder_is_diffusers_decoder(modules):
    vae = _trained_like(modules["vae_decoder"])
    latents = torch.randn(5, 4, 8, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = component_graph("vae_decoder", vae)(latents)
        got = component_graph("vae_decoder", vae, "video-layout")(latents)
    # Same function re-associated (3D convs, group statistics on reduced tensors): fp32 rounding.
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_video_layout_decoder_exports(tiny_model, modules, tmp_path):
    spec = tiny_model.specs()["vae_decoder"]
    # the video-layout graph takes over its module (convolutions become frame convolutions)
    graph = component_graph("vae_decoder", copy.deepcopy(modules["vae_decoder"]), "video-layout")
    result = export_component(graph, spec, tmp_path)
    assert result.check["max_abs_err"] <= ATOL + RTOL * result.check["max_abs_ref"]
    assert result.ops["ok"], result.ops["unsupported"]
    ops = {n.op_type for n in onnx.load(str(result.onnx_path)).graph.node}
    assert "Conv" in ops and "InstanceNormalization" not in ops


def test_video_layout_unet_is_diffusers_unet(tiny_model, modules):
    from vidrt.export.graphs import VideoLayoutUNetGraph

    spec = tiny_model.specs()["unet"]
    feeds = sample_inputs(spec, check_point(spec), seed=3)
    want_graph = component_graph("unet", copy.deepcopy(modules["unet"]))
    # every level in video layout (the tiny UNet has only two), and the default split
    for graph in (VideoLayoutUNetGraph(copy.deepcopy(modules["unet"]), from_level=0).eval(),
                  component_graph("unet", copy.deepcopy(modules["unet"]), "video-layout")):
        with torch.no_grad():
            want, got = want_graph(*feeds.values()), graph(*feeds.values())
        # same function re-associated: fp32 rounding
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_large_video_layout_unet_exports_and_runs_on_onnxruntime(tiny_model, modules, tmp_path):
    from vidrt.export.graphs import VideoLayoutUNetGraph

    # Graphs past protobuf's limit skip onnxslim; the export-time ORT check must still load them.
    graph = VideoLayoutUNetGraph(copy.deepcopy(modules["unet"]), from_level=0).eval()
    result = export_component(graph, tiny_model.specs()["unet"], tmp_path, external_data_threshold=1024)
    assert result.data_path is not None
    assert result.check["max_abs_err"] <= ATOL + RTOL * result.check["max_abs_ref"]


def test_unknown_graph_variant_is_refused(modules):
    from vidrt.errors import VidrtError

    with pytest.raises(VidrtError, match="no 'video-layout' graph of image_encoder"):
        component_graph("image_encoder", modules["image_encoder"], "video-layout")


def _assert_runs_like_torch(onnx_path, graph, spec):
    feeds = sample_inputs(spec, check_point(spec), seed=7)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {k: v.numpy() for k, v in feeds.items()})[0]
    with torch.no_grad():
        want = graph(*feeds.values()).numpy()
    # fp32 both sides, different kernels: same bound as the export-time check.
    assert np.abs(got - want).max() <= ATOL + RTOL * np.abs(want).max()


def test_external_data_goes_to_one_file_and_runs(tiny_model, modules, tmp_path):
    spec = tiny_model.specs()["unet"]
    graph = component_graph("unet", modules["unet"])
    result = export_component(graph, spec, tmp_path, external_data_threshold=1024)
    assert result.data_path == tmp_path / DATA_FILE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", DATA_FILE]
    model = onnx.load(str(result.onnx_path), load_external_data=False)
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {DATA_FILE}
    _assert_runs_like_torch(result.onnx_path, graph, spec)


def test_rewritten_large_graph_is_streamed_from_memory(tiny_model, modules, tmp_path):
    """A graph past the external-data threshold that is rewritten after tracing (the
    quantization stage's Q/DQ graphs) keeps one copy of its weights on disk at a time: the
    exporter's files are gone before the rewrite's weights are written, and the rewrite is
    what runs."""
    spec = tiny_model.specs()["unet"]
    graph = component_graph("unet", modules["unet"])
    seen = {}

    def rewrite(model):
        seen["trace files left"] = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
        model.graph.doc_string = "rewritten"
        return model

    result = export_component(graph, spec, tmp_path, external_data_threshold=1024, postprocess=rewrite)
    assert seen["trace files left"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", DATA_FILE]
    assert onnx.load(str(result.onnx_path), load_external_data=False).graph.doc_string == "rewritten"
    _assert_runs_like_torch(result.onnx_path, graph, spec)


def test_external_constants_are_gathered_too(tmp_path):
    """A >2 GB export keeps large Constant values in external files beside the graph (the
    real Wan transformer's rotary tables): they go into the one data file with the
    initializers, so the graph still runs once the exporter's files are gone."""
    from onnx import TensorProto, external_data_helper, helper, numpy_helper

    from vidrt.export.onnx_export import _gather_external_data

    rng = np.random.default_rng(0)
    const, weight = rng.standard_normal((64, 8)).astype(np.float32), rng.standard_normal((8, 4)).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(const, "c_value")),
             helper.make_node("Add", ["x", "c"], ["y"]), helper.make_node("MatMul", ["y", "w"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 8])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [64, 4])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    trace = tmp_path / "trace"
    trace.mkdir()
    external_data_helper.convert_model_to_external_data(model, all_tensors_to_one_file=False, size_threshold=0,
                                                         convert_attribute=True)
    external_data_helper.write_external_data_tensors(model, str(trace))  # one file per tensor, as torch writes
    assert any(a.t.data_location == TensorProto.EXTERNAL for n in model.graph.node for a in n.attribute)
    out = tmp_path / "out"
    out.mkdir()
    _gather_external_data(model, trace, out / DATA_FILE)
    onnx.save_model(model, str(out / "model.onnx"))
    import shutil

    shutil.rmtree(trace)  # the exporter's files are deleted after the gather
    x = rng.standard_normal((64, 8)).astype(np.float32)
    got = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, (x + const) @ weight, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("one_file", [False, True])
def test_gathering_consumes_the_exporters_files(tmp_path, one_file):
    """Gathering a large export deletes each of the exporter's files once its last tensor is
    copied (the weights sit on disk once, not twice), never before: tensors sharing one
    file are all read first."""
    from onnx import TensorProto, external_data_helper, helper, numpy_helper

    from vidrt.export.onnx_export import _gather_external_data

    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((8, 8)).astype(np.float32), rng.standard_normal((8, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["y"]), helper.make_node("MatMul", ["y", "w2"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 4])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    trace, out = tmp_path / "trace", tmp_path / "out"
    trace.mkdir(), out.mkdir()
    external_data_helper.convert_model_to_external_data(model, all_tensors_to_one_file=one_file, size_threshold=0,
                                                         location="shared.bin" if one_file else None)
    external_data_helper.write_external_data_tensors(model, str(trace))
    assert len(list(trace.iterdir())) == (1 if one_file else 2)
    _gather_external_data(model, trace, out / DATA_FILE, consume=True)
    assert not list(trace.iterdir())
    onnx.save_model(model, str(out / "model.onnx"))
    x = rng.standard_normal((2, 8)).astype(np.float32)
    got = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, x @ w1 @ w2, rtol=1e-5, atol=1e-5)


def test_opcheck_flags_ops_tensorrt_cannot_parse():
    from onnx import helper, TensorProto

    nodes = [
        helper.make_node("Unique", ["x"], ["u"]),
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("MyOp", ["x"], ["m"], domain="com.example"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("u", "r", "m")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    check = check_tensorrt_ops(model)
    assert not check.ok
    assert set(check.unsupported) == {"Unique", "com.example::MyOp"}
    assert "onnx-tensorrt" in check.tensorrt_list


def test_tensorrt_op_list_names_its_source():
    table = tensorrt_ops()
    assert table["source"].startswith("onnx/onnx-tensorrt")
    assert {"Conv", "MatMul", "LayerNormalization", "InstanceNormalization"} <= set(table["supported"])
    assert not set(table["supported"]) & set(table["unsupported"])


def test_unet_graph_rewrites_are_the_same_function(tiny_model):
    """Export replaces diffusers' GEGLU (one linear + split) by two linears over views of
    the same weights (no copy) and attends to the one-token context without queries or
    keys: the UNet's output is unchanged (fp32 reordering only)."""
    from diffusers.models.attention_processor import Attention

    from vidrt.export.graphs import OneTokenCrossAttention, SplitGEGLU

    unet = load_torch_component(tiny_model, "unet")
    before = load_torch_component(tiny_model, "unet")
    graph = component_graph("unet", unet)
    split = [m for m in graph.modules() if isinstance(m, SplitGEGLU)]
    assert split and all(m.value.weight.data_ptr() != m.gate.weight.data_ptr() for m in split)
    cross = {n: m for n, m in graph.named_modules() if isinstance(m, Attention) and m.is_cross_attention}
    assert cross and all(isinstance(m.processor, OneTokenCrossAttention) for m in cross.values()), list(cross)
    spec = tiny_model.specs()["unet"]
    feeds = sample_inputs(spec, check_point(spec), seed=3)
    with torch.no_grad():
        got = graph(*feeds.values())
        want = before(*feeds.values(), return_dict=False)[0]
    assert torch.allclose(got, want, atol=1e-5)
