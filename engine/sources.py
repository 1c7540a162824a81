"""Where a model comes from: a preset, a local diffusers folder or a hub id.

Resolving gives a local folder with the model_index.json layout; loading gives
the torch modules (used by export and by the benchmark's PyTorch baseline).
"""

from __future__ import annotations

import json
from pathlib import Path

from . import settings
from .errors import VidrtError
from .fsutil import atomic_dir
from .presets import PRESETS
from .svd import PRESET_MARKER, SvdModel

DEFAULT_SEED = 0


def resolve_model(model: str, seed: int = DEFAULT_SEED, progress: bool = True) -> SvdModel:
    """Turns ``--model`` into a local model folder and reads its configs.

    Args:
        model: a preset name (tiny-svd, svd, svd-xt), a local folder, or a hub id.
        seed: weight seed for presets.
        progress: print what is being materialised or downloaded.

    Raises:
        VidrtError: unknown source, malformed folder, or hub unreachable.
    """
    if model in PRESETS:
        return SvdModel.from_folder(materialize_preset(model, seed, progress))
    path = Path(model).expanduser()
    if path.exists() or model.startswith((".", "/", "~")):
        what = "is not a folder" if path.exists() else "does not exist"
        if not path.is_dir():
            raise VidrtError(f"--model {model}: {what}; pass a diffusers model folder, a hub id or a preset")
        return SvdModel.from_folder(path)
    if model.count("/") != 1:
        raise VidrtError(
            f"--model {model}: not a preset ({', '.join(PRESETS)}), an existing folder or a hub id (owner/name)"
        )
    return SvdModel.from_folder(download_from_hub(model, progress))


def materialize_preset(name: str, seed: int, progress: bool = True) -> Path:
    """Saves a random-weight preset once under the cache dir; returns its folder."""
    folder = settings.cache_dir() / "presets" / f"{name}-seed{seed}"
    if (folder / PRESET_MARKER).exists():
        return folder
    if progress:
        print(f"vidrt: creating preset {name} with RANDOM weights (seed {seed}) in {folder}", flush=True)
    from .presets import build_random_pipeline

    pipe = build_random_pipeline(name, seed)
    with atomic_dir(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / PRESET_MARKER).write_text(json.dumps({"name": name, "seed": seed, "random_weights": True}) + "\n")
    return folder


def download_from_hub(repo_id: str, progress: bool = True) -> Path:
    """Downloads an SVD model (fp32 safetensors and configs) from the hub."""
    from huggingface_hub import snapshot_download

    hint = (
        "download it on a connected machine (huggingface-cli download) and pass the folder, "
        "or use an offline preset: " + ", ".join(PRESETS)
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


def load_torch_components(model: SvdModel, unet_weights: str | Path | None = None):
    """Loads the diffusers StableVideoDiffusionPipeline (fp32, eval) from the folder.

    Args:
        model: the resolved model.
        unet_weights: optional safetensors state dict replacing the UNet's weights
            (how AnimateLCM-SVD-xt ships).

    Raises:
        VidrtError: weights unreadable or not matching the UNet.
    """
    from diffusers import StableVideoDiffusionPipeline

    try:
        pipe = StableVideoDiffusionPipeline.from_pretrained(model.folder)
    except (OSError, ValueError, EnvironmentError) as e:
        raise VidrtError(f"cannot load the model in {model.folder}: {str(e).splitlines()[0]}") from None
    if unet_weights is not None:
        load_unet_weights(pipe.unet, unet_weights)
    for module in (pipe.unet, pipe.vae, pipe.image_encoder):
        module.eval().requires_grad_(False)
    return pipe


def load_torch_component(model: SvdModel, component: str, unet_weights: str | Path | None = None):
    """Loads only the torch module a component needs (fp32, eval), to keep export memory low.

    Returns the UNet, the VAE (for vae_encoder and vae_decoder) or the CLIP vision model.

    Raises:
        VidrtError: the weights cannot be loaded.
    """
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionModelWithProjection

    classes = {
        "unet": (UNetSpatioTemporalConditionModel, "unet"),
        "vae_encoder": (AutoencoderKLTemporalDecoder, "vae"),
        "vae_decoder": (AutoencoderKLTemporalDecoder, "vae"),
        "image_encoder": (CLIPVisionModelWithProjection, "image_encoder"),
    }
    cls, sub = classes[component]
    try:
        module = cls.from_pretrained(model.folder / sub)
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
