"""TensorRT backend (NVIDIA GPUs): plans built from the shared ONNX, run with one
device-memory block per pipeline shared by its engines, and ``set_input_shape`` +
``set_tensor_address`` + ``execute_async_v3`` on the caller's current CUDA stream
(the pipeline's own stream, or a graph capture), every answer checked.

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
    check_device_precision,
    check_plan_compatible,
    check_profile_memory,
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
    return {"name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}", "cuda": torch.version.cuda,
            "memory_bytes": torch.cuda.get_device_properties(0).total_memory}


def profile_memory(model, component: str, profiles: list[Profile], precision: str, onnx_path: Path,
                   device_bytes: int | None = None) -> list[str]:
    """What each profile needs at its largest shape, one line per profile, before building.

    Raises:
        VidrtError: a profile's activations plus the weights exceed the GPU's memory.
    """
    from vidrt.export.memory_estimate import activation_peak_bytes

    device_bytes = device_bytes if device_bytes is not None else device_info()["memory_bytes"]
    onnx_bytes = sum(p.stat().st_size for p in onnx_path.parent.iterdir() if p.name.startswith("model.onnx"))
    weight_bytes = onnx_bytes * (1 if precision == "fp32" else 2) // 4  # exported fp32; engines keep fp16 or smaller
    lines = []
    for p in profiles:
        need = activation_peak_bytes(model, component, dict(p.max_dims), precision)
        lines.append(check_profile_memory(component, p, need, weight_bytes, device_bytes))
    return lines


class SharedDeviceMemory:
    """One activation block for the execution contexts of one pipeline's engines.

    The engines of a pipeline run one at a time on the pipeline's stream, so one block
    sized by the largest need serves them all. Needs are recorded as engines load; the
    block is allocated on first use and never moves afterwards, because captured CUDA
    graphs hold its address. Each pipeline has its own block, so pipelines on other
    streams never share one.
    """

    def __init__(self, allocate=None):
        self._allocate = allocate or (lambda n: torch.empty(n, dtype=torch.uint8, device="cuda"))
        self.block: torch.Tensor | None = None
        self.needs: dict[str, int] = {}

    def reserve(self, component: str, nbytes: int) -> None:
        """Records what ``component``'s context needs.

        Raises:
            VidrtError: the block is already in use and too small (it cannot move).
        """
        self.needs[component] = nbytes
        if self.block is not None and self.block.numel() < nbytes:
            raise VidrtError(f"{component} needs {nbytes} bytes of TensorRT activation memory but this pipeline's "
                             f"block ({self.block.numel()} bytes) is already in use; load every engine before the "
                             "first request (VideoPipeline.from_pretrained does)")

    @property
    def ptr(self) -> int:
        if self.block is None:
            self.block = self._allocate(max(shared_device_memory(self.needs), 1))
        return self.block.data_ptr()

    @property
    def size(self) -> int:
        return 0 if self.block is None else self.block.numel()


# TensorRT tensor types as torch dtypes (names of trt.DataType members).
TORCH_OF_TRT = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
                "INT64": torch.int64, "INT8": torch.int8, "BOOL": torch.bool}


class TrtEngine(Engine):
    supports_cuda_graphs = True

    def __init__(self, spec: ComponentSpec, engine, profiles: list[Profile], memory: SharedDeviceMemory):
        super().__init__(spec)
        trt = _trt()
        self.engine = engine
        self.context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if self.context is None:
            raise VidrtError(f"TensorRT could not create an execution context for {spec.name} (out of GPU memory?)")
        self.profiles = profiles
        self.profile_index: int | None = None
        self.memory = memory
        self.memory_bytes = getattr(engine, "device_memory_size_v2", None) or engine.device_memory_size
        memory.reserve(spec.name, self.memory_bytes)
        self.dtypes = {t.name: TORCH_OF_TRT.get(str(engine.get_tensor_dtype(t.name)).rsplit(".", 1)[-1])
                       for t in spec.inputs + spec.outputs}

    @property
    def max_dims(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.profiles:
            for dim, v in p.max_dims.items():
                out[dim] = max(out.get(dim, 0), v)
        return out

    @property
    def min_dims(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.profiles:
            for dim, v in p.min_dims.items():
                out[dim] = min(out.get(dim, v), v)
        return out

    def _run(self, feeds, outputs):
        for name, t in {**feeds, **outputs}.items():
            if not t.is_cuda:
                raise VidrtError(f"{self.spec.name}: tensor '{name}' is on {t.device}; TensorRT engines take CUDA tensors")
        self.execute(feeds, outputs, torch.cuda.current_stream().cuda_stream)

    def execute(self, feeds, outputs, stream: int) -> None:
        """Binds the tensors and enqueues one run on ``stream``, checking every TensorRT answer.

        Raises:
            VidrtError: naming the tensor TensorRT refused, or whose buffer does not match
                the shape or type the engine will write.
        """
        ctx, name = self.context, self.spec.name
        idx = select_profile(self.profiles, {k: tuple(v.shape) for k, v in feeds.items()}, name)
        if idx != self.profile_index:
            if not ctx.set_optimization_profile_async(idx, stream):
                raise VidrtError(f"{name}: TensorRT refused optimization profile {idx}")
            self.profile_index = idx
        ptr = self.memory.ptr  # allocated once, after every engine of the pipeline reserved
        if hasattr(ctx, "set_device_memory"):  # TensorRT >= 10.1: address and size
            ctx.set_device_memory(ptr, self.memory.size)
        else:
            ctx.device_memory = ptr
        for tensor, t in {**feeds, **outputs}.items():
            want = self.dtypes.get(tensor)
            if want is not None and t.dtype != want:
                raise VidrtError(f"{name}: tensor '{tensor}' is {t.dtype} but the engine's is {want}")
        for tensor, t in feeds.items():
            if not ctx.set_input_shape(tensor, tuple(t.shape)):
                raise VidrtError(f"{name}: TensorRT refused shape {list(t.shape)} for input '{tensor}' "
                                 f"(profile {self.profiles[idx].label})")
        for tensor, t in {**feeds, **outputs}.items():
            if not ctx.set_tensor_address(tensor, t.data_ptr()):
                raise VidrtError(f"{name}: TensorRT refused the address of tensor '{tensor}'")
        for tensor, t in outputs.items():
            shape = tuple(ctx.get_tensor_shape(tensor))
            if shape != tuple(t.shape):
                raise VidrtError(f"{name}: output '{tensor}' will be {list(shape)} but its buffer is {list(t.shape)}")
        if not ctx.execute_async_v3(stream):
            raise VidrtError(f"TensorRT failed to run {name}; see TensorRT's messages above")


class TensorRTBackend(Backend):
    name = "tensorrt"
    precisions = TRT_PRECISIONS
    device = "cuda"
    # With --precision int8/fp8 the UNet (and, asked, the decoder) is quantized; the rest runs in fp16.
    companion_precision = "fp16"
    # Strongly typed INT8/FP8 networks run every layer without Q/DQ in the graph's float
    # type: an fp32 Q/DQ graph would leave them fp32.
    qdq_float = "fp16"

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
    def artifact_name(cls, precision: str, options=None) -> str:
        """One folder per precision and shape-range set (tensorrt-fp16-<hash>): building
        other ranges never rebuilds, or replaces, the engines of the first."""
        return f"{cls.name}-{precision}-{(options or TrtOptions()).folder_suffix()}"

    @classmethod
    def shared_state(cls) -> "SharedDeviceMemory":
        return SharedDeviceMemory()

    @classmethod
    def build(cls, onnx_path: Path, out_dir: Path, spec: ComponentSpec, precision: str, options=None, model=None):
        from .tensorrt_build import LOG_FILE, build_in_child

        options = options or TrtOptions()
        device = device_info()
        check_device_precision(precision, device["compute_capability"], device["name"])
        profiles = derive_profiles(spec.name, spec, options.shapes, model.vae_scale_factor, options.cfg_profiles,
                                   model.temporal_factor)
        for line in profile_memory(model, spec.name, profiles, precision, onnx_path):
            print(f"vidrt: tensorrt: {line}", flush=True)
        settings = builder_settings(precision, options, profiles, model.fp16_fp32_layers)
        stats = build_in_child(onnx_path, out_dir, PLAN, settings, options.timing_cache, spec.name,
                               options.build_timeout_s)
        extras = {"tensorrt_version": cls.version(), "device": device_info(), "settings": settings,
                  "builder": stats, "io_bytes": tensor_bytes(spec, profiles)}
        return [out_dir / PLAN, out_dir / LOG_FILE], extras

    @classmethod
    def load(cls, artifact_dir: Path, spec: ComponentSpec, precision: str, shared=None) -> Engine:
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
        return TrtEngine(spec, engine, profiles, shared if shared is not None else SharedDeviceMemory())
