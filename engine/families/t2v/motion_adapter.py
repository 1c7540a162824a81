"""AnimateDiff motion adapters from a diffusers MotionAdapter folder or from one
checkpoint file, in the original AnimateDiff layout (``mm_sd_v15_v2.ckpt``) or with
diffusers' keys.

A file carries no config: the adapter's shape is read from its tensors (motion
modules per block, mid block, positional-encoding length) and the UNet's channels;
the head count is AnimateDiff's 8. Original keys are renamed with diffusers' own
converter.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ...errors import VidrtError

FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def adapter_config(path: str | Path, block_out_channels) -> dict:
    """MotionAdapter config of a folder (its config.json) or a checkpoint file (inferred).

    Raises:
        VidrtError: missing path, unreadable file, or not a motion adapter.
    """
    path = Path(path)
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise VidrtError(f"--motion-adapter {path}: a folder needs the MotionAdapter's config.json")
        return json.loads(config.read_text())
    shapes = _tensor_shapes(path)
    down = {int(m.group(1)) for k in shapes if (m := re.match(r"down_blocks\.0\.motion_modules\.(\d+)\.", k))}
    if not down:
        raise VidrtError(f"--motion-adapter {path}: no motion modules in it (down_blocks.0.motion_modules.*); "
                         "pass an AnimateDiff motion-module checkpoint or a diffusers MotionAdapter folder")
    pe = next((s for k, s in shapes.items() if k.endswith(("pos_encoder.pe", "pos_embed.pe"))), None)
    return {
        "block_out_channels": list(block_out_channels),
        "motion_layers_per_block": len(down),
        "motion_num_attention_heads": 8,
        "motion_norm_num_groups": 32,
        "motion_max_seq_length": int(pe[1]) if pe else 32,
        "use_motion_mid_block": any(k.startswith("mid_block.") for k in shapes),
    }


def load_motion_adapter(path: str | Path, block_out_channels):
    """The MotionAdapter module (fp32, eval) of a folder or checkpoint file.

    Raises:
        VidrtError: the weights do not match the inferred adapter.
    """
    import torch
    from diffusers import MotionAdapter

    path = Path(path)
    if path.is_dir():
        return MotionAdapter.from_pretrained(path).eval()
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    state = _load_state(path)
    if any(".temporal_transformer." in k or ".attention_blocks." in k for k in state):
        state = convert_animatediff_checkpoint_to_diffusers(state)
    from ...sources import load_state_checked

    adapter = MotionAdapter(**adapter_config(path, block_out_channels))
    # Positional encodings are sinusoidal buffers diffusers recomputes; all else must match.
    load_state_checked(adapter, {k: v.to(torch.float32) for k, v in state.items()},
                       f"--motion-adapter {path} (for UNet channels {list(block_out_channels)})",
                       "pass an AnimateDiff motion adapter made for this Stable Diffusion UNet",
                       may_miss=lambda k: k.endswith("pos_embed.pe"))
    return adapter.eval()


def _load_state(path: Path) -> dict:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    return state.get("state_dict", state)


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    if not path.is_file():
        raise VidrtError(f"--motion-adapter {path}: not found")
    if path.suffix not in FILE_SUFFIXES:
        raise VidrtError(f"--motion-adapter {path}: expected a folder or a {', '.join(FILE_SUFFIXES)} file")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        return {k: tuple(v.shape) for k, v in _load_state(path).items()}
    except VidrtError:
        raise
    except Exception as e:
        raise VidrtError(f"--motion-adapter {path}: not a readable checkpoint ({str(e).splitlines()[0][:200]})") from None
