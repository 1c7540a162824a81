"""Text-to-video models: ModelScope's 3D U-Net (diffusers' TextToVideoSDPipeline) and
AnimateDiff (a Stable Diffusion UNet with a motion adapter, AnimateDiffPipeline).

Both share three components: the CLIP text encoder, a video UNet on latents laid
out [B, C, F, h, w], and the image VAE decoder applied frame by frame. Like
``svd.py``, everything here reads JSON configs only.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ...components import ComponentSpec, DimRange, TensorSpec
from ...errors import VidrtError
from ...model_folder import MAX_BATCH, MAX_FRAMES, MAX_PIXELS, PRESET_MARKER, ModelFolderMixin, frame_decoder_spec
from ...model_folder import read_json as _read_json

COMPONENTS = ("text_encoder", "unet", "vae_decoder")
WEIGHTS_FOLDER = {"text_encoder": "text_encoder", "unet": "unet", "vae_decoder": "vae"}

# model_index.json class -> (vidrt kind, diffusers' UNet class of that pipeline)
PIPELINES = {
    "TextToVideoSDPipeline": ("text-to-video-sd", "UNet3DConditionModel"),
    "AnimateDiffPipeline": ("animatediff", "UNetMotionModel"),
}


@dataclasses.dataclass(frozen=True)
class T2vModel(ModelFolderMixin):
    """Configs of a text-to-video model folder (model_index.json layout)."""

    folder: Path
    pipeline_class: str
    unet: dict
    vae: dict
    text_encoder: dict
    tokenizer: dict
    scheduler: dict
    motion_adapter: dict | None  # adapter config, when unet/ is the plain 2D UNet
    preset: dict | None
    motion_adapter_path: Path | None = None  # its folder or checkpoint file

    components = COMPONENTS
    weights_folder = WEIGHTS_FOLDER

    @classmethod
    def from_folder(cls, folder: str | Path, index: dict | None = None, motion_adapter: str | Path | None = None) -> "T2vModel":
        """Reads the configs of a TextToVideoSDPipeline or AnimateDiffPipeline folder.

        Args:
            folder: the model folder.
            index: its model_index.json, if already read.
            motion_adapter: an AnimateDiff motion adapter (diffusers folder or checkpoint
                file) to merge into the folder's 2D UNet; with it a StableDiffusionPipeline
                folder becomes AnimateDiff, as AnimateDiffPipeline.from_pretrained(sd,
                motion_adapter=...) makes it.

        Raises:
            VidrtError: the folder or one of its config files is missing or malformed.
        """
        from .motion_adapter import adapter_config

        folder = Path(folder)
        index = index or _read_json(folder / "model_index.json", folder)
        name = index.get("_class_name", "")
        if motion_adapter is not None and name in ("StableDiffusionPipeline", "AnimateDiffPipeline"):
            name = "AnimateDiffPipeline"
        elif motion_adapter is not None:
            raise VidrtError(f"--motion-adapter goes with a Stable Diffusion or AnimateDiff folder, not a '{name}'")
        if name not in PIPELINES:
            hint = "; add --motion-adapter to run it as AnimateDiff" if name == "StableDiffusionPipeline" else ""
            raise VidrtError(f"{folder} holds a '{name}'; vidrt's text-to-video path reads {', '.join(PIPELINES)}{hint}")
        unet = _read_json(folder / "unet" / "config.json", folder)
        adapter, adapter_path = None, None
        if name == "AnimateDiffPipeline" and unet.get("_class_name") != "UNetMotionModel":
            if motion_adapter is None:
                raise VidrtError(f"{folder}'s UNet has no motion modules; pass --motion-adapter (folder or checkpoint)")
            adapter_path = Path(motion_adapter).resolve()
            adapter = adapter_config(adapter_path, unet["block_out_channels"])
        elif motion_adapter is not None:
            raise VidrtError(f"{folder}'s UNet already holds motion modules; drop --motion-adapter")
        preset_file = folder / PRESET_MARKER
        return cls(
            folder=folder,
            pipeline_class=name,
            unet=unet,
            vae=_read_json(folder / "vae" / "config.json", folder),
            text_encoder=_read_json(folder / "text_encoder" / "config.json", folder),
            tokenizer=_read_json(folder / "tokenizer" / "tokenizer_config.json", folder),
            scheduler=_read_json(folder / "scheduler" / "scheduler_config.json", folder),
            motion_adapter=adapter,
            preset=json.loads(preset_file.read_text()) if preset_file.exists() else None,
            motion_adapter_path=adapter_path,
        )

    @property
    def kind(self) -> str:
        return PIPELINES[self.pipeline_class][0]

    @property
    def torch_classes(self) -> dict[str, tuple[str, str, str]]:
        """component -> (library, torch module class, subfolder): what export and the baseline load."""
        return {
            "unet": ("diffusers", PIPELINES[self.pipeline_class][1], "unet"),
            "vae_decoder": ("diffusers", "AutoencoderKL", "vae"),
            "text_encoder": ("transformers", "CLIPTextModel", "text_encoder"),
        }

    @property
    def latent_channels(self) -> int:
        return int(self.unet.get("in_channels", 4))

    @property
    def max_frames(self) -> int:
        """AnimateDiff's motion modules hold positional encodings for this many frames."""
        if self.kind == "animatediff":
            cfg = self.motion_adapter or self.unet
            return int(cfg.get("motion_max_seq_length", 32))
        return MAX_FRAMES

    @property
    def default_num_frames(self) -> int:
        return 16

    @property
    def default_size(self) -> tuple[int, int]:
        side = int(self.unet.get("sample_size") or 64) * self.vae_scale_factor
        return side, side

    @property
    def max_text_length(self) -> int:
        return int(self.tokenizer.get("model_max_length") or self.text_encoder.get("max_position_embeddings", 77))

    @property
    def text_dim(self) -> int:
        return int(self.text_encoder["hidden_size"])

    @property
    def default_guidance_scale(self) -> float:
        return 9.0 if self.kind == "text-to-video-sd" else 7.5

    def specs(self) -> dict[str, ComponentSpec]:
        return {"text_encoder": text_encoder_spec(self), "unet": unet_spec(self), "vae_decoder": vae_decoder_spec(self)}

    def check_ranges(self, videos, do_cfg, frames, height, width, chunk) -> None:
        """Raises VidrtError naming the first size outside a component's declared range
        (``chunk`` None: the pipeline's default of 16 frames)."""
        s = self.vae_scale_factor
        chunk = 16 if chunk is None else chunk
        groups = 2 if do_cfg else 1
        length = self.max_text_length
        specs = self.specs()
        specs["text_encoder"].check({"B": groups * videos, "L": length})
        specs["unet"].check({"B": groups * videos, "F": frames, "h": height // s, "w": width // s, "L": length})
        specs["vae_decoder"].check({"N": min(chunk, frames * videos), "h": height // s, "w": width // s})


def read_folder(folder: Path, index: dict, motion_adapter=None) -> T2vModel:
    """The family's entry point for vidrt.models.read_model."""
    return T2vModel.from_folder(folder, index, motion_adapter)

def text_encoder_spec(m: T2vModel) -> ComponentSpec:
    """Token ids -> last hidden states (what the UNet attends to) and the pooled output."""
    vocab = int(m.text_encoder.get("vocab_size", 49408))
    return ComponentSpec(
        name="text_encoder",
        inputs=(TensorSpec("input_ids", ("B", "L"), "int64", high=vocab),),
        outputs=(TensorSpec("last_hidden_state", ("B", "L", m.text_dim)), TensorSpec("pooled_output", ("B", m.text_dim))),
        # Guidance encodes the negative prompts in the same call: twice the videos.
        ranges={"B": DimRange(1, 2 * MAX_BATCH), "L": DimRange(1, m.max_text_length)},
        opt={"B": 2, "L": m.max_text_length},
    )


def unet_spec(m: T2vModel) -> ComponentSpec:
    c = m.latent_channels
    up = m.unet_up_factor
    top = (MAX_PIXELS // m.vae_scale_factor // up) * up
    h, w = m.default_size
    cross = int(m.unet.get("cross_attention_dim") or m.text_dim)
    return ComponentSpec(
        name="unet",
        inputs=(
            TensorSpec("sample", ("B", c, "F", "h", "w")),
            TensorSpec("timestep", (1,), value=500.0),
            TensorSpec("encoder_hidden_states", ("B", "L", cross)),
        ),
        outputs=(TensorSpec("noise_pred", ("B", c, "F", "h", "w")),),
        ranges={
            "B": DimRange(1, MAX_BATCH),
            "F": DimRange(1, m.max_frames),
            "h": DimRange(up, top, up),
            "w": DimRange(up, top, up),
            "L": DimRange(1, m.max_text_length),
        },
        opt={"B": 2, "F": m.default_num_frames, "h": h // m.vae_scale_factor, "w": w // m.vae_scale_factor,
             "L": m.max_text_length},
    )


def vae_decoder_spec(m: T2vModel) -> ComponentSpec:
    """AutoencoderKL decoder over frames stacked in the batch (a chunk of them at a time)."""
    return frame_decoder_spec(m, int(m.vae.get("latent_channels", 4)), MAX_FRAMES * MAX_BATCH)
