"""The Stable Video Diffusion family (SVD, SVD-XT, AnimateLCM-SVD-xt): what vidrt
needs to know about a model folder, and the four component descriptions.

Everything here reads JSON configs only; no torch model is built.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from ...components import ComponentSpec, DimRange, TensorSpec
from ...errors import VidrtError
from ...model_folder import MAX_BATCH, MAX_FRAMES, MAX_PIXELS, PRESET_MARKER, ModelFolderMixin, frame_decoder_spec
from ...model_folder import read_json as _read_json

COMPONENTS = ("image_encoder", "vae_encoder", "unet", "vae_decoder")

# Subfolder of the model folder that holds each component's weights.
WEIGHTS_FOLDER = {"image_encoder": "image_encoder", "vae_encoder": "vae", "unet": "unet", "vae_decoder": "vae"}


@dataclasses.dataclass(frozen=True)
class SvdModel(ModelFolderMixin):
    """Configs of an SVD-family model folder (model_index.json layout)."""

    folder: Path
    unet: dict
    vae: dict
    image_encoder: dict
    feature_extractor: dict
    scheduler: dict
    preset: dict | None  # set for vidrt's random-weight presets

    components = COMPONENTS
    weights_folder = WEIGHTS_FOLDER
    takes_image = True
    kind = "image-to-video"
    # component -> (library, torch module class, subfolder): what export and the baseline load
    torch_classes = {
        "unet": ("diffusers", "UNetSpatioTemporalConditionModel", "unet"),
        "vae_encoder": ("diffusers", "AutoencoderKLTemporalDecoder", "vae"),
        "vae_decoder": ("diffusers", "AutoencoderKLTemporalDecoder", "vae"),
        "image_encoder": ("transformers", "CLIPVisionModelWithProjection", "image_encoder"),
    }
    # ONNX graph variants export can write per component (export/graphs.py GRAPH_VARIANTS)
    graph_variants = {"vae_decoder": ("video-layout",), "unet": ("video-layout",)}

    @classmethod
    def from_folder(cls, folder: str | Path, index: dict | None = None) -> "SvdModel":
        """Reads the configs of a diffusers StableVideoDiffusionPipeline folder.

        Raises:
            VidrtError: the folder or one of its config files is missing or malformed.
        """
        folder = Path(folder)
        index = index or _read_json(folder / "model_index.json", folder)
        cls_name = index.get("_class_name", "")
        if cls_name != "StableVideoDiffusionPipeline":
            raise VidrtError(
                f"{folder} holds a '{cls_name}'; vidrt serves StableVideoDiffusionPipeline (image to video), "
                "TextToVideoSDPipeline and AnimateDiffPipeline (text to video) folders"
            )
        preset_file = folder / PRESET_MARKER
        return cls(
            folder=folder,
            unet=_read_json(folder / "unet" / "config.json", folder),
            vae=_read_json(folder / "vae" / "config.json", folder),
            image_encoder=_read_json(folder / "image_encoder" / "config.json", folder),
            feature_extractor=_read_json(folder / "feature_extractor" / "preprocessor_config.json", folder),
            scheduler=_read_json(folder / "scheduler" / "scheduler_config.json", folder),
            preset=json.loads(preset_file.read_text()) if preset_file.exists() else None,
        )

    @property
    def latent_channels(self) -> int:
        return int(self.unet.get("out_channels", 4))

    @property
    def default_num_frames(self) -> int:
        return int(self.unet.get("num_frames", 25))

    @property
    def clip_image_size(self) -> int:
        return int(self.image_encoder.get("image_size", 224))

    @property
    def embed_dim(self) -> int:
        return int(self.image_encoder.get("projection_dim", 512))

    @property
    def default_size(self) -> tuple[int, int]:
        side = int(self.unet.get("sample_size") or 96) * self.vae_scale_factor
        return side, side

    def specs(self) -> dict[str, ComponentSpec]:
        """The four component descriptions, keyed by component name."""
        return {
            "image_encoder": image_encoder_spec(self),
            "vae_encoder": vae_encoder_spec(self),
            "unet": unet_spec(self),
            "vae_decoder": vae_decoder_spec(self),
        }

    def check_ranges(self, videos, do_cfg, frames, height, width, chunk, batch=None) -> None:
        """Raises VidrtError naming the first size outside a component's declared range
        (``batch``: conditioning images, default one per video; ``chunk`` None: all frames)."""
        s = self.vae_scale_factor
        chunk = frames if chunk is None else chunk
        batch = videos if batch is None else batch
        specs = self.specs()
        specs["image_encoder"].check({"B": batch})
        specs["vae_encoder"].check({"B": batch, "H": height, "W": width})
        specs["unet"].check({"B": videos * (2 if do_cfg else 1), "F": frames, "h": height // s, "w": width // s})
        specs["vae_decoder"].check({"N": min(chunk, frames * videos), "h": height // s, "w": width // s})


def read_folder(folder: Path, index: dict, motion_adapter=None) -> SvdModel:
    """The family's entry point for vidrt.models.read_model."""
    return SvdModel.from_folder(folder, index)

def image_encoder_spec(m: SvdModel) -> ComponentSpec:
    s = m.clip_image_size
    return ComponentSpec(
        name="image_encoder",
        inputs=(TensorSpec("pixel_values", ("B", 3, s, s)),),
        outputs=(TensorSpec("image_embeds", ("B", m.embed_dim)),),
        ranges={"B": DimRange(1, MAX_BATCH)},
        opt={"B": 1},
    )


def _pixel_ranges(m: SvdModel) -> dict[str, DimRange]:
    mult = m.pixel_multiple
    top = (MAX_PIXELS // mult) * mult
    return {"H": DimRange(mult, top, mult), "W": DimRange(mult, top, mult)}


def vae_encoder_spec(m: SvdModel) -> ComponentSpec:
    s = m.vae_scale_factor
    h, w = m.default_size
    return ComponentSpec(
        name="vae_encoder",
        inputs=(TensorSpec("image", ("B", 3, "H", "W")),),
        outputs=(TensorSpec("latent", ("B", m.latent_channels, f"H//{s}", f"W//{s}")),),
        ranges={"B": DimRange(1, MAX_BATCH), **_pixel_ranges(m)},
        opt={"B": 1, "H": h, "W": w},
    )


def unet_spec(m: SvdModel) -> ComponentSpec:
    c = m.latent_channels
    up = m.unet_up_factor
    top = (MAX_PIXELS // m.vae_scale_factor // up) * up
    h, w = m.default_size
    return ComponentSpec(
        name="unet",
        inputs=(
            TensorSpec("sample", ("B", "F", 2 * c, "h", "w")),
            TensorSpec("timestep", (1,), value=0.25 * math.log(20.0)),
            TensorSpec("encoder_hidden_states", ("B", 1, int(m.unet.get("cross_attention_dim", 1024)))),
            TensorSpec("added_time_ids", ("B", 3)),
        ),
        outputs=(TensorSpec("noise_pred", ("B", "F", c, "h", "w")),),
        ranges={
            "B": DimRange(1, MAX_BATCH),
            "F": DimRange(1, MAX_FRAMES),
            "h": DimRange(up, top, up),
            "w": DimRange(up, top, up),
        },
        opt={"B": 2, "F": m.default_num_frames, "h": h // m.vae_scale_factor, "w": w // m.vae_scale_factor},
    )


def vae_decoder_spec(m: SvdModel) -> ComponentSpec:
    return frame_decoder_spec(m, m.latent_channels, MAX_FRAMES)
