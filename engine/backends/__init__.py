"""Inference backends: one small file each behind the interface in base.py.

Backends import their heavy libraries lazily, so ``import vidrt`` needs none.
"""

from __future__ import annotations

from ..errors import VidrtError

BACKEND_NAMES = ("auto", "onnxruntime", "tensorrt", "openvino")


def get_backend(name: str, announce: bool = False):
    """Returns the backend class for ``name`` ('auto' picks the best usable one).

    Raises:
        VidrtError: unknown name, or a backend this machine or release cannot use.
    """
    if name == "auto":
        backend, why = _auto()
        if announce:
            print(f"vidrt: backend auto -> {backend.name} ({why})", flush=True)
    elif name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend as backend
    elif name == "tensorrt":
        from .tensorrt import TensorRTBackend as backend
    elif name == "openvino":
        from .openvino import OpenVinoBackend as backend
    else:
        raise VidrtError(f"unknown backend '{name}'; choose one of: {', '.join(BACKEND_NAMES)}")
    reason = backend.unavailable_reason()
    if reason:
        raise VidrtError(f"backend {backend.name} is not usable here: {reason}")
    return backend


def _auto():
    """TensorRT when a CUDA GPU and TensorRT are there; on a CPU, OpenVINO (faster
    than ONNX Runtime on these models: bf16 on AMX, int8), else ONNX Runtime."""
    from .onnxruntime import OnnxRuntimeBackend
    from .openvino import OpenVinoBackend
    from .tensorrt import TensorRTBackend

    trt_reason = TensorRTBackend.unavailable_reason()
    if trt_reason is None:
        return TensorRTBackend, "CUDA GPU and TensorRT found"
    if OpenVinoBackend.unavailable_reason() is None:
        return OpenVinoBackend, "no CUDA GPU; OpenVINO is the fastest CPU backend installed"
    return OnnxRuntimeBackend, "no CUDA GPU and no OpenVINO"
