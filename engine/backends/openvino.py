"""OpenVINO backend (CPU): the same ONNX, compiled by OpenVINO with its on-disk model
cache as the artifact.

Precisions: fp32 and bf16 (OpenVINO's inference-precision hint; bf16 runs on AMX or
AVX512-BF16 where the CPU has them, fp32 elsewhere), and int8/fp8 for the quantization stage's Q/DQ
UNet and decoder (int8 runs integer kernels, AMX or VNNI; the other components run bf16). Inputs and outputs stay
float32 and are shared with torch tensors, so nothing is copied.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from ..components import ComponentSpec
from ..errors import VidrtError
from .base import Backend, Engine

CACHE = "ov_cache"
# OpenVINO's inference precision per vidrt precision (Q/DQ graphs keep their int8/fp8
# ops whatever the hint; the hint sets the precision of everything else), on a CPU with
# native bf16 (AMX or AVX512-BF16). Elsewhere bf16 becomes f32 (see hint()).
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "bf16", "fp8": "bf16"}


@functools.cache
def native_bf16() -> bool:
    """OpenVINO has bf16 kernels for this CPU (AMX or AVX512-BF16)."""
    return "BF16" in _ov().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@functools.cache
def _cpu_properties() -> frozenset[str]:
    """The CPU plugin's property names (TBB_PARTITIONER is newer than the oldest OpenVINO vidrt takes)."""
    return frozenset(_ov().Core().get_property("CPU", "SUPPORTED_PROPERTIES"))


def kernel_config(precision: str) -> dict:
    """How vidrt's engines ask OpenVINO to run: the precision hint() and latency, and where
    this OpenVINO has it, the auto partitioner. The benchmarks' GEMM ceiling and op profile
    compile with it too, so they measure the kernels the engines run."""
    config = {"INFERENCE_PRECISION_HINT": hint(precision), "PERFORMANCE_HINT": "LATENCY"}
    if "TBB_PARTITIONER" in _cpu_properties():
        # OpenVINO splits a kernel's work between the threads statically by default; the
        # auto partitioner balances it as the threads go. Alternated in one process on a 2-core
        # AVX-512 Xeon, fp32 (2026-12-07): the diffusion transformers' layers 4-7% faster
        # (Wan 2.1, CogVideoX-2b; their FFN's FullyConnected with GELU fused, alone: 17%),
        # svd-xt's UNet and decoder unchanged. Not measured on an AMX CPU.
        config["TBB_PARTITIONER"] = "AUTO"
    return config


def hint(precision: str) -> str:
    """The inference-precision hint vidrt gives OpenVINO for ``precision`` on this CPU.
    Without native bf16, OpenVINO runs a bf16 hint in fp32 on AVX2-only CPUs, but emulates
    bf16 on AVX-512 ones, measured 45x slower than fp32 (a 2048^3 matmul: 0.004 against
    0.18 TFLOP/s, OpenVINO 2026.4, a 2-core Xeon with AVX-512 and VNNI but no AVX512-BF16,
    2026-12-03); so vidrt asks for f32 there and says so once (warn_without_bf16)."""
    wanted = HINTS[precision]
    return wanted if wanted != "bf16" or native_bf16() else "f32"


def _ov():
    try:
        import openvino
    except ImportError:
        raise VidrtError("openvino is not installed; pip install openvino") from None
    return openvino


@dataclasses.dataclass(frozen=True)
class OvOptions:
    """OpenVINO compile options: a static shape (user terms), threads and streams."""

    static: dict | None = None
    threads: int | None = None  # default: every core OpenVINO sees
    streams: int = 1  # one request at a time: latency, not throughput

    def describe(self) -> dict:
        return dataclasses.asdict(self)


MADV_PAGEOUT = 21  # Linux 5.4+: reclaim these pages now


def page_out_mapped(folder: Path) -> int:
    """Gives back the pages this process holds of files mapped from ``folder``; returns
    how many mappings it asked for.

    OpenVINO maps its cached blob and reads the weights from it while it loads and while
    the first inference repacks them into its own layout; afterwards the mapped pages sit
    in the process's RSS unused (8.5 GB of svd-xt's 19.5 GB peak). They are clean file
    pages: anything that touches them again reads them back from the file, so this only
    costs time, never correctness. Where the kernel lacks MADV_PAGEOUT the pages stay
    (memory, not results, is what changes), so madvise's answer is not checked.
    """
    if not sys.platform.startswith("linux"):
        return 0
    prefix = str(Path(folder).resolve()) + os.sep
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return 0
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    count = 0
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith(prefix):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            madvise(start, end - start, MADV_PAGEOUT)
            count += 1
    return count


class OvEngine(Engine):
    def __init__(self, spec: ComponentSpec, compiled, static_shapes: dict | None = None, blob_dir: Path | None = None):
        super().__init__(spec)
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.static_shapes = static_shapes
        self.blob_dir = blob_dir  # pages of its mapped blob are given back after the first run
        if blob_dir is not None:
            page_out_mapped(blob_dir)

    @property
    def min_dims(self) -> dict[str, int]:
        return self.spec.bind(self.static_shapes) if self.static_shapes else {}

    @property
    def max_dims(self) -> dict[str, int]:
        return self.min_dims

    def _run(self, feeds, outputs):
        ov = _ov()
        for name, shape in (self.static_shapes or {}).items():
            if list(feeds[name].shape) != list(shape):
                raise VidrtError(
                    f"{self.spec.name}: this engine was built for the static shape {shape} of '{name}', got "
                    f"{list(feeds[name].shape)}; rebuild with another --static, or without it for dynamic shapes"
                )
        req = self.request
        for name, t in feeds.items():
            req.set_tensor(name, ov.Tensor(t.numpy(), shared_memory=True))
        for name, t in outputs.items():
            req.set_tensor(name, ov.Tensor(t.numpy(), shared_memory=True))
        req.infer()
        if self.blob_dir is not None:  # the weights are repacked now: the blob's pages are not needed
            page_out_mapped(self.blob_dir)
            self.blob_dir = None
        for name, t in outputs.items():
            got = req.get_tensor(name).data
            if got.ctypes.data != t.data_ptr():  # OpenVINO chose its own buffer: copy once
                np.copyto(t.numpy(), got)

    def release(self) -> None:
        """Frees the infer request's intermediate tensors (OpenVINO keeps them, sized for the
        largest shape seen, until told otherwise): ~1 GB each for svd-xt's UNet and decoder at
        128x128 and 14 frames. Faulting them in again costs ~0.2 s per GB at the next call."""
        self.compiled.release_memory()


class OpenVinoBackend(Backend):
    name = "openvino"
    precisions = ("fp32", "bf16", "int8", "fp8")
    companion_precision = "bf16"
    # 2: compiled from the graph's path, so a load finds the blob without reading the graph;
    # 3: TBB_PARTITIONER in the compile config (a 2 blob's config differs: it would compile at every load)
    artifact_format = 3
    keyed_by_graph_path = True
    # its layout reorders around diffusers' frame <-> video permutes cost ~half the decoder's
    # time, and its 2D convolutions are slow on the UNet's smallest latents (export/video_layout.py)
    graph_variants = {"vae_decoder": "video-layout", "unet": "video-layout"}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            _ov()
        except VidrtError as e:
            return str(e)
        return None

    @classmethod
    def version(cls) -> str:
        return _ov().__version__

    @classmethod
    def machine(cls) -> dict:
        core = _ov().Core()
        return {
            "cpu": core.get_property("CPU", "FULL_DEVICE_NAME"),
            "capabilities": sorted(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
        }

    @classmethod
    def options_key(cls, options) -> dict:
        return (options or OvOptions()).describe()

    @classmethod
    def artifact_name(cls, precision: str, options=None) -> str:
        """Static-shape engines live beside the dynamic ones (openvino-bf16-static-b1-f14-h128-w128)."""
        static = (options or OvOptions()).static
        if not static:
            return super().artifact_name(precision)
        return f"{cls.name}-{precision}-static-" + "-".join(f"{k[0]}{v}" for k, v in sorted(static.items()))

    @classmethod
    def _config(cls, precision: str, options: OvOptions, cache_dir: Path) -> dict:
        config = kernel_config(precision) | {"NUM_STREAMS": str(options.streams), "CACHE_DIR": str(cache_dir)}
        if options.threads:
            config["INFERENCE_NUM_THREADS"] = str(options.threads)
        return config

    @classmethod
    def _compile(cls, onnx_path: Path, shapes: dict | None, config: dict):
        """Build and load compile alike, so OpenVINO's cache key is the same at both. From the
        graph's path, OpenVINO looks its cache up before reading the graph: a load then maps
        only the compiled blob (6 GB for svd-xt's fp32 UNet) instead of the graph and the blob.
        A static shape needs the graph read and reshaped first."""
        if not shapes:
            return _ov().Core().compile_model(str(onnx_path), "CPU", config)
        core, ov_model = cls._read(onnx_path, shapes)
        return core.compile_model(ov_model, "CPU", config)

    @classmethod
    def _read(cls, onnx_path: Path, shapes: dict | None):
        core = _ov().Core()
        ov_model = core.read_model(str(onnx_path))
        if shapes:  # static-shape specialisation: OpenVINO plans for exactly this shape
            ov_model.reshape(shapes)
        return core, ov_model

    @classmethod
    def build(cls, onnx_path: Path, out_dir: Path, spec: ComponentSpec, precision: str, options=None, model=None):
        cls.check_precision(precision)
        options = options or OvOptions()
        shapes = static_shapes(spec, options.static, model) if options.static else None
        cache = out_dir / CACHE
        cache.mkdir(parents=True, exist_ok=True)
        try:
            cls._compile(Path(onnx_path).resolve(), shapes, cls._config(precision, options, cache))  # as load names it
        except RuntimeError as e:
            raise VidrtError(f"OpenVINO could not compile {spec.name}: {str(e).splitlines()[0]}") from e
        files = sorted(p for p in cache.iterdir() if p.is_file())
        if not any(p.suffix == ".blob" for p in files):
            raise VidrtError(f"OpenVINO compiled {spec.name} but wrote no cached blob to {cache}; loading would compile "
                             "again every time (is the disk full?)")
        extras = {"onnx": os.path.relpath(onnx_path, out_dir), "openvino_config": cls._config(precision, options, Path(CACHE)),
                  "static_shapes": shapes}
        return files, extras

    @classmethod
    def load(cls, artifact_dir: Path, spec: ComponentSpec, precision: str, shared=None) -> Engine:
        manifest = json.loads((artifact_dir / "manifest.json").read_text())
        options = OvOptions(**manifest["options"])
        onnx = _verified_graph(artifact_dir, manifest)
        cache = artifact_dir / CACHE
        before = _blobs(cache)
        try:
            compiled = cls._compile(onnx, manifest.get("static_shapes"), cls._config(precision, options, cache))
        except RuntimeError as e:
            raise VidrtError(f"OpenVINO could not load {spec.name} from {artifact_dir}: {str(e).splitlines()[0]}; "
                             "rebuild it with build-engines") from e
        written = _blobs(cache) - before
        if written:
            # OpenVINO compiled again instead of reading the build's blob. The engine works,
            # but the artifact stays as built (and as its manifest lists): drop the new files.
            for name in written:
                (cache / name).unlink(missing_ok=True)
            warnings.warn(f"vidrt: OpenVINO compiled {spec.name} again at load instead of reading the blob "
                          f"build-engines left in {cache}; loads will stay slow until it is rebuilt", stacklevel=2)
        if HINTS[precision] == "bf16":
            warn_without_bf16()
        return OvEngine(spec, compiled, manifest.get("static_shapes"), blob_dir=cache)


@functools.cache
def warn_without_bf16() -> None:
    """Says once per process when this CPU has no bf16 kernels for OpenVINO (no AMX, no
    AVX512-BF16): vidrt then runs its bf16 engines in fp32 (hint()), at fp32's speed and memory."""
    if not native_bf16():
        warnings.warn("vidrt: this CPU has no bf16 kernels (OpenVINO reports no BF16 capability: no AMX or "
                      "AVX512-BF16), so OpenVINO runs the bf16 engines in fp32", stacklevel=3)


def _blobs(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir()} if cache.is_dir() else set()


def _verified_graph(artifact_dir: Path, manifest: dict) -> Path:
    """The ONNX graph an artifact was built from, if it is the engine folder's own export:
    inside the component's folder, unchanged since export, with the hash the build recorded.

    Raises:
        VidrtError: the manifest points elsewhere, or the graph changed.
    """
    from ..manifest import EXPORT_MANIFEST, inside, read_manifest

    component_dir = artifact_dir.parent
    onnx = (artifact_dir / str(manifest.get("onnx", ""))).resolve()
    export = read_manifest(onnx.parent / EXPORT_MANIFEST) if inside(onnx, component_dir) else None
    record = (export or {}).get("files", {}).get(onnx.name)
    expected = (manifest.get("onnx_sha256") or {}).get(onnx.name)
    if record is None or expected is None or record["sha256"] != expected:
        raise VidrtError(f"{artifact_dir}: its manifest names a graph ({manifest.get('onnx')}) that is not this engine "
                         "folder's export; rebuild with build-engines")
    for rel, rec in export["files"].items():  # the graph and its external weights
        path = onnx.parent / rel
        st = path.stat() if path.is_file() and inside(path, onnx.parent) else None
        if st is None or st.st_size != rec["size"] or st.st_mtime_ns != rec["mtime_ns"]:
            raise VidrtError(f"{path} changed since export; rebuild with build-engines")
    return onnx


def static_shapes(spec: ComponentSpec, static: dict, model) -> dict[str, list[int]]:
    """Input shapes of one component at the user's static point (guided batch for the UNet)."""
    from ..trt_plan import ShapeRequest, derive_profiles

    profile = derive_profiles(spec.name, spec, ShapeRequest(static=static), model.vae_scale_factor,
                              temporal=model.temporal_factor)[0]
    return {name: list(shapes[0]) for name, shapes in profile.shapes.items()}
