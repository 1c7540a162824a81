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
    """TensorRT when a CUDA GPU and TensorRT are there. On a CPU, by precision, as
    measured on the real svd-xt UNet (README): bf16/int8/fp8 on OpenVINO (bf16 on
    AMX; ONNX Runtime has no CPU bf16), fp32 on ONNX Runtime (as fast as OpenVINO
    fp32 there, with ~4 GB less memory)."""
    from .onnxruntime import OnnxRuntimeBackend
    from .openvino import OpenVinoBackend
    from .tensorrt import TensorRTBackend

    if TensorRTBackend.unavailable_reason() is None:
        return TensorRTBackend, "CUDA GPU and TensorRT found"
    if precision != "fp32" and OpenVinoBackend.unavailable_reason() is None:
        return OpenVinoBackend, f"no CUDA GPU; OpenVINO is the fastest CPU backend for {precision}"
    if precision == "fp32":
        return OnnxRuntimeBackend, "no CUDA GPU; ONNX Runtime is the fastest CPU backend for fp32"
    return OnnxRuntimeBackend, "no CUDA GPU and no OpenVINO"
