"""Where a model comes from: a preset, a local diffusers folder or a hub id.

Resolving gives a local folder with the model_index.json layout; loading gives
the torch modules (used by export and by the benchmark's PyTorch baseline).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from . import settings
from .errors import VidrtError
from .fsutil import atomic_dir, folder_lock
from .models import read_model
from .presets import PRESETS
from .presets_t2v import T2V_PRESETS
from .svd import PRESET_MARKER

ALL_PRESETS = (*PRESETS, *T2V_PRESETS)

DEFAULT_SEED = 0


def resolve_model(model: str, seed: int = DEFAULT_SEED, progress: bool = True, motion_adapter: str | None = None):
    """Turns ``--model`` into a local model folder and reads its configs.

    Args:
        model: a preset name (ALL_PRESETS), a local folder, or a hub id.
        seed: weight seed for presets.
        progress: print what is being materialised or downloaded.
        motion_adapter: AnimateDiff motion adapter (folder or checkpoint file) for a
            Stable Diffusion or AnimateDiff folder whose UNet has no motion modules.

    Returns:
        SvdModel or T2vModel, by the folder's pipeline class.

    Raises:
        VidrtError: unknown source, malformed folder, or hub unreachable.
    """
    if model in ALL_PRESETS:
        return read_model(materialize_preset(model, seed, progress), motion_adapter)
    path = Path(model).expanduser()
    if path.exists() or model.startswith((".", "/", "~")):
        what = "is not a folder" if path.exists() else "does not exist"
        if not path.is_dir():
            raise VidrtError(f"--model {model}: {what}; pass a diffusers model folder, a hub id or a preset")
        return read_model(path, motion_adapter)
    if model.count("/") != 1:
        raise VidrtError(
            f"--model {model}: not a preset ({', '.join(ALL_PRESETS)}), an existing folder or a hub id (owner/name)"
        )
    return read_model(download_from_hub(model, progress), motion_adapter)


def materialize_preset(name: str, seed: int, progress: bool = True) -> Path:
    """Saves a random-weight preset once under the cache dir; returns its folder."""
    folder = settings.cache_dir() / "presets" / f"{name}-seed{seed}"
    if (folder / PRESET_MARKER).exists():
        return folder
    with folder_lock(folder, f"the {name} preset", progress):
        if (folder / PRESET_MARKER).exists():  # another process made it while we waited
            return folder
        return _create_preset(name, seed, folder, progress)


def _create_preset(name: str, seed: int, folder: Path, progress: bool) -> Path:
    if progress:
        print(f"vidrt: creating preset {name} with RANDOM weights (seed {seed}) in {folder}", flush=True)
    if name in T2V_PRESETS:
        from .presets_t2v import build_random_t2v_pipeline as build
    else:
        from .presets import build_random_pipeline as build

    pipe = build(name, seed)
    with atomic_dir(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / PRESET_MARKER).write_text(json.dumps({"name": name, "seed": seed, "random_weights": True}) + "\n")
    return folder


def download_from_hub(repo_id: str, progress: bool = True) -> Path:
    """Downloads a model (fp32 safetensors, configs and tokenizer files) from the hub."""
    from huggingface_hub import snapshot_download

    hint = (
        "download it on a connected machine (huggingface-cli download) and pass the folder, "
        "or use an offline preset: " + ", ".join(ALL_PRESETS)
    )
    if settings.hub_offline():
        raise VidrtError(f"--model {repo_id}: HF_HUB_OFFLINE is set, so the hub cannot be reached; {hint}")
    if progress:
        print(f"vidrt: downloading {repo_id} from the Hugging Face hub", flush=True)
    try:
        return Path(
            snapshot_download(
                repo_id,
                allow_patterns=["*.json", "*.txt", "*.safetensors"],
                ignore_patterns=["*.fp16.safetensors", "svd*.safetensors"],
                etag_timeout=10,
            )
        )
    except Exception as e:  # every hub failure (network, auth, missing repo) becomes one line
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise VidrtError(f"--model {repo_id}: could not download from the Hugging Face hub ({reason}); {hint}") from None


def load_torch_components(model, unet_weights: str | Path | None = None):
    """Loads the model folder's diffusers pipeline (fp32, eval): StableVideoDiffusionPipeline,
    TextToVideoSDPipeline or AnimateDiffPipeline, as model_index.json names it.

    Args:
        model: the resolved model.
        unet_weights: optional safetensors state dict replacing the UNet's weights
            (how AnimateLCM-SVD-xt ships).

    Raises:
        VidrtError: weights unreadable or not matching the UNet.
    """
    import diffusers

    cls = getattr(diffusers, "StableVideoDiffusionPipeline" if model.kind == "image-to-video" else model.pipeline_class)
    extra = {}
    if getattr(model, "motion_adapter_path", None) is not None:
        from .motion_adapter import load_motion_adapter

        extra["motion_adapter"] = load_motion_adapter(model.motion_adapter_path, model.unet["block_out_channels"])
    try:
        with _quiet_loading():
            pipe = cls.from_pretrained(model.folder, **extra)
    except (OSError, ValueError, EnvironmentError) as e:
        raise VidrtError(f"cannot load the model in {model.folder}: {str(e).splitlines()[0]}") from None
    if unet_weights is not None:
        load_unet_weights(pipe.unet, unet_weights)
    for c in ("unet", "vae", "image_encoder", "text_encoder"):
        module = getattr(pipe, c, None)
        if module is not None:
            module.eval().requires_grad_(False)
    return pipe


@contextlib.contextmanager
def _quiet_loading():
    """Hides diffusers' and transformers' per-component loading bars (vidrt prints its own)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    was = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            diffusers_logging.enable_progress_bar()
        if was[1]:
            transformers_logging.enable_progress_bar()


# component -> (module class, subfolder), per model kind
_TORCH_CLASSES = {
    "image-to-video": {
        "unet": ("diffusers", "UNetSpatioTemporalConditionModel", "unet"),
        "vae_encoder": ("diffusers", "AutoencoderKLTemporalDecoder", "vae"),
        "vae_decoder": ("diffusers", "AutoencoderKLTemporalDecoder", "vae"),
        "image_encoder": ("transformers", "CLIPVisionModelWithProjection", "image_encoder"),
    },
    "text-to-video-sd": {
        "unet": ("diffusers", "UNet3DConditionModel", "unet"),
        "vae_decoder": ("diffusers", "AutoencoderKL", "vae"),
        "text_encoder": ("transformers", "CLIPTextModel", "text_encoder"),
    },
    "animatediff": {
        "unet": ("diffusers", "UNetMotionModel", "unet"),
        "vae_decoder": ("diffusers", "AutoencoderKL", "vae"),
        "text_encoder": ("transformers", "CLIPTextModel", "text_encoder"),
    },
}


def load_torch_component(model, component: str, unet_weights: str | Path | None = None):
    """Loads only the torch module a component needs (fp32, eval), to keep export memory low.

    Returns the UNet, the VAE (for vae_encoder and vae_decoder), or the CLIP vision or
    text model. An AnimateDiff model whose unet/ is a plain 2D UNet gets its motion
    adapter (motion_adapter/ or --motion-adapter) merged in, as AnimateDiffPipeline does.

    Raises:
        VidrtError: the weights cannot be loaded.
    """
    import importlib

    lib, name, sub = _TORCH_CLASSES[model.kind][component]
    try:
        if model.kind == "animatediff" and component == "unet" and model.motion_adapter_path is not None:
            from diffusers import UNet2DConditionModel, UNetMotionModel

            from .motion_adapter import load_motion_adapter

            adapter = load_motion_adapter(model.motion_adapter_path, model.unet["block_out_channels"])
            module = UNetMotionModel.from_unet2d(UNet2DConditionModel.from_pretrained(model.folder / sub), adapter)
        else:
            module = getattr(importlib.import_module(lib), name).from_pretrained(model.folder / sub)
    except (OSError, ValueError, EnvironmentError) as e:
        raise VidrtError(f"cannot load {sub} from {model.folder}: {str(e).splitlines()[0]}") from None
    if component == "unet" and unet_weights is not None:
        load_unet_weights(module, unet_weights)
    return module.eval().requires_grad_(False)


def load_unet_weights(unet, path: str | Path) -> None:
    """Replaces the UNet's weights with a safetensors state dict, strictly."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise VidrtError(f"--unet-weights {path}: file not found")
    try:
        state = load_file(str(path))
    except Exception as e:
        raise VidrtError(f"--unet-weights {path}: not a readable safetensors file ({e})") from None
    result = unet.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise VidrtError(
            f"--unet-weights {path} does not match this UNet: {len(result.missing_keys)} missing keys "
            f"(e.g. {result.missing_keys[:2]}), {len(result.unexpected_keys)} unexpected keys "
            f"(e.g. {result.unexpected_keys[:2]}); pass the UNet state dict of the same architecture"
        )
