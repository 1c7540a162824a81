"""TensorRT backend (NVIDIA GPUs): plans built from the shared ONNX, run with one
device-memory block shared by every engine, persistent I/O tensors, and
``set_input_shape`` + ``set_tensor_address`` + ``execute_async_v3`` on the
caller's current CUDA stream (the pipeline's own stream, or a graph capture).

tensorrt and CUDA are imported only when this backend is used; the planning it
relies on (profiles, keys, compatibility, sizes) lives in vidrt.trt_plan and is
tested without a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..components import ComponentSpec
from ..errors import VidrtError
from ..trt_plan import (
    TRT_PRECISIONS,
    Profile,
    TrtOptions,
    builder_settings,
    check_plan_compatible,
    derive_profiles,
    select_profile,
    shared_device_memory,
    tensor_bytes,
)
from .base import Backend, Engine

PLAN = "model.plan"
INSTALL_HINT = "on a machine with an NVIDIA GPU: pip install -e '.[gpu]'"


def _trt():
    try:
        import tensorrt
    except ImportError:
        raise VidrtError(f"the tensorrt package is not installed; {INSTALL_HINT}") from None
    return tensorrt


def device_info() -> dict:
    major, minor = torch.cuda.get_device_capability()
    return {"name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}", "cuda": torch.version.cuda}


class SharedDeviceMemory:
    """One activation block for all execution contexts, sized by the largest need.
    Engines run one at a time on one stream, so they never use it concurrently."""

    def __init__(self):
        self.block: torch.Tensor | None = None
        self.needs: dict[str, int] = {}

    def reserve(self, component: str, nbytes: int) -> None:
        self.needs[component] = nbytes
        size = shared_device_memory(self.needs)
        if self.block is None or self.block.numel() < size:
            self.block = torch.empty(max(size, 1), dtype=torch.uint8, device="cuda")

    @property
    def ptr(self) -> int:
        return self.block.data_ptr()


SHARED_MEMORY = SharedDeviceMemory()


class TrtEngine(Engine):
    supports_cuda_graphs = True

    def __init__(self, spec: ComponentSpec, engine, profiles: list[Profile], memory: SharedDeviceMemory):
        super().__init__(spec)
        trt = _trt()
        self.engine = engine
        self.context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        self.profiles = profiles
        self.profile_index: int | None = None
        self.memory = memory
        self.memory_bytes = getattr(engine, "device_memory_size_v2", None) or engine.device_memory_size
        memory.reserve(spec.name, self.memory_bytes)

    def _run(self, feeds, outputs):
        ctx = self.context
        stream = torch.cuda.current_stream().cuda_stream
        idx = select_profile(self.profiles, {k: tuple(v.shape) for k, v in feeds.items()}, self.spec.name)
        if idx != self.profile_index:
            ctx.set_optimization_profile_async(idx, stream)
            self.profile_index = idx
        if hasattr(ctx, "set_device_memory"):  # TensorRT >= 10.1
            ctx.set_device_memory(self.memory.ptr, self.memory_bytes)
        else:
            ctx.device_memory = self.memory.ptr
        for name, t in feeds.items():
            if not t.is_cuda:
                raise VidrtError(f"{self.spec.name}: input '{name}' is on {t.device}; TensorRT engines take CUDA tensors")
            ctx.set_input_shape(name, tuple(t.shape))
            ctx.set_tensor_address(name, t.data_ptr())
        for name, t in outputs.items():
            ctx.set_tensor_address(name, t.data_ptr())
        if not ctx.execute_async_v3(stream):
            raise VidrtError(f"TensorRT failed to run {self.spec.name}; see TensorRT's messages above")


class TensorRTBackend(Backend):
    name = "tensorrt"
    precisions = TRT_PRECISIONS
    device = "cuda"
    # With --precision int8/fp8 the UNet (and, asked, the decoder) is quantized; the rest runs in fp16.
    companion_precision = "fp16"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if not torch.cuda.is_available():
            return f"TensorRT needs an NVIDIA GPU with CUDA and this machine has none; {INSTALL_HINT}"
        try:
            _trt()
        except VidrtError as e:
            return str(e)
        return None

    @classmethod
    def version(cls) -> str:
        return _trt().__version__

    @classmethod
    def machine(cls) -> dict:
        return device_info()

    @classmethod
    def options_key(cls, options) -> dict:
        return (options or TrtOptions()).describe()

    @classmethod
    def build(cls, onnx_path: Path, out_dir: Path, spec: ComponentSpec, precision: str, options=None, model=None):
        from .tensorrt_build import LOG_FILE, build_in_child

        options = options or TrtOptions()
        profiles = derive_profiles(spec.name, spec, options.shapes, model.vae_scale_factor, options.cfg_profiles)
        settings = builder_settings(precision, options, profiles)
        stats = build_in_child(onnx_path, out_dir, PLAN, settings, options.timing_cache, spec.name)
        extras = {"tensorrt_version": cls.version(), "device": device_info(), "settings": settings,
                  "builder": stats, "io_bytes": tensor_bytes(spec, profiles)}
        return [out_dir / PLAN, out_dir / LOG_FILE], extras

    @classmethod
    def load(cls, artifact_dir: Path, spec: ComponentSpec, precision: str) -> Engine:
        trt = _trt()
        manifest = json.loads((artifact_dir / "manifest.json").read_text())
        reason = check_plan_compatible(manifest, cls.version(), device_info())
        if reason:  # decided before deserializing, which could crash on a foreign plan
            raise VidrtError(f"{spec.name} plan in {artifact_dir} cannot be loaded: {reason}; rebuild with build-engines")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        runtime.engine_host_code_allowed = False
        engine = runtime.deserialize_cuda_engine((artifact_dir / PLAN).read_bytes())
        if engine is None:
            raise VidrtError(f"{spec.name} plan in {artifact_dir} did not deserialize; rebuild with build-engines")
        profiles = [
            Profile({k: tuple(tuple(s) for s in v) for k, v in p["shapes"].items()}, p["label"])
            for p in manifest["settings"]["profiles"]
        ]
        return TrtEngine(spec, engine, profiles, SHARED_MEMORY)
