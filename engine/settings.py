"""Environment variables vidrt reads, all in one place (debug and location knobs only)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root for presets and default engine directories: $VIDRT_CACHE or ~/.cache/vidrt."""
    return Path(os.environ.get("VIDRT_CACHE") or Path.home() / ".cache" / "vidrt")


def hub_offline() -> bool:
    """True when the user asked huggingface_hub to stay offline."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def debug_slowdown() -> dict[str, float]:
    """$VIDRT_DEBUG_SLOWDOWN, e.g. "unet=1.5": engines of these components sleep after each
    call so that the call takes that many times as long. A test hook for the performance
    tooling (a deliberately slowed engine must read as a regression); never set it otherwise.

    Raises:
        VidrtError: the variable is not component=factor pairs with factors >= 1.
    """
    from .errors import VidrtError

    text = os.environ.get("VIDRT_DEBUG_SLOWDOWN", "")
    out = {}
    for part in filter(None, text.split(",")):
        name, _, factor = part.partition("=")
        try:
            out[name.strip()] = float(factor)
        except ValueError:
            out[name.strip()] = float("nan")
        if not out[name.strip()] >= 1:
            raise VidrtError(f"VIDRT_DEBUG_SLOWDOWN={text}: write component=factor pairs with factors >= 1, e.g. unet=1.5")
    return out
