"""ONNX Runtime backend (CPU provider; CUDA provider where onnxruntime-gpu and a GPU exist).

Build: ONNX Runtime's offline graph optimisation at the 'extended' level, saved
as the artifact, so loading skips it; hardware-specific layout passes still run
at load time. Run: IO binding straight onto torch tensors, no copies.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from ..components import ComponentSpec
from ..errors import VidrtError
from .base import Backend, Engine

ARTIFACT = "model.opt.onnx"
ARTIFACT_DATA = "model.opt.onnx.data"
_NUMPY = {torch_name: np.dtype(torch_name) for torch_name in ("float32", "int64", "int32")}


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise VidrtError("onnxruntime is not installed; pip install onnxruntime (or onnxruntime-gpu)") from None
    return onnxruntime


def _providers(ort) -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OrtEngine(Engine):
    def __init__(self, spec: ComponentSpec, session):
        super().__init__(spec)
        self.session = session
        self.binding = session.io_binding()

    def _run(self, feeds, outputs):
        b = self.binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        for name, t in feeds.items():
            dtype = _NUMPY[str(t.dtype).removeprefix("torch.")]
            b.bind_input(name, t.device.type, t.device.index or 0, dtype, list(t.shape), t.data_ptr())
        for name, t in outputs.items():
            b.bind_output(name, t.device.type, t.device.index or 0, np.float32, list(t.shape), t.data_ptr())
        self.session.run_with_iobinding(b)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    # int8/fp8: the quantization stage's Q/DQ UNet or decoder (int8 runs integer kernels on
    # CPU; FP8 dequantizes to fp32, which is how FP8 graphs are checked here).
    precisions = ("fp32", "int8", "fp8")

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            _ort()
        except VidrtError as e:
            return str(e)
        return None

    @classmethod
    def version(cls) -> str:
        return _ort().__version__

    @classmethod
    def machine(cls) -> dict:
        return {"providers": _providers(_ort()), "arch": platform.machine()}

    @classmethod
    def _options(cls, ort):
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        return opts

    @classmethod
    def build(cls, onnx_path: Path, out_dir: Path, spec: ComponentSpec, precision: str, options=None, model=None):
        ort = _ort()
        cls.check_precision(precision)
        opts = cls._options(ort)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(out_dir / ARTIFACT)
        external = (onnx_path.parent / "model.onnx.data").exists()
        if external:
            opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", ARTIFACT_DATA)
            opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        try:
            ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise VidrtError(f"ONNX Runtime could not build {spec.name}: {str(e).splitlines()[0]}") from e
        return [out_dir / ARTIFACT] + ([out_dir / ARTIFACT_DATA] if external else []), {}

    @classmethod
    def load(cls, artifact_dir: Path, spec: ComponentSpec, precision: str, shared=None) -> Engine:
        ort = _ort()
        opts = cls._options(ort)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ORT's memory pattern plans one block per input-shape set on a session's second
        # run while the arena keeps the first run's chunks: tiny-svd's server held 300 MB
        # (40%) more from its second request on, for no measurable speed (1.2-1.4 s a call
        # either way, benchmarks/RESULTS.md). The arena alone reuses the buffers.
        opts.enable_mem_pattern = False
        try:
            session = ort.InferenceSession(str(artifact_dir / ARTIFACT), opts, providers=_providers(ort))
        except Exception as e:
            raise VidrtError(
                f"ONNX Runtime could not load the {spec.name} engine in {artifact_dir}: {str(e).splitlines()[0]}; "
                "rebuild it with build-engines"
            ) from e
        return OrtEngine(spec, session)
