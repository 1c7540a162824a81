"""Where a model's engines live and at which precision each component runs: the
engine folder, each component's ONNX folder and the precision policy. The build steps
(vidrt.build) and the loaders read them; nothing here exports or builds.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from . import settings
from .components import component_kind
from .errors import VidrtError

QUANTIZED = ("int8", "fp8")  # precisions that come from the quantization stage
# components it calibrates (export/quantize.py CALIBRATION)
QUANTIZABLE = ("unet", "vae_decoder", "image_encoder", "transformer", "transformer_2")


def component_precisions(precision: str, companion: str = "fp32", overrides: dict | None = None,
                         components: tuple[str, ...] = ("image_encoder", "vae_encoder", "unet", "vae_decoder"),
                         force_upcast: bool = False, denoisers: tuple[str, ...] = ("unet",),
                         quantizable: tuple[str, ...] = ("unet", "vae_decoder", "image_encoder"),
                         keep_fp32: tuple[str, ...] = ()) -> dict[str, str]:
    """Precision of each component's engine for a requested ``--precision``.

    INT8/FP8 apply to the ``denoisers`` (the UNet, Wan's transformers), where the compute is; the encoders and the VAE
    decoder run in the backend's float precision (``companion``: fp32 on ONNX
    Runtime, fp16 on TensorRT). ``overrides`` (``--component-precision``) sets
    single components, e.g. a VAE decoder kept at fp32 where fp16 overflows, or
    quantized too (``vae_decoder=int8``, ``image_encoder=int8``).
    ``components`` are the model's (``model.components``). ``force_upcast`` (the VAE
    config's flag, set for SVD) keeps an fp16 VAE encoder at fp32, as diffusers
    upcasts the VAE to encode.
    """
    if precision in QUANTIZED:  # a denoiser cut for step caching (vidrt.split): each of its stages
        out = {c: (precision if component_kind(c) in denoisers else companion) for c in components}
    else:
        out = {c: precision for c in components}
    if force_upcast and out.get("vae_encoder") == "fp16":
        out["vae_encoder"] = "fp32"
    for c in keep_fp32:  # the model's own advice (Wan: its VAE in fp32); --component-precision overrides
        if out.get(c) in ("fp16", "bf16"):
            out[c] = "fp32"
    for c, p in (overrides or {}).items():
        if c not in components and not any(component_kind(part) == c for part in components):
            raise VidrtError(f"--component-precision: unknown component '{c}'; use {', '.join(components)}")
        if p in QUANTIZED and c not in quantizable:
            raise VidrtError(f"--component-precision {c}={p}: the quantization stage quantizes {', '.join(quantizable)} only")
        if c in components:
            out[c] = p
        # a split text encoder's parts follow its first one (text_encoder); a step-cache
        # transformer's stages follow the transformer
        for part in components:
            if part != c and component_kind(part) == c and part not in (overrides or {}):
                out[part] = p
    return out


def onnx_dir_name(precision: str, variant: str | None = None, qdq_float: str = "fp32") -> str:
    """Folder of a component's ONNX: fp32 graphs in onnx/, Q/DQ graphs in onnx-<format>/
    (onnx-<format>-fp16/ when their unquantized layers are fp16), a graph variant
    (export/graphs.py GRAPH_VARIANTS) in onnx-<variant>/ or onnx-<format>-<variant>/."""
    quantized = precision in QUANTIZED
    parts = (["onnx"] + ([precision] if quantized else []) + ([qdq_float] if quantized and qdq_float != "fp32" else [])
             + ([variant] if variant else []))
    return "-".join(parts)


def graph_variant(model, backend, component: str) -> str | None:
    """The ONNX graph variant ``backend`` runs ``component`` from: the one it asks for
    when the model's component has it, else None (diffusers' own graph). Quantized
    components too: the stage quantizes the graph the backend runs."""
    want = backend.graph_variants.get(component)
    return want if want in model.graph_variants.get(component, ()) else None


def onnx_path(model, engine_dir: Path, backend, component: str, precision: str) -> Path:
    """The ONNX file ``backend`` builds ``component`` at ``precision`` from."""
    variant = graph_variant(model, backend, component)
    return Path(engine_dir) / component / onnx_dir_name(precision, variant, backend.qdq_float) / "model.onnx"


def default_engine_dir(model, unet_weights: str | None) -> Path:
    """One engine directory per model (and UNet weights): every backend and precision
    lives in it side by side and shares the ONNX export."""
    adapter = getattr(model, "motion_adapter_path", None)
    extra = f"|{adapter}" if adapter is not None else ""
    ident = hashlib.sha256(f"{model.folder.resolve()}|{unet_weights or ''}{extra}".encode()).hexdigest()[:10]
    return settings.cache_dir() / "engines" / f"{model.folder.name}-{ident}"


def weight_files(model, component: str, unet_weights: str | None) -> list[Path]:
    folder = model.folder / model.weights_folder[component]
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    adapter = getattr(model, "motion_adapter_path", None)
    if component == "unet" and adapter is not None:  # merged into the UNet at load time
        files += sorted(p for p in adapter.iterdir() if p.suffix in (".safetensors", ".bin", ".json")) if adapter.is_dir() else [adapter]
    if component == "unet" and unet_weights:
        files.append(Path(unet_weights).resolve())
    return files


def engine_precisions(model, backend, precision: str, overrides: dict | None) -> dict[str, str]:
    """Each of ``model``'s components' precision on ``backend`` for ``--precision``."""
    return component_precisions(precision, backend.companion_precision, overrides, model.components,
                                force_upcast=bool(getattr(model, "vae", {}).get("force_upcast", False)),
                                denoisers=model.denoisers, quantizable=model.quantizable, keep_fp32=model.keep_fp32)
