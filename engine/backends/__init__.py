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
        from .onnxruntime import OnnxRuntimeBackend
        from .tensorrt import TensorRTBackend

        # TensorRT when a CUDA GPU and TensorRT are there; else ONNX Runtime, which
        # runs everywhere (the OpenVINO CPU backend is not in this release).
        reason = TensorRTBackend.unavailable_reason()
        backend = TensorRTBackend if reason is None else OnnxRuntimeBackend
        if announce:
            why = "CUDA GPU and TensorRT found" if reason is None else "no usable TensorRT: " + reason.split(";")[0]
            print(f"vidrt: backend auto -> {backend.name} ({why})", flush=True)
    elif name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend as backend
    elif name == "tensorrt":
        from .tensorrt import TensorRTBackend as backend
    elif name == "openvino":
        raise VidrtError("--backend openvino is not available in this vidrt release; use --backend onnxruntime")
    else:
        raise VidrtError(f"unknown backend '{name}'; choose one of: {', '.join(BACKEND_NAMES)}")
    reason = backend.unavailable_reason()
    if reason:
        raise VidrtError(f"backend {backend.name} is not usable here: {reason}")
    return backend
