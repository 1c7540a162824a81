"""What every model family's folder shares: the size limits of the shape ranges, the
preset marker, the JSON reader with its errors, the properties derived from the VAE and
UNet configs, and the description of a VAE decoder over stacked latent frames. Family
models (vidrt.families.<family>.model) build on this; it imports none of them.
"""

from __future__ import annotations

import json
from pathlib import Path

from .components import ComponentSpec, DimRange, TensorSpec
from .errors import VidrtError

MAX_BATCH = 16
MAX_FRAMES = 64
MAX_PIXELS = 2048  # per side

PRESET_MARKER = "vidrt_preset.json"
PART = "_part"  # a split text encoder's components: text_encoder, text_encoder_part1, ...


class ModelFolderMixin:
    """What every model family derives alike from its ``folder``, ``preset``, ``vae`` and
    ``unet`` configs."""

    graph_variants: dict[str, tuple[str, ...]] = {}  # component -> export variants it has
    denoiser = "unet"  # the component the denoising loop calls (its stage name in timings)
    temporal_factor = 1  # video frames per latent frame (the Wan VAE packs 4 after the first)
    takes_image = False  # the pipeline's request starts from an image (SVD, LTX image to video)
    max_text_length: int | None = None  # the longest prompt the denoiser takes; None without text

    quantizable = ("unet", "vae_decoder", "image_encoder")  # what the quantization stage calibrates of it
    keep_fp32: tuple[str, ...] = ()  # components kept at fp32 when the rest runs bf16/fp16
    fp16_fp32_layers: tuple[str, ...] = ()  # TensorRT fp16: layer-name patterns built in fp32

    @property
    def denoisers(self) -> tuple[str, ...]:
        """Every component the loop may call (Wan 2.2 has two experts)."""
        return (self.denoiser,)

    def text_part(self, component: str) -> tuple[int, int] | None:
        """(first block, end block) when ``component`` is one part of a text encoder
        exported in pieces (Wan's UMT5-XXL), else None."""
        return None

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames of a video of ``num_frames`` (one each, unless the VAE compresses time)."""
        return num_frames

    @property
    def default_text_length(self) -> int | None:
        """The text tokens a request runs at unless it passes max_sequence_length (the
        diffusers pipeline's default): the longest, where the pipeline pads every prompt to
        it (LTX-Video's is shorter); None without text."""
        return self.max_text_length

    @property
    def label(self) -> str:
        """How results name this model; random weights are always said."""
        if self.preset:
            differs = f"; {self.preset['differs']}" if self.preset.get("differs") else ""
            return f"{self.preset['name']} (RANDOM WEIGHTS, seed {self.preset['seed']}{differs})"
        return str(self.folder)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae["block_out_channels"]) - 1)

    @property
    def unet_up_factor(self) -> int:
        """Latent sides must be multiples of this (one per UNet downsampling)."""
        return 2 ** (len(self.unet["block_out_channels"]) - 1)

    @property
    def pixel_multiple(self) -> int:
        return self.vae_scale_factor * self.unet_up_factor


class FirstFrameVaeMixin:
    """A video VAE that keeps the first frame and packs ``temporal_factor`` frames into each
    later latent frame (Wan's and CogVideoX's pack 4, LTX-Video's 8): videos of
    (temporal_factor)k+1 frames, sizes multiples of ``pixel_multiple``. ``family_name``
    names the model in errors."""

    family_name = ""

    def latent_frames(self, num_frames: int) -> int:
        return (num_frames - 1) // self.temporal_factor + 1

    def check_frames(self, num_frames: int) -> None:
        """Raises VidrtError unless num_frames is (temporal_factor)k+1 within the model's range."""
        k = self.temporal_factor
        if num_frames < 1 or (num_frames - 1) % k or num_frames > self.max_frames:
            near = max(1, min(self.max_frames, (num_frames - 1) // k * k + 1))
            raise VidrtError(f"num_frames={num_frames}: {self.family_name} makes {k}k+1 frames (1, {k + 1}, "
                             f"{2 * k + 1}, ... {self.max_frames}); try {near}")

    def check_size(self, height: int, width: int) -> None:
        """Raises VidrtError unless height and width are positive multiples of pixel_multiple."""
        m = self.pixel_multiple
        if height % m or width % m or height < m or width < m:
            raise VidrtError(f"height and width must be positive multiples of {m} for {self.family_name}, got "
                             f"{height}x{width}; try {max(m, height // m * m)}x{max(m, width // m * m)}")


class SplitTextEncoderMixin:
    """A (U)T5 text encoder too large to export in one piece on this machine (UMT5-XXL:
    22.7 GB in fp32, T5-XXL's encoder 19 GB), exported and run as a chain of parts of
    consecutive blocks, each loaded alone: ``text_encoder``, ``text_encoder_part1``, ...
    Smaller encoders are one part, the component ``text_encoder``. A family sets
    ``text_encoder`` (its config) and calls ``split_blocks`` with its part size."""

    SPLITTABLE = ("UMT5EncoderModel", "T5EncoderModel")  # each part computes T5's shared position bias itself

    def split_blocks(self, part_bytes: int, default_vocab: int) -> list[tuple[int, int]]:
        """[start, stop) encoder blocks of each part: consecutive blocks up to ``part_bytes``
        of fp32 weights (the token embedding counted in the first), at least one block each."""
        cfg = self.text_encoder
        d, ff = int(cfg.get("d_model", 4096)), int(cfg.get("d_ff", 10240))
        inner = int(cfg.get("num_heads", 64)) * int(cfg.get("d_kv", 64))
        gated = str(cfg.get("feed_forward_proj", "gated-gelu")).startswith("gated")
        block = 4 * (4 * d * inner + (3 if gated else 2) * d * ff)
        layers = int(cfg.get("num_layers", 24))
        parts, start, size = [], 0, 4 * int(cfg.get("vocab_size", default_vocab)) * d
        for i in range(layers):
            if i > start and size + block > part_bytes:
                parts.append((start, i))
                start, size = i, 0
            size += block
        parts.append((start, layers))
        architecture = cfg.get("architectures", ["T5EncoderModel"])[0]
        if len(parts) > 1 and architecture not in self.SPLITTABLE:
            raise VidrtError(f"{self.folder}: the {architecture} text encoder is too large to export in one piece "
                             f"here and vidrt splits {' and '.join(self.SPLITTABLE)} encoders only")
        return parts

    @property
    def text_parts(self) -> tuple[str, ...]:
        """The text encoder's components in call order."""
        n = len(self.text_encoder_blocks)
        return ("text_encoder", *(f"text_encoder{PART}{i}" for i in range(1, n)))

    def text_part(self, component: str) -> tuple[int, int] | None:
        """(first block, end block) of a text-encoder part when the encoder is split, else
        None (one part: diffusers' whole encoder)."""
        blocks = self.text_encoder_blocks
        if len(blocks) == 1 or component not in self.text_parts:
            return None
        return blocks[self.text_parts.index(component)]


def frame_decoder_spec(m: ModelFolderMixin, latent_channels: int, max_frames: int) -> ComponentSpec:
    """A VAE decoder over latent frames stacked in the batch (``N``: the frames of one
    decode chunk, up to ``max_frames``), tuned at the model's default frames and size."""
    s = m.vae_scale_factor
    top = MAX_PIXELS // s
    h, w = m.default_size
    return ComponentSpec(
        name="vae_decoder",
        inputs=(TensorSpec("latents", ("N", latent_channels, "h", "w")),),
        outputs=(TensorSpec("frames", ("N", 3, f"h*{s}", f"w*{s}")),),
        ranges={"N": DimRange(1, max_frames), "h": DimRange(1, top), "w": DimRange(1, top)},
        opt={"N": m.default_num_frames, "h": h // s, "w": w // s},
    )


def read_json(path: Path, folder: Path) -> dict:
    """The JSON object at ``path`` inside model folder ``folder``; a missing folder or file,
    invalid JSON or a non-object is a VidrtError saying how to fix it."""
    if not folder.is_dir():
        raise VidrtError(f"model folder {folder} does not exist; pass a diffusers model folder, a hub id or a preset")
    if not path.is_file():
        raise VidrtError(
            f"{folder} is not a complete diffusers model folder: {path.relative_to(folder)} is missing; "
            "save the pipeline with save_pretrained() or pass a preset (vidrt build-engines --help lists them)"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VidrtError(f"{path} is not valid JSON ({e}); re-save the model folder") from None
    if not isinstance(data, dict):
        raise VidrtError(f"{path} holds a JSON {type(data).__name__}, not an object; re-save the model folder")
    return data
