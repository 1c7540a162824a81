"""What vidrt needs to know about a Wan 2.1 / 2.2 folder (diffusers' WanPipeline: UMT5
text encoder, one or two WanTransformer3DModel experts, the Wan VAE; or Wan 2.2
TI2V-5B's one expert and Wan 2.2 VAE, as a WanPipeline or, for its image to video, a
WanImageToVideoPipeline folder), and its component descriptions. JSON configs only; no
torch model is built.

TI2V-5B's image to video (``expand_timesteps``) encodes the image into latent frame 0
(``vae_encoder``: the mean of its latent, normalised); the transformer takes it as an
input, puts it in place of frame 0 and gives frame 0's tokens timestep 0, as
WanImageToVideoPipeline does before every call.

The components: ``text_encoder`` (token ids and mask -> hidden states), ``transformer``
(and ``transformer_2``, Wan 2.2's low-noise expert) on latents [B, C, F, h, w], and the
Wan VAE decoder as diffusers runs it, one latent frame per call with a cache per causal
convolution: ``vae_decoder`` decodes latent frame 0 into 1 frame and returns the caches,
``vae_decoder_chunk`` decodes each later latent frame into 4 frames from the caches and
returns them updated. The caches are engine inputs and outputs, so memory stays that of
one latent frame whatever the clip's length.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ...components import ComponentSpec, DimRange, TensorSpec
from ...errors import VidrtError
from ...split import TOKENS, SplitDenoiserMixin, StageTensors
from ...model_folder import (
    MAX_BATCH,
    MAX_PIXELS,
    PRESET_MARKER,
    FirstFrameVaeMixin,
    ModelFolderMixin,
    SplitTextEncoderMixin,
)
from ...model_folder import read_json as _read_json

EXPERTS = ("transformer", "transformer_2")
MAX_LATENT_FRAMES = 32  # 125 video frames
# fp32 weight bytes per text-encoder part. UMT5-XXL (Wan's encoder: 5.7 B parameters,
# 22.7 GB in fp32) cannot be exported in one piece on a 24 GB machine, so it is exported
# and run as a chain of parts of consecutive blocks, each loaded alone. Smaller encoders
# are one part: the component ``text_encoder``, as before.
TEXT_PART_BYTES = 4 << 30


@dataclasses.dataclass(frozen=True)
class WanModel(SplitDenoiserMixin, FirstFrameVaeMixin, SplitTextEncoderMixin, ModelFolderMixin):
    """Configs of a WanPipeline folder (model_index.json layout)."""

    folder: Path
    transformer: dict | None  # None when a Wan 2.2 folder ships the low-noise expert only
    transformer_2: dict | None
    vae: dict
    text_encoder: dict
    tokenizer: dict
    scheduler: dict
    boundary_ratio: float | None
    preset: dict | None
    image_to_video: bool = False  # a WanImageToVideoPipeline folder (TI2V-5B's image to video)
    split_denoisers: str | None = None  # each expert in three engines, cut as vidrt.split.HEADS[this] (step caching)

    denoiser = "transformer"
    family_name = "Wan"
    # TensorRT fp16: every normalisation (the transformer's RMS/layer norms, UMT5's, the
    # VAE's) in fp32, as diffusers' FP32LayerNorm and WanRMS_norm do in half precision.
    fp16_fp32_layers = ("*norm*",)
    # diffusers' WanPipeline runs the guidance halves as two calls, each in its own cache
    # context ("cond", "uncond"): a step cache decides for each half on its own.
    cache_contexts = "per-half"
    # The VAE in fp32, as diffusers' Wan documentation advises for decoding quality: in bf16
    # (OpenVINO) the tiny presets' decoder is off by up to 0.45 on [-1, 1] frames.
    keep_fp32 = ("vae_encoder", "vae_decoder", "vae_decoder_chunk")

    @classmethod
    def from_folder(cls, folder: str | Path, index: dict | None = None) -> "WanModel":
        """Reads the configs of a diffusers WanPipeline folder.

        Raises:
            VidrtError: the folder or one of its config files is missing or malformed,
                or it is a Wan variant vidrt does not serve yet.
        """
        folder = Path(folder)
        index = index or _read_json(folder / "model_index.json", folder)
        experts = {e: _read_json(folder / e / "config.json", folder) if _listed(index, e) else None for e in EXPERTS}
        if experts["transformer"] is None:
            raise VidrtError(f"{folder}: model_index.json lists no transformer; vidrt needs the high-noise expert "
                             "(a folder saved by WanPipeline.save_pretrained has it)")
        # Wan 2.2 TI2V-5B's folder says expand_timesteps: WanPipeline then hands the transformer
        # one timestep per token, for text to video the step's own for every token, which
        # computes what one timestep per video does (the same time-embedding row repeated).
        image_to_video = index.get("_class_name") == "WanImageToVideoPipeline"
        if image_to_video and (not index.get("expand_timesteps") or _listed(index, "image_encoder")):
            raise VidrtError(f"{folder}: of WanImageToVideoPipeline folders vidrt serves Wan 2.2 TI2V-5B's "
                             "(expand_timesteps, no image encoder); Wan 2.1 I2V (CLIP image encoder) and Wan 2.2 "
                             "I2V-A14B (the image's latents as extra channels) are not served yet")
        vae = _read_json(folder / "vae" / "config.json", folder)
        boundary = index.get("boundary_ratio")
        if experts["transformer_2"] is not None and boundary is None:
            raise VidrtError(f"{folder}: a transformer_2 without boundary_ratio in model_index.json; "
                             "set the ratio at which the low-noise expert takes over")
        preset_file = folder / PRESET_MARKER
        return cls(
            folder=folder,
            transformer=experts["transformer"],
            transformer_2=experts["transformer_2"],
            vae=vae,
            text_encoder=_read_json(folder / "text_encoder" / "config.json", folder),
            tokenizer=_read_json(folder / "tokenizer" / "tokenizer_config.json", folder),
            scheduler=_read_json(folder / "scheduler" / "scheduler_config.json", folder),
            boundary_ratio=float(boundary) if boundary is not None else None,
            preset=json.loads(preset_file.read_text()) if preset_file.exists() else None,
            image_to_video=image_to_video,
        )

    @property
    def takes_image(self) -> bool:
        return self.image_to_video

    @property
    def kind(self) -> str:
        return "wan-i2v" if self.image_to_video else "wan"

    @property
    def pipeline_class(self) -> str:
        return "WanImageToVideoPipeline" if self.image_to_video else "WanPipeline"

    @property
    def components(self) -> tuple[str, ...]:
        encoder = ("vae_encoder",) if self.image_to_video else ()
        return self.split_components((*self.text_parts, *encoder, *self.experts, "vae_decoder", "vae_decoder_chunk"))

    @property
    def text_encoder_blocks(self) -> list[tuple[int, int]]:
        """[start, stop) UMT5 blocks of each text-encoder part (TEXT_PART_BYTES each)."""
        return self.split_blocks(TEXT_PART_BYTES, 256384)

    @property
    def experts(self) -> tuple[str, ...]:
        return tuple(e for e in EXPERTS if getattr(self, e) is not None)

    denoisers = quantizable = experts

    @property
    def weights_folder(self) -> dict[str, str]:
        return {**{p: "text_encoder" for p in self.text_parts}, **self.per_stage({e: e for e in EXPERTS}),
                "vae_encoder": "vae", "vae_decoder": "vae", "vae_decoder_chunk": "vae"}

    @property
    def torch_classes(self) -> dict[str, tuple[str, str, str]]:
        """component -> (library, torch module class, subfolder): what export and the baseline
        load (a text-encoder part: the encoder's class, built with only its blocks' weights)."""
        encoder = ("transformers", self.text_encoder.get("architectures", ["UMT5EncoderModel"])[0], "text_encoder")
        return {
            **{p: encoder for p in self.text_parts},
            **self.per_stage({e: ("diffusers", "WanTransformer3DModel", e) for e in EXPERTS}),
            **{c: ("diffusers", "AutoencoderKLWan", "vae") for c in ("vae_encoder", "vae_decoder", "vae_decoder_chunk")},
        }

    @property
    def unet(self) -> dict:
        """The denoiser's config (the name the shared checks and tools read)."""
        return self.transformer

    @property
    def vae_scale_factor(self) -> int:
        return int(self.vae.get("scale_factor_spatial", 2 ** len(self.vae.get("temperal_downsample", [0] * 3))))

    @property
    def temporal_factor(self) -> int:
        return int(self.vae.get("scale_factor_temporal", 4))

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.transformer.get("patch_size", (1, 2, 2)))

    @property
    def unet_up_factor(self) -> int:
        return self.patch_size[1]

    @property
    def pixel_multiple(self) -> int:
        """Height and width: multiples of the VAE's factor times the patch (Wan 2.1: 8 x 2;
        Wan 2.2 TI2V-5B: 16 x 2)."""
        return self.vae_scale_factor * self.patch_size[1]

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.get("in_channels", 16))

    @property
    def default_num_frames(self) -> int:
        return 81

    @property
    def default_size(self) -> tuple[int, int]:
        return 480, 832

    @property
    def default_guidance_scale(self) -> float:
        return 5.0

    @property
    def max_text_length(self) -> int:
        return 512  # WanPipeline's default max_sequence_length; UMT5 itself has no limit

    @property
    def text_dim(self) -> int:
        return int(self.text_encoder.get("d_model", 4096))

    @property
    def max_frames(self) -> int:
        """Video frames: the transformer's rotary table ends at rope_max_seq_len latent frames."""
        rope = int(self.transformer.get("rope_max_seq_len", 1024)) * self.patch_size[0]
        return self.temporal_factor * (min(rope, MAX_LATENT_FRAMES) - 1) + 1

    def check_ranges(self, videos, do_cfg, frames, height, width, chunk=None, text_length=None) -> None:
        """Raises VidrtError naming the first size outside a component's declared range."""
        self.check_frames(frames)
        self.check_size(height, width)
        s = self.vae_scale_factor
        rows = videos * (2 if do_cfg else 1)
        length = self.max_text_length if text_length is None else text_length
        specs = self.specs()
        for p in self.text_parts:
            specs[p].check({"B": rows, "L": length})
        for e in self.experts:
            self.denoiser_spec(specs, e).check({"B": rows, "F": self.latent_frames(frames), "h": height // s, "w": width // s, "L": length})
        for c in ("vae_decoder", "vae_decoder_chunk"):
            specs[c].check({"B": 1, "h": height // s, "w": width // s})  # one video at a time
        if self.image_to_video:
            specs["vae_encoder"].check({"B": 1, "H": height, "W": width})

    def specs(self) -> dict[str, ComponentSpec]:
        out = {p: text_encoder_spec(self, p) for p in self.text_parts}
        for e in self.experts:
            out |= self.denoiser_specs(e, transformer_spec(self, e))
        out["vae_decoder"] = vae_decoder_spec(self, first=True)
        out["vae_decoder_chunk"] = vae_decoder_spec(self, first=False)
        return out | ({"vae_encoder": vae_encoder_spec(self)} if self.image_to_video else {})


    def stage_tensors(self) -> StageTensors:
        """What Wan's transformer passes between its cached stages (export/wan_graphs.py
        WanStages); for image to video its time embedding is per token (frame 0's at 0)."""
        d = int(self.transformer["num_attention_heads"]) * int(self.transformer["attention_head_dim"])
        head_dim = int(self.transformer["attention_head_dim"])
        pt, ph, pw = self.patch_size
        per = (1, TOKENS) if self.image_to_video else ("B",)
        return StageTensors(
            streams=(TensorSpec("hidden", ("B", TOKENS, d)),),
            context=(TensorSpec("text_states", ("B", "L", d)), TensorSpec("timestep_proj", (*per, 6, d)),
                     TensorSpec("rotary_cos", (1, TOKENS, 1, head_dim)), TensorSpec("rotary_sin", (1, TOKENS, 1, head_dim)),
                     TensorSpec("text_logit_bias", ("B", 1, 1, "L"))),
            final=(TensorSpec("temb", (*per, d)),),
            tokens=f"(F//{pt})*(h//{ph})*(w//{pw})",
        )


def _listed(index: dict, component: str) -> bool:
    entry = index.get(component)
    return isinstance(entry, list) and entry[0] is not None


def read_folder(folder: Path, index: dict, motion_adapter=None) -> WanModel:
    """The family's entry point for vidrt.models.read_model."""
    if motion_adapter is not None:
        raise VidrtError("--motion-adapter goes with a Stable Diffusion or AnimateDiff folder, not a WanPipeline")
    return WanModel.from_folder(folder, index)


def text_encoder_spec(m: WanModel, name: str = "text_encoder") -> ComponentSpec:
    """UMT5 encoder: token ids and their mask -> last hidden states. The pipeline runs it at
    the longest prompt's length (the mask hides the padding, so the states of real tokens
    are those of diffusers' call at max_sequence_length) and zero-pads as diffusers does.

    A split encoder (``m.text_parts``): the first part takes the ids and gives the hidden
    states after its blocks (``next_hidden_states``), the next ones take those states and
    the mask, the last one gives the last hidden states (after the final norm)."""
    vocab = int(m.text_encoder.get("vocab_size", 256384))
    mask = TensorSpec("attention_mask", ("B", "L"), "int64", high=2)
    first, last = name == m.text_parts[0], name == m.text_parts[-1]
    return ComponentSpec(
        name=name,
        inputs=(TensorSpec("input_ids", ("B", "L"), "int64", high=vocab) if first
                else TensorSpec("hidden_states", ("B", "L", m.text_dim)), mask),
        # (an output may not share its input's name: the exporter would rename the input)
        outputs=(TensorSpec("last_hidden_state" if last else "next_hidden_states", ("B", "L", m.text_dim)),),
        ranges={"B": DimRange(1, 2 * MAX_BATCH), "L": DimRange(1, m.max_text_length)},
        opt={"B": 2, "L": 64},
    )


def transformer_spec(m: WanModel, name: str = "transformer") -> ComponentSpec:
    """One expert: latents, the step's timestep, the text states (both guidance halves
    stacked in the batch) and their cross-attention logit bias (the log of how many of
    diffusers' identical padding tokens a token stands for, 0 for the others:
    families/wan/pipeline.py ``collapse_padding``), for image to video the image's
    normalised latent [B, C, h, w] (frame 0) -> the flow prediction."""
    c = m.latent_channels
    pt, ph, pw = m.patch_size
    rope = int(m.transformer.get("rope_max_seq_len", 1024))
    top = min(MAX_PIXELS // m.vae_scale_factor, rope * ph) // ph * ph
    s = m.vae_scale_factor
    return ComponentSpec(
        name=name,
        inputs=(
            TensorSpec("sample", ("B", c, "F", "h", "w")),
            TensorSpec("timestep", (1,), value=500.0),
            TensorSpec("encoder_hidden_states", ("B", "L", m.text_dim)),
            TensorSpec("text_bias", ("B", "L")),
            *((TensorSpec("image_latents", ("B", c, "h", "w")),) if m.image_to_video else ()),
        ),
        outputs=(TensorSpec("noise_pred", ("B", c, "F", "h", "w")),),
        ranges={
            "B": DimRange(1, MAX_BATCH),
            "F": DimRange(pt, min(rope * pt, MAX_LATENT_FRAMES), pt),
            "h": DimRange(ph, top, ph),
            "w": DimRange(pw, top, pw),
            "L": DimRange(1, m.max_text_length),
        },
        # tuned for diffusers' default request, 81 frames at 480x832, within the rotary table
        opt={"B": 2, "F": min(m.latent_frames(m.default_num_frames), MAX_LATENT_FRAMES, rope * pt),
             "h": min(480 // s, top) // ph * ph, "w": min(832 // s, top) // pw * pw, "L": m.max_text_length},
    )


def vae_encoder_spec(m: WanModel) -> ComponentSpec:
    """Images [B, 3, H, W] in [-1, 1] -> the mean of their one-frame latent [B, C, h, w],
    normalised with latents_mean/latents_std (WanImageToVideoPipeline.prepare_latents:
    ``sample_mode="argmax"``, no draw)."""
    s = m.vae_scale_factor
    return ComponentSpec(
        name="vae_encoder",
        inputs=(TensorSpec("image", ("B", 3, "H", "W")),),
        outputs=(TensorSpec("latent_mean", ("B", int(m.vae.get("z_dim", 16)), f"H//{s}", f"W//{s}")),),
        ranges={"B": DimRange(1, MAX_BATCH), "H": DimRange(m.pixel_multiple, MAX_PIXELS, m.pixel_multiple),
                "W": DimRange(m.pixel_multiple, MAX_PIXELS, m.pixel_multiple)},
        opt={"B": 1, "H": 704, "W": 1280},  # TI2V-5B's own size
    )


def decoder_caches(vae: dict) -> list[tuple[int, int]]:
    """(channels, spatial scale over the latent) of each cache of the Wan VAE decoder, in
    the order diffusers' ``feat_idx`` walks them: every causal 3x3x3 convolution keeps its
    last two input frames (conv_in; each residual block's two convolutions; the temporal
    convolution of each 'upsample3d'; conv_out). The Wan 2.1 decoder's upsamplers halve the
    channels; Wan 2.2's (``is_residual``) keep them. Written from WanDecoder3d's
    constructor; tests compare it with the caches diffusers' decoder really fills."""
    base = int(vae.get("decoder_base_dim") or vae.get("base_dim", 96))
    mult = list(vae.get("dim_mult", [1, 2, 4, 4]))
    res_blocks = int(vae.get("num_res_blocks", 2))
    upsample_time = list(vae.get("temperal_downsample", [False, True, True]))[::-1]
    dims = [base * u for u in [mult[-1]] + mult[::-1]]
    caches, scale = [(int(vae.get("z_dim", 16)), 1)], 1
    caches += [(dims[0], 1)] * 4  # the middle block's two residual blocks
    for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
        in_dim = in_dim // 2 if i > 0 and not vae.get("is_residual") else in_dim
        caches += [(in_dim, scale), (out_dim, scale)] + [(out_dim, scale), (out_dim, scale)] * res_blocks
        if i != len(mult) - 1:  # an upsampler: temporal ones keep a cache, every one doubles the size
            if upsample_time[i]:
                caches.append((out_dim, scale))
            scale *= 2
    caches.append((dims[-1], scale))
    return caches


def vae_decoder_spec(m: WanModel, first: bool = True) -> ComponentSpec:
    """One latent frame of the Wan VAE decoder, ``latents_mean``/``latents_std`` folded in:
    [B, C, 1, h, w] -> frames in [-1, 1] (1 for latent frame 0, 4 for each later one) and
    the caches [B, c, 2, h*s, w*s] the next latent frame reads (``first``: frame 0, which
    reads none)."""
    s, k = m.vae_scale_factor, m.temporal_factor
    top = MAX_PIXELS // s
    caches = decoder_caches(m.vae)

    def cache(name, i):
        c, scale = caches[i]
        return TensorSpec(f"{name}_{i}", ("B", c, 2, "h" if scale == 1 else f"h*{scale}", "w" if scale == 1 else f"w*{scale}"))

    return ComponentSpec(
        name="vae_decoder" if first else "vae_decoder_chunk",
        inputs=(TensorSpec("latents", ("B", int(m.vae.get("z_dim", 16)), 1, "h", "w")),
                *(() if first else tuple(cache("cache", i) for i in range(len(caches))))),
        outputs=(TensorSpec("frames", ("B", 3, 1 if first else k, f"h*{s}", f"w*{s}")),
                 *(cache("next_cache", i) for i in range(len(caches)))),
        ranges={"B": DimRange(1, MAX_BATCH), "h": DimRange(1, top), "w": DimRange(1, top)},
        opt={"B": 1, "h": 480 // s, "w": 832 // s},
    )
