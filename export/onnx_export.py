"""Export one component to ONNX, clean it up, check it against PyTorch.

Graphs over 2 GB keep their weights in one external-data file beside the graph
(``model.onnx.data``), which ONNX Runtime, OpenVINO and TensorRT all read.
"""

from __future__ import annotations

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
) -> ExportResult:
    """Exports ``graph`` (whose forward matches ``spec``) to ``out_dir/model.onnx``.

    Args:
        graph: torch module taking the spec's inputs in order.
        spec: the component description (names, dynamic axes, ranges).
        out_dir: folder to write into (callers make it atomic).
        opset: ONNX opset.
        external_data_threshold: total weight bytes above which weights go to
            one external-data file (protobuf cannot hold more than 2 GB).

    Returns:
        ExportResult with the export-time parity check and TensorRT op check.

    Raises:
        VidrtError: export failed or the graph disagrees with PyTorch.
    """
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    model = _trace_to_onnx(graph, spec, out_dir, opset)
    model = _cleanup(model)
    onnx_path, data_path = _save(model, out_dir, external_data_threshold)
    ops = check_tensorrt_ops(model).as_dict()
    del model
    # Shape inference through the file: works past protobuf's 2 GB limit.
    onnx.shape_inference.infer_shapes_path(str(onnx_path), str(onnx_path))
    check = check_against_torch(graph, spec, onnx_path)
    return ExportResult(onnx_path, data_path, time.perf_counter() - start, check, ops)


def _trace_to_onnx(graph, spec: ComponentSpec, out_dir: Path, opset: int) -> onnx.ModelProto:
    trace_dir = out_dir / "_trace"
    trace_dir.mkdir(exist_ok=True)
    feeds = sample_inputs(spec, trace_point(spec))
    args = tuple(feeds[name] for name in spec.input_names)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
            torch.onnx.export(
                graph,
                args,
                str(trace_dir / GRAPH_FILE),
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes(),
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        return onnx.load(str(trace_dir / GRAPH_FILE), load_external_data=True)
    except Exception as e:
        raise VidrtError(f"exporting {spec.name} to ONNX failed: {type(e).__name__}: {e}") from e
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)


def _cleanup(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding, dead-node removal and op fusion with onnxslim.

    onnxslim's own shape inference serialises the model in memory, which fails
    past 2 GB; shapes are inferred after saving instead (see export_component).
    """
    import onnxslim

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return onnxslim.slim(model, no_shape_infer=True)


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of all initializers (what decides whether protobuf can hold the graph)."""
    total = 0
    for t in model.graph.initializer:
        total += len(t.raw_data) if t.HasField("raw_data") else onnx.helper.tensor_dtype_to_np_dtype(
            t.data_type
        ).itemsize * int(np.prod(t.dims))
    return total


def _save(model: onnx.ModelProto, out_dir: Path, threshold: int) -> tuple[Path, Path | None]:
    onnx_path = out_dir / GRAPH_FILE
    if weight_bytes(model) < threshold:
        onnx.save_model(model, str(onnx_path))
        return onnx_path, None
    onnx.save_model(
        model,
        str(onnx_path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=DATA_FILE,
        size_threshold=1024,
    )
    return onnx_path, out_dir / DATA_FILE


def check_against_torch(graph, spec: ComponentSpec, onnx_path: Path) -> dict:
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
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in feeds.items()})[0]
    del session
    with torch.no_grad():
        want = graph(*(feeds[n] for n in spec.input_names)).float().numpy()
    if got.shape != want.shape:
        raise VidrtError(f"{spec.name}: ONNX output shape {got.shape} != PyTorch {want.shape} at {point}")
    err = float(np.abs(got - want).max())
    scale = float(np.abs(want).max())
    tol = ATOL + RTOL * scale
    result = {"dims": point, "max_abs_err": err, "max_abs_ref": scale, "tolerance": tol}
    if not err <= tol:
        raise VidrtError(
            f"{spec.name}: exported ONNX disagrees with PyTorch (max abs err {err:.3g} > {tol:.3g} at {point}); "
            "this is a vidrt or exporter bug, please report it"
        )
    return result
