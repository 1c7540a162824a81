"""What vidrt needs to know about a Wan 2.1 / 2.2 folder (diffusers' WanPipeline: UMT5
text encoder, one or two WanTransformer3DModel experts, the Wan VAE; or Wan 2.2
TI2V-5B's one expert and Wan 2.2 VAE; or a WanImageToVideoPipeline folder of either),
and its component descriptions. JSON configs only; no torch model is built.

Image to video comes in two forms, as in WanImageToVideoPipeline:
- ``"first-frame"`` (TI2V-5B, ``expand_timesteps``): the image is encoded into latent
  frame 0 (``vae_encoder``: the mean of its latent, normalised); the transformer takes it
  as an input, puts it in place of frame 0 and gives frame 0's tokens timestep 0.
- ``"channels"`` (Wan 2.1 I2V, Wan 2.2 I2V-A14B): the clip of the image followed by zero
  frames is encoded chunk by chunk (``vae_encoder_first``, ``vae_encoder_chunk``) and, after a
  mask of the image's frame, concatenated to the latents' channels in every call
  (``condition``); Wan 2.1 I2V also gives every block the CLIP image encoder's
  penultimate states (``image_encoder``; ``image_embeds``), attended beside the text.

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
from .vae import vae_decoder_spec, vae_encoder_chunk_specs, vae_encoder_spec

EXPERTS = ("transformer", "transformer_2")
VAE_COMPONENTS = ("vae_encoder", "vae_encoder_first", "vae_encoder_chunk", "vae_decoder", "vae_decoder_chunk")
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
    image_to_video: bool = False  # a WanImageToVideoPipeline folder
    expand_timesteps: bool = False  # TI2V-5B: a timestep per token; its image to video is "first-frame"
    image_encoder: dict | None = None  # Wan 2.1 I2V's CLIP vision config
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
    keep_fp32 = VAE_COMPONENTS

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
        expand = bool(index.get("expand_timesteps"))
        image_encoder = None
        if image_to_video and not expand:
            _check_channels_image_to_video(folder, index, experts)
            if experts["transformer"].get("image_dim") is not None:
                image_encoder = _read_json(folder / "image_encoder" / "config.json", folder)
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
            expand_timesteps=expand,
            image_encoder=image_encoder,
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
    def image_condition(self) -> str | None:
        """How the image conditions the video: None (text to video), ``"first-frame"``
        (TI2V-5B) or ``"channels"`` (Wan 2.1 I2V, Wan 2.2 I2V-A14B); see the module's doc."""
        if not self.image_to_video:
            return None
        return "first-frame" if self.expand_timesteps else "channels"

    @property
    def image_tokens(self) -> int:
        """Tokens of the CLIP image encoder's states: a class token and one per patch."""
        return (int(self.image_encoder["image_size"]) // int(self.image_encoder["patch_size"])) ** 2 + 1

    @property
    def components(self) -> tuple[str, ...]:
        encoders = {None: (), "first-frame": ("vae_encoder",), "channels": ("vae_encoder_first", "vae_encoder_chunk")}
        image = ("image_encoder",) if self.image_encoder is not None else ()
        return self.split_components((*self.text_parts, *image, *encoders[self.image_condition], *self.experts,
                                      "vae_decoder", "vae_decoder_chunk"))

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
                "image_encoder": "image_encoder", **{c: "vae" for c in VAE_COMPONENTS}}

    @property
    def torch_classes(self) -> dict[str, tuple[str, str, str]]:
        """component -> (library, torch module class, subfolder): what export and the baseline
        load (a text-encoder part: the encoder's class, built with only its blocks' weights)."""
        encoder = ("transformers", self.text_encoder.get("architectures", ["UMT5EncoderModel"])[0], "text_encoder")
        return {
            **{p: encoder for p in self.text_parts},
            **self.per_stage({e: ("diffusers", "WanTransformer3DModel", e) for e in EXPERTS}),
            "image_encoder": ("transformers", (self.image_encoder or {}).get("architectures", ["CLIPVisionModel"])[0],
                              "image_encoder"),
            **{c: ("diffusers", "AutoencoderKLWan", "vae") for c in VAE_COMPONENTS},
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
        """The latents' channels (the transformer's output: Wan I2V's input also holds the
        image condition's)."""
        return int(self.transformer.get("out_channels") or self.transformer.get("in_channels", 16))

    @property
    def condition_channels(self) -> int:
        """Channels of the ``"channels"`` image condition: the frame mask's and the image
        clip's latents (20 for Wan 2.1 I2V and Wan 2.2 I2V-A14B)."""
        return int(self.transformer.get("in_channels", 16)) - self.latent_channels

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
            specs["vae_encoder" if self.expand_timesteps else "vae_encoder_first"].check({"B": 1, "H": height, "W": width})

    def specs(self) -> dict[str, ComponentSpec]:
        out = {p: text_encoder_spec(self, p) for p in self.text_parts}
        for e in self.experts:
            out |= self.denoiser_specs(e, transformer_spec(self, e))
        out["vae_decoder"] = vae_decoder_spec(self, first=True)
        out["vae_decoder_chunk"] = vae_decoder_spec(self, first=False)
        if self.image_condition == "first-frame":
            out["vae_encoder"] = vae_encoder_spec(self)
        elif self.image_condition == "channels":
            out |= vae_encoder_chunk_specs(self)
        if self.image_encoder is not None:
            out["image_encoder"] = image_encoder_spec(self)
        return out


    def stage_tensors(self) -> StageTensors:
        """What Wan's transformer passes between its cached stages (export/wan_graphs.py
        WanStages); for image to video its time embedding is per token (frame 0's at 0)."""
        d = int(self.transformer["num_attention_heads"]) * int(self.transformer["attention_head_dim"])
        head_dim = int(self.transformer["attention_head_dim"])
        pt, ph, pw = self.patch_size
        per = (1, TOKENS) if self.image_condition == "first-frame" else ("B",)
        return StageTensors(
            streams=(TensorSpec("hidden", ("B", TOKENS, d)),),
            context=(TensorSpec("text_states", ("B", "L", d)), TensorSpec("timestep_proj", (*per, 6, d)),
                     TensorSpec("rotary_cos", (1, TOKENS, 1, head_dim)), TensorSpec("rotary_sin", (1, TOKENS, 1, head_dim)),
                     TensorSpec("text_logit_bias", ("B", 1, 1, "L")),
                     *((TensorSpec("image_states", ("B", self.image_tokens, d)),) if self.image_encoder else ())),
            final=(TensorSpec("temb", (*per, d)),),
            tokens=f"(F//{pt})*(h//{ph})*(w//{pw})",
        )


def _check_channels_image_to_video(folder: Path, index: dict, experts: dict) -> None:
    """Raises VidrtError for a WanImageToVideoPipeline folder without expand_timesteps that
    is not Wan 2.1 I2V's or Wan 2.2 I2V-A14B's layout (a CLIP image encoder exactly when
    the transformer takes image states; no first-last-frame image embedder)."""
    config = experts["transformer"]
    if int(config.get("in_channels", 16)) <= int(config.get("out_channels") or 16):
        raise VidrtError(f"{folder}: a WanImageToVideoPipeline transformer takes the image condition as extra "
                         f"input channels, this one has in_channels={config.get('in_channels')}; check the folder")
    if (config.get("image_dim") is not None) != _listed(index, "image_encoder"):
        raise VidrtError(f"{folder}: the transformer's image_dim and model_index.json's image_encoder must come "
                         "together (Wan 2.1 I2V has both, Wan 2.2 I2V-A14B neither); check the folder")
    if config.get("pos_embed_seq_len") is not None:
        raise VidrtError(f"{folder}: a first-last-frame model (pos_embed_seq_len, Wan2.1-FLF2V) is not served yet; "
                         "vidrt serves Wan image to video from the first frame")


def _listed(index: dict, component: str) -> bool:
    entry = index.get(component)
    return isinstance(entry, list) and entry[0] is not None


def read_folder(folder: Path, index: dict, motion_adapter=None) -> WanModel:
    """The family's entry point for vidrt.models.read_model."""
    if motion_adapter is not None:
        raise VidrtError("--motion-adapter goes with a Stable Diffusion or AnimateDiff folder, not a WanPipeline")
    return WanModel.from_folder(folder, index)


def image_inputs(m: WanModel) -> tuple[TensorSpec, ...]:
    """The transformer's image inputs: TI2V-5B's image latent [B, C, h, w] (frame 0), or
    the channels condition [B, C', F, h, w] and, for Wan 2.1 I2V, the CLIP states."""
    if m.image_condition == "first-frame":
        return (TensorSpec("image_latents", ("B", m.latent_channels, "h", "w")),)
    if m.image_condition != "channels":
        return ()
    condition = TensorSpec("condition", ("B", m.condition_channels, "F", "h", "w"))
    if m.image_encoder is None:
        return (condition,)
    dim = int(m.transformer["image_dim"])
    return condition, TensorSpec("image_embeds", ("B", m.image_tokens, dim))


def image_encoder_spec(m: WanModel) -> ComponentSpec:
    """Wan 2.1 I2V's CLIP vision model: pixel values [B, 3, S, S] (the folder's
    image_processor made them) -> its penultimate layer's states [B, tokens, D], what
    WanImageToVideoPipeline.encode_image gives the transformer."""
    size = int(m.image_encoder["image_size"])
    return ComponentSpec(
        name="image_encoder",
        inputs=(TensorSpec("pixel_values", ("B", 3, size, size)),),
        outputs=(TensorSpec("image_states", ("B", m.image_tokens, int(m.image_encoder["hidden_size"]))),),
        ranges={"B": DimRange(1, MAX_BATCH)},
        opt={"B": 1},
    )


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
    families/wan/pipeline.py ``collapse_padding``), for image to video its image inputs
    (``image_inputs``) -> the flow prediction."""
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
            *image_inputs(m),
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
