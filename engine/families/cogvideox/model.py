"""What vidrt needs to know about a CogVideoX folder (diffusers' CogVideoXPipeline and
CogVideoXImageToVideoPipeline: a T5 text encoder, CogVideoXTransformer3DModel,
AutoencoderKLCogVideoX), and its component descriptions. JSON configs only; no torch
model is built.

The components: ``text_encoder`` (token ids -> hidden states; CogVideoX passes T5 no mask,
so it runs at max_sequence_length), ``transformer`` on latents [B, F, C, h, w] (diffusers'
layout; the image's latent frame, the image-to-video pipeline's extra channels, and the
rotary tables of CogVideoX-5b are inputs), ``vae_encoder`` (image to video: the image's
latent distribution) and the VAE decoder as diffusers runs it, in chunks of latent frames
with a cache per causal convolution. GroupNorm statistics and the temporal upsampling
depend on the chunks, so vidrt decodes the very chunks diffusers does: for an odd latent
count (49 frames: 13) ``vae_decoder`` decodes latent frames 0..2 without caches and
returns them, then ``vae_decoder_chunk`` decodes each next pair from the caches and
returns them updated; for an even count (13 frames: 4) the first pair is a
``vae_decoder_chunk`` call too, told (``first``) to pad as a clip's start instead of
reading caches, and its frames are upsampled in time like every pair's, so a request for
4k+1 frames with an even latent count gets 4k+4 (13 -> 16), as from diffusers. Requests
are 4k+1 frames; one frame (one latent frame, a third kind of chunk in diffusers) is
decoded as a pair of copies of it (see the pipeline's ``_decode``).

CogVideoX 1.5 (``patch_size_t``: the transformer patches pairs of latent frames) denoises
the latent frames padded to a multiple of the pair, the padding in front, and drops the
padding before decoding, as diffusers does; its image-to-video transformer adds the
"ofs" embedding, which diffusers' pipeline always feeds 2.0 (a constant in the graph).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ...components import ComponentSpec, DimRange, TensorSpec
from ...errors import VidrtError
from ...split import TOKENS, SplitDenoiserMixin, StageTensors
from ...model_folder import (MAX_BATCH, MAX_PIXELS, PRESET_MARKER, FirstFrameVaeMixin, ModelFolderMixin,
                             SplitTextEncoderMixin)
from ...model_folder import read_json as _read_json
from ..ltx.model import text_encoder_spec

MAX_LATENT_FRAMES = 25  # 97 video frames (CogVideoX makes 49)
FIRST_CHUNK = 3  # latent frames diffusers' first decode chunk holds for an odd count (2 + the remainder)
TEXT_PART_BYTES = 4 << 30  # T5-XXL's encoder (19 GB at fp32) in parts, as LTX-Video's
TEXT_LENGTH = 226  # diffusers' CogVideoX pipelines' max_sequence_length default


@dataclasses.dataclass(frozen=True)
class CogVideoXModel(SplitDenoiserMixin, FirstFrameVaeMixin, SplitTextEncoderMixin, ModelFolderMixin):
    """Configs of a CogVideoXPipeline folder (model_index.json layout)."""

    folder: Path
    transformer: dict
    vae: dict
    text_encoder: dict
    tokenizer: dict
    scheduler: dict
    preset: dict | None
    image_to_video: bool = False  # a CogVideoXImageToVideoPipeline folder
    split_denoisers: str | None = None  # the transformer in three engines, cut as vidrt.split.HEADS[this] (step caching)

    denoiser = "transformer"
    family_name = "CogVideoX"
    denoisers = quantizable = ("transformer",)
    cache_contexts = "joint"  # CogVideoXPipeline runs both guidance halves in one call ("cond_uncond")
    fp16_fp32_layers = ("*norm*",)  # TensorRT fp16: layer and group norms in fp32
    default_guidance_scale = 6.0
    default_num_frames = 49

    @classmethod
    def from_folder(cls, folder: str | Path, index: dict | None = None) -> "CogVideoXModel":
        """Reads the configs of a diffusers CogVideoX folder.

        Raises:
            VidrtError: the folder or one of its config files is missing or malformed,
                or it is a CogVideoX variant vidrt does not serve.
        """
        folder = Path(folder)
        index = index or _read_json(folder / "model_index.json", folder)
        transformer = _read_json(folder / "transformer" / "config.json", folder)
        if transformer.get("patch_size_t") is not None and (transformer.get("use_learned_positional_embeddings")
                                                            or not transformer.get("use_rotary_positional_embeddings")):
            # diffusers lays a position table out per latent frame, not per pair: its shapes do not add up
            raise VidrtError(f"{folder}: a CogVideoX transformer with patch_size_t and a position table, which "
                             "diffusers cannot run either; CogVideoX 1.5 uses rotary positions")
        preset_file = folder / PRESET_MARKER
        return cls(
            folder=folder,
            transformer=transformer,
            vae=_read_json(folder / "vae" / "config.json", folder),
            text_encoder=_read_json(folder / "text_encoder" / "config.json", folder),
            tokenizer=_read_json(folder / "tokenizer" / "tokenizer_config.json", folder),
            scheduler=_read_json(folder / "scheduler" / "scheduler_config.json", folder),
            preset=json.loads(preset_file.read_text()) if preset_file.exists() else None,
            image_to_video=index.get("_class_name") == "CogVideoXImageToVideoPipeline",
        )

    @property
    def takes_image(self) -> bool:
        return self.image_to_video

    @property
    def kind(self) -> str:
        return "cogvideox-i2v" if self.image_to_video else "cogvideox"

    @property
    def pipeline_class(self) -> str:
        return "CogVideoXImageToVideoPipeline" if self.image_to_video else "CogVideoXPipeline"

    @property
    def components(self) -> tuple[str, ...]:
        encoder = ("vae_encoder",) if self.image_to_video else ()
        return self.split_components((*self.text_parts, *encoder, "transformer", "vae_decoder", "vae_decoder_chunk"))

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
                **{c: "vae" for c in ("vae_encoder", "vae_decoder", "vae_decoder_chunk")}}

    @property
    def torch_classes(self) -> dict[str, tuple[str, str, str]]:
        """component -> (library, torch module class, subfolder)."""
        encoder = ("transformers", self.text_encoder.get("architectures", ["T5EncoderModel"])[0], "text_encoder")
        vae = ("diffusers", "AutoencoderKLCogVideoX", "vae")
        return {**{p: encoder for p in self.text_parts},
                **self.per_stage({"transformer": ("diffusers", "CogVideoXTransformer3DModel", "transformer")}),
                "vae_encoder": vae, "vae_decoder": vae, "vae_decoder_chunk": vae}

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.get("block_out_channels", (128, 256, 256, 512))) - 1)

    @property
    def temporal_factor(self) -> int:
        return int(self.vae.get("temporal_compression_ratio", 4))

    @property
    def patch_size(self) -> int:
        return int(self.transformer.get("patch_size", 2))

    @property
    def patch_size_t(self) -> int:
        """Latent frames per token in time: 1, or CogVideoX 1.5's 2."""
        return int(self.transformer.get("patch_size_t") or 1)

    @property
    def unet_up_factor(self) -> int:
        return self.patch_size

    @property
    def latent_channels(self) -> int:
        """Channels of the latents the loop denoises (the image-to-video transformer takes
        twice as many: the image's are appended)."""
        return int(self.transformer.get("out_channels") or self.transformer.get("in_channels", 16))

    @property
    def text_dim(self) -> int:
        return int(self.text_encoder.get("d_model", 4096))

    @property
    def max_text_length(self) -> int:
        """The longest text the transformer takes: its position table's, else (rotary
        positions cover the video only) any up to the pipelines' default or the config's."""
        configured = int(self.transformer.get("max_text_seq_length", TEXT_LENGTH))
        return configured if self.position_table else max(TEXT_LENGTH, configured)

    @property
    def default_text_length(self) -> int:
        """diffusers' default, 226 tokens, which a transformer with a position table takes
        only if that table holds 226 (vidrt then runs the table's length)."""
        return self.max_text_length if self.position_table else TEXT_LENGTH

    @property
    def rotary(self) -> bool:
        return bool(self.transformer.get("use_rotary_positional_embeddings", False))

    @property
    def learned_positions(self) -> bool:
        return bool(self.transformer.get("use_learned_positional_embeddings", False))

    @property
    def position_table(self) -> bool:
        """The transformer adds a position table over [text; video] tokens (sin-cos, or
        learned), laid out for exactly max_text_seq_length text tokens."""
        return self.learned_positions or not self.rotary

    @property
    def sample_size(self) -> tuple[int, int, int]:
        """(video frames, height, width) the transformer was configured for."""
        t, s = self.transformer, self.vae_scale_factor
        return int(t.get("sample_frames", 49)), int(t.get("sample_height", 60)) * s, int(t.get("sample_width", 90)) * s

    @property
    def default_size(self) -> tuple[int, int]:
        return self.sample_size[1:]

    @property
    def max_frames(self) -> int:
        return self.temporal_factor * (MAX_LATENT_FRAMES - 1) + 1

    def loop_frames(self, num_frames: int) -> int:
        """Latent frames the loop denoises: latent_frames, padded up to a multiple of
        patch_size_t (CogVideoX 1.5; the padding is dropped before decoding)."""
        n, p = self.latent_frames(num_frames), self.patch_size_t
        return -(-n // p) * p

    def check_frames(self, num_frames: int) -> None:
        """Raises VidrtError unless num_frames is 4k+1 within range; a learned position
        table fixes it."""
        if self.learned_positions and num_frames != self.sample_size[0]:
            raise VidrtError(f"num_frames={num_frames}: this CogVideoX transformer's learned position table "
                             f"(CogVideoX-5b-I2V's) is for {self.sample_size[0]} frames; pass that")
        super().check_frames(num_frames)

    def check_size(self, height: int, width: int) -> None:
        """Raises VidrtError unless the size is a positive multiple of pixel_multiple (and,
        with a learned position table, the transformer's own size)."""
        m = self.pixel_multiple
        if self.learned_positions and (height, width) != self.sample_size[1:]:
            h, w = self.sample_size[1:]
            raise VidrtError(f"{height}x{width}: this CogVideoX transformer's learned position table "
                             f"(CogVideoX-5b-I2V's) is for {h}x{w}; pass height={h}, width={w}")
        if height % m or width % m or height < m or width < m:
            raise VidrtError(f"height and width must be positive multiples of {m} for CogVideoX, got "
                             f"{height}x{width}; try {max(m, height // m * m)}x{max(m, width // m * m)}")
        largest = self.largest_size
        if largest and (height > largest[0] or width > largest[1]):
            raise VidrtError(f"{height}x{width}: CogVideoX 1.5's rotary positions reach {largest[0]}x{largest[1]} "
                             f"(the transformer's sample size); pass a size within it")

    @property
    def largest_size(self) -> tuple[int, int] | None:
        """CogVideoX 1.5's largest (height, width): diffusers slices its rotary grid out of
        the sample grid; None where the size is unbounded."""
        if self.patch_size_t == 1:
            return None
        t, s = self.transformer, self.vae_scale_factor
        return int(t.get("sample_height", 60)) * s, int(t.get("sample_width", 90)) * s

    def check_ranges(self, videos, do_cfg, frames, height, width, chunk=None, text_length=None) -> None:
        """Raises VidrtError naming the first size outside a component's declared range."""
        self.check_frames(frames)
        self.check_size(height, width)
        s = self.vae_scale_factor
        rows = videos * (2 if do_cfg else 1)
        length = self.default_text_length if text_length is None else text_length
        if self.position_table and length != self.max_text_length:
            raise VidrtError(f"max_sequence_length={length}: this CogVideoX transformer's position table holds "
                             f"{self.max_text_length} text tokens; pass max_sequence_length={self.max_text_length}")
        specs = self.specs()
        for p in self.text_parts:
            specs[p].check({"B": rows, "L": length})
        self.denoiser_spec(specs, "transformer").check({"B": rows, "F": self.loop_frames(frames), "h": height // s,
                                                        "w": width // s, "L": length})
        specs["vae_decoder"].check({"B": 1, "h": height // s, "w": width // s})
        if self.image_to_video:
            specs["vae_encoder"].check({"B": 1, "H": height, "W": width})

    def specs(self) -> dict[str, ComponentSpec]:
        out = {p: text_encoder_spec(self, p) for p in self.text_parts}
        out |= {**self.denoiser_specs("transformer", transformer_spec(self)), "vae_decoder": vae_decoder_spec(self, first=True),
                "vae_decoder_chunk": vae_decoder_spec(self, first=False)}
        return out | ({"vae_encoder": vae_encoder_spec(self)} if self.image_to_video else {})

    def stage_tensors(self) -> StageTensors:
        """What the transformer passes between its cached stages (export/cogvideox_graphs.py
        CogVideoXTransformerGraph): video and text tokens, the time embedding, the rotary tables."""
        t = self.transformer
        d = int(t.get("num_attention_heads", 30)) * int(t.get("attention_head_dim", 64))
        emb = int(t.get("time_embed_dim", 512))
        rotary = ()
        if self.rotary:
            head = int(t.get("attention_head_dim", 64))
            rotary = (TensorSpec("rope_cos", (TOKENS, head)), TensorSpec("rope_sin", (TOKENS, head)))
        return StageTensors(
            streams=(TensorSpec("hidden", ("B", TOKENS, d)), TensorSpec("text", ("B", "L", d))),
            context=(TensorSpec("temb", ("B", emb)), *rotary),
            final=(TensorSpec("temb_final", ("B", emb)),),
            tokens=self.tokens,
        )

    @property
    def tokens(self) -> str:
        """The video tokens of a [B, F, C, h, w] latent, as a dimension expression."""
        p, pt = self.patch_size, self.patch_size_t
        return f"{'F' if pt == 1 else f'F//{pt}'}*(h//{p})*(w//{p})"


def read_folder(folder: Path, index: dict, motion_adapter=None) -> CogVideoXModel:
    """The family's entry point for vidrt.models.read_model."""
    if motion_adapter is not None:
        raise VidrtError("--motion-adapter goes with a Stable Diffusion or AnimateDiff folder, not a CogVideoX one")
    return CogVideoXModel.from_folder(folder, index)


def transformer_spec(m: CogVideoXModel) -> ComponentSpec:
    """Latents [B, F, C, h, w], the step's timestep and the text states (both guidance
    halves stacked in the batch); for image to video the image's latent [B, C, h, w] (the
    graph appends it as frame 0 of the extra channels, zeros after, as diffusers pads it);
    for rotary models the pipeline's [tokens, head_dim] cos and sin tables -> the
    prediction [B, F, C, h, w]. CogVideoX 1.5 takes F in pairs (``loop_frames``)."""
    c, s, p, pt = m.latent_channels, m.vae_scale_factor, m.patch_size, m.patch_size_t
    inputs = [TensorSpec("sample", ("B", "F", c, "h", "w")), TensorSpec("timestep", (1,), value=500.0),
              TensorSpec("encoder_hidden_states", ("B", "L", m.text_dim))]
    if m.image_to_video:
        inputs.append(TensorSpec("image_latents", ("B", c, "h", "w")))
    if m.rotary:
        head = int(m.transformer.get("attention_head_dim", 64))
        inputs += [TensorSpec("rotary_cos", (m.tokens, head)), TensorSpec("rotary_sin", (m.tokens, head))]
    frames, height, width = m.sample_size
    if m.learned_positions:  # one size and frame count: the table's
        fixed = {"F": m.latent_frames(frames), "h": height // s, "w": width // s}
        ranges = {k: DimRange(v, v) for k, v in fixed.items()}
    else:
        largest = m.largest_size or (MAX_PIXELS, MAX_PIXELS)
        ranges = {"F": DimRange(pt, m.loop_frames(m.max_frames), pt),
                  **{d: DimRange(p, min(MAX_PIXELS, side) // s // p * p, p) for d, side in zip("hw", largest)}}
    length = DimRange(m.max_text_length, m.max_text_length) if m.position_table else DimRange(1, m.max_text_length)
    # tuned for the model's own request: its frames at the transformer's size (within the ranges)
    opt = {"B": 2, "F": min(m.loop_frames(frames), ranges["F"].max),
           **{d: min(side // s, ranges[d].max) for d, side in zip("hw", (height, width))}, "L": m.default_text_length}
    return ComponentSpec(
        name="transformer",
        inputs=tuple(inputs),
        outputs=(TensorSpec("noise_pred", ("B", "F", c, "h", "w")),),
        ranges={"B": DimRange(1, 2 * MAX_BATCH), **ranges, "L": length},
        opt=opt,
    )


def vae_encoder_spec(m: CogVideoXModel) -> ComponentSpec:
    """Images [B, 3, H, W] in [-1, 1] -> the mean and std of their one-frame latents, both
    scaled as CogVideoXImageToVideoPipeline scales its sample: times the VAE's
    scaling_factor, or divided by it where the VAE says invert_scale_latents (CogVideoX 1.5)."""
    s = m.vae_scale_factor
    latent = ("B", int(m.vae.get("latent_channels", 16)), 1, f"H//{s}", f"W//{s}")
    return ComponentSpec(
        name="vae_encoder",
        inputs=(TensorSpec("image", ("B", 3, "H", "W")),),
        outputs=(TensorSpec("latent_mean", latent), TensorSpec("latent_std", latent)),
        ranges={"B": DimRange(1, MAX_BATCH), "H": DimRange(s, MAX_PIXELS, s), "W": DimRange(s, MAX_PIXELS, s)},
        opt={"B": 1, "H": m.sample_size[1], "W": m.sample_size[2]},
    )


def decoder_caches(vae: dict) -> list[tuple[int, int]]:
    """(channels, spatial scale over the latent) of the cache of each causal convolution of
    kernel 3 in time in the CogVideoX VAE decoder, in module order: conv_in, the middle
    block's two residual blocks (conv1, conv2 each), every up block's residual blocks, and
    conv_out; each keeps the last two frames of its input. (The spatial norms' 1x1x1
    convolutions keep caches that nothing reads.) Written from CogVideoXDecoder3D's
    constructor; tests compare it with the decoder's modules."""
    rev = list(reversed(vae.get("block_out_channels", (128, 256, 256, 512))))
    latent = int(vae.get("latent_channels", 16))
    resnets = int(vae.get("layers_per_block", 3)) + 1
    caches = [(latent, 1)] + [(rev[0], 1)] * 4
    out = rev[0]
    for i, channels in enumerate(rev):
        scale = 2**i
        for j in range(resnets):
            caches += [(out if j == 0 else channels, scale), (channels, scale)]
        out = channels
    return caches + [(rev[-1], 2 ** (len(rev) - 1))]


def vae_decoder_spec(m: CogVideoXModel, first: bool = True) -> ComponentSpec:
    """One decode chunk, 1/scaling_factor folded in: latents [B, n, C, h, w] (n = 3 for the
    first chunk of an odd count, 2 for every pair) -> frames in [-1, 1] [B, 3, (n-1)*k+1 or
    n*k, H, W] and the caches [B, c, 2, h*s, w*s] the next chunk reads (``first``: the
    3-frame chunk, which reads none; a pair reads them unless its ``first`` input is 1)."""
    s, k = m.vae_scale_factor, m.temporal_factor
    caches = decoder_caches(m.vae)

    def cache(name, i):
        c, scale = caches[i]
        return TensorSpec(f"{name}_{i}", ("B", c, 2, "h" if scale == 1 else f"h*{scale}", "w" if scale == 1 else f"w*{scale}"))

    n = FIRST_CHUNK if first else 2
    return ComponentSpec(
        name="vae_decoder" if first else "vae_decoder_chunk",
        inputs=(TensorSpec("latents", ("B", n, int(m.vae.get("latent_channels", 16)), "h", "w")),
                *(() if first else (TensorSpec("first", (1,), "int64", high=2),
                                    *(cache("cache", i) for i in range(len(caches)))))),
        outputs=(TensorSpec("frames", ("B", 3, (n - 1) * k + 1 if first else n * k, f"h*{s}", f"w*{s}")),
                 *(cache("next_cache", i) for i in range(len(caches)))),
        ranges={"B": DimRange(1, MAX_BATCH), "h": DimRange(1, MAX_PIXELS // s), "w": DimRange(1, MAX_PIXELS // s)},
        opt={"B": 1, "h": m.sample_size[1] // s, "w": m.sample_size[2] // s},
    )
