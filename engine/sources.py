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
from .families import family_module, presets
from .model_folder import PRESET_MARKER
from .models import read_model
from .prune import touch_used

PRESET_FAMILIES = presets()  # preset name -> family
ALL_PRESETS = tuple(PRESET_FAMILIES)

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


def check_weight_paths(unet_weights=None, motion_adapter=None) -> None:
    """Refuses --unet-weights / --motion-adapter paths that do not exist, before any model work."""
    if unet_weights is not None and not Path(unet_weights).expanduser().is_file():
        raise VidrtError(f"--unet-weights {unet_weights}: file not found; pass a .safetensors UNet state dict")
    if motion_adapter is not None and not Path(motion_adapter).expanduser().exists():
        raise VidrtError(f"--motion-adapter {motion_adapter}: no such file or folder")


def materialize_preset(name: str, seed: int, progress: bool = True) -> Path:
    """Saves a random-weight preset once under the cache dir; returns its folder."""
    folder = settings.cache_dir() / "presets" / f"{name}-seed{seed}"
    if (folder / PRESET_MARKER).exists():
        touch_used(folder)
        return folder
    with folder_lock(folder, f"the {name} preset", progress):
        if (folder / PRESET_MARKER).exists():  # another process made it while we waited
            return folder
        return _create_preset(name, seed, folder, progress)


def _create_preset(name: str, seed: int, folder: Path, progress: bool) -> Path:
    if progress:
        print(f"vidrt: creating preset {name} with RANDOM weights (seed {seed}) in {folder}", flush=True)
    presets = family_module(PRESET_FAMILIES[name], "presets")
    pipe = presets.build_random_pipeline(name, seed)
    marker = {"name": name, "seed": seed, "random_weights": True}
    if "differs" in presets.PRESETS[name]:  # what else differs from the real model
        marker["differs"] = presets.PRESETS[name]["differs"]
    with atomic_dir(folder) as tmp, _quiet_loading():  # transformers' per-shard bars too
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / PRESET_MARKER).write_text(json.dumps(marker) + "\n")
    return folder


def download_from_hub(repo_id: str, progress: bool = True) -> Path:
    """Downloads a model (fp32 safetensors, configs and tokenizer files) from the hub."""
    from huggingface_hub import snapshot_download

    hint = (
        "download it on a connected machine (huggingface-cli download) and pass the folder, "
        "or use an offline preset: " + ", ".join(ALL_PRESETS)
    )
    patterns = dict(allow_patterns=["*.json", "*.txt", "*.safetensors"],
                    ignore_patterns=["*.fp16.safetensors", "svd*.safetensors"])
    if settings.hub_offline():  # the local hub cache only, as huggingface_hub itself does offline
        try:
            return Path(snapshot_download(repo_id, local_files_only=True, **patterns))
        except Exception:  # not (completely) in the cache
            raise VidrtError(f"--model {repo_id}: HF_HUB_OFFLINE is set and the model is not in the local hub "
                             f"cache; {hint}") from None
    if progress:
        print(f"vidrt: downloading {repo_id} from the Hugging Face hub", flush=True)
    try:
        return Path(snapshot_download(repo_id, etag_timeout=10, **patterns))
    except Exception as e:  # every hub failure (network, auth, missing repo) becomes one line
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise VidrtError(f"--model {repo_id}: could not download from the Hugging Face hub ({reason}); {hint}") from None


def load_torch_components(model, unet_weights: str | Path | None = None, dtype=None):
    """Loads the model folder's diffusers pipeline (eval): StableVideoDiffusionPipeline,
    TextToVideoSDPipeline, AnimateDiffPipeline or WanPipeline, as model_index.json names it.

    Args:
        model: the resolved model.
        unet_weights: optional safetensors state dict replacing the UNet's weights
            (how AnimateLCM-SVD-xt ships).
        dtype: torch dtype to load the models in (default fp32), or diffusers' per-component
            dict ({"default": torch.bfloat16, "vae": torch.float32}); loading straight in bf16
            keeps a bf16 baseline of Wan2.1-T2V-1.3B at 15 GB instead of passing through fp32.

    Raises:
        VidrtError: weights unreadable or not matching the UNet.
    """
    import diffusers
    import torch

    cls = getattr(diffusers, "StableVideoDiffusionPipeline" if model.kind == "image-to-video" else model.pipeline_class)
    extra = {}
    if getattr(model, "motion_adapter_path", None) is not None:
        from .families.t2v.motion_adapter import load_motion_adapter

        extra["motion_adapter"] = load_motion_adapter(model.motion_adapter_path, model.unet["block_out_channels"])
    try:
        with _quiet_loading():
            pipe = cls.from_pretrained(model.folder, dtype=dtype or torch.float32, **extra)
    except (OSError, ValueError, EnvironmentError) as e:
        raise VidrtError(f"cannot load the model in {model.folder}: {str(e).splitlines()[0]}") from None
    if unet_weights is not None:
        load_unet_weights(pipe.unet, unet_weights)
    for c in ("unet", "transformer", "transformer_2", "vae", "image_encoder", "text_encoder"):
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


def load_torch_component(model, component: str, unet_weights: str | Path | None = None):
    """Loads only the torch module a component needs (fp32, eval), to keep export memory low.

    Returns the UNet, the VAE (for vae_encoder and vae_decoder), or the CLIP vision or
    text model. An AnimateDiff model whose unet/ is a plain 2D UNet gets its motion
    adapter (motion_adapter/ or --motion-adapter) merged in, as AnimateDiffPipeline does.

    Raises:
        VidrtError: the weights cannot be loaded.
    """
    import importlib

    lib, name, sub = model.torch_classes[component]
    part = model.text_part(component)
    try:
        if part is not None:
            module = load_text_encoder_part(model.folder / sub, getattr(importlib.import_module(lib), name), *part)
        elif model.kind == "animatediff" and component == "unet" and model.motion_adapter_path is not None:
            from diffusers import UNet2DConditionModel, UNetMotionModel

            from .families.t2v.motion_adapter import load_motion_adapter

            adapter = load_motion_adapter(model.motion_adapter_path, model.unet["block_out_channels"])
            module = UNetMotionModel.from_unet2d(UNet2DConditionModel.from_pretrained(model.folder / sub), adapter)
        else:
            with _quiet_loading():
                module = getattr(importlib.import_module(lib), name).from_pretrained(model.folder / sub)
    except (OSError, ValueError, EnvironmentError) as e:
        raise VidrtError(f"cannot load {sub} from {model.folder}: {str(e).splitlines()[0]}") from None
    if component == "unet" and unet_weights is not None:
        load_unet_weights(module, unet_weights)
    return module.eval().requires_grad_(False)


def load_text_encoder_part(folder: Path, cls, start: int, stop: int):
    """A text encoder (UMT5 or T5) with only blocks ``start:stop`` read from its safetensors
    (and the token embedding for the first part, the final norm for the last, T5's shared
    position bias table for every part); every other
    weight stays on the meta device, unread. Memory is that of the part, not the model.
    The module carries ``vidrt_part = (start, stop)`` for export (export/graphs.py).

    Raises:
        OSError: no safetensors weights in ``folder``.
    """
    import torch
    from safetensors import safe_open

    config = cls.config_class.from_pretrained(folder)
    with torch.device("meta"):
        module = cls(config)
    layers = config.num_layers
    wanted = {f"encoder.block.{i}." for i in range(start, stop)}
    if cls.__name__ == "T5EncoderModel":  # T5's blocks share block 0's relative position bias table
        wanted.add("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise OSError(f"no *.safetensors weights in {folder}")
    state = {}
    for f in files:
        with safe_open(str(f), framework="pt") as weights:
            for key in weights.keys():
                if (any(key.startswith(w) for w in wanted) or (start == 0 and key in ("shared.weight", "encoder.embed_tokens.weight"))
                        or (stop == layers and key.startswith("encoder.final_layer_norm."))):
                    state[key] = weights.get_tensor(key).float()
    if start == 0:  # tied embedding: saved once, under either name
        embedding = state.get("encoder.embed_tokens.weight", state.get("shared.weight"))
        if embedding is None:
            raise OSError(f"no token embedding (shared.weight) in {folder}")
        state["encoder.embed_tokens.weight"] = state["shared.weight"] = embedding
    module.load_state_dict(state, strict=False, assign=True)
    module.vidrt_part = (start, stop)
    return module


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
    load_state_checked(unet, state, f"--unet-weights {path}", "pass the UNet state dict of the same architecture")


def check_unet_weights(model, path: str | Path) -> None:
    """Compares a --unet-weights file's tensor names and shapes (its header only) with the
    model's UNet built from its config on the meta device: a mismatch is refused in a
    second, not after minutes of exporting the other components.

    Raises:
        VidrtError: unreadable file, or names or shapes that do not match.
    """
    import importlib

    import torch
    from safetensors import safe_open

    lib, name, _ = model.torch_classes["unet"]
    if getattr(model, "motion_adapter_path", None) is not None:
        return  # assembled at load time; checked when loaded
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # a damaged or foreign file
        raise VidrtError(f"--unet-weights {path}: not a readable safetensors file ({type(e).__name__})") from None
    with torch.device("meta"):
        cls = getattr(importlib.import_module(lib), name)
        own = {k: list(v.shape) for k, v in cls.from_config({k: v for k, v in model.unet.items()
                                                              if not k.startswith("_")}).state_dict().items()}
    fix = "pass the UNet state dict of the same architecture"
    wrong = [k for k in shapes if k in own and shapes[k] != own[k]]
    if wrong:
        k = wrong[0]
        raise VidrtError(f"--unet-weights {path} does not match: {len(wrong)} tensors of another shape "
                         f"(e.g. {k}: {shapes[k]}, the model's is {own[k]}); {fix}")
    missing, unexpected = sorted(set(own) - set(shapes)), sorted(set(shapes) - set(own))
    if missing or unexpected:
        raise VidrtError(f"--unet-weights {path} does not match: {len(missing)} missing keys (e.g. {missing[:2]}), "
                         f"{len(unexpected)} unexpected keys (e.g. {unexpected[:2]}); {fix}")


def load_state_checked(module, state: dict, what: str, fix: str, may_miss=lambda key: False) -> None:
    """Loads ``state`` into ``module``: every key present with its shape and finite values.

    Raises:
        VidrtError: missing or unexpected keys, a tensor of another shape, or NaN/Inf weights.
    """
    import torch

    own = module.state_dict()
    wrong = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and v.shape != own[k].shape]
    if wrong:
        k, got, want = wrong[0]
        raise VidrtError(f"{what} does not match: {len(wrong)} tensors of another shape (e.g. {k}: {list(got)}, "
                         f"the model's is {list(want)}); {fix}")
    bad = [k for k, v in state.items() if torch.is_floating_point(v) and not torch.isfinite(v).all()]
    if bad:
        raise VidrtError(f"{what} holds NaN or Inf values ({len(bad)} tensors, e.g. {bad[0]}); the file is damaged, "
                         "re-download or re-export it")
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not may_miss(k)]
    if missing or result.unexpected_keys:
        raise VidrtError(
            f"{what} does not match: {len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(result.unexpected_keys)} unexpected keys (e.g. {result.unexpected_keys[:2]}); {fix}"
        )
