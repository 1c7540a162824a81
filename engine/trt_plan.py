"""TensorRT planning that needs no GPU: optimization profiles, build options and
their cache key, plan compatibility, and buffer sizing.

Everything here is plain Python over the component descriptions, so it is tested
on any machine; the TensorRT backend and builder only carry these plans out.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

from .components import DIM_WORDS, ComponentSpec, _eval_dim, component_kind
from .errors import VidrtError
from .fsutil import sha256_json

USER_DIMS = ("batch", "frames", "height", "width")
TRT_PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
# Builder flags per engine precision. INT8/FP8 engines are strongly typed: the
# Q/DQ nodes of the quantization stage's graph carry the precision, not flags.
PRECISION_FLAGS = {"fp32": (), "fp16": ("FP16",), "bf16": ("BF16",), "int8": (), "fp8": ()}
STRONGLY_TYPED = ("int8", "fp8")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4}


def parse_dims(text: str | None, flag: str) -> dict[str, int]:
    """'batch=1,frames=14,height=576,width=1024' → dict; partial lists are fine.

    Raises:
        VidrtError: unknown name, bad number, or a value below 1.
    """
    out: dict[str, int] = {}
    for part in filter(None, (text or "").split(",")):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in USER_DIMS:
            raise VidrtError(f"{flag} {text}: unknown dimension '{name}'; use {', '.join(USER_DIMS)} (e.g. batch=1,frames=14)")
        try:
            out[name] = int(value)
        except ValueError:
            raise VidrtError(f"{flag} {text}: '{value}' is not a whole number") from None
        if out[name] < 1:
            raise VidrtError(f"{flag} {text}: {name} must be at least 1")
    return out


@dataclasses.dataclass(frozen=True)
class ShapeRequest:
    """User-requested shape ranges in user terms (videos, frames, pixels)."""

    min: Mapping[str, int] = dataclasses.field(default_factory=dict)
    opt: Mapping[str, int] = dataclasses.field(default_factory=dict)
    max: Mapping[str, int] = dataclasses.field(default_factory=dict)
    static: Mapping[str, int] | None = None

    @classmethod
    def from_flags(cls, min=None, opt=None, max=None, static=None) -> "ShapeRequest":
        if static and (min or opt or max):
            raise VidrtError("--static fixes one shape; do not combine it with --min/--opt/--max")
        return cls(parse_dims(min, "--min"), parse_dims(opt, "--opt"), parse_dims(max, "--max"),
                   parse_dims(static, "--static") if static else None)

    def describe(self) -> dict:
        return {"min": dict(self.min), "opt": dict(self.opt), "max": dict(self.max),
                "static": dict(self.static) if self.static is not None else None}


GUIDED = ("unet", "transformer", "transformer_2", "text_encoder")  # guidance doubles their batch


# How a component's dims follow from the user's: (user dim, divisor from pixels, multiplier,
# temporal factor: a VAE packing k frames per latent frame makes 4k+1 frames k+1 latents).
def _dim_sources(component: str, vae_scale: int, temporal: int = 1) -> dict[str, tuple[str, int, int, int]]:
    latent = {"h": ("height", vae_scale, 1, 1), "w": ("width", vae_scale, 1, 1)}
    if component in ("image_encoder", "text_encoder"):
        return {"B": ("batch", 1, 1, 1)}
    if component in ("vae_encoder", "vae_encoder_first", "vae_encoder_chunk"):  # Wan I2V: a clip's chunks
        return {"B": ("batch", 1, 1, 1), "H": ("height", 1, 1, 1), "W": ("width", 1, 1, 1)}
    if component in ("unet", "transformer", "transformer_2"):
        return {"B": ("batch", 1, 1, 1), "F": ("frames", 1, 1, temporal), **latent}
    if component in ("vae_decoder", "vae_decoder_chunk") and temporal > 1:
        # Wan: one latent frame per call (no F); LTX: the whole latent clip
        return {"B": ("batch", 1, 1, 1), "F": ("frames", 1, 1, temporal), **latent}
    if component == "vae_decoder":
        return {"N": ("frames", 1, 1, 1), **latent}
    raise VidrtError(f"unknown component '{component}'")


def _from_user(name: str, given: int, div: int, mul: int, temporal: int, component: str) -> int:
    value = given * mul
    if temporal > 1:
        if (value - 1) % temporal:
            raise VidrtError(f"{name}={given} must be {temporal}k+1 for {component}")
        return (value - 1) // temporal + 1
    if div > 1:
        if value % div:
            raise VidrtError(f"{name}={given} must be a multiple of {div} for {component}")
        value //= div
    return value


@dataclasses.dataclass(frozen=True)
class Profile:
    """One TensorRT optimization profile: (min, opt, max) shape per input tensor."""

    shapes: Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]
    label: str = ""
    # The component's dims at the profile's max corner (what its activation memory is sized by).
    max_dims: Mapping[str, int] = dataclasses.field(default_factory=dict)
    # ... and at its min corner (not described: the shapes already say it).
    min_dims: Mapping[str, int] = dataclasses.field(default_factory=dict, compare=False)

    def contains(self, input_shapes: Mapping[str, tuple[int, ...]]) -> bool:
        for name, (lo, _, hi) in self.shapes.items():
            shape = tuple(input_shapes[name])
            if len(shape) != len(lo) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi)):
                return False
        return True

    def describe(self) -> dict:
        return {"label": self.label, "shapes": {k: [list(s) for s in v] for k, v in self.shapes.items()},
                "max_dims": dict(self.max_dims)}


# Frames per decoder call when the user names no --max: the temporal decoder's
# activations grow fast with the chunk (~9 GiB fp16 for 8 frames at 576x1024).
DEFAULT_DECODE_CHUNK = 8


def _default_max(component: str, spec: ComponentSpec) -> dict[str, int]:
    """Where a profile ends for dims the user gave no --max for: the tuned (opt) shape,
    not the model's whole range, whose activations (64 frames at 2048 px) fit no GPU.
    Larger requests then need an explicit --max."""
    top = spec.corner("opt")
    if component == "vae_decoder" and "N" in top:
        top["N"] = min(top["N"], DEFAULT_DECODE_CHUNK)
    return top


def _point(component, spec: ComponentSpec, request: ShapeRequest, vae_scale: int,
           temporal: int = 1) -> dict[str, dict[str, int]]:
    """min/opt/max of every dynamic dim of ``spec`` from the user's request."""
    sources = {d: v for d, v in _dim_sources(component_kind(component), vae_scale, temporal).items() if d in spec.ranges}
    corners = {"min": spec.corner("min"), "opt": spec.corner("opt"), "max": _default_max(component, spec)}
    if request.static is not None:  # dims the user cannot name (text length) sit at their opt
        corners["min"], corners["max"] = dict(corners["opt"]), dict(corners["opt"])
    for which in ("min", "opt", "max"):
        user = request.static if request.static is not None else getattr(request, which)
        for dim, (name, div, mul, k) in sources.items():
            if name in user:
                corners[which][dim] = _from_user(name, user[name], div, mul, k, component)
    asked_max = _requested(request, "max", sources)
    asked_opt = _requested(request, "opt", sources)
    for dim in spec.ranges:  # an --opt beyond the default end moves the end with it
        if request.static is None and dim not in asked_max and dim in asked_opt:
            corners["max"][dim] = max(corners["max"][dim], corners["opt"][dim])
    for dim, expr in spec.derived.items():  # after the dims it is computed from
        for which in ("min", "opt", "max"):
            corners[which][dim] = _eval_dim(expr, corners[which])
    for dim, rng in spec.ranges.items():
        lo, opt, hi = corners["min"][dim], corners["opt"][dim], corners["max"][dim]
        opt = min(max(opt, lo), hi) if request.static is None and dim not in asked_opt else opt
        corners["opt"][dim] = opt
        word = DIM_WORDS.get(dim, dim)
        if not lo <= opt <= hi:
            raise VidrtError(f"{component}: {word} needs min <= opt <= max, got {lo} <= {opt} <= {hi}; fix --min/--opt/--max")
        for v in (lo, opt, hi):
            if not rng.contains(v):
                mult = f", a multiple of {rng.multiple}" if rng.multiple > 1 else ""
                raise VidrtError(
                    f"{component}: {word}={v} is outside what the model supports ({rng.min}..{rng.max}{mult}); fix --min/--opt/--max"
                )
    return corners


def _requested(request: ShapeRequest, which: str, sources: dict) -> set[str]:
    user = getattr(request, which)
    return {dim for dim, (name, *_) in sources.items() if name in user}


def derive_profiles(component: str, spec: ComponentSpec, request: ShapeRequest, vae_scale: int,
                    cfg_profiles: bool = True, temporal: int = 1) -> list[Profile]:
    """Optimization profiles of one component from the model's ranges and the request.

    The UNet gets two profiles when ``cfg_profiles``: guidance batches both halves
    (2×videos), no guidance runs videos alone; each profile is tuned for its batch.
    The decoder's chunk dim spans 1..frames×batch videos.

    Raises:
        VidrtError: a requested value outside the model's range, or min > opt > max.
    """
    corners = _point(component, spec, request, vae_scale, temporal)
    # Guidance doubles the batch of the denoiser and of the text encoder (negative prompts).
    guided = component_kind(component) in GUIDED and cfg_profiles
    if guided and request.static is None:
        # The description's batch range counts UNet rows (2 per guided video); the
        # user's batch counts videos, so unrequested defaults are halved.
        if "batch" not in request.max:
            corners["max"]["B"] = max(corners["min"]["B"], corners["max"]["B"] // 2)
        if "batch" not in request.opt:
            corners["opt"]["B"] = min(max(corners["min"]["B"], spec.opt.get("B", 2) // 2), corners["max"]["B"])
    if component == "vae_decoder" and "N" in spec.ranges and "frames" in (request.static or request.max):
        videos = (request.static or request.max).get("batch", 1)
        rng = spec.ranges["N"]
        corners["max"]["N"] = min(rng.max, corners["max"]["N"] * videos)
    profiles = [_profile(spec, corners, "default")]
    if guided:
        doubled = {k: dict(v, B=v["B"] * 2) for k, v in corners.items()}
        if doubled["max"]["B"] > spec.ranges["B"].max:
            raise VidrtError(f"{component}: batch {corners['max']['B']} with guidance needs {doubled['max']['B']} > {spec.ranges['B'].max}; lower --max batch")
        profiles = [_profile(spec, doubled, "cfg"), _profile(spec, corners, "no-cfg")]
    return profiles


def _profile(spec: ComponentSpec, corners, label) -> Profile:
    shapes = {}
    for t in spec.inputs:
        shapes[t.name] = tuple(spec.shape_of(t, corners[w]) for w in ("min", "opt", "max"))
    return Profile(shapes, label, dict(corners["max"]), dict(corners["min"]))


def select_profile(profiles: list[Profile], input_shapes: Mapping[str, tuple[int, ...]], component: str) -> int:
    """Index of the first profile that holds these shapes.

    Raises:
        VidrtError: no profile does; names the tensor, its shape and the ranges.
    """
    for i, p in enumerate(profiles):
        if p.contains(input_shapes):
            return i
    name, shape = next(iter(input_shapes.items()))
    ranges = "; ".join(f"{p.label}: {list(p.shapes[name][0])}..{list(p.shapes[name][2])}" for p in profiles)
    raise VidrtError(
        f"{component}: input '{name}' of shape {list(shape)} is outside this engine's profiles ({ranges}); "
        "rebuild with build-engines --backend tensorrt --min/--max covering it"
    )


@dataclasses.dataclass(frozen=True)
class TrtOptions:
    """TensorRT build options (build-engines flags map onto these)."""

    shapes: ShapeRequest = ShapeRequest()
    optimization_level: int = 3
    workspace_mb: int | None = None
    timing_cache: str | None = None
    cfg_profiles: bool = True
    tf32: bool = False  # fp32 layers on TF32 tensor cores (10-bit mantissa): only when asked
    build_timeout_s: float | None = None  # a build still running then is stopped

    def __post_init__(self):
        if not 0 <= self.optimization_level <= 5:
            raise VidrtError(f"--opt-level {self.optimization_level}: TensorRT takes 0..5")
        if self.workspace_mb is not None and self.workspace_mb < 1:
            raise VidrtError(f"--workspace {self.workspace_mb}: give a size in MiB, at least 1")
        if self.build_timeout_s is not None and not self.build_timeout_s > 0:
            raise VidrtError(f"--build-timeout {self.build_timeout_s}: give seconds, more than 0")

    def describe(self) -> dict:
        # The timing cache speeds builds up but does not change what is built.
        return {"shapes": self.shapes.describe(), "optimization_level": self.optimization_level,
                "workspace_mb": self.workspace_mb, "cfg_profiles": self.cfg_profiles, "tf32": self.tf32}

    def folder_suffix(self) -> str:
        """Short hash of what changes the plan: engines built with other shape ranges or
        settings live in their own folder, so switching never rebuilds one in place."""
        return sha256_json(self.describe())[:10]


def builder_settings(precision: str, options: TrtOptions, profiles: list[Profile],
                     fp32_layers: tuple[str, ...] = ()) -> dict:
    """Everything the builder is told, as data (recorded in the manifest, hashed into the key).

    ``fp32_layers``: layer-name patterns (fnmatch, on the ONNX node names TensorRT's parser
    gives its layers) kept in fp32 in an fp16 build, where fp16's range would overflow
    (the Wan transformer's RMS and layer norms square activations beyond 65504). Set only
    where asked: other builds' settings, and so their cache keys, stay as they were."""
    if precision not in TRT_PRECISIONS:
        raise VidrtError(f"TensorRT precision '{precision}': choose one of {', '.join(TRT_PRECISIONS)}")
    keep = list(fp32_layers) if precision == "fp16" and fp32_layers else []
    return ({"fp32_layers": keep} if keep else {}) | {
        "precision": precision,
        "flags": list(PRECISION_FLAGS[precision]),
        # TensorRT turns TF32 on by default; vidrt keeps fp32 math fp32 unless --tf32.
        "tf32": options.tf32,
        "strongly_typed": precision in STRONGLY_TYPED,
        "optimization_level": options.optimization_level,
        "workspace_bytes": options.workspace_mb * 2**20 if options.workspace_mb else None,
        "profiles": [p.describe() for p in profiles],
        "engine_host_code_allowed": False,
    }


# Lowest compute capability whose tensor cores run each precision (bf16: Ampere, 8.0;
# fp8: Ada/Hopper, 8.9). TensorRT would otherwise fail deep inside a build, or fall back.
MIN_COMPUTE_CAPABILITY = {"bf16": (8, 0), "fp8": (8, 9)}


def check_device_precision(precision: str, compute_capability: str, gpu: str = "this GPU") -> None:
    """Raises VidrtError when the GPU cannot run ``precision`` natively."""
    need = MIN_COMPUTE_CAPABILITY.get(precision)
    have = tuple(int(x) for x in compute_capability.split(".")[:2])
    if need and have < need:
        fallback = "fp16" if precision == "bf16" else "int8 or fp16"
        raise VidrtError(f"--precision {precision} needs compute capability {need[0]}.{need[1]} or newer; "
                         f"{gpu} is {compute_capability}: use --precision {fallback}")


def check_profile_memory(component: str, profile: "Profile", activation_bytes: int, weight_bytes: int,
                         device_bytes: int) -> str:
    """One line saying what a profile needs on the GPU (printed before building).

    Raises:
        VidrtError: activations at the profile's largest shape plus the weights exceed the
            GPU's memory; names the shape and how to shrink it.
    """
    dims = ",".join(f"{DIM_WORDS.get(k, k)}={v}" for k, v in profile.max_dims.items())
    line = (f"{component} profile '{profile.label}': up to {dims}: ~{activation_bytes / 2**30:.1f} GiB of activations "
            f"+ {weight_bytes / 2**30:.1f} GiB of weights (estimate; GPU has {device_bytes / 2**30:.1f} GiB)")
    if activation_bytes + weight_bytes > device_bytes:
        raise VidrtError(f"{line}: does not fit; lower --max (frames, height, width or batch), "
                         "or --static for one shape")
    return line


def check_plan_compatible(manifest: Mapping, tensorrt_version: str, device: Mapping) -> str | None:
    """Why a plan cannot be deserialized here (None if it can), decided from its manifest.

    TensorRT plans are tied to the TensorRT version that built them and, without
    hardware compatibility mode, to the GPU's compute capability.
    """
    built = manifest.get("tensorrt_version")
    if built != tensorrt_version:
        return f"plan built by TensorRT {built}, this is TensorRT {tensorrt_version}"
    cc = manifest.get("device", {}).get("compute_capability")
    if cc != device.get("compute_capability"):
        return f"plan built for compute capability {cc}, this GPU is {device.get('compute_capability')} ({device.get('name')})"
    if manifest.get("settings", {}).get("engine_host_code_allowed"):
        return "plan allows host code; vidrt only loads plans built without it"
    return None


def tensor_bytes(spec: ComponentSpec, profiles: list[Profile], dtypes: Mapping[str, str] | None = None) -> dict[str, int]:
    """Largest size in bytes of every input and output over all profiles (persistent buffers)."""
    sizes: dict[str, int] = {}
    dtypes = dtypes or {}
    for p in profiles:
        maxdims = spec.bind({name: s[2] for name, s in p.shapes.items()})
        shapes = {t.name: p.shapes[t.name][2] for t in spec.inputs} | spec.output_shapes(maxdims)
        for t in spec.inputs + spec.outputs:
            n = math.prod(shapes[t.name]) * DTYPE_BYTES[dtypes.get(t.name, t.dtype)]
            sizes[t.name] = max(sizes.get(t.name, 0), n)
    return sizes


def shared_device_memory(sizes: Mapping[str, int]) -> int:
    """Bytes of the one activation block all engines' contexts share: they run one
    at a time, so the largest engine's need covers all."""
    return max(sizes.values(), default=0)
