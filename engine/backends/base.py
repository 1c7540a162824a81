"""The backend interface: build an artifact from ONNX, load it, run it on named tensors.

A backend implements four small methods (``version``, ``build``, ``load`` and
``Engine._run``); input checks, output buffers, timing and error wording live
here, once.
"""

from __future__ import annotations

import abc
import contextlib
import time
from pathlib import Path
from typing import Mapping

import torch

from ..components import ComponentSpec
from ..cache import BoundedCache
from ..errors import VidrtError
from ..settings import debug_slowdown

TORCH_DTYPES = {"float32": torch.float32, "int64": torch.int64, "int32": torch.int32}


class Engine(abc.ABC):
    """One compiled component. Call it with named input tensors.

    Output tensors are allocated once per input shape and reused: a result is
    valid until the next call with the same shape. Pass ``out=`` to have an
    engine write straight into the caller's tensors instead.
    """

    def __init__(self, spec: ComponentSpec):
        self.spec = spec
        self._buffers = BoundedCache()  # output tensors per input shape
        self._slowdown = debug_slowdown().get(spec.name, 1.0)  # a test hook; 1.0 unless VIDRT_DEBUG_SLOWDOWN names it

    def __call__(self, out: Mapping[str, torch.Tensor] | None = None, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        dims = self.spec.bind({k: tuple(v.shape) for k, v in feeds.items()})
        self.spec.check(dims)
        for t in self.spec.inputs:
            want = TORCH_DTYPES[t.dtype]
            if feeds[t.name].dtype != want:
                raise VidrtError(f"{self.spec.name}: input '{t.name}' is {feeds[t.name].dtype}, this engine takes {t.dtype}")
        feeds = {k: v if v.is_contiguous() else v.contiguous() for k, v in feeds.items()}
        outputs = self._outputs(dims, feeds, out)
        start = time.perf_counter()
        self._run(feeds, outputs)
        if self._slowdown != 1.0:
            time.sleep((self._slowdown - 1.0) * (time.perf_counter() - start))
        return outputs

    def _outputs(self, dims, feeds, out) -> dict[str, torch.Tensor]:
        shapes = self.spec.output_shapes(dims)
        device = next(iter(feeds.values())).device
        if out is not None:
            for name, shape in shapes.items():
                t = out.get(name)
                if t is None or tuple(t.shape) != shape or not t.is_contiguous() or t.dtype != torch.float32:
                    raise VidrtError(f"{self.spec.name}: out['{name}'] must be a contiguous float32 tensor of {shape}")
            return dict(out)
        key = (device.type, tuple(sorted(dims.items())))
        return self._buffers.get_or_make(
            key, lambda: {n: torch.empty(s, dtype=torch.float32, device=device) for n, s in shapes.items()}
        )

    @property
    def max_dims(self) -> dict[str, int]:
        """Largest value of each dim this engine takes, where it is narrower than the
        component's declared range (TensorRT profiles); empty when it takes the whole range."""
        return {}

    @property
    def min_dims(self) -> dict[str, int]:
        """Smallest value of each dim this engine takes, where it is narrower than the
        declared range (TensorRT profiles, static shapes); empty when it takes the whole range."""
        return {}

    @abc.abstractmethod
    def _run(self, feeds: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        """Runs the engine, writing every output tensor in place."""

    def release(self) -> None:
        """Gives back the memory the backend keeps between calls for intermediate tensors;
        the next call allocates it again. A no-op where a backend keeps none it can give
        back (OpenVINO can: OvEngine.release)."""

    @contextlib.contextmanager
    def held(self):
        """For a block of calls (the denoising loop): the intermediate memory stays between
        the block's calls and is given back after it, before the next stage allocates its own."""
        try:
            yield self
        finally:
            self.release()


class OnDemandEngine(Engine):
    """An engine loaded for each call and freed after it, so its weights take memory only
    while it runs: for a component run once per request whose weights do not fit beside
    the rest (Wan's UMT5-XXL text encoder, 22.7 GB at fp32, on a 24 GB machine). Every
    call pays the load; the stage's time says so. Inside ``held()`` one load serves every
    call (the denoising loop holds its denoiser so: one load per request, freed before the
    decoder runs).
    """

    def __init__(self, spec: ComponentSpec, load):
        """``load()`` returns the engine. It runs once here, so a missing or broken
        artifact fails when the pipeline loads, not in the middle of a request."""
        super().__init__(spec)
        self._load = load
        self._held = None
        probe = load()
        self._min, self._max = probe.min_dims, probe.max_dims

    @property
    def min_dims(self) -> dict[str, int]:
        return self._min

    @property
    def max_dims(self) -> dict[str, int]:
        return self._max

    @contextlib.contextmanager
    def held(self):
        """Loads the engine once for every call inside the block; frees it after."""
        self._held = self._load()
        try:
            yield self
        finally:
            self._held = None

    def _run(self, feeds, outputs):
        if self._held is not None:
            self._held._run(feeds, outputs)
            return
        engine = self._load()
        try:
            engine._run(feeds, outputs)  # the outputs are this engine's own buffers: they outlive it
        finally:
            del engine


def held(engine):
    """``engine.held()``: an engine's calls inside the block keep their intermediate memory
    (an on-demand engine, its load; vidrt.step_cache.CachedDenoiser, its stages'); a
    stand-in without ``held`` (tests' fakes) is yielded as it is."""
    return engine.held() if hasattr(engine, "held") else contextlib.nullcontext(engine)


def release(*engines) -> None:
    """``Engine.release()`` of each engine that has one, then trim_heap(): the tensors given
    back go to the C heap first, which otherwise keeps them (svd-xt's idle RSS on OpenVINO
    crept up ~150 MB a request without the trim)."""
    for engine in engines:
        if hasattr(engine, "release"):
            engine.release()
    trim_heap()


def trim_heap() -> None:
    """Hands the C heap's free pages back to the system, where glibc can; elsewhere the
    allocator keeps what it keeps."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Backend(abc.ABC):
    """Builds engine artifacts from ONNX and loads them."""

    name: str = ""
    precisions: tuple[str, ...] = ()
    device: str = "cpu"  # where the engines take their tensors
    companion_precision: str = "fp32"  # precision of the unquantized components under int8/fp8
    artifact_format: int = 1  # bumped when a backend changes what it writes: older artifacts rebuild
    # The artifact is tied to where its graph lies (OpenVINO's cache key holds the path):
    # a moved engine folder rebuilds it once instead of recompiling at every load.
    keyed_by_graph_path: bool = False
    # Float type of a Q/DQ graph's unquantized layers (export/quantize.py QDQ_FLOATS): a
    # backend that builds the graph strongly typed runs them in the graph's own type.
    qdq_float: str = "fp32"
    # component -> ONNX graph variant this backend runs faster, used where the model has it
    graph_variants: dict[str, str] = {}

    @classmethod
    def options_key(cls, options) -> dict:
        """Backend build options that change the artifact (hashed into its cache key)."""
        return {}

    @classmethod
    def artifact_name(cls, precision: str, options=None) -> str:
        """Folder name of a component's artifact: one per precision, and per build
        option set a backend keeps side by side (so switching does not rebuild)."""
        return f"{cls.name}-{precision}"

    @classmethod
    @abc.abstractmethod
    def unavailable_reason(cls) -> str | None:
        """None when usable here, else one line saying why not and how to fix it."""

    @classmethod
    @abc.abstractmethod
    def version(cls) -> str:
        """Version string recorded in manifests (a different version rebuilds)."""

    @classmethod
    def machine(cls) -> dict:
        """What the artifact is specific to, beyond the backend version."""
        return {}

    @classmethod
    def check_precision(cls, precision: str) -> None:
        if precision not in cls.precisions:
            raise VidrtError(
                f"backend {cls.name} builds {', '.join(cls.precisions)} engines, not {precision}; "
                "choose --precision " + " or ".join(cls.precisions)
            )

    @classmethod
    @abc.abstractmethod
    def build(cls, onnx_path: Path, out_dir: Path, spec: ComponentSpec, precision: str, options=None, model=None):
        """Builds the artifact into ``out_dir``.

        Returns:
            (files written, extra manifest fields).
        """

    @classmethod
    def shared_state(cls):
        """What the engines of one pipeline share when loaded together (TensorRT: its
        activation block), or None."""
        return None

    @classmethod
    @abc.abstractmethod
    def load(cls, artifact_dir: Path, spec: ComponentSpec, precision: str, shared=None) -> Engine:
        """Loads a built artifact as an Engine (``shared``: from ``shared_state``)."""
