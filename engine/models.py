"""Which model family a diffusers folder holds, from its model_index.json."""

from __future__ import annotations

from pathlib import Path

from .errors import VidrtError
from .families import PIPELINE_CLASSES, family_module
from .model_folder import read_json


def read_model(folder: str | Path, motion_adapter: str | Path | None = None):
    """Reads a model folder's configs as the family its pipeline class belongs to
    (a Stable Diffusion folder with a ``motion_adapter`` is AnimateDiff).

    Returns:
        the family's model (vidrt.families.<family>.model), e.g. SvdModel or T2vModel.

    Raises:
        VidrtError: the folder is missing, incomplete, or holds an unsupported pipeline.
    """
    folder = Path(folder)
    index = read_json(folder / "model_index.json", folder)
    name = index.get("_class_name", "")
    family = "t2v" if motion_adapter is not None else PIPELINE_CLASSES.get(name)
    if family is None:
        raise VidrtError(f"{folder} holds a '{name}'; vidrt serves "
                         f"{', '.join(c for c in PIPELINE_CLASSES if c != 'StableDiffusionPipeline')} folders "
                         "(and StableDiffusionPipeline with --motion-adapter)")
    model = family_module(family, "model").read_folder(folder, index, motion_adapter)
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
