"""Quantization stage: post-training quantization of the UNet (and, opt-in, the
temporal VAE decoder) with nvidia-modelopt, exported as Q/DQ ONNX (INT8, or FP8 with
FLOAT8E4M3FN zero points, opset 19).

The Q/DQ graph is what every backend reads. TensorRT builds it strongly typed, so the
graph's own float type is what its unquantized layers run in: its graph is fp16
(weights, activations and Q/DQ scales; fp32 only at the inputs and outputs), the CPU
backends' is fp32. ONNX Runtime (CPU) runs both, which is how they are checked here.
Calibration runs the fp32 PyTorch UNet on real conditioning (CLIP embedding and
VAE latent of each calibration image) at every timestep of the sampler, with CFG's
unconditional half included, so activation ranges cover what inference sees; the
decoder on the calibration images' latents as short drifting clips.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import warnings
from pathlib import Path

import numpy as np
import torch

from vidrt.components import component_kind
from vidrt.layout import QUANTIZABLE
from vidrt.errors import VidrtError
from vidrt.samplers import make_sampler
from vidrt.families.svd.model import SvdModel

from . import cogvideox_calibration, ltx_calibration
from .wan_calibration import TRANSFORMER_KEEP, transformer_calibration_batches

QUANT_FORMATS = ("int8", "fp8")
QDQ_OPSET = 19
# Float type of a Q/DQ graph's unquantized layers -> its torch dtype
QDQ_FLOATS = {"fp32": torch.float32, "fp16": torch.float16}
# Layers whose quantization costs most accuracy for least speed: the first and last
# convolutions and the timestep/added-time embeddings. Patterns match module names.
DEFAULT_KEEP = ("*conv_in*", "*conv_out*", "*time_embedding*", "*add_embedding*", "*time_pos_embed*")


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """How to quantize (the UNet, and the decoder where asked)."""

    format: str = "int8"
    calib_images: tuple[str, ...] = ()  # empty: a built-in synthetic set
    calib_steps: int = 4  # sampler steps whose timesteps are calibrated
    calib_frames: int = 4
    calib_size: int | None = None  # calibration height = width in px (default: smallest valid x2)
    keep_high_precision: tuple[str, ...] = DEFAULT_KEEP
    seed: int = 0

    def __post_init__(self):
        if self.format not in QUANT_FORMATS:
            raise VidrtError(f"quantization format '{self.format}': choose {' or '.join(QUANT_FORMATS)}")
        if self.calib_steps < 1 or self.calib_frames < 1:
            raise VidrtError("calibration needs at least 1 step and 1 frame")

    def describe(self) -> dict:
        return dataclasses.asdict(self)


def _modelopt():
    try:
        import modelopt.torch.quantization as mtq
    except ImportError as e:
        raise VidrtError(
            f"INT8/FP8 quantization needs nvidia-modelopt ({e}); pip install -e '.[quant]'"
        ) from None
    return mtq


def synthetic_images(n: int, size: int, seed: int) -> list:
    """Smooth colour fields with edges: a stand-in when no calibration images are given."""
    import PIL.Image

    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    images = []
    for _ in range(n):
        a, b, c = rng.rand(3) * 2 * np.pi
        img = np.stack([np.sin(a + 3 * x), np.cos(b + 2 * y), np.sin(c + 4 * x * y)], -1) * 0.5 + 0.5
        img[(x - rng.rand()) ** 2 + (y - rng.rand()) ** 2 < 0.05] = rng.rand(3)
        images.append(PIL.Image.fromarray((img * 255).astype(np.uint8)))
    return images


def calibration_images(model, cfg: QuantConfig) -> tuple[list, int]:
    """The calibration images (--calib-images, else the synthetic set) and their size."""
    from vidrt.video_io import load_image

    size = cfg.calib_size or 2 * model.pixel_multiple
    return [load_image(p, announce=False) for p in cfg.calib_images] or synthetic_images(4, size, cfg.seed), size


def _clip_input(model: SvdModel, image) -> torch.Tensor:
    """One image as the pipeline feeds CLIP: resized to its input size, normalised with
    the feature extractor's statistics."""
    from diffusers.video_processor import VideoProcessor

    from vidrt.imageops import clip_pixel_values

    vp = VideoProcessor(do_resize=True, vae_scale_factor=model.vae_scale_factor)
    fe = model.feature_extractor
    return clip_pixel_values(vp.numpy_to_pt(vp.pil_to_numpy([image])), model.clip_image_size, fe["image_mean"], fe["image_std"])


def _encoded_images(model: SvdModel, cfg: QuantConfig, with_clip: bool) -> list[tuple]:
    """(CLIP image embedding or None, VAE latent mode, unscaled) of each calibration image."""
    from diffusers.video_processor import VideoProcessor

    from vidrt.sources import load_torch_component

    images, size = calibration_images(model, cfg)
    clip = load_torch_component(model, "image_encoder") if with_clip else None
    vae = load_torch_component(model, "vae_encoder")
    vp = VideoProcessor(do_resize=True, vae_scale_factor=model.vae_scale_factor)
    gen = torch.Generator().manual_seed(cfg.seed)
    out = []
    with torch.no_grad():
        for image in images:
            emb = clip(_clip_input(model, image)).image_embeds if clip is not None else None
            pix = vp.preprocess([image], height=size, width=size).float()
            out.append((emb, vae.encode(pix + 0.02 * torch.randn(pix.shape, generator=gen)).latent_dist.mode()))
    return out


def calibration_batches(model: SvdModel, cfg: QuantConfig) -> list[dict[str, torch.Tensor]]:
    """UNet inputs (CFG batch of 2) for each calibration image at each sampler timestep."""
    sampler = make_sampler("euler", model.scheduler)
    sampler.set_timesteps(cfg.calib_steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    scaling = model.vae["scaling_factor"]
    batches = []
    for emb, lat in _encoded_images(model, cfg, with_clip=True):
        clean = (lat * scaling).unsqueeze(1).repeat(1, cfg.calib_frames, 1, 1, 1)
        cond = lat.unsqueeze(1).repeat(1, cfg.calib_frames, 1, 1, 1)
        for i in range(sampler.num_steps):
            sigma = float(sampler.sigmas[i])
            noisy = (clean + sigma * torch.randn(clean.shape, generator=gen)) * sampler.input_scale(i)
            sample = torch.cat([torch.cat([noisy, torch.zeros_like(cond)], 2), torch.cat([noisy, cond], 2)])
            batches.append({
                "sample": sample,
                "timestep": sampler.timesteps[i : i + 1].clone(),
                "encoder_hidden_states": torch.cat([torch.zeros_like(emb), emb]).unsqueeze(1),
                "added_time_ids": torch.tensor([[6.0, 127.0, 0.02]] * 2),
            })
    return batches


# Frame-to-frame change of the decoder's calibration clips, in units of the latents' own
# spread: the temporal layers see moving content, not one frame repeated.
DECODER_CALIB_MOTION = 0.1


def decoder_calibration_batches(model: SvdModel, cfg: QuantConfig) -> list[dict[str, torch.Tensor]]:
    """Temporal VAE decoder inputs: each calibration image's latent in the sampler's
    (scaled) space, as a ``calib_frames`` clip that drifts a little from frame to frame.
    A trained UNet's denoised latents are latents of natural images, which is what
    encoding the calibration images gives."""
    gen = torch.Generator().manual_seed(cfg.seed)
    scaling = model.vae["scaling_factor"]
    batches = []
    for _, lat in _encoded_images(model, cfg, with_clip=False):
        clean = lat * scaling
        drift = DECODER_CALIB_MOTION * clean.std() * torch.randn((cfg.calib_frames, *clean.shape[1:]), generator=gen)
        batches.append({"latents": clean + drift.cumsum(0)})
    return batches


def image_encoder_calibration_batches(model: SvdModel, cfg: QuantConfig) -> list[dict[str, torch.Tensor]]:
    """CLIP vision inputs: each calibration image preprocessed as the pipeline does."""
    return [{"pixel_values": _clip_input(model, image)} for image in calibration_images(model, cfg)[0]]


# What the stage calibrates, and on what: component (or (model kind, component), which
# comes first) -> its calibration inputs.
CALIBRATION = {"unet": calibration_batches, "vae_decoder": decoder_calibration_batches,
               "image_encoder": image_encoder_calibration_batches,
               "transformer": transformer_calibration_batches, "transformer_2": transformer_calibration_batches,
               ("ltx", "transformer"): ltx_calibration.transformer_calibration_batches,
               ("ltx-i2v", "transformer"): ltx_calibration.transformer_calibration_batches,
               ("cogvideox", "transformer"): cogvideox_calibration.transformer_calibration_batches,
               ("cogvideox-i2v", "transformer"): cogvideox_calibration.transformer_calibration_batches}
# --keep-high-precision's default, per component (or (kind, component)) where it is not DEFAULT_KEEP
COMPONENT_KEEP = {"transformer": TRANSFORMER_KEEP, "transformer_2": TRANSFORMER_KEEP,
                  ("ltx", "transformer"): ltx_calibration.TRANSFORMER_KEEP,
                  ("ltx-i2v", "transformer"): ltx_calibration.TRANSFORMER_KEEP,
                  ("cogvideox", "transformer"): cogvideox_calibration.TRANSFORMER_KEEP,
                  ("cogvideox-i2v", "transformer"): cogvideox_calibration.TRANSFORMER_KEEP}
assert {c for c in CALIBRATION if isinstance(c, str)} == set(QUANTIZABLE), \
    "vidrt.layout.QUANTIZABLE names the components calibrated here"


def _for(table: dict, kind: str | None, component: str | None):
    return table.get((kind, component), table.get(component))
# Modules quantized although modelopt's defaults leave them float: its defaults skip the
# vision towers of multimodal LLMs ("*vision_model*"), which is what CLIP's is named. Only
# the transformer layers: CLIP's embeddings and output projection stay float.
COMPONENT_QUANTIZE = {"image_encoder": "*vision_model.encoder.layers.*"}


def keep_patterns(cfg: QuantConfig, component: str | None, kind: str | None = None) -> tuple[str, ...]:
    """The module patterns left unquantized: --keep-high-precision, whose default is the
    component's own (COMPONENT_KEEP, for the model ``kind``) where DEFAULT_KEEP names none
    of its layers."""
    keep = tuple(cfg.keep_high_precision)
    return (_for(COMPONENT_KEEP, kind, component) or keep) if keep == DEFAULT_KEEP else keep


def _rules(qcfg: dict, cfg: QuantConfig, component: str | None, kind: str | None = None) -> None:
    """Adds vidrt's rules to modelopt's config in place: the component's own modules
    (COMPONENT_QUANTIZE) switched on like modelopt's defaults, then every
    --keep-high-precision pattern off. modelopt takes a list of rules (later ones win)
    or, in older releases, a dict."""
    rules = qcfg["quant_cfg"]
    as_list = isinstance(rules, list)
    defaults = {r["quantizer_name"]: r["cfg"] for r in rules if "cfg" in r} if as_list else rules
    pattern = COMPONENT_QUANTIZE.get(component)
    for kind in ("weight_quantizer", "input_quantizer") if pattern else ():
        quantizer = {**defaults["*" + kind], "enable": True}
        if as_list:
            rules.append({"quantizer_name": pattern + kind, "cfg": quantizer})
        else:
            rules[pattern + kind] = quantizer
    for name in keep_patterns(cfg, component, kind):
        if as_list:
            rules.append({"quantizer_name": name, "enable": False})
        else:
            rules[name] = {"enable": False}


def quantize_graph(graph: torch.nn.Module, cfg: QuantConfig, batches: list[dict], component: str | None = None,
                   kind: str | None = None) -> torch.nn.Module:
    """Runs modelopt PTQ on a component graph in place (max calibration), leaving the
    modules matching ``cfg.keep_high_precision`` (default: the component's of a model
    ``kind``) float; returns it."""
    mtq = _modelopt()
    qcfg = copy.deepcopy(mtq.INT8_DEFAULT_CFG if cfg.format == "int8" else mtq.FP8_DEFAULT_CFG)
    _rules(qcfg, cfg, component, kind)

    def forward_loop(model):
        for feeds in batches:
            model(*feeds.values())

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mtq.quantize(graph, qcfg, forward_loop=forward_loop)


class CastBoundary(torch.nn.Module):
    """Runs ``graph`` in ``dtype`` behind float32 inputs and outputs: the Q/DQ graph keeps
    the component's interface (what the runtime binds) while everything inside, Q/DQ
    scales included, is ``dtype``."""

    def __init__(self, graph: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.graph, self.dtype = graph, dtype

    def forward(self, *inputs):
        out = self.graph(*(x.to(self.dtype) if x.is_floating_point() else x for x in inputs))
        if isinstance(out, (tuple, list)):  # a step-cache head: every tensor it passes on
            return tuple(o.float() for o in out)
        return out.float()


def in_float_type(graph: torch.nn.Module, float_type: str) -> torch.nn.Module:
    """The calibrated graph with its unquantized layers in ``float_type`` (QDQ_FLOATS):
    weights cast, and every quantizer told to export its scales in that type (modelopt
    exports fp32 scales by default, which a strongly typed fp16 network cannot mix)."""
    if float_type == "fp32":
        return graph
    from modelopt.torch.quantization.nn import TensorQuantizer

    dtype = QDQ_FLOATS[float_type]
    graph = graph.to(dtype)
    for m in graph.modules():
        if isinstance(m, TensorQuantizer):
            m.trt_high_precision_dtype = "Half"  # modelopt's name for fp16
    return CastBoundary(graph, dtype)


def to_standard_qdq(model, fmt: str, float_type: str = "fp32"):
    """modelopt's TorchScript export writes FP8 as trt::TRT_FP8(De)QuantizeLinear; turn
    them into opset-19 QuantizeLinear/DequantizeLinear with FLOAT8E4M3FN zero points
    (modelopt's FP8 exporter, then the ops moved to the default domain), with every
    Q/DQ scale in the graph's ``float_type``."""

    if fmt == "fp8":
        from modelopt.onnx.export.fp8_exporter import FP8QuantExporter

        model = FP8QuantExporter.process_model(model)
        for node in model.graph.node:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                node.domain = ""
        # The exporter typed quantized tensors as uint8; let shape inference retype them.
        q_outputs = {o for n in model.graph.node if n.op_type == "QuantizeLinear" for o in n.output}
        keep = [v for v in model.graph.value_info if v.name not in q_outputs]
        del model.graph.value_info[:]
        model.graph.value_info.extend(keep)
    _scales_in(model, float_type)
    imports = [o for o in model.opset_import if o.domain not in ("trt",)]
    del model.opset_import[:]
    model.opset_import.extend(imports)
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = max(o.version, QDQ_OPSET)
    return model


def _scales_in(model, float_type: str) -> None:
    """Casts fp32 Q/DQ scales of an fp16 graph to fp16 in place. modelopt's FP8 exporter
    types the scales it adds after softmax from tensor types the TorchScript export
    leaves unset, so they come out fp32, which ONNX (one type per Q/DQ) and a strongly
    typed TensorRT network refuse. (Its INT8 export already writes them fp16.)"""
    if float_type == "fp32":
        return
    import onnx
    from onnx import numpy_helper

    dtype = torch.empty(0, dtype=QDQ_FLOATS[float_type]).numpy().dtype
    scales = {n.input[1] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    for i, t in enumerate(model.graph.initializer):
        if t.name in scales and t.data_type == onnx.TensorProto.FLOAT:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(dtype), t.name))


def count_qdq(model) -> dict:
    """Number of Q and DQ nodes and the zero-point element types they use."""
    import onnx

    inits = {t.name: t.data_type for t in model.graph.initializer}
    consts = {
        n.output[0]: n.attribute[0].t.data_type
        for n in model.graph.node
        if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR
    }
    types = set()
    counts = {"QuantizeLinear": 0, "DequantizeLinear": 0}
    for n in model.graph.node:
        if n.op_type in counts:
            counts[n.op_type] += 1
            if len(n.input) > 2 and n.input[2]:
                t = inits.get(n.input[2], consts.get(n.input[2]))
                if t is not None:
                    types.add(onnx.TensorProto.DataType.Name(t))
    return counts | {"zero_point_types": sorted(types)}


# A Q/DQ graph is checked against the fp32 UNet, on held-out inputs at every
# calibrated timestep (not against modelopt's fake-quantized torch module, whose
# quantizer placement differs from what its TorchScript export emits). Export
# fails past this mean relative L2 error: a sign of broken calibration, not of
# ordinary quantization noise.
MAX_REL_L2 = 0.5


def export_quantized(model, component: str, cfg: QuantConfig, out_dir: Path, unet_weights=None,
                     variant: str | None = None, float_type: str = "fp32"):
    """Quantizes one component (QUANTIZABLE), exports Q/DQ ONNX to ``out_dir``, and
    measures its error.

    Args:
        model: the model folder (SVD family, or Wan and LTX-Video for their transformers).
        component: "unet", "vae_decoder" or "image_encoder" (SVD); "transformer" (and
            Wan 2.2's "transformer_2").
        cfg: how to quantize and calibrate.
        out_dir: folder to write into (callers make it atomic).
        unet_weights: optional replacement UNet state dict.
        variant: graph variant to quantize (export/graphs.py GRAPH_VARIANTS), or None.
        float_type: float type of the unquantized layers (QDQ_FLOATS; the backend's
            ``qdq_float``). Calibration always runs in fp32.

    Returns:
        (ExportResult, error report): the report compares the Q/DQ graph on ONNX
        Runtime with the fp32 PyTorch component on held-out inputs (for the UNet, per
        calibrated timestep: max abs error and relative L2).

    Raises:
        VidrtError: modelopt missing, a component the stage does not calibrate, or
            export/check failure.
    """
    from vidrt.sources import load_torch_component

    from .graphs import component_graph
    from .onnx_export import export_component

    kind = component_kind(component)  # a transformer's step-cache stage is calibrated as the transformer
    if kind not in CALIBRATION:
        raise VidrtError(f"the quantization stage calibrates {', '.join(QUANTIZABLE)}, not {component}")
    if float_type not in QDQ_FLOATS:
        raise VidrtError(f"Q/DQ graphs are written in {' or '.join(QDQ_FLOATS)}, not {float_type}")
    _modelopt()
    spec = model.specs()[component]
    module = load_torch_component(model, component, unet_weights)
    graph = component_graph(component, module, variant)
    calibrate = _for(CALIBRATION, model.kind, kind)
    calib = stage_batches(model, component, module, calibrate(model, cfg))
    held_out = stage_batches(model, component, module, calibrate(model, dataclasses.replace(cfg, seed=cfg.seed + 1)))
    # the output compared with fp32: what the blocks wrote, for a stage that has several
    watched = next((i for i, n in enumerate(spec.output_names) if n in ("hidden_first", "hidden_last")), 0)
    with torch.no_grad():
        reference = [_output(graph(*feeds.values()), watched) for feeds in held_out]
    quantize_graph(graph, cfg, calib, kind, model.kind)
    result = export_component(
        in_float_type(graph, float_type), spec, out_dir, opset=QDQ_OPSET,
        postprocess=lambda m: to_standard_qdq(m, cfg.format, float_type),
        cleanup=False, tolerance=None,
    )
    # The torch graph (7.7 GB for LTX-Video's fp32 transformer) is not needed past its export:
    # freed before ONNX Runtime loads the Q/DQ graph to measure it.
    del graph, module
    gc.collect()
    per_step = kind in ("unet", "transformer", "transformer_2")
    report = qdq_error(result.onnx_path, held_out, reference, cfg.calib_steps if per_step else None, watched)
    if not report["rel_l2"] <= MAX_REL_L2:
        raise VidrtError(
            f"{cfg.format} {component} is too far from fp32 (mean relative L2 {report['rel_l2']:.3f} > {MAX_REL_L2}); "
            "calibrate on representative images (--calib-images) or keep more layers in high precision"
        )
    import onnx

    report["qdq"] = count_qdq(onnx.load(str(result.onnx_path), load_external_data=False))
    report["kept_high_precision"] = list(keep_patterns(cfg, kind, model.kind))
    return result, report


def _output(out, index: int) -> torch.Tensor:
    return out[index] if isinstance(out, (tuple, list)) else out


def stage_batches(model, component: str, module, batches: list[dict]) -> list[dict]:
    """``batches`` of the whole transformer's inputs as ``component``'s inputs: unchanged
    for an uncut component or a head; for a later step-cache stage (vidrt.split), carried
    through the fp32 stages before it (the transformer's calibration reaches its blocks so)."""
    from vidrt.split import ROLES, stage_names

    from .graphs import component_graph

    cut = getattr(model, "split_denoisers", None)
    names = stage_names(component_kind(component), cut) if cut else {}
    role = next((r for r, c in names.items() if c == component), "head")
    if role == "head":
        return batches
    specs = model.specs()
    before = [(specs[names[r]], component_graph(names[r], module)) for r in ROLES[: ROLES.index(role)]]
    out = []
    with torch.no_grad():
        for feeds in batches:
            named = dict(feeds)
            for spec, graph in before:
                got = graph(*(named[n] for n in spec.input_names))
                named |= dict(zip(spec.output_names, got if isinstance(got, (tuple, list)) else (got,)))
            out.append({n: named[n] for n in specs[component].input_names})
    return out


def qdq_error(onnx_path: Path, feeds: list[dict], reference: list[torch.Tensor], steps: int | None,
              output: int = 0) -> dict:
    """Error of the Q/DQ graph's ``output`` (ONNX Runtime, CPU) against fp32 outputs; with
    ``steps``, also per timestep (feeds cycle through the calibrated steps)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    per_step: dict[int, list] = {}
    for i, (f, ref) in enumerate(zip(feeds, reference)):
        got = session.run(None, {k: v.numpy() for k, v in f.items()})[output]
        want = ref.numpy()
        per_step.setdefault(i % (steps or 1), []).append(
            (float(np.abs(got - want).max()), float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-12)))
        )
    steps_report = [
        {"step": s, "max_abs_err": max(e[0] for e in v), "rel_l2": float(np.mean([e[1] for e in v]))}
        for s, v in sorted(per_step.items())
    ]
    return {
        **({"per_step": steps_report} if steps else {}),
        "max_abs_err": max(r["max_abs_err"] for r in steps_report),
        "rel_l2": float(np.mean([r["rel_l2"] for r in steps_report])),
        "inputs": len(feeds),
    }
