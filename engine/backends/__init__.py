"""Inference backends: one small file each behind the interface in base.py.

Backends import their heavy libraries lazily, so ``import vidrt`` needs none.
"""

from __future__ import annotations

from ..errors import VidrtError

BACKEND_NAMES = ("auto", "onnxruntime", "tensorrt", "openvino")


def get_backend(name: str, announce: bool = False, precision: str = "fp32"):
    """Returns the backend class for ``name`` ('auto' picks the fastest usable one
    for ``precision``).

    Raises:
        VidrtError: unknown name, or a backend this machine or release cannot use.
    """
    if name == "auto":
        backend, why = _auto(precision)
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


def _auto(precision: str):
    """TensorRT when a CUDA GPU and TensorRT are there. On a CPU, OpenVINO when it is
    installed, for every precision: it runs bf16 (ONNX Runtime has no CPU bf16) and, on
    the graphs it asks for (Backend.graph_variants), fp32 too fastest. Measured on
    svd-xt, main-job request, AMD EPYC with AVX512-BF16 (README): OpenVINO fp32 37.5 s
    end to end (UNet 10.6 s/step) against ONNX Runtime's 42.1 s (12.6 s/step).
    Otherwise ONNX Runtime."""
    from .onnxruntime import OnnxRuntimeBackend
    from .openvino import OpenVinoBackend
    from .tensorrt import TensorRTBackend

    if TensorRTBackend.unavailable_reason() is None:
        return TensorRTBackend, "CUDA GPU and TensorRT found"
    if OpenVinoBackend.unavailable_reason() is None:
        return OpenVinoBackend, f"no CUDA GPU; OpenVINO is the fastest CPU backend for {precision}"
    return OnnxRuntimeBackend, "no CUDA GPU and no OpenVINO"
