"""Which model family a diffusers folder holds, from its model_index.json."""

from __future__ import annotations

from pathlib import Path

from .errors import VidrtError
from .model_folder import read_json
from .svd import SvdModel
from .t2v import PIPELINES, T2vModel


def read_model(folder: str | Path, motion_adapter: str | Path | None = None):
    """Reads a model folder's configs as the family its pipeline class belongs to
    (a Stable Diffusion folder with a ``motion_adapter`` is AnimateDiff).

    Returns:
        SvdModel (image-to-video) or T2vModel (text-to-video).

    Raises:
        VidrtError: the folder is missing, incomplete, or holds an unsupported pipeline.
    """
    folder = Path(folder)
    index = read_json(folder / "model_index.json", folder)
    if index.get("_class_name") in (*PIPELINES, "StableDiffusionPipeline") or motion_adapter is not None:
        model = T2vModel.from_folder(folder, index, motion_adapter)
    else:
        model = SvdModel.from_folder(folder, index)
    check_configs(model)
    return model


# Config entries that must be positive whole numbers (or lists of them) wherever present.
POSITIVE = {
    "unet": ("in_channels", "out_channels", "sample_size", "num_frames", "cross_attention_dim", "layers_per_block",
             "num_attention_heads", "attention_head_dim", "block_out_channels", "transformer_layers_per_block"),
    "vae": ("in_channels", "out_channels", "latent_channels", "layers_per_block", "block_out_channels", "sample_size"),
    "scheduler": ("num_train_timesteps",),
}
MAX_VAE_LEVELS = 6  # a scale factor of 2**5 = 32; more is no VAE diffusers ships


def check_configs(model) -> None:
    """Refuses configs no model could have (a head count of 0, a VAE of 40 levels), which
    would otherwise fail minutes later deep inside export or build.

    Raises:
        VidrtError: naming the file, the entry and its value.
    """
    for sub, keys in POSITIVE.items():
        config = getattr(model, sub, None) or {}
        name = "scheduler/scheduler_config.json" if sub == "scheduler" else f"{sub}/config.json"
        for key in keys:
            value = config.get(key)
            values = value if isinstance(value, (list, tuple)) else [value]
            if value is None:
                continue
            if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
                raise VidrtError(f"{model.folder / name}: {key}={value!r} must be a positive whole number"
                                 f"{' (or a list of them)' if isinstance(value, list) else ''}; fix the config or re-save the model")
    levels = len(model.vae.get("block_out_channels", [1]))
    if levels > MAX_VAE_LEVELS:
        raise VidrtError(f"{model.folder / 'vae/config.json'}: {levels} levels in block_out_channels (a scale factor of "
                         f"{2 ** (levels - 1)}); diffusers VAEs have at most {MAX_VAE_LEVELS}")
