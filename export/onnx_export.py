"""Export one component to ONNX, clean it up, check it against PyTorch.

Graphs over 2 GB keep their weights in one external-data file beside the graph
(``model.onnx.data``), which ONNX Runtime, OpenVINO and TensorRT all read.
"""

from __future__ import annotations

import collections
import dataclasses
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from vidrt.components import ComponentSpec
from vidrt.errors import VidrtError

from .graphs import check_point, sample_inputs, trace_point
from .opcheck import check_tensorrt_ops

OPSET = 17
PROTOBUF_LIMIT = 2**31 - 1
GRAPH_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"

# Export-time check: |onnx - torch| <= ATOL + RTOL * max|torch|. fp32 on both
# sides; the slack covers kernels summing in another order (ORT vs ATen).
ATOL = 1e-4
RTOL = 1e-3


@dataclasses.dataclass
class ExportResult:
    """What exporting one component produced and how it checked out."""

    onnx_path: Path
    data_path: Path | None
    seconds: float
    check: dict
    ops: dict

    def files(self) -> list[Path]:
        return [self.onnx_path] + ([self.data_path] if self.data_path else [])


def export_component(
    graph: torch.nn.Module,
    spec: ComponentSpec,
    out_dir: Path,
    *,
    opset: int = OPSET,
    external_data_threshold: int = PROTOBUF_LIMIT,
    postprocess=None,
    cleanup: bool = True,
    tolerance: tuple[float, float] | None = (ATOL, RTOL),
) -> ExportResult:
    """Exports ``graph`` (whose forward matches ``spec``) to ``out_dir/model.onnx``.

    Graphs whose weights fit in protobuf are cleaned up with onnxslim in memory.
    Larger ones (the real UNet and CLIP) are never held in memory as ONNX: the
    exporter's per-tensor files are streamed into one data file, and shapes are
    inferred through the file (the exporter has already folded constants).

    Args:
        graph: torch module taking the spec's inputs in order.
        spec: the component description (names, dynamic axes, ranges).
        out_dir: folder to write into (callers make it atomic).
        opset: ONNX opset.
        external_data_threshold: weight bytes from which weights go to one
            external-data file (protobuf cannot hold more than 2 GB).
        postprocess: optional ModelProto -> ModelProto applied after tracing
            (the quantization stage rewrites FP8 Q/DQ ops with it).
        cleanup: run onnxslim on graphs under the threshold (off for Q/DQ
            graphs, whose weight quantizers constant folding would erase).
        tolerance: (atol, rtol) of the export-time check against PyTorch, or
            None when the caller checks the graph itself (the quantization stage
            compares Q/DQ graphs with the fp32 model, not with fake quantization).

    Returns:
        ExportResult with the export-time parity check and TensorRT op check.

    Raises:
        VidrtError: export failed or the graph disagrees with PyTorch.
    """
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    trace_dir = out_dir / "_trace"
    try:
        _trace_to_onnx(graph, spec, trace_dir / GRAPH_FILE, opset)
        model = onnx.load(str(trace_dir / GRAPH_FILE), load_external_data=False)
        onnx_path, data_path = out_dir / GRAPH_FILE, None
        if _initializer_bytes(model, trace_dir) < external_data_threshold:
            onnx.load_external_data_for_model(model, str(trace_dir))
            if cleanup:
                model = _cleanup(model)
            else:
                _drop_initializer_identities(model)
            model = postprocess(model) if postprocess else model
        else:
            if postprocess:
                # Rewritten in memory, then streamed from memory: the trace's copy of the
                # weights is freed first, so a 5 GB graph needs 5 GB free on disk, not 15.
                # (Otherwise the trace's files are deleted as they are gathered.)
                onnx.load_external_data_for_model(model, str(trace_dir))
                shutil.rmtree(trace_dir)
                model = postprocess(model)
            data_path = out_dir / DATA_FILE
            _drop_initializer_identities(model)
            _gather_external_data(model, trace_dir, data_path, consume=True)
        onnx.save_model(model, str(onnx_path))
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)
    ops = check_tensorrt_ops(model).as_dict()
    del model
    # Shape inference through the file: works past protobuf's 2 GB limit.
    onnx.shape_inference.infer_shapes_path(str(onnx_path), str(onnx_path))
    check = check_against_torch(graph, spec, onnx_path, tolerance) if tolerance else {"skipped": "checked by caller"}
    return ExportResult(onnx_path, data_path, time.perf_counter() - start, check, ops)


def _trace_to_onnx(graph, spec: ComponentSpec, path: Path, opset: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    feeds = sample_inputs(spec, trace_point(spec))
    args = tuple(feeds[name] for name in spec.input_names)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
            torch.onnx.export(
                graph,
                args,
                str(path),
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes(),
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as e:
        raise VidrtError(f"exporting {spec.name} to ONNX failed: {type(e).__name__}: {e}") from e


def _cleanup(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding, dead-node removal and op fusion with onnxslim.

    onnxslim's own shape inference serialises the model in memory; shapes are
    inferred after saving instead, one way for every size (see export_component).
    """
    import onnxslim

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return onnxslim.slim(model, no_shape_infer=True)


def _is_external(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL


def _external_info(t: onnx.TensorProto) -> dict:
    return {e.key: e.value for e in t.external_data}


def _initializer_bytes(model: onnx.ModelProto, base: Path) -> int:
    """Bytes of all initializers, whether embedded or in external files."""
    total = 0
    for t in model.graph.initializer:
        if _is_external(t):
            info = _external_info(t)
            total += int(info["length"]) if "length" in info else (base / info["location"]).stat().st_size
        elif t.HasField("raw_data"):
            total += len(t.raw_data)
        else:
            total += onnx.numpy_helper.to_array(t).nbytes
    return total


def _drop_initializer_identities(model: onnx.ModelProto) -> None:
    """Consumers of an Identity over an initializer read the initializer itself.

    torch's exporter writes such Identities for constants it shares; onnxslim removes
    them from graphs it can hold in memory, and in larger ones ONNX Runtime's basic
    optimiser trips over them ("Node input ... is not a graph input, initializer, or
    output of a previous node").
    """
    initializers = {t.name for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    alias = {
        n.output[0]: n.input[0]
        for n in model.graph.node
        if n.op_type == "Identity" and n.input[0] in initializers and n.output[0] not in outputs
    }
    if not alias:
        return
    kept = [n for n in model.graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for node in kept:
        for k, name in enumerate(node.input):
            node.input[k] = alias.get(name, name)
    del model.graph.node[:]
    model.graph.node.extend(kept)


def _stored_tensors(model: onnx.ModelProto):
    """Every initializer, and every Constant-like node's tensor attribute stored outside the
    graph (torch's exporter writes large constants of a >2 GB model, such as the Wan
    transformer's rotary tables, as external files too)."""
    yield from model.graph.initializer
    for node in model.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and _is_external(a.t):
                yield a.t


def _gather_external_data(model: onnx.ModelProto, base: Path, data_path: Path, align: int = 4096,
                          consume: bool = False) -> None:
    """Streams every initializer (and every external constant) into one external-data file,
    one tensor in memory at a time. With ``consume``, each of ``base``'s files is deleted once
    its last tensor is copied, so the weights are on disk about once, not twice."""
    readers = collections.Counter(_external_info(t)["location"] for t in _stored_tensors(model) if _is_external(t))
    with open(data_path, "wb") as out:
        for t in _stored_tensors(model):
            if _is_external(t):
                info = _external_info(t)
                with open(base / info["location"], "rb") as f:
                    f.seek(int(info.get("offset", 0)))
                    blob = f.read(int(info["length"])) if "length" in info else f.read()
                readers[info["location"]] -= 1
                if consume and not readers[info["location"]]:
                    (base / info["location"]).unlink()
            elif t.HasField("raw_data"):
                blob = t.raw_data
            else:
                blob = onnx.numpy_helper.to_array(t).tobytes()
            pad = (-out.tell()) % align
            out.write(b"\0" * pad)
            offset = out.tell()
            out.write(blob)
            for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
                t.ClearField(field)
            t.ClearField("raw_data")
            del t.external_data[:]
            t.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(len(blob)))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value


def check_against_torch(graph, spec: ComponentSpec, onnx_path: Path, tolerance=(ATOL, RTOL)) -> dict:
    """Runs the ONNX graph (ONNX Runtime, CPU) and PyTorch on the same random inputs.

    Uses a shape unlike the trace shape, so a dynamic axis that was baked in
    fails here rather than at run time.

    Raises:
        VidrtError: outputs differ beyond ATOL + RTOL * max|torch|.
    """
    import onnxruntime as ort

    point = check_point(spec)
    feeds = sample_inputs(spec, point, seed=1)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # Basic optimisation only: enough for a numerical check, and no second copy of large weights.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in feeds.items()})
    del session
    with torch.no_grad():
        want = graph(*(feeds[n] for n in spec.input_names))
    want = [w.float().numpy() for w in (want if isinstance(want, tuple) else (want,))]
    for name, g, w in zip(spec.output_names, got, want):
        if g.shape != w.shape:
            raise VidrtError(f"{spec.name}: ONNX output '{name}' shape {g.shape} != PyTorch {w.shape} at {point}")
    if not all(np.isfinite(w).all() for w in want):
        raise VidrtError(f"{spec.name}: the PyTorch model itself gives NaN or Inf outputs at {point}; its weights "
                         "(or config) are damaged: re-download or re-save the model")
    err = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
    scale = max(float(np.abs(w).max()) for w in want)
    tol = tolerance[0] + tolerance[1] * scale
    result = {"dims": point, "max_abs_err": err, "max_abs_ref": scale, "tolerance": tol}
    if not err <= tol:
        raise VidrtError(
            f"{spec.name}: exported ONNX disagrees with PyTorch (max abs err {err:.3g} > {tol:.3g} at {point}); "
            "this is a vidrt or exporter bug, please report it"
        )
    return result
