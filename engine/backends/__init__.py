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

        # TensorRT (GPU) and OpenVINO (CPU) backends are not in this release;
        # ONNX Runtime is the backend that runs everywhere.
        if announce:
            print("vidrt: backend auto -> onnxruntime (the only backend in this release)", flush=True)
        backend = OnnxRuntimeBackend
    elif name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend as backend
    elif name in ("tensorrt", "openvino"):
        raise VidrtError(
            f"--backend {name} is not available in this vidrt release; use --backend onnxruntime"
            + (" (TensorRT also needs an NVIDIA GPU: pip install -e .[gpu])" if name == "tensorrt" else "")
        )
    else:
        raise VidrtError(f"unknown backend '{name}'; choose one of: {', '.join(BACKEND_NAMES)}")
    reason = backend.unavailable_reason()
    if reason:
        raise VidrtError(f"backend {backend.name} is not usable here: {reason}")
    return backend
