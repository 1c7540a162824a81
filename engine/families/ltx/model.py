"""What vidrt needs to know about an LTX-Video folder (diffusers' LTXPipeline and
LTXImageToVideoPipeline: a T5 text encoder, LTXVideoTransformer3DModel,
AutoencoderKLLTXVideo), and its component descriptions. JSON configs only; no torch
model is built.

The components: ``text_encoder`` (token ids -> hidden states; LTXPipeline passes no mask,
so it runs at max_sequence_length), ``transformer`` on latents [B, C, F, h, w] (packed
inside the graph, as diffusers packs them before the call; a per-frame mask marks the
image's latent frame in image to video), ``vae_encoder`` (image to video: the image's
latent distribution) and ``vae_decoder``, the whole latent clip in one call (diffusers
decodes it so; the decoder is not causal), at a per-video decode timestep when the VAE
is timestep-conditioned (LTX-Video 0.9.1+), with the noise maps LTX-Video 0.9.1's decoder
injects as an input (drawn by the pipeline from torch's global generator, as diffusers).
"""

from __future__ import annotations

import dataclasses
import json
import math
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

MAX_LATENT_FRAMES = 64  # 505 frames of LTX-Video (257 is its longest documented clip)
MAX_TEXT_LENGTH = 512
# fp32 weight bytes per text-encoder part: T5-XXL's encoder (LTX-Video's, 4.8 B parameters,
# 19 GB in fp32) is exported and run in parts on a 24 GB machine (SplitTextEncoderMixin).
TEXT_PART_BYTES = 4 << 30


@dataclasses.dataclass(frozen=True)
class LTXModel(SplitDenoiserMixin, FirstFrameVaeMixin, SplitTextEncoderMixin, ModelFolderMixin):
    """Configs of an LTXPipeline folder (model_index.json layout)."""

    folder: Path
    transformer: dict
    vae: dict
    text_encoder: dict
    tokenizer: dict
    scheduler: dict
    preset: dict | None
    image_to_video: bool = False  # an LTXImageToVideoPipeline folder
    split_denoisers: str | None = None  # the transformer in three engines, cut as vidrt.split.HEADS[this] (step caching)

    denoiser = "transformer"
    family_name = "LTX-Video"
    denoisers = quantizable = ("transformer",)
    cache_contexts = "joint"  # LTXPipeline runs both guidance halves in one call ("cond_uncond")
    fp16_fp32_layers = ("*norm*",)  # TensorRT fp16: RMS and layer norms in fp32, as diffusers skips casting them

    @classmethod
    def from_folder(cls, folder: str | Path, index: dict | None = None) -> "LTXModel":
        """Reads the configs of a diffusers LTXPipeline folder.

        Raises:
            VidrtError: the folder or one of its config files is missing or malformed,
                or it is an LTX variant vidrt does not serve.
        """
        folder = Path(folder)
        index = index or _read_json(folder / "model_index.json", folder)
        transformer = _read_json(folder / "transformer" / "config.json", folder)
        vae = _read_json(folder / "vae" / "config.json", folder)
        if transformer.get("patch_size", 1) != 1 or transformer.get("patch_size_t", 1) != 1:
            raise VidrtError(f"{folder}: an LTX transformer with patch sizes other than 1; every released LTX-Video "
                             "has 1 and vidrt exports only those")
        preset_file = folder / PRESET_MARKER
        return cls(
            folder=folder,
            transformer=transformer,
            vae=vae,
            text_encoder=_read_json(folder / "text_encoder" / "config.json", folder),
            tokenizer=_read_json(folder / "tokenizer" / "tokenizer_config.json", folder),
            scheduler=_read_json(folder / "scheduler" / "scheduler_config.json", folder),
            preset=json.loads(preset_file.read_text()) if preset_file.exists() else None,
            image_to_video=index.get("_class_name") == "LTXImageToVideoPipeline",
        )

    @property
    def takes_image(self) -> bool:
        return self.image_to_video

    @property
    def kind(self) -> str:
        return "ltx-i2v" if self.image_to_video else "ltx"

    @property
    def pipeline_class(self) -> str:
        return "LTXImageToVideoPipeline" if self.image_to_video else "LTXPipeline"

    @property
    def components(self) -> tuple[str, ...]:
        return self.split_components(
            (*self.text_parts, *(("vae_encoder",) if self.image_to_video else ()), "transformer", "vae_decoder"))

    @property
    def text_encoder_blocks(self) -> list[tuple[int, int]]:
        """[start, stop) T5 blocks of each text-encoder part (TEXT_PART_BYTES each)."""
        return self.split_blocks(TEXT_PART_BYTES, 32128)

    @property
    def unet(self) -> dict:
        """The denoiser's config (the name the shared checks and tools read)."""
        return self.transformer

    @property
    def weights_folder(self) -> dict[str, str]:
        return {**{p: "text_encoder" for p in self.text_parts}, **self.per_stage({"transformer": "transformer"}),
                "vae_encoder": "vae", "vae_decoder": "vae"}

    @property
    def torch_classes(self) -> dict[str, tuple[str, str, str]]:
        """component -> (library, torch module class, subfolder)."""
        encoder = ("transformers", self.text_encoder.get("architectures", ["T5EncoderModel"])[0], "text_encoder")
        return {**{p: encoder for p in self.text_parts},
                **self.per_stage({"transformer": ("diffusers", "LTXVideoTransformer3DModel", "transformer")}),
                "vae_encoder": ("diffusers", "AutoencoderKLLTXVideo", "vae"),
                "vae_decoder": ("diffusers", "AutoencoderKLLTXVideo", "vae")}

    @property
    def vae_scale_factor(self) -> int:
        """AutoencoderKLLTXVideo.spatial_compression_ratio (32 for LTX-Video)."""
        scaling = self.vae.get("spatio_temporal_scaling", (True, True, True, False))
        return int(self.vae.get("spatial_compression_ratio") or self.vae.get("patch_size", 4) * 2 ** sum(scaling))

    @property
    def temporal_factor(self) -> int:
        """AutoencoderKLLTXVideo.temporal_compression_ratio (8 for LTX-Video)."""
        scaling = self.vae.get("spatio_temporal_scaling", (True, True, True, False))
        return int(self.vae.get("temporal_compression_ratio") or self.vae.get("patch_size_t", 1) * 2 ** sum(scaling))

    @property
    def timestep_conditioning(self) -> bool:
        return bool(self.vae.get("timestep_conditioning", False))

    @property
    def decoder_noise_upscales(self) -> tuple[int, ...]:
        """For each noise map the decoder injects, in the order diffusers draws them, how
        many times the latent grid's height and width it is (LTX-Video 0.9.1's decoder;
        empty for decoders without injected noise).

        diffusers' LTXVideoDecoder3d (autoencoder_kl_ltx.py) reverses its per-block
        configs, runs the mid block at the latent grid, then each up block: its upsampler
        (x2) where it scales, its resnets. A resnet of a block that injects noise draws one
        [H, W] normal map after each of its two convs, from torch's global generator
        (decode takes no generator). (An up block whose channels change starts with one
        more resnet; with injected noise diffusers cannot run it: its noise scale has the
        input's channels, added after the conv to the output's.)
        """
        cfg = self.vae
        inject = tuple(reversed(cfg.get("decoder_inject_noise", (False,) * 5)))
        if not any(inject):
            return ()
        layers = tuple(reversed(cfg.get("decoder_layers_per_block", (4, 3, 3, 3, 4))))
        scaling = tuple(reversed(cfg.get("decoder_spatio_temporal_scaling", (True, True, True, False))))
        draws, upscale = [], 1
        if inject[0]:
            draws += [upscale] * 2 * layers[0]  # the mid block's resnets
        for i in range(len(scaling)):
            upscale *= 2 if scaling[i] else 1
            if inject[i + 1]:
                draws += [upscale] * 2 * layers[i + 1]
        return tuple(draws)

    @property
    def unet_up_factor(self) -> int:
        return 1  # patch size 1: every latent position is a token

    @property
    def pixel_multiple(self) -> int:
        """LTXPipeline.check_inputs asks for multiples of 32 (and the VAE needs its ratio)."""
        return math.lcm(32, self.vae_scale_factor)

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.get("in_channels", 128))

    @property
    def text_dim(self) -> int:
        return int(self.text_encoder.get("d_model", 4096))

    default_num_frames = 161
    default_size = (512, 704)
    default_guidance_scale = 3.0
    max_text_length = MAX_TEXT_LENGTH
    default_text_length = 128  # LTXPipeline's max_sequence_length

    @property
    def max_frames(self) -> int:
        return self.temporal_factor * (MAX_LATENT_FRAMES - 1) + 1

    def check_ranges(self, videos, do_cfg, frames, height, width, chunk=None, text_length=None) -> None:
        """Raises VidrtError naming the first size outside a component's declared range."""
        self.check_frames(frames)
        self.check_size(height, width)
        s = self.vae_scale_factor
        rows = videos * (2 if do_cfg else 1)
        length = 128 if text_length is None else text_length
        specs = self.specs()
        for p in self.text_parts:
            specs[p].check({"B": rows, "L": length})
        self.denoiser_spec(specs, "transformer").check({"B": rows, "F": self.latent_frames(frames), "h": height // s, "w": width // s,
                                    "L": length})
        specs["vae_decoder"].check({"B": 1, "F": self.latent_frames(frames), "h": height // s, "w": width // s})
        if self.image_to_video:
            specs["vae_encoder"].check({"B": 1, "H": height, "W": width})

    def specs(self) -> dict[str, ComponentSpec]:
        out = {p: text_encoder_spec(self, p) for p in self.text_parts}
        out |= {**self.denoiser_specs("transformer", transformer_spec(self)), "vae_decoder": vae_decoder_spec(self)}
        return out | ({"vae_encoder": vae_encoder_spec(self)} if self.image_to_video else {})

    def stage_tensors(self) -> StageTensors:
        """What the transformer passes between its cached stages (export/ltx_graphs.py LTXTransformerGraph)."""
        d = int(self.transformer["num_attention_heads"]) * int(self.transformer["attention_head_dim"])
        return StageTensors(
            streams=(TensorSpec("hidden", ("B", TOKENS, d)),),
            context=(TensorSpec("text_states", ("B", "L", d)), TensorSpec("token_temb", (1, TOKENS, 6 * d)),
                     TensorSpec("text_bias", ("B", 1, "L")), TensorSpec("rotary_cos", (1, TOKENS, d)),
                     TensorSpec("rotary_sin", (1, TOKENS, d))),
            final=(TensorSpec("embedded_timestep", (1, TOKENS, d)),),
            tokens="F*h*w",
        )


def read_folder(folder: Path, index: dict, motion_adapter=None) -> LTXModel:
    """The family's entry point for vidrt.models.read_model."""
    if motion_adapter is not None:
        raise VidrtError("--motion-adapter goes with a Stable Diffusion or AnimateDiff folder, not an LTXPipeline")
    return LTXModel.from_folder(folder, index)


def text_encoder_spec(m: LTXModel, name: str = "text_encoder") -> ComponentSpec:
    """T5 encoder: token ids (padded to max_sequence_length, no mask) -> last hidden states.
    A split encoder (``m.text_parts``): the first part takes the ids, the next ones the
    states after the last part's blocks (``next_hidden_states``)."""
    vocab = int(m.text_encoder.get("vocab_size", 32128))
    first, last = name == m.text_parts[0], name == m.text_parts[-1]
    return ComponentSpec(
        name=name,
        inputs=(TensorSpec("input_ids", ("B", "L"), "int64", high=vocab) if first
                else TensorSpec("hidden_states", ("B", "L", m.text_dim)),),
        outputs=(TensorSpec("last_hidden_state" if last else "next_hidden_states", ("B", "L", m.text_dim)),),
        ranges={"B": DimRange(1, 2 * MAX_BATCH), "L": DimRange(1, m.max_text_length)},
        opt={"B": 2, "L": m.default_text_length},
    )


def transformer_spec(m: LTXModel) -> ComponentSpec:
    """Latents, the step's timestep, the text states with their mask (both guidance halves
    stacked in the batch), LTXPipeline's rope_interpolation_scale and the per-latent-frame
    conditioning mask (1: the image's frame in image to video) -> the flow prediction."""
    c = m.latent_channels
    s = m.vae_scale_factor
    return ComponentSpec(
        name="transformer",
        inputs=(
            TensorSpec("sample", ("B", c, "F", "h", "w")),
            TensorSpec("timestep", (1,), value=500.0),
            TensorSpec("encoder_hidden_states", ("B", "L", m.text_dim)),
            TensorSpec("encoder_attention_mask", ("B", "L"), "int64", high=2),
            TensorSpec("rope_interpolation_scale", (3,), value=float(s)),
            TensorSpec("conditioning_mask", ("F",), "int64", high=2),
        ),
        outputs=(TensorSpec("noise_pred", ("B", c, "F", "h", "w")),),
        ranges={"B": DimRange(1, MAX_BATCH), "F": DimRange(1, MAX_LATENT_FRAMES),
                "h": DimRange(1, MAX_PIXELS // s), "w": DimRange(1, MAX_PIXELS // s),
                "L": DimRange(1, m.max_text_length)},
        # tuned for diffusers' default request, 161 frames at 512x704
        opt={"B": 2, "F": min(m.latent_frames(m.default_num_frames), MAX_LATENT_FRAMES), "h": 512 // s, "w": 704 // s,
             "L": 128},
    )


def vae_encoder_spec(m: LTXModel) -> ComponentSpec:
    """Images [B, 3, H, W] in [-1, 1] -> the normalised mean and std of their one-frame latents."""
    s = m.vae_scale_factor
    latent = ("B", int(m.vae.get("latent_channels", 128)), 1, f"H//{s}", f"W//{s}")
    return ComponentSpec(
        name="vae_encoder",
        inputs=(TensorSpec("image", ("B", 3, "H", "W")),),
        outputs=(TensorSpec("latent_mean", latent), TensorSpec("latent_std", latent)),
        ranges={"B": DimRange(1, MAX_BATCH), "H": DimRange(s, MAX_PIXELS, s), "W": DimRange(s, MAX_PIXELS, s)},
        opt={"B": 1, "H": 512, "W": 704},
    )


def vae_decoder_spec(m: LTXModel) -> ComponentSpec:
    """A whole latent clip [B, C, F, h, w] as the loop leaves it (the graph denormalises it)
    and, for a timestep-conditioned decoder, the decode noise, its [B] scale and the [B]
    decode timestep -> frames in [-1, 1]."""
    s, k = m.vae_scale_factor, m.temporal_factor
    latent = ("B", int(m.vae.get("latent_channels", 128)), "F", "h", "w")
    inputs = (TensorSpec("latents", latent),)
    if m.timestep_conditioning:
        inputs += (TensorSpec("timestep", ("B",), value=0.05), TensorSpec("noise", latent),
                   TensorSpec("noise_scale", ("B",), value=0.025))
    if m.decoder_noise_upscales:  # every injected noise map, flattened in draw order
        inputs += (TensorSpec("injected_noise", (f"h*w*{sum(u * u for u in m.decoder_noise_upscales)}",)),)
    return ComponentSpec(
        name="vae_decoder",
        inputs=inputs,
        outputs=(TensorSpec("frames", ("B", 3, f"(F-1)*{k}+1", f"h*{s}", f"w*{s}")),),
        ranges={"B": DimRange(1, MAX_BATCH), "F": DimRange(1, MAX_LATENT_FRAMES),
                "h": DimRange(1, MAX_PIXELS // s), "w": DimRange(1, MAX_PIXELS // s)},
        opt={"B": 1, "F": min(m.latent_frames(m.default_num_frames), MAX_LATENT_FRAMES), "h": 512 // s, "w": 704 // s},
    )
