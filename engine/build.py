"""build-engines: export each component to ONNX and build it for a backend, reusing
whatever is already built from the same inputs.

Build and run are separate: this module imports the exporter (and torch models)
only when something has to be exported.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import time
from pathlib import Path

from .components import component_kind
from .errors import VidrtError
from .fsutil import atomic_dir, atomic_write_json, folder_lock, sha256_json
from .layout import QUANTIZED, engine_precisions, graph_variant, onnx_dir_name, onnx_path, weight_files
from .prune import touch_used
from .manifest import (
    BUILD_MANIFEST,
    EXPORT_MANIFEST,
    SCHEMA,
    files_record,
    read_manifest,
    refuse,
    source_hashes,
    verify,
)

EXPORT_FORMAT = 3  # bump when export code changes what it writes
@dataclasses.dataclass
class ComponentBuild:
    """What prepare_engines did for one component."""

    component: str
    artifact_dir: Path
    exported: bool
    built: bool
    build_s: float  # export + build seconds spent now (0 when reused)
    recorded_build_s: float  # seconds the current artifact took when it was built
    size_bytes: int
    reason: str  # why it was (re)built, or "reused"


def versions() -> dict:
    """Versions of everything an artifact depends on."""
    from importlib import metadata

    out = {}
    for pkg in ("torch", "diffusers", "transformers", "onnx", "onnxslim", "onnxruntime", "nvidia-modelopt"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


@dataclasses.dataclass
class BuildPlan:
    """What one prepare_engines call works from: the request, then (under the engine
    folder's lock) each component's graph folder, export key and the source hashes.
    Each build step below takes the plan and a component."""

    model: object
    engine_dir: Path
    backend: type
    precision: str
    precisions: dict[str, str]  # component -> engine precision
    quant: object = None  # QuantConfig where a component is quantized
    unet_weights: str | None = None
    options: object = None  # backend build options
    build: bool = True
    full_verify: bool = False
    progress: bool = True
    specs: dict = dataclasses.field(default_factory=dict)  # component -> ComponentSpec
    versions: dict = dataclasses.field(default_factory=dict)
    hashes: dict = dataclasses.field(default_factory=dict)  # source path -> {sha256, size, mtime_ns}
    variants: dict = dataclasses.field(default_factory=dict)  # component -> graph variant or None
    onnx_dirs: dict = dataclasses.field(default_factory=dict)  # component -> its ONNX folder
    export_keys: dict = dataclasses.field(default_factory=dict)

    @property
    def components(self) -> tuple[str, ...]:
        return self.model.components

    def weight_files(self, c: str) -> list[Path]:
        return weight_files(self.model, c, self.unet_weights)

    def quantized(self, c: str) -> bool:
        return self.precisions[c] in QUANTIZED


def prepare_engines(
    model,
    engine_dir: Path,
    backend,
    precision: str,
    *,
    unet_weights: str | None = None,
    quant=None,
    backend_options=None,
    component_precision: dict | None = None,
    build: bool = True,
    full_verify: bool = False,
    progress: bool = True,
) -> dict[str, ComponentBuild]:
    """Makes sure every component has a verified artifact for ``backend``/``precision``.

    Args:
        model: the resolved model folder.
        engine_dir: where engines live.
        backend: backend class (from vidrt.backends.get_backend).
        precision: engine precision.
        unet_weights: optional replacement UNet state dict.
        quant: QuantConfig for int8/fp8 (default: built-in calibration set).
        backend_options: backend build options (TrtOptions for TensorRT).
        component_precision: per-component precision overrides.
        build: export/build what is missing or stale; when False, refuse instead.
        full_verify: re-hash every file, not only those whose size/mtime changed.
        progress: show progress bars.

    Raises:
        VidrtError: something is stale and ``build`` is False, or a build failed.
    """
    precisions = engine_precisions(model, backend, precision, component_precision)
    for p in set(precisions.values()):
        backend.check_precision(p)
    quantized = [c for c, p in precisions.items() if p in QUANTIZED]
    if quantized and model.kind not in ("image-to-video", "wan", "wan-i2v", "ltx", "ltx-i2v", "cogvideox", "cogvideox-i2v"):
        raise VidrtError(
            f"--precision {precisions[quantized[0]]}: the quantization stage calibrates SVD-family and diffusion "
            "transformer models only so far; build ModelScope and AnimateDiff engines with fp32 or bf16"
        )
    if len({precisions[c] for c in quantized}) > 1:
        raise VidrtError("--component-precision: quantize every quantized component to the same format (int8 or fp8)")
    if quantized and quant is None:
        quant = _built_or_default_quant(Path(engine_dir), precisions[quantized[0]], quantized)
    plan = BuildPlan(model, Path(engine_dir), backend, precision, precisions, quant, unet_weights, backend_options,
                     build, full_verify, progress)
    if not build:  # only reads: a read-only engine folder serves too
        return _prepare_locked(plan)
    with folder_lock(plan.engine_dir, "engines", progress):
        return _prepare_locked(plan)


def _prepare_locked(plan: BuildPlan) -> dict[str, ComponentBuild]:
    """The build steps, in order: locate the graphs, find stale exports, export them,
    build (or reuse) each component's artifact."""
    _locate(plan)
    stale = _stale_exports(plan)
    if stale and not plan.build:
        c, reason = next(iter(stale.items()))
        raise refuse(c, plan.onnx_dirs[c], reason)
    export_s = _export_all(plan, stale)

    from tqdm.auto import tqdm

    results: dict[str, ComponentBuild] = {}
    bar = tqdm(plan.components, desc=f"build {plan.backend.name}-{plan.precision}", disable=not plan.progress,
               unit="component")
    for c in bar:
        bar.set_postfix_str(c)
        results[c] = _build_one(plan, c)
        results[c].exported = c in stale
        results[c].build_s += export_s.get(c, 0.0)
        if c in stale:
            results[c].reason = f"exported ({stale[c]})"
        touch_used(plan.onnx_dirs[c])  # what `vidrt prune` sorts by
        touch_used(results[c].artifact_dir)
    return results


def _locate(plan: BuildPlan) -> None:
    """Fills in the plan's source hashes, graph variants, ONNX folders and export keys."""
    model, backend = plan.model, plan.backend
    specs = plan.specs = model.specs()
    plan.versions = versions()
    plan.hashes = _source_hashes(model, plan.engine_dir, plan.unet_weights)
    plan.variants = {c: graph_variant(model, backend, c) for c in plan.components}
    plan.onnx_dirs = {c: onnx_path(model, plan.engine_dir, backend, c, plan.precisions[c]).parent for c in plan.components}
    vers = plan.versions
    plan.export_keys = {
        c: sha256_json(
            {
                "component": c,
                "format": EXPORT_FORMAT,
                "spec": specs[c].describe(),
                "sources": {p: plan.hashes[p]["sha256"] for p in map(str, plan.weight_files(c))},
                "versions": {k: vers[k] for k in ("torch", "diffusers", "transformers", "onnx", "onnxslim")},
            }
            | ({"quant": plan.quant.describe(), "modelopt": vers.get("nvidia-modelopt")} if plan.quantized(c) else {})
            | ({"qdq_float": backend.qdq_float} if plan.quantized(c) and backend.qdq_float != "fp32" else {})
            | ({"variant": plan.variants[c]} if plan.variants[c] else {})
        )
        for c in plan.components
    }


def _stale_exports(plan: BuildPlan) -> dict[str, str]:
    """component -> why its ONNX export must be (re)made, for those that must."""
    stale = {}
    for c in plan.components:
        _, reason = verify(plan.onnx_dirs[c], EXPORT_MANIFEST, plan.export_keys[c], plan.full_verify)
        if reason:
            stale[c] = reason
    return stale


def _built_or_default_quant(engine_dir: Path, precision: str, components: list[str]):
    """The quantization options the quantized components were built with, else the
    defaults: loading engines built with custom calibration must not re-quantize them."""
    from vidrt.export.quantize import QuantConfig

    for c in components:
        for folder in sorted((engine_dir / c).glob(f"{onnx_dir_name(precision)}*")):
            config = ((read_manifest(folder / EXPORT_MANIFEST) or {}).get("quantization") or {}).get("config")
            if config:
                return QuantConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    return QuantConfig(format=precision)


def _source_hashes(model, engine_dir: Path, unet_weights: str | None) -> dict:
    cache_file = engine_dir / "sources.json"
    cache = (read_manifest(cache_file) or {}).get("files", {})
    paths = sorted({p for c in model.components for p in weight_files(model, c, unet_weights)})
    for p in paths:
        if not p.is_file():
            raise VidrtError(f"{p} is missing; the model folder is incomplete")
    hashes = source_hashes(paths, cache)
    if hashes != cache:
        atomic_write_json(cache_file, {"schema": SCHEMA, "files": hashes})
    return hashes


def _export_all(plan: BuildPlan, stale: dict[str, str]) -> dict[str, float]:
    """Exports the stale components, one at a time; returns the seconds each took."""
    if not stale:
        return {}
    from tqdm.auto import tqdm

    bar = tqdm(list(stale), desc="export onnx", disable=not plan.progress, unit="component")
    seconds = {}
    for c in bar:
        bar.set_postfix_str(c)
        seconds[c] = _export_one(plan, c)
        gc.collect()
    return seconds


def _export_one(plan: BuildPlan, c: str) -> float:
    """Exports one component (quantized where its precision says) with its manifest;
    returns the seconds it took, loading, calibrating and checking included."""
    from .sources import load_torch_component

    from vidrt.export.graphs import component_graph
    from vidrt.export.onnx_export import export_component

    model, spec = plan.model, plan.specs[c]
    quantization = None
    t0 = time.perf_counter()
    with atomic_dir(plan.onnx_dirs[c]) as tmp:
        if plan.quantized(c):
            from vidrt.export.quantize import export_quantized

            result, quantization = export_quantized(model, c, plan.quant, tmp, plan.unet_weights, plan.variants[c],
                                                    plan.backend.qdq_float)
        else:
            # One torch module at a time: the real UNet alone needs ~6 GB, its export twice that.
            graph = component_graph(c, load_torch_component(model, c, plan.unet_weights), plan.variants[c])
            result = export_component(graph, spec, tmp)
            del graph
        seconds = time.perf_counter() - t0
        atomic_write_json(
            tmp / EXPORT_MANIFEST,
            {
                "schema": SCHEMA,
                "component": c,
                "key": plan.export_keys[c],
                "model": model.label,
                "random_weights": bool(model.preset),
                "spec": spec.describe(),
                "sources": {p: plan.hashes[p] for p in map(str, plan.weight_files(c))},
                "files": files_record(result.files(), tmp),
                "export_s": round(seconds, 3),
                "parity_check": result.check,
                "tensorrt_ops": result.ops,
                "precision": plan.precisions[c],
                "graph_variant": plan.variants[c],
                **({"qdq_float": plan.backend.qdq_float} if quantization else {}),
                "quantization": quantization and {"config": plan.quant.describe(), "error_vs_fp32": quantization},
                "versions": plan.versions,
            },
        )
    if not result.ops["ok"]:
        print(f"vidrt: warning: {c} uses ops TensorRT cannot parse: {', '.join(result.ops['unsupported'])}")
    if quantization:
        print(f"vidrt: {plan.precisions[c]} {c} vs fp32 on held-out inputs: mean relative L2 "
              f"{quantization['rel_l2']:.4f}, max abs err {quantization['max_abs_err']:.4f}")
    return seconds


def _build_one(plan: BuildPlan, c: str) -> ComponentBuild:
    """Reuses the component's verified artifact, or builds it from its export."""
    backend, options, precision = plan.backend, plan.options, plan.precisions[c]
    spec = plan.specs[c]
    onnx_dir = plan.onnx_dirs[c]
    export_manifest = read_manifest(onnx_dir / EXPORT_MANIFEST)
    out_dir = plan.engine_dir / c / backend.artifact_name(precision, options)
    key = sha256_json(
        {
            "onnx": export_manifest["files"],
            "backend": backend.name,
            "version": backend.version(),
            "machine": backend.machine(),
            "precision": precision,
            "spec": spec.describe(),
            "options": backend.options_key(options),
        }
        | ({"artifact_format": backend.artifact_format} if backend.artifact_format != 1 else {})
        | ({"graph_path": str((onnx_dir / "model.onnx").resolve())} if backend.keyed_by_graph_path else {})
    )
    export_s = float(export_manifest.get("export_s", 0.0))
    manifest, reason = verify(out_dir, BUILD_MANIFEST, key, plan.full_verify)
    if manifest is not None:
        return ComponentBuild(c, out_dir, False, False, 0.0, export_s + manifest["build_s"], _size(manifest), "reused")
    if not plan.build:
        raise refuse(c, out_dir, reason)
    start = time.perf_counter()
    with atomic_dir(out_dir) as tmp:
        files, extras = backend.build(onnx_dir / "model.onnx", tmp, spec, precision, options, plan.model)
        seconds = time.perf_counter() - start
        manifest = {
            "schema": SCHEMA,
            "component": c,
            "key": key,
            "backend": backend.name,
            "backend_version": backend.version(),
            "machine": backend.machine(),
            "precision": precision,
            "model": plan.model.label,
            "random_weights": bool(plan.model.preset),
            "shape_ranges": spec.describe()["ranges"],
            "spec": spec.describe(),
            "onnx_sha256": {k: v["sha256"] for k, v in export_manifest["files"].items()},
            "weights_sha256": {k: v["sha256"] for k, v in export_manifest["sources"].items()},
            "files": files_record(files, tmp),
            "build_s": round(seconds, 3),
            "options": backend.options_key(options),
            "versions": plan.versions,
        } | extras
        atomic_write_json(tmp / BUILD_MANIFEST, manifest)
    return ComponentBuild(c, out_dir, False, True, seconds, export_s + seconds, _size(manifest), reason)


def _size(manifest: dict) -> int:
    return sum(rec["size"] for rec in manifest["files"].values())


def load_engines(engine_dir: Path, backend, precision: str, model, component_precision=None, backend_options=None,
                 on_demand=()) -> dict:
    """Loads every component's verified artifact as an Engine; components named in
    ``on_demand`` (or whose kind is, so ``text_encoder`` names every part of a split one)
    are loaded for each call and freed after it (backends.base.OnDemandEngine)."""
    from .backends.base import OnDemandEngine

    specs = model.specs()  # (on_demand names were checked by from_pretrained, before any build)
    shared = backend.shared_state()  # one per pipeline: its engines run one at a time
    engines = {}
    for c, p in engine_precisions(model, backend, precision, component_precision).items():
        load = functools.partial(backend.load, engine_dir / c / backend.artifact_name(p, backend_options), specs[c], p, shared)
        engines[c] = OnDemandEngine(specs[c], load) if c in on_demand or component_kind(c) in on_demand else load()
    return engines


def check_on_demand(on_demand, specs) -> None:
    """Refuses --on-demand names that are not components of the model.

    Raises:
        VidrtError: an unknown name (the message lists the model's components).
    """
    names = set(specs) | {component_kind(c) for c in specs}
    unknown = [c for c in on_demand if c not in names]
    if unknown:
        raise VidrtError(f"--on-demand {','.join(unknown)}: not a component of this model; "
                         f"choose from {', '.join(sorted(names))}")
